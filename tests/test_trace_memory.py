"""The memory plan: a trace that cannot fit fails before any work, with the estimate, the budget and
the fix; a budget that forces the smallest batches (and rows stored on disk) gives the same graph;
and the estimate grows with what a trace's memory grows with. No timings, no RSS measurements
here: benchmarks/memory.py sets the estimate beside measured peaks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _threads import one_thread  # noqa: F401  (small tensors: one torch thread is faster on a shared CPU)

import circuits.attribution.tracing as tracing
from circuits import tiny_model, trace
from circuits.attribution import MemoryBudgetError, parse_memory
from circuits.attribution.memory import ENV_BUDGET, Budget, TraceShape, plan_trace
from transcoders import TranscoderConfig, build_transcoder

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", n_layers=3, d_model=32, n_heads=4, n_kv_heads=2, d_vocab=64, n_ctx=64,
                      dtype=torch.float64, init_scale=3.0)


def _tc(model, *, k: int = 12, d_features: int = 48, kind: str = "plt", activation: str = "topk"):
    torch.manual_seed(0)
    cfg = TranscoderConfig(kind=kind, n_layers=model.n_layers, d_model=model.d_model, d_features=d_features,
                           activation=activation, k=k, skip=True, model_name=model.name)
    tc = build_transcoder(cfg).double().eval()
    with torch.no_grad():
        tc.W_skip.normal_(0, 0.1)
    return tc


def _ids(n: int) -> torch.Tensor:
    return torch.randint(1, 64, (1, n), generator=torch.Generator().manual_seed(n))


def _shape(model, tc, n_pos: int, cap: int | None = None, max_logits: int = 5) -> TraceShape:
    return TraceShape.of(model, tc, n_pos, device=CPU, dtype=torch.float64, max_logits=max_logits,
                         max_feature_nodes=cap)


def _unbounded() -> Budget:
    return Budget(1 << 50, 1 << 50, "test")


def _smallest_budget(shape: TraceShape) -> int:
    """The least budget the plan accepts (bisection over bytes)."""
    lo, hi = 1, 1 << 40
    while lo < hi:
        mid = (lo + hi) // 2
        try:
            plan_trace(shape, Budget(mid, mid, "test"))
            hi = mid
        except MemoryBudgetError:
            lo = mid + 1
    return lo


def _assert_same_graph(a, b) -> None:
    assert a.node_ids == b.node_ids
    for name in ("bias", "excluded_input", "pre_activation", "activation"):
        np.testing.assert_allclose(a.nodes[name], b.nodes[name], rtol=1e-12, atol=1e-14, equal_nan=True)
    x, y = a.adjacency, b.adjacency
    assert np.array_equal(x.indptr, y.indptr) and np.array_equal(x.indices, y.indices)
    np.testing.assert_allclose(x.data, y.data, rtol=1e-12, atol=1e-14)


def test_a_tiny_budget_fails_before_the_forward_pass(model, monkeypatch) -> None:
    def no_work(*args, **kwargs):
        raise AssertionError("the model ran before the memory check")

    monkeypatch.setattr(tracing, "freeze", no_work)
    with pytest.raises(MemoryBudgetError) as err:
        trace(_ids(16), model, _tc(model), memory_budget="64KiB", device="cpu")
    message = str(err.value)
    assert "does not fit in memory" in message and "memory_budget='64KiB'" in message
    assert "it needs at least" in message and "over the budget of 64.00 KiB" in message
    assert "peak in attribution rows" in message                         # the estimate, part by part
    for fix in ("max_feature_nodes=", "a shorter prompt", "a larger budget", "a GPU"):
        assert fix in message


def test_a_budget_too_small_once_the_features_are_known_fails_before_attribution(model, monkeypatch) -> None:
    """Before encoding, a ReLU set's active features are unknown (taken as none); the second plan,
    on the measured counts, still refuses before any row is computed."""
    tc = _tc(model, activation="relu")                                   # about half the features fire
    ids = _ids(24)
    before = _smallest_budget(_shape(model, tc, 24))
    graph = trace(ids, model, tc, dtype="float64", device="cpu", max_logits=5)
    after = _smallest_budget(_shape(model, tc, 24).with_counts(*_feature_cells(graph)))
    assert after > before

    def no_rows(*args, **kwargs):
        raise AssertionError("attribution started before the memory check")

    monkeypatch.setattr(tracing, "_edge_rows", no_rows)
    with pytest.raises(MemoryBudgetError, match=r"[\d,]+ active features and [\d,]+ rows"):
        trace(ids, model, tc, dtype="float64", device="cpu", max_logits=5, memory_budget=(before + after) // 2)


def _feature_cells(graph) -> tuple[np.ndarray, np.ndarray]:
    f = graph.nodes["kind"] == "feature"
    return graph.nodes["layer"][f], graph.nodes["position"][f]


def test_the_budget_comes_from_the_environment_unless_passed(model, monkeypatch) -> None:
    monkeypatch.setenv(ENV_BUDGET, "64KiB")
    with pytest.raises(MemoryBudgetError, match=f"{ENV_BUDGET}=64KiB"):
        trace(_ids(8), model, _tc(model), device="cpu")
    graph = trace(_ids(8), model, _tc(model), device="cpu", memory_budget="4GiB")
    assert graph.metadata["memory"]["budget"] == 4 * 2**30


def test_an_explicit_batch_size_that_does_not_fit_names_the_automatic_one(model) -> None:
    shape = _shape(model, _tc(model), 32)
    need = _smallest_budget(shape)
    with pytest.raises(MemoryBudgetError, match="batch_size=None"):
        plan_trace(shape, Budget(need, need, "test"), batch_size=256)


@pytest.mark.parametrize("cap", [None, 300])
def test_the_smallest_budget_gives_the_same_graph(model, cap: int | None) -> None:
    """At the least budget the plan accepts, batches shrink to a few rows and stored rows go to
    disk; the graph is the one an unconstrained trace builds. With a cap of 300 of ~430 features
    the greedy selection runs, and its rounds do not depend on the batch size."""
    tc, ids = _tc(model), _ids(12)
    kw = dict(dtype="float64", device="cpu", max_logits=5, max_feature_nodes=cap)
    free = trace(ids, model, tc, **kw)
    counts = _shape(model, tc, 12, cap).with_counts(*_feature_cells(trace(ids, model, tc, dtype="float64",
                                                                          device="cpu", max_logits=5)))
    budget = _smallest_budget(counts)
    tight = trace(ids, model, tc, memory_budget=budget, **kw)
    mem, roomy = tight.metadata["memory"], free.metadata["memory"]
    assert mem["batch_size"] <= 4 < roomy["batch_size"]
    assert mem["rows_on_disk"] > 0 and roomy["rows_on_disk"] == 0
    assert mem["estimated_peak"] <= budget
    _assert_same_graph(free, tight)


def test_selection_rounds_do_not_depend_on_the_batch_size(model) -> None:
    """More features than one selection round (1024), chosen greedily over two rounds: the same
    graph in batches of 7 as in batches of 256."""
    tc, ids = _tc(model, k=24, d_features=64), _ids(20)
    kw = dict(dtype="float64", device="cpu", max_logits=5, max_feature_nodes=1200)
    a = trace(ids, model, tc, batch_size=7, **kw)
    assert a.metadata["n_active_features"] > 1200
    _assert_same_graph(a, trace(ids, model, tc, **kw))


def test_stored_rows_are_counted_exactly_without_a_cap(model) -> None:
    """Every source a target can reach (lower layers, positions up to its own; the logits see the
    last layer at the last position only) has a nonzero edge in a random model, so the plan's
    count of stored edges is exact."""
    tc, ids = _tc(model), _ids(10)
    graph = trace(ids, model, tc, dtype="float64", device="cpu", max_logits=5)
    shape = _shape(model, tc, 10, max_logits=graph.count("logit")).with_counts(*_feature_cells(graph))
    expected, upper, _ = shape.row_nnz()
    assert expected == upper == graph.adjacency.nnz
    mem = graph.metadata["memory"]
    assert graph.adjacency.nnz * 8 < mem["rows_stored"] <= mem["rows_expected"]  # values, and runs of columns


def test_the_estimate_grows_with_the_prompt_and_the_features(model) -> None:
    tc = _tc(model)
    peaks = [plan_trace(_shape(model, tc, n), _unbounded()).peak for n in (8, 16, 32, 64)]
    assert all(b > a for a, b in zip(peaks, peaks[1:]))
    # Attention patterns and rows reaching every earlier position: faster than linear in the prompt.
    assert peaks[-1] / peaks[-2] > 2.0
    more_features = plan_trace(_shape(model, _tc(model, k=24), 32), _unbounded())
    assert more_features.peak > peaks[2]
    cap = [plan_trace(_shape(model, tc, 64, cap=c), _unbounded()) for c in (64, 256, 1024)]
    assert cap[0].rows_expected < cap[1].rows_expected < cap[2].rows_expected
    assert cap[0].peak < cap[1].peak < cap[2].peak


def test_a_tight_budget_picks_a_smaller_batch(model) -> None:
    shape = _shape(model, _tc(model), 64)
    roomy = plan_trace(shape, _unbounded())
    need = _smallest_budget(shape)
    tight = plan_trace(shape, Budget(need, need, "test"))
    assert roomy.batch_size == 256 and tight.batch_size < 16
    assert tight.rows_in_memory < tight.rows_expected                  # the rest waits on disk


@pytest.mark.parametrize(("text", "n"), [
    ("8GiB", 8 * 2**30), ("8G", 8 * 2**30), ("8 GB", 8 * 10**9), ("512MiB", 512 * 2**20), ("1.5k", 1536),
    ("1e9", 10**9), (4096, 4096), ("100b", 100),
])
def test_memory_sizes(text, n: int) -> None:
    assert parse_memory(text) == n


@pytest.mark.parametrize("bad", ["lots", "8 GiBs", "-1G", 0, ""])
def test_bad_memory_sizes(bad) -> None:
    with pytest.raises(ValueError, match="memory size"):
        parse_memory(bad)


def _random_rows(seed: int, n_nodes: int = 60, n_rows: int = 25, batch: int = 4):
    """Chunks of random rows over ``n_nodes`` (features 0..39, then 10 errors/tokens, then 10 logits):
    each row reads only nodes of lower levels, with some exact zeros, as ``to_chunk`` makes them."""
    from circuits.attribution.rows import to_chunk

    rng = np.random.default_rng(seed)
    levels = np.concatenate([rng.integers(0, 4, 40), np.full(10, -1), np.full(10, 4)])
    rows = np.concatenate([np.arange(50, 60), rng.choice(40, n_rows - 10, replace=False)])
    dense = rng.normal(size=(n_rows, n_nodes)) * (rng.random((n_rows, n_nodes)) < 0.7)
    dense *= levels[None, :] < levels[rows][:, None]
    col_of = np.arange(n_nodes, dtype=np.int32)
    chunks = [to_chunk(rows[i:i + batch], torch.as_tensor(dense[i:i + batch]), torch.zeros(len(rows[i:i + batch])),
                       col_of) for i in range(0, n_rows, batch)]
    return chunks, rows, dense, levels


def test_rows_spilled_to_disk_read_back_and_assemble_the_same() -> None:
    from circuits.attribution.rows import RowStore, assemble

    chunks, rows, dense, _ = _random_rows(0)
    in_memory, on_disk, mixed = RowStore(), RowStore(limit=0), RowStore(limit=chunks[0].nbytes * 2)
    for c in chunks:
        for store in (in_memory, on_disk, mixed):
            store.append(c)
    assert in_memory.bytes_on_disk == 0 and on_disk.bytes_in_memory == 0 and mixed.bytes_on_disk > 0
    for a, b in zip(in_memory, on_disk):
        for name in ("rows", "counts", "runs", "run_start", "run_length", "vals", "bias", "total", "magnitude"):
            assert np.array_equal(getattr(a, name), getattr(b, name))
    # Drop some columns, as a capped graph drops features without rows.
    keep = np.isin(np.arange(60), rows) | (np.arange(60) >= 40)
    col_map = np.where(keep, np.cumsum(keep) - 1, -1)
    row_map = np.where(keep, np.cumsum(keep) - 1, -1)
    built = [assemble(s, int(keep.sum()), row_map, col_map, np.float64) for s in (in_memory, on_disk, mixed)]
    want = np.zeros((keep.sum(), keep.sum()))
    want[row_map[rows]] = dense[:, keep]
    for b in built:
        np.testing.assert_array_equal(b.matrix.toarray(), want)
        np.testing.assert_allclose(b.excluded[row_map[rows]], dense[:, ~keep].sum(1))
    assert len(on_disk) == len(mixed) == 0                               # assembling empties the store


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("gap", [0, 5])
def test_a_full_graph_assembles_as_its_dense_rows(threads: int, gap: int) -> None:
    """Every feature has a row (nothing dropped): rows that follow each other in a chunk and in node
    order are copied as slices, chunks placed by several threads at once; the columns either keep
    their ids or move up by ``gap`` (a map that drops nothing)."""
    from circuits.attribution.rows import RowStore, assemble, to_chunk

    rng = np.random.default_rng(3)
    n_nodes = 60
    levels = np.concatenate([np.sort(rng.integers(0, 4, 40)), np.full(10, -1), np.full(10, 4)])
    # Row order as batches make it: features grouped (consecutive ids in a group), groups shuffled.
    groups = np.split(np.arange(40), [7, 11, 12, 20, 31, 33])
    rows = np.concatenate([np.arange(50, 60)] + [groups[i] for i in rng.permutation(len(groups))])
    dense = rng.normal(size=(len(rows), n_nodes)) * (rng.random((len(rows), n_nodes)) < 0.7)
    dense *= levels[None, :] < levels[rows][:, None]
    store = RowStore()
    for i in range(0, len(rows), 6):
        store.append(to_chunk(rows[i:i + 6], torch.as_tensor(dense[i:i + 6]), torch.zeros(len(rows[i:i + 6])),
                              np.arange(n_nodes, dtype=np.int32)))
    col_map = np.arange(n_nodes) + gap * (np.arange(n_nodes) >= 40)
    row_map = np.where(np.arange(n_nodes) < 40, np.arange(n_nodes), -1) + gap * (np.arange(n_nodes) >= 50)
    row_map[50:] = np.arange(50, 60) + gap
    n_new = n_nodes + gap
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        built = assemble(store, n_new, row_map, col_map, np.float64)
    finally:
        torch.set_num_threads(before)
    want = np.zeros((n_new, n_new))
    want[np.ix_(row_map[rows], col_map)] = dense
    np.testing.assert_array_equal(built.matrix.toarray(), want)
    assert built.matrix.has_canonical_format


def test_streamed_influence_equals_the_assembled_graphs() -> None:
    """The selection's influence, read chunk by chunk, equals graphs.metrics.influence of the rows
    assembled into one matrix (what selection computed before, every round)."""
    import scipy.sparse as sp

    from circuits.attribution.rows import RowStore, feature_influence
    from graphs.metrics import influence

    for seed in range(3):
        chunks, rows, dense, levels = _random_rows(seed)
        store = RowStore(limit=chunks[0].nbytes)
        for c in chunks:
            store.append(c)
        weights = np.zeros(60)
        weights[50:] = np.random.default_rng(seed).random(10)
        visited = np.isin(np.arange(40), rows)
        full = np.zeros((60, 60))
        full[rows] = dense
        want = influence(sp.csr_matrix(full), weights, levels)[:40]
        np.testing.assert_allclose(feature_influence(store, weights, levels, visited), want, rtol=1e-12, atol=1e-15)
