"""circuit-tracer's ``attribute`` on a set saved in its format, timed: run by
``benchmarks/vs_circuit_tracer.py`` under a virtual environment holding circuit-tracer 0.5.0, never
this project's (circuit-tracer pins transformers <= 4.57.3 and nnsight's 0.6 API). It imports
nothing from this repository. Prints one JSON object on its last line.

    CT_PYTHON benchmarks/_circuit_tracer_run.py --model-dir D --set-dir S --ids 1,2,3 [--threads 2]

The set is read with circuit-tracer's own loader (``load_transcoder_set``, every layer's
``layer_{i}.safetensors``), decoders held in memory (``lazy_decoder=False``: nothing read from disk mid-run).
Its 0.5.0 loader gives every set without thresholds a ReLU and reads no ``activation: topk`` from
config.yaml, so for a TopK set each layer gets the function the set was trained with: the k largest
pre-activations, then ReLU (``transcoders.activations.topk``).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch
import yaml


class TopKReLU(torch.nn.Module):
    """Keep the k largest pre-activations per token, then ReLU: circuit-engine's TopK."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values, idx = x.topk(self.k, dim=-1)
        return torch.zeros_like(x).scatter_(-1, idx, values.relu())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--set-dir", required=True)
    ap.add_argument("--ids", required=True, help="the prompt's token ids, comma-separated, BOS first")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=512, help="attribute()'s batch_size (its default)")
    ap.add_argument("--cap", type=int, default=None, help="max_feature_nodes (default: every active feature)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import circuit_tracer
    from circuit_tracer import ReplacementModel, attribute
    from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set

    set_dir = Path(args.set_dir)
    cfg = yaml.safe_load((set_dir / "config.yaml").read_text())
    if cfg.get("model_kind") != "transcoder_set":
        raise SystemExit(f"{set_dir} holds a {cfg.get('model_kind')!r}; this comparison runs per-layer sets")
    n_layers = len(list(set_dir.glob("layer_*.safetensors")))
    cpu = torch.device("cpu")
    t = time.perf_counter()
    ts = load_transcoder_set({i: str(set_dir / f"layer_{i}.safetensors") for i in range(n_layers)},
                             scan="circuit-engine", feature_input_hook=cfg["feature_input_hook"],
                             feature_output_hook=cfg["feature_output_hook"], device=cpu, dtype=torch.float32,
                             lazy_encoder=False, lazy_decoder=False)
    if cfg.get("activation") == "topk":
        for tc in ts.transcoders:
            tc.activation_function = TopKReLU(int(cfg["k"]))
    model = ReplacementModel.from_pretrained_and_transcoders(args.model_dir, ts, backend="nnsight", device=cpu,
                                                             dtype=torch.float32)
    load_s = time.perf_counter() - t
    ids = torch.tensor([int(x) for x in args.ids.split(",")])

    # A first call pays one-time costs (nnsight's tracing of the model's source), as our warm-up does.
    t = time.perf_counter()
    attribute(ids, model, max_feature_nodes=8, batch_size=args.batch_size)
    warm_s = time.perf_counter() - t
    t = time.perf_counter()
    graph = attribute(ids, model, max_feature_nodes=args.cap, batch_size=args.batch_size, verbose=True)
    seconds = time.perf_counter() - t
    adj = graph.adjacency_matrix
    print(json.dumps({
        "version": getattr(circuit_tracer, "__version__", "?"), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "load_s": load_s, "warmup_s": warm_s, "seconds": seconds,
        "features": int(graph.selected_features.numel()), "active_features": int(graph.active_features.shape[0]),
        "nodes": int(adj.shape[0]), "edges": int(torch.count_nonzero(adj)),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }))


if __name__ == "__main__":
    main()
