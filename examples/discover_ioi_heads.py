"""Find the attention heads that do indirect object identification (IOI), as Wang et al. did.

    python examples/discover_ioi_heads.py            # SmolLM2: about a minute on a CPU
    python examples/discover_ioi_heads.py --tiny     # a tiny random model: seconds (its heads mean nothing)

The task is Wang et al.'s: clean prompts ("When Mary and John went to the store, John gave a drink
to") and ABC corruptions (three other names), with the metric logit(IO) - logit(S) at the end. Node
ACDC ablates heads (mean ablation over each template's ABC prompts) and keeps those whose removal
moves the metric. Prints the circuit's heads, its faithfulness f = (m(C) - m(empty)) / (m(M) - m(empty)),
each kept head's measured effect and the roles the attention/OV probes give them.
"""

from __future__ import annotations

from _common import load, parser

from circuits import NodeCircuit, discover_nodes
from circuits.probes import ioi_head_roles
from circuits.tasks import ioi


def main(argv: list[str] | None = None) -> NodeCircuit:
    p = parser(__doc__, transcoders=False)
    p.add_argument("--n", type=int, default=64, help="prompt pairs")
    p.add_argument("--candidates", type=int, default=100, help="heads tested by patching (the strongest by EAP)")
    args = p.parse_args(argv)
    model, _ = load(args, transcoders=False)

    task = ioi.dataset(model.tokenizer, n=args.n, seed=0)
    print(f"{args.n} IOI prompts, e.g. {task.clean_prompts[0]!r} -> {model.tokenizer.decode(task.answers[0])!r}")
    heads = discover_nodes(model, task, ablation="mean", candidates=args.candidates, include_mlps=False,
                           progress=False)
    print(heads)
    print(f"{len(heads.heads)} heads, faithfulness {heads.faithfulness:.3f}: "
          + ", ".join(f"L{layer}H{head}" for layer, head in heads.heads))
    roles = ioi_head_roles(model, task, heads.heads)  # independent of the circuit: attention and OV probes
    print("head: measured effect of ablating it (metric units); probe roles")
    for (layer, head), effect in heads.head_effects().items():
        print(f"  L{layer}H{head}: {effect:+.3f}; {', '.join(roles[layer, head]) or '-'}")
    return heads


if __name__ == "__main__":
    main()
