"""Head-level IOI circuit discovery on the default model: EAP, EAP-IG and ACDC, over edges and over nodes.

Prints, per method, wall time, circuit size (edges, heads) and faithfulness under resample
ablation (ABC corruption) with the logit-difference metric, and with ``--curves`` MIB's CPR
and CMD over edge budgets for the attribution methods. Run:

    .venv/bin/python -m benchmarks.discovery [--n 64] [--candidates 100] [--curves] [--threads 1]
    .venv/bin/python -m benchmarks.discovery --methods edges-from-nodes --edge-runs yes:0.01,no:0.01 --threads 1

CPU contention matters on a shared machine: the script prints the load average before and
after, and beside each wall time the CPU time the process itself used (user + system, all
threads), which with ``--threads 1`` is close to what the run takes on an idle core.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# OpenMP threads that spin-wait for a parked peer make every small op ~50x slower on a shared
# CPU; passive waiting costs nothing on an idle one. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Run as a file, Python puts benchmarks/ first on sys.path, where benchmarks/transcoders.py
# would shadow the transcoders package; `python -m benchmarks.discovery` does not need this.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for benchmarks.machine

import torch

from benchmarks.machine import print_machine

from circuits import load_model
from circuits.discovery import acdc, attribution_circuit
from circuits.discovery.heads.mib import mib_scores
from circuits.patching.nodes import NodePatcher
from circuits.patching import MIB_BUDGETS, EdgePatcher
from circuits.tasks import ioi


class Clock:
    """Wall and process CPU seconds since creation."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def __call__(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu

    def __str__(self) -> str:
        wall, cpu = self()
        return f"{wall:.0f} s wall, {cpu:.0f} s CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64, help="IOI prompt pairs")
    ap.add_argument("--top-n", type=int, default=200, help="edges kept by EAP / EAP-IG")
    ap.add_argument("--steps", type=int, default=5, help="EAP-IG steps")
    ap.add_argument("--candidates", type=int, default=100, help="edges ACDC tests (largest EAP-IG |score|)")
    ap.add_argument("--tau", type=float, default=None, help="ACDC threshold (logits); default 1%% of m(M) - m(∅)")
    ap.add_argument("--batch", type=int, default=1, help="ACDC edge sets per forward pass (speculative)")
    ap.add_argument("--no-split-qkv", action="store_true", help="one input per head instead of q/k/v")
    ap.add_argument("--curves", action="store_true", help="also CPR/CMD over MIB's edge budgets")
    ap.add_argument("--methods", default="eap,eap-ig,acdc,nodes",
                    help="comma-separated subset of eap, eap-ig, acdc (edge level), nodes (node-level EAP and "
                         "ACDC: which heads run, Wang et al.'s circuit) and edges-from-nodes (node ACDC, then edge "
                         "ACDC among its nodes, mean ablation; with CPR and CMD)")
    ap.add_argument("--node-candidates", type=int, default=100, help="heads node-level ACDC tests")
    ap.add_argument("--node-tau", type=float, default=0.02, help="node ACDC threshold, fraction of m(M) - m(∅)")
    ap.add_argument("--node-z", default="3", help="comma-separated z values for node ACDC (none: every prompt)")
    ap.add_argument("--node-batch", type=int, default=8, help="prompts a chunk for node ACDC with z")
    ap.add_argument("--node-controls", default="no",
                    help="comma-separated yes/no: node EAP scores as control variates for z's early decisions")
    ap.add_argument("--node-max-chunks", type=int, default=None,
                    help="node ACDC: a test reads at most this many chunks, then its mean decides (acdc_nodes max_chunks)")
    ap.add_argument("--edge-z", default="3", help="edges-from-nodes: z for edge ACDC's tests (none: every prompt)")
    ap.add_argument("--edge-runs", default="no:0.01",
                    help="edges-from-nodes: comma-separated SCREEN:TAU[:CANDIDATES[:FLOOR[:CONTROLS]]] edge ACDC runs from the same "
                         "node circuit, each a row: SCREEN no (one test per edge, ACDC), yes (screen_targets: group tests "
                         "per input, bisected) or yesN (and a group test reads at most N prompt chunks: screen_chunks), TAU the threshold as a fraction of m(M) - m(∅), CANDIDATES test only "
                         "that many edges of the node circuit (largest |EAP score|; 0 or empty: all), FLOOR a "
                         "faithfulness to keep (acdc(floor=)), CONTROLS yes to decide tests with each prompt's EAP scores as "
                         "control variates (acdc(controls=); their gradient pass is counted in the run's time)")
    ap.add_argument("--edge-max-chunks", type=int, default=None,
                    help="edges-from-nodes: a test reads at most this many chunks, then its mean decides (acdc max_chunks)")
    ap.add_argument("--edge-curves", default="yes", help="edges-from-nodes: no skips MIB's curve (CPR, CMD) of each run")
    ap.add_argument("--memory-gb", type=float, default=2.0, help="edges-from-nodes: EdgePatcher's buffer bound")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (on a shared, oversubscribed CPU 1 is faster than 2)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print_machine()
    t0 = time.perf_counter()
    model = load_model()
    task = ioi.dataset(model.tokenizer, n=args.n, seed=0)
    print(f"# model {model.name} loaded in {time.perf_counter() - t0:.1f} s; {task.n} prompts of {task.n_pos} tokens")
    methods = args.methods.split(",")
    rows = []
    if "edges-from-nodes" in methods:
        rows += edges_from_nodes_rows(model, task, args)
        methods.remove("edges-from-nodes")
        if not methods:
            _table(rows)
            return
    if "nodes" in methods:
        rows += node_rows(model, task, args)
        if methods == ["nodes"]:
            _table(rows)
            return
    clock = Clock()
    patcher = EdgePatcher(model, task, ablation="resample", split_qkv=not args.no_split_qkv)
    g = patcher.graph
    print(f"# setup (clean, corrupted and empty-circuit passes) {clock}; {g.n_edges} edges; "
          f"m(M) = {patcher.m_full:.3f}, m(∅) = {patcher.m_empty:.3f}")

    scores = {}
    for method in [m for m in ("eap", "eap-ig") if m in methods]:
        clock = Clock()
        c = attribution_circuit(patcher, method, top_n=args.top_n, steps=args.steps)
        dt = clock()
        scores[method] = torch.nan_to_num(c.scores)
        extra = ""
        if args.curves:
            curve_clock = Clock()
            mib = mib_scores(patcher, c)
            extra = f"; CPR {mib.cpr:.3f}, CMD {mib.cmd:.3f}"
            print(f"# {method} faithfulness at MIB budgets {MIB_BUDGETS}: {[round(f, 3) for f in mib.faithfulness]} "
                  f"({curve_clock})", flush=True)
        rows.append((method, dt, c.n_edges, len(c.heads), c.faithfulness, f"top {args.top_n} edges" + extra))
        print(rows[-1], flush=True)

    if "acdc" not in methods:
        _table(rows)
        return
    if "eap-ig" not in scores:
        clock = Clock()
        scores["eap-ig"] = patcher.edge_scores("eap-ig", steps=args.steps, progress=True)
        print(f"# EAP-IG scores for ACDC's candidates: {clock}", flush=True)
    clock = Clock()
    c = acdc(patcher, args.tau, scores=scores["eap-ig"], candidates=args.candidates, order="scores", batch=args.batch)
    dt = clock()
    note = (f"tau {c.info['tau']:.3f}, {args.candidates} EAP-IG candidates (f = "
            f"{c.info['faithfulness_candidates']:.3f} before pruning), {c.info['edges_tested']} tested, "
            f"{c.info['evaluations']} evaluations (+ EAP-IG scoring)")
    if args.curves:
        mib = mib_scores(patcher, c)  # the kept edges by measured effect, then the rest by EAP-IG score
        note += f"; CPR {mib.cpr:.3f}, CMD {mib.cmd:.3f}"
        print(f"# acdc faithfulness at MIB budgets {MIB_BUDGETS}: {[round(f, 3) for f in mib.faithfulness]}", flush=True)
    rows.append(("acdc", dt, c.n_edges, len(c.heads), c.faithfulness, note))
    print(rows[-1], flush=True)
    print(f"# ACDC heads: {sorted(c.heads)}")
    _table(rows)


def node_rows(model, task, args: argparse.Namespace) -> list[tuple]:
    """Node level, the README's call: mean ablation over the ABC prompts of each template, MLPs always run,
    ``precision="auto"`` (bf16 only where it is fast; its faithfulness re-measured in float32). Each
    ``--node-z`` value is a row (``none``: every test reads every prompt, ACDC's own rule and the
    pre-#19 behaviour), timed end to end: patcher setup, node EAP scores and ACDC."""
    from circuits.discovery import discover_nodes

    rows = []
    # Controls steer early decisions only: z = none runs once, without.
    runs = dict.fromkeys((z, "no" if z == "none" else c) for z in args.node_z.split(",") for c in args.node_controls.split(","))
    for z, controls in runs:
        zv = None if z == "none" else float(z)
        batch = 64 if zv is None else args.node_batch  # one chunk when nothing is decided early
        clock = Clock()
        patcher = NodePatcher(model, task, ablation="mean", precision="auto", batch_size=batch, scores=True)
        c = discover_nodes(model, task, patcher=patcher, candidates=args.node_candidates, include_mlps=False,
                           tau=args.node_tau * abs(patcher.m_full - patcher.m_empty), z=zv,
                           controls=controls == "yes" if zv is not None else None,
                           max_chunks=args.node_max_chunks if zv is not None else None, progress=False)
        dt = clock()
        i = c.info
        name = (f"ACDC nodes, z={z}, {batch} prompts a chunk, controls {controls if zv is not None else 'no'}"
                f"{f', tests capped at {args.node_max_chunks} chunks' if args.node_max_chunks and zv is not None else ''}")
        rows.append((name, dt, "", len(c.heads), c.faithfulness,
                     f"setup+scores {i['seconds_setup_and_scores']:.0f} s; {i['tests']} tests, {i['tests_decided_early']} "
                     f"decided early ({i.get('tests_decided_by_control', 0)} by the control, "
                     f"{i.get('tests_decided_at_cap', 0)} at the cap); work {i['work']:.1f} "
                     f"full passes; {i['passes']} passes in {i['sweeps']} sweeps; searched in {i['searched_in']}"))
        print(rows[-1], flush=True)
        print(f"# heads ({name}): {c.heads}", flush=True)
    return rows


def edges_from_nodes_rows(model, task, args: argparse.Namespace) -> list[tuple]:
    """Issue #19's route to edge ACDC: node ACDC as ``node_rows`` runs it (z = the first ``--node-z``), then
    edge ACDC among the node circuit's nodes (``acdc(within=...)``, as ``discover_edges(within=nodes)``) under
    the same mean ablation, tests decided on chunks of ``--node-batch`` prompts, once per ``--edge-runs`` entry
    (with CANDIDATES, only that many edges of largest |EAP score| among them are tested; the EAP pass is then
    counted in the run's time); MIB's CPR and CMD of each result (its kept edges by measured effect, then
    every other edge by |EAP score|: one EAP pass, timed apart unless candidates used it)."""
    from circuits.discovery import discover_nodes

    z_nodes = args.node_z.split(",")[0]
    clock = Clock()
    npatcher = NodePatcher(model, task, ablation="mean", precision="auto", batch_size=args.node_batch, scores=True)
    nodes = discover_nodes(model, task, patcher=npatcher, candidates=args.node_candidates, include_mlps=False,
                           tau=args.node_tau * abs(npatcher.m_full - npatcher.m_empty),
                           z=None if z_nodes == "none" else float(z_nodes),
                           max_chunks=args.node_max_chunks if z_nodes != "none" else None, progress=False)
    t_nodes = clock()
    print(f"# node ACDC: {len(nodes.heads)} heads, f {nodes.faithfulness:.3f} ({clock}); "
          f"{nodes.info['tests']} tests", flush=True)

    clock = Clock()
    patcher = EdgePatcher(model, task, ablation="mean", batch_size=args.node_batch, memory_gb=args.memory_gb)
    t_setup = clock()
    g = patcher.graph
    start = nodes.as_edge_circuit().kept
    f_start = patcher.faithfulness(start)  # every prompt (the search reads the start state on fewer)
    print(f"# edge patcher setup {clock}; the node circuit's {int(start.sum())} edges ({int(start.sum()) / g.n_edges:.1%} "
          f"of {g.n_edges}) have f {f_start:.3f}", flush=True)
    rows = [("node ACDC (edges-from-nodes)", t_nodes, int(start.sum()), len(nodes.heads), nodes.faithfulness,
             f"{nodes.info['tests']} tests, {nodes.info['tests_decided_early']} decided early; its edges: f "
             f"{f_start:.3f} under edge patching")]
    z = None if args.edge_z == "none" else float(args.edge_z)
    eap, t_scores, per_prompt, t_prompts = None, (0.0, 0.0), None, (0.0, 0.0)

    def eap_scores() -> torch.Tensor:  # scored once: the ranking for MIB's curve, and candidates
        nonlocal eap, t_scores
        if eap is None:
            clock = Clock()
            mean = per_prompt.mean(0) if per_prompt is not None else patcher.edge_scores("eap")
            eap = torch.where(g.valid, mean, torch.tensor(float("nan")))
            t_scores = clock()
            print(f"# EAP scores of every edge ({clock})", flush=True)
        return eap

    def prompt_scores() -> torch.Tensor:  # each prompt's EAP scores, once: the control variates
        nonlocal per_prompt, t_prompts
        if per_prompt is None:
            clock = Clock()
            per_prompt = patcher.edge_scores("eap", per_prompt=True)
            t_prompts = clock()
            print(f"# EAP scores of every edge on each prompt ({clock})", flush=True)
        return per_prompt

    for run in args.edge_runs.split(","):
        screen, tau, *rest = run.split(":")
        candidates = int(rest[0]) if rest and rest[0] not in ("", "0") else None
        floor = float(rest[1]) if len(rest) > 1 and rest[1] else None
        controls = prompt_scores() if len(rest) > 2 and rest[2] == "yes" else None
        screen_chunks = int(screen[3:]) if screen.startswith("yes") and screen[3:] else None
        scores = torch.nan_to_num(eap_scores()) if candidates is not None else None
        clock = Clock()
        c = acdc(patcher, float(tau) * abs(patcher.m_full - patcher.m_empty), scores=scores, candidates=candidates,
                 within=start, z=z, screen_targets=screen.startswith("yes"), screen_chunks=screen_chunks, floor=floor,
                 controls=controls, max_chunks=args.edge_max_chunks, progress=False)
        t_edges = clock()
        if candidates is not None:  # the EAP pass is part of this route
            t_edges = (t_edges[0] + t_scores[0], t_edges[1] + t_scores[1])
        if controls is not None:  # and so is the per-prompt one
            t_edges = (t_edges[0] + t_prompts[0], t_edges[1] + t_prompts[1])
        i = c.info
        name = (f"edge ACDC within the node circuit, tau {tau}{', screened' if screen.startswith('yes') else ''}"
                f"{f' (groups decided on {screen_chunks} chunks)' if screen_chunks else ''}"
                f"{f', {candidates} EAP candidates' if candidates else ''}{f', floor {floor}' if floor else ''}"
                f"{', EAP controls' if controls is not None else ''}"
                f"{f', tests capped at {args.edge_max_chunks} chunks' if args.edge_max_chunks else ''}")
        print(f"# {name}: {c.n_edges} kept, f {f_start:.3f} -> {c.faithfulness:.3f} ({t_edges[0]:.0f} s wall, "
              f"{t_edges[1]:.0f} s CPU; patcher setup "
              f"{t_setup[0]:.0f} s more); {i['edges_tested']} edges tested alone, {i['edges_screened']} removed in "
              f"groups, {i['tests']} tests, {i['tests_decided_early']} decided early "
              f"({i['tests_decided_by_control']} by the control, {i['tests_decided_at_cap']} at the cap); work {i['work']:.1f} full "
              f"passes in {i['passes']} passes"
              + (f"; floor: search f {i['faithfulness_search']:.3f} ({i['edges_search']} edges), {i['steps_undone']} steps "
                 f"undone in {i['floor_evaluations']} evaluations" if floor else ""), flush=True)
        print(f"# tests by kind and prompts read: [tests, work in full passes]: {i['tests_by_reads']}", flush=True)
        total = (t_nodes[0] + t_setup[0] + t_edges[0], t_nodes[1] + t_setup[1] + t_edges[1])
        c.scores = eap_scores()  # the ranking of the edges the circuit does not keep
        if args.edge_curves == "yes":
            clock = Clock()
            mib = mib_scores(patcher, c)
            cpr, cmd = mib.cpr, mib.cmd
            print(f"# {name} at MIB budgets {MIB_BUDGETS}: {[round(f, 3) for f in mib.faithfulness]} "
                  f"(edges {mib.n_edges}); CPR {mib.cpr:.3f}, CMD {mib.cmd:.3f} (curve {clock})", flush=True)
        else:
            cpr = cmd = float("nan")
        rows.append((name, t_edges, c.n_edges, len(c.heads), c.faithfulness,
                     f"tau {tau} x |m(M) - m(∅)|, z {args.edge_z}; {i['tests']} tests, "
                     f"{i['tests_decided_early']} decided early, {i['edges_screened']} edges removed in groups; "
                     f"work {i['work']:.1f} full passes; total with node ACDC and setup {total[0]:.0f} s wall, "
                     f"{total[1]:.0f} s CPU; CPR {cpr:.3f}, CMD {cmd:.3f}"))
    return rows


def _table(rows: list[tuple]) -> None:
    print(f"\n# load average after: {os.getloadavg()[0]:.1f}")
    print("| method | wall s | CPU s | edges | heads | faithfulness | notes |")
    print("|---|---|---|---|---|---|---|")
    for method, (wall, cpu), ne, nh, f, note in rows:
        ff = "" if f != f else f"{f:.3f}"
        print(f"| {method} | {wall:.0f} | {cpu:.0f} | {ne} | {nh} | {ff} | {note} |")


if __name__ == "__main__":
    main()
