"""The full IOI graph against circuit-tracer 0.5.0 on equal terms (issue #19, point 4).

    .venv/bin/python -m benchmarks.vs_circuit_tracer [--threads 2] [--set smollm2-quick] [--cap N]

Equal terms: the same machine and thread count, the same model weights (the packaged SmolLM2's float
copy), the same transcoder files (the cached set, which is saved in circuit-tracer's format and read
by circuit-tracer's own loader), the same token ids (a BOS first, as circuit-tracer prepends one; the
BOS carries no features in either), float32, every active feature, each run after a warm-up call.
circuit-tracer runs in a fresh process under its own virtual environment, since it pins transformers
<= 4.57.3 and nnsight's 0.6 API: ``--ct-venv`` (default: under the engine's cache), created on first
use with pip (``torch`` at this process's version, ``circuit-tracer==0.5.0``, ``nnsight>=0.6,<0.7``).

Its model directory is a temporary folder of links to the float copy, with two files rewritten for
transformers 4.57: tokenizer_config.json names ``PreTrainedTokenizerFast`` (the same tokenizer.json)
where transformers 5 wrote ``TokenizersBackend``, and config.json gains a top-level ``rope_theta`` from
transformers 5's ``rope_parameters`` (without it 4.57 uses 10,000). Nothing in the cache is written
except the venv.

Our graph leaves head loadings out (``head_loadings="none"``): circuit-tracer's graph has none.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads cost ~20 ms an op on a shared CPU
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks._common import cpu_seconds, peak_rss_mb  # noqa: E402
from benchmarks.machine import print_machine  # noqa: E402

PROMPT = "When Mary and John went to the store, John gave a drink to"
CT_VERSION = "0.5.0"
WORKER = Path(__file__).with_name("_circuit_tracer_run.py")


def ct_python(venv: Path) -> Path:
    """The venv's python, with circuit-tracer installed into it on first use."""
    py = venv / "bin" / "python"
    if py.exists():
        return py
    print(f"# creating {venv} for circuit-tracer {CT_VERSION} (once)", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pins = [f"torch=={torch.__version__.split('+')[0]}", f"circuit-tracer=={CT_VERSION}", "nnsight>=0.6,<0.7"]
    subprocess.run([str(py), "-m", "pip", "install", "-q", *pins], check=True)
    return py


def linked_model_dir(src: Path, dest: Path) -> Path:
    """``dest`` as links to ``src``'s files, with the two JSON files transformers 5 writes in a form
    transformers 4.57 reads the same way: the tokenizer class, and RoPE's parameters. (4.57 looks for
    ``rope_theta`` at the top level and, not finding it there, silently uses 10,000 instead of
    SmolLM2's 100,000: a different model, whose features differ in 5% of places.)"""
    dest.mkdir()
    rewritten = ("tokenizer_config.json", "config.json")
    for f in src.iterdir():
        if f.name not in rewritten:
            (dest / f.name).symlink_to(f)
    tok = json.loads((src / "tokenizer_config.json").read_text())
    if tok.get("tokenizer_class") == "TokenizersBackend":
        tok["tokenizer_class"] = "PreTrainedTokenizerFast"
    (dest / "tokenizer_config.json").write_text(json.dumps(tok))
    cfg = json.loads((src / "config.json").read_text())
    rope = cfg.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" not in cfg:
        cfg["rope_theta"] = rope["rope_theta"]
        if rope.get("rope_type", "default") != "default":
            cfg["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    (dest / "config.json").write_text(json.dumps(cfg))
    return dest


PHASE = re.compile(r"^(?P<name>[A-Z][\w ]*) (?:completed|built) in (?P<s>[0-9.]+)s$")


def phases_of(log: str) -> dict[str, float]:
    """The phase times circuit-tracer's ``attribute(verbose=True)`` logs ("Forward pass completed in 33.08s",
    "Input vectors built in 22.09s").
    Their sum is a lower bound on its time even when a run dies before it returns."""
    lines = log.replace("\r", "\n").splitlines()
    return {m["name"]: float(m["s"]) for m in map(PHASE.match, lines) if m and m["name"] != "Attribution"}


def run_circuit_tracer(cmd: list[str], log_path: Path) -> tuple[dict | None, str]:
    """Run the worker, its log echoed to stderr and kept in ``log_path``: (its JSON or None, the log)."""
    with tempfile.TemporaryFile("w+") as out, log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, text=True)
        for chunk in iter(lambda: proc.stderr.read(4096), ""):
            sys.stderr.write(chunk)
            log.write(chunk)
        proc.wait()
        out.seek(0)
        lines = out.read().strip().splitlines()
    if proc.returncode != 0:
        how = "killed by signal %d" % -proc.returncode if proc.returncode < 0 else "exit code %d" % proc.returncode
        print(f"# circuit-tracer's run failed ({how}; signal 9 is usually the out-of-memory killer)", flush=True)
    return (json.loads(lines[-1]) if proc.returncode == 0 and lines else None), log_path.read_text()


def main() -> None:
    from transcoders.cache import cache_dir

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--set", default="smollm2-quick", help="a per-layer preset set (from the cache)")
    ap.add_argument("--cap", type=int, default=None, help="max_feature_nodes (default: every active feature)")
    ap.add_argument("--ct-batch-size", type=int, default=512, help="circuit-tracer's batch_size (its default 512)")
    ap.add_argument("--ct-venv", type=Path, default=cache_dir() / f"circuit-tracer-{CT_VERSION}-venv")
    ap.add_argument("--ct-log", type=Path, default=Path("circuit-tracer-run.log"),
                    help="where circuit-tracer's log is kept (a new file; default ./circuit-tracer-run.log)")
    ap.add_argument("--ct-from-log", type=Path, default=None,
                    help="read the phase times of an earlier run's kept log instead of running circuit-tracer "
                         "again (its full graph takes about 40 minutes here)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print_machine()

    from circuits import load_model, trace
    from circuits.models.packaged import find_packaged, float_dir
    from transcoders import load_transcoders
    from transcoders.sets import preset_dir

    model = load_model()
    ids = model.tokenize(PROMPT, prepend_bos=True)[0].tolist()
    del model  # circuit-tracer's full graph needs all the memory there is: nothing of ours is held meanwhile

    if args.ct_from_log is not None:
        ct, log = None, args.ct_from_log.read_text()
        print(f"# circuit-tracer: phase times read from {args.ct_from_log}", flush=True)
    else:
        if args.ct_log.exists():
            raise SystemExit(f"{args.ct_log} exists; pass --ct-log with a new file name (nothing is overwritten)")
        py = ct_python(args.ct_venv)
        with tempfile.TemporaryDirectory() as tmp:
            mdir = linked_model_dir(float_dir(find_packaged(None)), Path(tmp) / "model")
            cmd = [str(py), str(WORKER), "--model-dir", str(mdir), "--set-dir", str(preset_dir(args.set)),
                   "--ids", ",".join(map(str, ids)), "--threads", str(torch.get_num_threads()),
                   "--batch-size", str(args.ct_batch_size)] + (["--cap", str(args.cap)] if args.cap else [])
            ct, log = run_circuit_tracer(cmd, args.ct_log)
    phases = phases_of(log)
    ct_s = ct["seconds"] if ct else sum(phases.values())
    bound = "" if ct else "≥ "
    print("# circuit-tracer phases (s): " + ", ".join(f"{k} {v:.1f}" for k, v in phases.items()), flush=True)

    model = load_model()
    tc = load_transcoders(model, args.set)
    trace(ids, model, tc, max_feature_nodes=8, head_loadings="none")  # warm-up, as circuit-tracer's
    t, c = time.perf_counter(), cpu_seconds()
    graph = trace(ids, model, tc, max_feature_nodes=args.cap, head_loadings="none")
    wall, cpu = time.perf_counter() - t, cpu_seconds() - c
    ours = ", ".join(f"{k} {v:.1f}" for k, v in graph.metadata["seconds"].items())
    print(f"# ours: {wall:.1f} s wall, {cpu:.1f} s CPU; phases (s): {ours}", flush=True)

    def theirs(key: str, fmt: str = "{:,}") -> str:
        return fmt.format(ct[key]) if ct else "(run did not finish)"

    found = re.search(r"Found (\d+) active features", log)
    print(f"\n| full IOI graph, {len(ids)} tokens (BOS first) | circuit-tracer {CT_VERSION} | circuit-engine |")
    print("|---|---|---|")
    print(f"| active features | {int(found[1]):,} | {graph.n_features:,} |" if found else
          f"| active features | ? | {graph.n_features:,} |")
    print(f"| nodes | {theirs('nodes')} | {graph.n_nodes:,} |")
    print(f"| nonzero edges | {theirs('edges')} | {graph.adjacency.nnz:,} |")
    print(f"| time (s) | {bound}{ct_s:.1f} | {wall:.1f} |")
    print(f"| peak RSS (GiB, the process) | {theirs('peak_rss_gib', '{:.1f}')} | {peak_rss_mb() / 1024:.1f} |")
    print(f"\nratio, ours / circuit-tracer: **{'≤ ' if bound else ''}{wall / ct_s:.3f}** (goal: at most 0.1)")


if __name__ == "__main__":
    main()
