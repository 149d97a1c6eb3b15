"""Load a transcoder set from a folder in circuit-tracer's format, and trace with it.

    python examples/load_circuit_tracer_set.py PATH/TO/SET         # a set you downloaded, for --model
    python examples/load_circuit_tracer_set.py --tiny              # writes a tiny set first, then loads it

circuit-tracer's per-layer format (what its published sets, and ``save_transcoders``, use):

    config.yaml              model_name, model_kind: transcoder_set, feature_input_hook, feature_output_hook
                             (TransformerLens hook names), activation (and k for TopK)
    layer_{i}.safetensors    W_enc [d_features, d_model], b_enc [d_features], W_dec [d_features, d_model],
                             b_dec [d_model], activation_function.threshold [d_features] (JumpReLU),
                             W_skip [d_model, d_model] (optional)

Cross-layer sets (``model_kind: cross_layer_transcoder``: W_enc_{i} / W_dec_{i}.safetensors) and
``hf://org/repo`` addresses load the same way. Without a folder, this example writes a small random
JumpReLU set for the model in that layout (into --out) and loads that.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from _common import IOI_PROMPT, load, output_folder, parser
from safetensors.torch import save_file

from circuits import trace
from transcoders import load_transcoders


def main(argv: list[str] | None = None) -> Path:
    p = parser(__doc__, transcoders=False, out=True)
    p.add_argument("folder", nargs="?", help="a set in circuit-tracer's format (default: write a small one)")
    args = p.parse_args(argv)
    model, _ = load(args, transcoders=False)
    folder = Path(args.folder) if args.folder else write_set(output_folder(args.out, "circuit-tracer") / "set", model)

    tc = load_transcoders(model, folder)  # also a preset name or "hf://org/repo"
    c = tc.cfg
    print(f"loaded {folder}: {c.kind.upper()}, {c.n_layers} layers x {c.d_features} features, {c.activation}, "
          f"reads {c.input_site}, writes {c.output_site}")
    graph = trace(IOI_PROMPT, model=model, transcoders=tc)
    print(f"{graph}; replacement score {graph.replacement_score:.3f}")
    return folder


def write_set(folder: Path, model, d_features: int = 64, seed: int = 0) -> Path:  # type: ignore[no-untyped-def]
    """A random JumpReLU set for ``model`` in circuit-tracer's layout, written tensor by tensor."""
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(seed)
    d = model.d_model
    for layer in range(model.n_layers):
        save_file({
            "W_enc": torch.randn(d_features, d, generator=g) / d**0.5,  # applied as F.linear: x @ W_enc.T
            "b_enc": torch.zeros(d_features),
            "W_dec": torch.randn(d_features, d, generator=g) / d_features**0.5,
            "b_dec": torch.zeros(d),
            "activation_function.threshold": torch.full((d_features,), 0.5),
        }, str(folder / f"layer_{layer}.safetensors"))
    config = {"model_name": model.name, "model_kind": "transcoder_set",
              "feature_input_hook": "blocks.{layer}.mlp.hook_in",   # the MLP's input, after its norm
              "feature_output_hook": "blocks.{layer}.hook_mlp_out",  # what the MLP adds to the residual
              "activation": "jumprelu"}
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    print(f"wrote a {model.n_layers}-layer set in circuit-tracer's format to {folder}")
    return folder


if __name__ == "__main__":
    main()
