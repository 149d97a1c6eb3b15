"""``make gpu-check``: the CUDA path, checked and timed in one command (about 5 minutes).

1. The exactness tier (tests/test_attribution_exact.py) with the trace on the GPU, in float64
   and in float32, against the float64 CPU reference.
2. The IOI prompt traced on the CPU and on the GPU (every active feature, float32): the same
   nodes, and every edge equal to 1e-4 of its target row's largest edge.
3. The attribution benchmark on the GPU: trace time and peak GPU memory against prompt length
   (16, 64, 256 and 1,024 tokens, at most 4,096 features), as in benchmarks/memory.py on the CPU.

The default model is used where its cache holds it (``make setup``). A GPU machine with no
network gets a model of the same architecture and shape with random weights instead, built from
SmolLM2's config and tokenizer carried in ``.gpu/`` (``make gpu-assets``), with TopK transcoders
of the default preset's shape: timings depend on shapes and on how many features fire, not on the
weights' values; the CPU/GPU comparison holds for any weights. The report says which it used.

    python benchmarks/gpu_check.py [--device cuda] [--skip-tests]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

# Run as a script, Python puts benchmarks/ first on the path, where benchmarks/transcoders.py
# would shadow the transcoders package.
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.machine import print_machine  # noqa: E402

PROMPT = "When Mary and John went to the store, John gave a drink to"
LENGTHS = (16, 64, 256, 1024)
MAX_FEATURES = 4096
ROOT = HERE.parent
ASSETS = ROOT / ".gpu" / "smollm2"


def exactness(device: str) -> list[tuple[str, str, float]]:
    """Run the exactness tier with the trace on ``device``, in float64 and float32."""
    rows = []
    for dtype in ("float64", "float32"):
        env = {**os.environ, "CIRCUITS_TEST_DEVICE": device, "CIRCUITS_TEST_DTYPE": dtype}
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not real_model",
                               str(ROOT / "tests" / "test_attribution_exact.py")],
                              cwd=ROOT, env=env, capture_output=True, text=True)
        summary = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
        if proc.returncode != 0:
            print(proc.stdout[-6000:], proc.stderr[-3000:], sep="\n", file=sys.stderr)
        rows.append((dtype, summary, time.perf_counter() - t0))
        print(f"# exactness on {device}, {dtype}: {summary}", flush=True)
    return rows


def model_and_transcoders(device: str):
    """The default model and set if cached; else SmolLM2-shaped random weights (see the docstring)."""
    from circuits import load_model
    from circuits.models.adapter import Model
    from transcoders import TranscoderConfig, build_transcoder
    from transcoders.cache import cache_dir
    from transcoders.sets import PRESETS, preset_dir

    preset = PRESETS["smollm2-quick"]
    if (cache_dir("models", preset.model) / "config.json").is_file():
        model = load_model(device=device)
        if (preset_dir(preset.name) / "config.yaml").is_file():
            from transcoders import load_transcoders

            return model, load_transcoders(model).to(device), "the default model and its trained smollm2-quick set"
        source = "the default model, random transcoders of smollm2-quick's shape"
    else:
        if not (ASSETS / "config.json").is_file():
            raise SystemExit(f"neither the default model (run `make setup`) nor {ASSETS} (run `make gpu-assets` on a "
                             "machine that has the model, and carry .gpu) is here.")
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        torch.manual_seed(0)
        config = AutoConfig.from_pretrained(ASSETS)
        hf = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
        model = Model(hf.to(device), AutoTokenizer.from_pretrained(ASSETS), preset.model)
        source = "SmolLM2-135M's architecture and tokenizer with random weights, random transcoders of smollm2-quick's shape"
    c = preset.config
    torch.manual_seed(0)
    tc = build_transcoder(TranscoderConfig(kind=c.kind, n_layers=model.n_layers, d_model=model.d_model,
                                           d_features=c.d_features, activation=c.activation, k=c.k, skip=c.skip,
                                           model_name=model.name)).eval().to(device)
    return model, tc, source


def cpu_vs_device(model, tc, device: str) -> dict[str, float]:
    """The IOI prompt traced on the CPU and on ``device`` (every active feature): nodes and edges compared."""
    from circuits import trace

    t0 = time.perf_counter()
    on_device = trace(PROMPT, model, tc, device=device, max_feature_nodes=None)
    t_device = time.perf_counter() - t0
    model.hf.to("cpu")
    tc_cpu = tc.to("cpu")
    t0 = time.perf_counter()
    on_cpu = trace(PROMPT, model, tc_cpu, device="cpu", max_feature_nodes=None)
    t_cpu = time.perf_counter() - t0
    model.hf.to(device)
    tc.to(device)
    same_nodes = list(on_cpu.node_ids) == list(on_device.node_ids)
    a, b = on_cpu.adjacency.toarray(), on_device.adjacency.toarray()
    if not same_nodes or a.shape != b.shape:
        return {"same_nodes": 0.0, "max_rel_error": float("inf"), "cpu_s": t_cpu, "gpu_s": t_device,
                "n_features": float(on_cpu.n_features), "n_edges": float(on_cpu.adjacency.nnz)}
    row_scale = np.abs(a).max(axis=1, keepdims=True)
    rel = np.abs(a - b) / np.where(row_scale > 0, row_scale, 1.0)
    return {"same_nodes": 1.0, "max_rel_error": float(rel.max()), "cpu_s": t_cpu, "gpu_s": t_device,
            "n_features": float(on_cpu.n_features), "n_edges": float(on_cpu.adjacency.nnz)}


def long_prompt(tokenizer, n_tokens: int) -> torch.Tensor:
    """``[1, n_tokens]`` ids: the IOI prompt repeated (a stand-in for text; cost depends on length)."""
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids[0]
    reps = -(-n_tokens // len(ids))
    return ids.repeat(reps)[:n_tokens][None]


def benchmark(model, tc, device: str) -> list[dict[str, float]]:
    from circuits import trace

    rows = []
    for n in LENGTHS:
        ids = long_prompt(model.tokenizer, n)
        torch.cuda.synchronize(device) if device.startswith("cuda") else None
        torch.cuda.reset_peak_memory_stats(device) if device.startswith("cuda") else None
        t0 = time.perf_counter()
        graph = trace(ids, model, tc, device=device, max_feature_nodes=MAX_FEATURES)
        torch.cuda.synchronize(device) if device.startswith("cuda") else None
        seconds = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.startswith("cuda") else float("nan")
        rows.append({"tokens": n, "active": graph.metadata["n_active_features"], "features": graph.n_features,
                     "edges": graph.adjacency.nnz, "seconds": seconds, "gpu_peak_mib": peak})
        print(f"# traced {n} tokens in {seconds:.1f} s", flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip-tests", action="store_true", help="only the trace comparison and the benchmark")
    args = parser.parse_args()
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device is visible to torch here. Fix: run on a GPU machine, or --device cpu for a "
                         "dry run of this script.")
    torch.backends.cuda.matmul.allow_tf32 = False  # TF32 would round float32 matmuls to 10 bits
    print_machine(device)
    ok = True
    if not args.skip_tests:
        rows = exactness(device)
        ok &= all(re.search(r"\d+ passed", s) and "failed" not in s and "error" not in s for _, s, _ in rows)
        print("\n| exactness tier on " + device + " | result | wall s |\n|---|---|---|")
        for dtype, summary, seconds in rows:
            print(f"| {dtype} | {summary} | {seconds:.0f} |")
    model, tc, source = model_and_transcoders(device)
    print(f"\n# model: {source}")
    cmp = cpu_vs_device(model, tc, device)
    match = cmp["same_nodes"] == 1.0 and cmp["max_rel_error"] <= 1e-4
    ok &= match
    print(f"\n| IOI prompt, every active feature | features | edges | same nodes | max edge error / row max | "
          f"CPU s | {device} s |\n|---|---|---|---|---|---|---|")
    print(f"| {'equal to 1e-4' if match else 'DIFFERENT'} | {cmp['n_features']:,.0f} | {cmp['n_edges']:,.0f} | "
          f"{'yes' if cmp['same_nodes'] else 'no'} | {cmp['max_rel_error']:.2e} | {cmp['cpu_s']:.1f} | "
          f"{cmp['gpu_s']:.1f} |")
    rows = benchmark(model, tc, device)
    print(f"\n| tokens | active features | features kept | edges | trace s on {device} | peak GPU MiB |"
          "\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['tokens']:,} | {r['active']:,} | {r['features']:,} | {r['edges']:,} | {r['seconds']:.2f} | "
              f"{r['gpu_peak_mib']:,.0f} |")
    print(f"\ngpu-check: {'PASSED' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
