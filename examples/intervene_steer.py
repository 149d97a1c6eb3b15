"""Intervene on transcoder features: switch off the feature that matters most for the prediction, then
steer generation by turning it up at every position.

    python examples/intervene_steer.py            # SmolLM2 and its default transcoders
    python examples/intervene_steer.py --tiny     # a tiny random model: seconds

Interventions run in the replacement model (transcoders in the MLP slots, errors held at their clean
values, attention live), so a clamp's effect flows on through later features, attention and the logits.
The feature is the most influential one in the prompt's attribution graph.
"""

from __future__ import annotations

from _common import IOI_PROMPT, load, parser

import graphs
from circuits import InterventionResult, intervene, trace


def main(argv: list[str] | None = None) -> dict[str, InterventionResult]:
    p = parser(__doc__, trace=True)
    p.add_argument("prompt", nargs="?", default=IOI_PROMPT)
    p.add_argument("--tokens", type=int, default=10, help="tokens to generate")
    p.add_argument("--strength", type=float, default=1.5, help="steering: the feature's activation, times this")
    args = p.parse_args(argv)
    model, tc = load(args)

    # The feature the graph says matters most for the prediction (influence on the logits, direct or not).
    graph = trace(args.prompt, model=model, transcoders=tc, max_feature_nodes=args.max_feature_nodes or None)
    influence = graphs.node_influence(graph)
    features = graph.span("feature")
    best = features.start + int(influence[features].argmax())
    layer, position, feature = (int(graph.nodes[c][best]) for c in ("layer", "position", "feature"))
    activation = float(graph.nodes["activation"][best])
    print(f"most influential feature: layer {layer}, position {position} ({graph.token_texts[position]!r}), "
          f"feature {feature}, activation {activation:.3f}")

    off = intervene(args.prompt, {(layer, position, feature): 0.0}, model, tc)  # clamp to zero at its position
    show = lambda pairs: ", ".join(f"{tok!r} {prob:.3f}" for tok, prob in pairs)  # noqa: E731
    print("next token, clean:       ", show(off.top_tokens(model.tokenizer, k=3, clean=True)))
    print("next token, feature off: ", show(off.top_tokens(model.tokenizer, k=3)))

    # Steering: the same feature held high at every position (None), generated ones too.
    plain = intervene(args.prompt, {}, model, tc, generate=args.tokens)
    steered = intervene(args.prompt, {(layer, None, feature): args.strength * max(activation, 1.0)}, model, tc,
                        generate=args.tokens)
    print(f"generated, clean:   {plain.text!r}")
    print(f"generated, steered: {steered.text!r}")
    return {"off": off, "plain": plain, "steered": steered}


if __name__ == "__main__":
    main()
