"""The model's answer to the IOI prompt, and where its heads look from the last token.

    python examples/ioi_prediction.py            # SmolLM2-135M-Instruct
    python examples/ioi_prediction.py --tiny     # a tiny random model: seconds

No transcoders: ``model.record`` reads any site (here every layer's attention pattern) by name.
"""

from __future__ import annotations

from _common import IOI_PROMPT, load, parser


def main(argv: list[str] | None = None) -> list[tuple[float, int, int]]:
    args = parser(__doc__, transcoders=False).parse_args(argv)
    model, _ = load(args, transcoders=False)

    logits, cache = model.record(IOI_PROMPT, [("attn_pattern", layer) for layer in range(model.n_layers)])
    tokens = [model.tokenizer.decode([t]).strip() for t in model.tokenize(IOI_PROMPT)[0]]
    print("top next tokens:", model.top_tokens(IOI_PROMPT, k=3))
    mary = tokens.index("Mary")
    # Heads that move the answer look from the last position to " Mary". Patterns: [n_heads, n_pos, n_pos].
    scores = [(cache[("attn_pattern", layer)][head, -1, mary].item(), layer, head)
              for layer in range(model.n_layers) for head in range(model.n_heads)]
    top = sorted(scores, reverse=True)[:5]
    for score, layer, head in top:
        print(f"L{layer}H{head}: attention END -> Mary = {score:.2f}")
    return top


if __name__ == "__main__":
    main()
