"""Explain a logit difference: why the model says " Mary" rather than " John".

    python examples/logit_difference.py                   # SmolLM2 and its default transcoders
    python examples/logit_difference.py --plus " Paris" --minus " London" "The capital of France is"
    python examples/logit_difference.py --tiny            # a tiny random model: seconds

``trace(prompt, targets=[(" Mary", " John")])`` makes the graph's one target logit(Mary) - logit(John)
at the last position (a tuple is a logit difference; ``LogitDiff``, a token, or a residual direction
``Direction(name, vec)`` work too, several at once in a list). Its incoming edges are the direct effects
of features, errors and tokens on the difference, exact in the frozen replacement model: with the
target's constant terms they add up to the model's own logit difference. Each edge into the target is
split over the attention head its paths cross last (``graph.head_loadings``).
"""

from __future__ import annotations

import numpy as np
from _common import IOI_PROMPT, load, parser

from circuits import trace
from graphs import AttributionGraph


def main(argv: list[str] | None = None) -> AttributionGraph:
    p = parser(__doc__)
    p.add_argument("prompt", nargs="?", default=IOI_PROMPT)
    p.add_argument("--plus", default=" Mary", help="the token the difference is for")
    p.add_argument("--minus", default=" John", help="the token it is against")
    args = p.parse_args(argv)
    model, tc = load(args)

    graph = trace(args.prompt, model=model, transcoders=tc, targets=[(args.plus, args.minus)])
    target = graph.span("logit").start  # the one target node
    value = float(graph.nodes["pre_activation"][target])
    logits, _ = model.record(args.prompt, [])
    tok = lambda text: model.tokenizer(text, add_special_tokens=False)["input_ids"][0]  # noqa: E731
    true = float(logits[-1, tok(args.plus)] - logits[-1, tok(args.minus)])
    print(f"{graph.nodes['token'][target]}: {value:+.4f} in the graph, {true:+.4f} from the model itself")

    # Exactness: the incoming edges plus the constant terms (biases) are the target's value.
    row = graph.adjacency.getrow(target)
    constant = float(graph.nodes["bias"][target]) + float(np.nan_to_num(graph.nodes["excluded_input"][target]))
    print(f"sum of {row.nnz} incoming edges {row.sum():+.4f} + constant terms {constant:+.4f} = "
          f"{row.sum() + constant:+.4f}")

    ids, texts = graph.node_ids, graph.token_texts
    print("strongest direct effects on the difference (source: weight; the heads that carry it, and the rest)")
    for col in row.indices[np.argsort(-np.abs(row.data))][:8]:
        position = int(graph.nodes["position"][col])
        loadings = graph.head_loadings((ids[col], ids[target]))  # {"L20.H3": w, ..., "direct": w}, adding up
        heads = [(h, w) for h, w in loadings.items() if h != "direct" and abs(w) > 1e-6][:2]
        carried = ", ".join(f"{h} {w:+.3f}" for h, w in [*heads, ("direct", loadings.get("direct", 0.0))])
        print(f"  {ids[col]} ({texts[position]!r}): {graph.adjacency[target, col]:+.4f}; {carried}")
    return graph


if __name__ == "__main__":
    main()
