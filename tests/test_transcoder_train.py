"""Training: it learns, it resumes bit-identically after a kill, and bad input stops it with a clear error."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from circuits import tiny_model
from transcoders import NonFiniteError, TrainConfig, TranscoderConfig, build_transcoder, load_transcoders, train
from transcoders.checkpoint import CheckpointMismatchError, transcoder_from_checkpoint
from transcoders.sparse import DENSITY_LIMIT, sparse_decode
from transcoders.train import StepStats, config_record

D_VOCAB = 64


def _model():
    # init_scale makes the MLPs matter, so there is something to learn.
    return tiny_model("llama", n_layers=3, d_model=16, d_mlp=32, d_vocab=D_VOCAB, n_ctx=32, init_scale=4.0)


def _rows(seed: int = 0):
    """A factory of endless, deterministic token batches [4, 12]."""
    def make() -> Iterator[torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        while True:
            yield torch.randint(1, D_VOCAB, (4, 12), generator=g)
    return make


def _cfg(**kw) -> TrainConfig:
    base = dict(kind="plt", d_features=32, activation="topk", k=4, n_tokens=44 * 40, seq_len=12, model_batch=4,
                chunk_batches=3, batch_tokens=44, lr=3e-3, warmup_steps=3, checkpoint_every=5, seed=0,
                precision="fp32")
    return TrainConfig(**{**base, **kw})


def test_training_lowers_fvu(tmp_path: Path) -> None:
    fvu: list[float] = []
    train(_model(), _cfg(), run_dir=tmp_path, token_batches=_rows(), progress=False,
          callback=lambda step, s: fvu.append(float(s.fvu.mean())))
    assert len(fvu) == 40
    assert sum(fvu[-5:]) / 5 < 0.9 * sum(fvu[:5]) / 5


@pytest.mark.parametrize("kind, activation, extra", [
    ("plt", "jumprelu", {"l0": 6.0}),  # the L0 controller's state must survive the kill too
    ("clt", "topk", {"skip": True}),
])
def test_resume_after_kill_is_bit_identical(tmp_path: Path, kind: str, activation: str, extra: dict) -> None:
    cfg = _cfg(kind=kind, activation=activation, n_tokens=44 * 12, chunk_epochs=2, **extra)
    model = _model()
    straight = train(model, cfg, run_dir=tmp_path / "straight", token_batches=_rows(), progress=False)

    class Killed(Exception):
        pass

    def kill_at_7(step: int, _stats: StepStats) -> None:
        if step == 7:
            raise Killed  # after step 7; the last checkpoint is step 5's

    with pytest.raises(Killed):
        train(model, cfg, run_dir=tmp_path / "killed", token_batches=_rows(), progress=False, callback=kill_at_7)
    state = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=False)
    assert state["step"] == 5 and state["optimizer"]["state"], "the checkpoint holds the step and Adam's moments"
    steps: list[int] = []
    resumed = train(model, cfg, run_dir=tmp_path / "killed", token_batches=_rows(), progress=False,
                    callback=lambda step, _s: steps.append(step))
    assert steps == list(range(6, 13)), "the resumed run continues from the checkpoint's step"
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), f"{name} differs after resuming"
    final = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=False)
    reference = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)
    for a, b in zip(final["optimizer"]["state"].values(), reference["optimizer"]["state"].values(), strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(final["log_coeff"], reference["log_coeff"])


def test_same_seed_same_weights_other_seed_not(tmp_path: Path) -> None:
    model = _model()
    cfg = _cfg(n_tokens=44 * 4)
    a = train(model, cfg, run_dir=tmp_path / "a", token_batches=_rows(), progress=False)
    b = train(model, cfg, run_dir=tmp_path / "b", token_batches=_rows(), progress=False)
    c = train(model, _cfg(n_tokens=44 * 4, seed=1), run_dir=tmp_path / "c", token_batches=_rows(), progress=False)
    assert torch.equal(a.W_enc, b.W_enc) and not torch.equal(a.W_enc, c.W_enc)


def test_resuming_with_another_config_is_refused(tmp_path: Path) -> None:
    model = _model()
    train(model, _cfg(n_tokens=44 * 5), run_dir=tmp_path, token_batches=_rows(), progress=False)
    with pytest.raises(CheckpointMismatchError, match=r"different configuration \(d_features: 32 -> 48\).*Fix"):
        train(model, _cfg(n_tokens=44 * 5, d_features=48), run_dir=tmp_path, token_batches=_rows(), progress=False)


def test_the_same_recipe_on_other_text_is_another_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run's folder is named by its text as well as its recipe: training on other text must start
    over, not resume (or, finished, hand back) the set another text trained."""
    from transcoders.corpus import Corpus
    from transcoders.train import run_name

    monkeypatch.setenv("CIRCUITS_CACHE", str(tmp_path / "cache"))
    model = _model()
    texts = {}
    for name, offset in (("a", 1), ("b", 7)):
        (tmp_path / name).mkdir()
        for i in range(40):
            (tmp_path / name / f"doc{i}.txt").write_text(" ".join(f"t{(i * offset + j) % 60 + 1}" for j in range(40)))
        texts[name] = Corpus.from_files([tmp_path / name])
    cfg = _cfg(n_tokens=44 * 3, seq_len=12, model_batch=4)
    assert texts["a"].identity() != texts["b"].identity() and texts["a"].identity() is not None
    assert run_name("m", cfg, texts["a"].identity()) != run_name("m", cfg, texts["b"].identity()) != run_name("m", cfg)
    a = train(model, cfg, corpus=texts["a"], progress=False)
    steps: list[int] = []
    b = train(model, cfg, corpus=texts["b"], progress=False, callback=lambda step, _s: steps.append(step))
    assert steps == [1, 2, 3], "the run on text b trained from the start"
    assert not torch.equal(a.W_enc, b.W_enc)
    runs = tmp_path / "cache" / "transcoders" / "runs"
    run_a = runs / run_name(model.name, cfg, texts["a"].identity())
    assert {p.name for p in runs.iterdir()} == {run_a.name, run_name(model.name, cfg, texts["b"].identity())}
    with pytest.raises(CheckpointMismatchError, match="text"):  # an explicit run folder of text a refuses text b
        train(model, cfg, corpus=texts["b"], run_dir=run_a, progress=False)


def test_l0_target_steers_the_penalty(tmp_path: Path) -> None:
    """Far above its target L0, the controller raises the penalty and the thresholds climb."""
    l0: list[float] = []
    tc = train(_model(), _cfg(activation="jumprelu", l0=2.0, n_tokens=44 * 60, lr=3e-2), run_dir=tmp_path,
               token_batches=_rows(), progress=False, callback=lambda step, s: l0.append(float(s.l0.mean())))
    assert sum(l0[-5:]) / 5 < 0.75 * sum(l0[:5]) / 5
    assert float(torch.load(tmp_path / "checkpoint.pt", weights_only=False)["log_coeff"]) > -4.0  # from log(1e-2)
    assert float(tc.threshold.detach().mean()) > 0.2  # from 0.1


def test_saved_set_loads_back(tmp_path: Path) -> None:
    model = _model()
    tc = train(model, _cfg(n_tokens=44 * 4, skip=True), run_dir=tmp_path / "run", save_dir=tmp_path / "set",
               token_batches=_rows(), progress=False)
    loaded = load_transcoders(model, tmp_path / "set")
    x = torch.randn(5, 3, 16)
    torch.testing.assert_close(loaded(x).recon, tc(x).recon, rtol=1e-5, atol=1e-5)
    in_progress, step = transcoder_from_checkpoint(tmp_path / "run")  # what a run in progress would give
    assert step == 4
    torch.testing.assert_close(in_progress(x).recon, tc(x).recon, rtol=1e-5, atol=1e-5)


def test_nan_activations_stop_training(tmp_path: Path) -> None:
    model = _model()
    with torch.no_grad():
        model.hf.model.layers[2].mlp.up_proj.weight[1, 1] = float("nan")
    with pytest.raises(NonFiniteError, match=r"first at layer 2.*Fix"):
        train(model, _cfg(), run_dir=tmp_path, token_batches=_rows(), progress=False)


@pytest.mark.parametrize("kw, message", [
    ({"k": 0}, "k=0 must be in 1..d_features"),
    ({"activation": "topk", "l0": 8.0}, "a target --l0 steers a JumpReLU"),
    ({"kind": "mlp"}, "kind must be 'plt' or 'clt'"),
    ({"decoder_lr_scale": 0.0}, "decoder_lr_scale must be positive"),
])
def test_bad_train_config(kw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _cfg(**kw)


def test_too_few_tokens(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="less than one step"):
        train(_model(), _cfg(n_tokens=10), run_dir=tmp_path, token_batches=_rows(), progress=False)


@pytest.mark.parametrize("kind", ["plt", "clt"])
@pytest.mark.parametrize("activation", ["topk", "batchtopk"])
def test_sparse_decode_is_decode(kind: str, activation: str) -> None:
    """The training-time decode and its gradients match the dense one (TopK: only active features matter;
    BatchTopK: tokens with any number of active features, none included)."""
    torch.manual_seed(0)
    tc = build_transcoder(TranscoderConfig(kind=kind, n_layers=4, d_model=8, d_features=64, activation=activation, k=2))
    tc = tc.double()
    with torch.no_grad():
        tc.b_dec.normal_()
        tc.output_scale.uniform_(0.5, 2)
    x = torch.randn(10, 4, 8, dtype=torch.float64)
    x[3] *= 1e-3  # under BatchTopK, some tokens get no features
    params = [p for p in tc.parameters() if p.requires_grad]
    acts = tc.encode(x).acts
    assert 0 < (acts != 0).double().mean() < DENSITY_LIMIT  # the sparse path runs
    if activation == "batchtopk":
        assert (acts[3] == 0).all(dim=-1).any()
    dense = tc.decode(acts)
    sparse = sparse_decode(tc, tc.encode(x).acts)
    torch.testing.assert_close(sparse, dense, rtol=1e-12, atol=1e-12)
    g_dense = torch.autograd.grad(dense.square().sum(), params, allow_unused=True)
    g_sparse = torch.autograd.grad(sparse.square().sum(), params, allow_unused=True)
    for a, b in zip(g_dense, g_sparse, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["plt", "clt"])
def test_sparse_decode_under_bf16_autocast(kind: str) -> None:
    """Under a bf16 autocast the decode gathers from bf16 tables: the output and every gradient agree
    with the float32 decode to bf16's precision, and the gradients the optimiser sees stay float32."""
    torch.manual_seed(0)
    tc = build_transcoder(TranscoderConfig(kind=kind, n_layers=4, d_model=64, d_features=256, activation="topk", k=8))
    with torch.no_grad():
        tc.b_dec.normal_()
    x = torch.randn(40, 4, 64)
    params = [p for p in tc.parameters() if p.requires_grad]

    def run(bf16: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        acts = tc.encode(x).acts  # in float32 both times, so that both decode the same features
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = sparse_decode(tc, acts)
        return out, list(torch.autograd.grad(out.square().sum(), params, allow_unused=True))

    (ref, g_ref), (got, g_got) = run(False), run(True)
    assert got.dtype == torch.float32
    # bf16 keeps 8 bits of mantissa: each gathered row and weight is rounded by at most 2^-9 relatively.
    torch.testing.assert_close(got, ref, rtol=2e-2, atol=2e-2 * ref.abs().mean().item())
    assert (got - ref).abs().max() > 0  # the gathers did run in bf16
    for a, b in zip(g_ref, g_got, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert b.dtype == torch.float32
            torch.testing.assert_close(b, a, rtol=2e-2, atol=2e-2 * a.abs().mean().item())


@pytest.mark.parametrize("kind, frozen", [("plt", False), ("clt", False), ("clt", True)])
def test_active_encode_is_the_dense_objective(kind: str, frozen: bool) -> None:
    """TopK training never builds the [N, L, F] activations; its loss, stats and every gradient
    (encoder included, read only at active entries) equal the dense encode and decode. With the
    encoder frozen (a CLT started from a PLT) the decode skips the values' gradient and the rest stay."""
    from transcoders.sparse import can_encode_active
    from transcoders.train import Objective, TrainConfig

    torch.manual_seed(0)
    tc = build_transcoder(TranscoderConfig(kind=kind, n_layers=4, d_model=8, d_features=64, activation="topk",
                                           k=3, skip=True)).double()
    with torch.no_grad():
        tc.b_dec.normal_()
        tc.b_enc.normal_(mean=-0.8, std=0.3)  # some of a token's top 3 are negative: the ReLU drops them
        tc.W_skip.normal_(std=0.1)
        tc.input_scale.uniform_(0.5, 2)
        tc.output_scale.uniform_(0.5, 2)
    x, y = torch.randn(40, 4, 8, dtype=torch.float64), torch.randn(40, 4, 8, dtype=torch.float64)
    cfg = TrainConfig(kind=kind, d_features=64, activation="topk", k=3, skip=True)
    assert can_encode_active(tc)
    if frozen:
        tc.W_enc.requires_grad_(False)
        tc.b_enc.requires_grad_(False)
    objective = Objective(tc, cfg)
    params = [p for p in tc.parameters() if p.requires_grad]
    active = objective(x, y, torch.tensor(0.0))
    with torch.no_grad():
        acts = tc.encode(x).acts
    per_token = (acts != 0).sum(-1)
    assert per_token.max() == 3 and per_token.min() < 3  # some tokens lost features to the ReLU
    out = tc(x)
    err = (out.recon - y) * tc.output_scale[:, None]
    dense_loss = err.square().sum(-1).mean() / 8
    torch.testing.assert_close(active.loss, dense_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(active.l0, (acts != 0).sum(-1).float().mean(0))
    assert torch.equal(active.fired, (acts != 0).any(0))
    for a, b in zip(torch.autograd.grad(active.loss, params), torch.autograd.grad(dense_loss, params), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_lstsq_skip_starts_at_the_best_linear_map() -> None:
    """On a linear MLP the least-squares skip explains everything before any feature trains."""
    from transcoders.train import _fit_skip, _init_normalisation

    torch.manual_seed(0)
    tc = build_transcoder(TranscoderConfig(kind="plt", n_layers=3, d_model=8, d_features=16, activation="topk",
                                           k=2, skip=True))
    x = torch.randn(500, 3, 8) * 3 + 1
    A, b = torch.randn(3, 8, 8), torch.randn(3, 8)
    y = torch.einsum("nld,lde->nle", x, A) + b
    _init_normalisation(tc, x, y)
    fvu = _fit_skip(tc, x, y, ridge=0.0)
    assert float(fvu.max()) < 1e-10
    with torch.no_grad():
        recon = tc.decode(torch.zeros(500, 3, 16)) + tc.skip(x)  # no feature active
    torch.testing.assert_close(recon, y, rtol=1e-4, atol=1e-4)
    # A noisy map leaves the noise's share.
    noisy = y + torch.randn_like(y) * y.std()
    fvu = _fit_skip(tc, x, noisy)
    assert 0.3 < float(fvu.mean()) < 0.7


def test_lstsq_skip_needs_a_skip() -> None:
    with pytest.raises(ValueError, match="skip is off"):
        _cfg(skip_init="lstsq")


def test_save_at_snapshots_the_set_on_the_way(tmp_path: Path) -> None:
    """Snapshots are taken once, at the step that crosses each token count, and hold that step's weights."""
    from transcoders.io import read_config

    model, cfg = _model(), _cfg(n_tokens=44 * 10)
    done = train(model, cfg, run_dir=tmp_path / "run", token_batches=_rows(), progress=False,
                 save_at=[44 * 3, 44 * 10])
    x = torch.randn(5, 3, 16)
    recon = {}
    for m in (44 * 3, 44 * 10):
        where = tmp_path / "run" / f"tokens-{m}"
        meta = read_config(where / "config.yaml")["circuit_engine"]
        assert meta["tokens"] == m and meta["train_seconds"] > 0
        recon[m] = load_transcoders(model, where)(x).recon
    assert not torch.allclose(recon[44 * 3], recon[44 * 10])
    torch.testing.assert_close(recon[44 * 10], done(x).recon, rtol=1e-5, atol=1e-5)  # the last is the finished set


def test_save_at_past_the_run_is_refused_before_any_work(tmp_path: Path) -> None:
    """A budget beyond n_tokens would never be reached: the run says so at once instead of ending without it."""
    model, cfg = _model(), _cfg(n_tokens=44 * 10)
    with pytest.raises(ValueError, match=r"save_at \[1000\].*raise n_tokens"):
        train(model, cfg, run_dir=tmp_path / "run", token_batches=_rows(), progress=False, save_at=[44 * 3, 1000])
    assert not (tmp_path / "run").exists()


def test_save_at_the_budget_a_run_ends_short_of(tmp_path: Path) -> None:
    """A budget that whole batches stop just short of (10.5 batches' tokens) is still snapshotted, at the end."""
    from transcoders.io import read_config

    model, cfg = _model(), _cfg(n_tokens=44 * 10 + 22)
    done = train(model, cfg, run_dir=tmp_path / "run", token_batches=_rows(), progress=False, save_at=[44 * 10 + 22])
    meta = read_config(tmp_path / "run" / f"tokens-{44 * 10 + 22}" / "config.yaml")["circuit_engine"]
    assert meta["tokens"] == 44 * 10  # what it trained on, under the budget's name
    x = torch.randn(5, 3, 16)
    torch.testing.assert_close(load_transcoders(model, tmp_path / "run" / f"tokens-{44 * 10 + 22}")(x).recon,
                               done(x).recon, rtol=1e-5, atol=1e-5)


def test_a_new_field_at_its_old_behaviour_keeps_run_names() -> None:
    """Runs started before skip_init existed keep their folder (and so resume); lstsq gets its own."""
    from transcoders.train import run_name

    cfg = _cfg(skip=True)
    assert "skip_init" not in json.dumps(config_record(cfg))
    assert run_name("m", cfg) == run_name("m", _cfg(skip=True, skip_init="zero"))
    assert run_name("m", cfg) != run_name("m", _cfg(skip=True, skip_init="lstsq"))
    assert "decoder_lr_scale" not in json.dumps(config_record(cfg))
    assert run_name("m", cfg) == run_name("m", _cfg(skip=True, decoder_lr_scale=1.0))
    assert run_name("m", cfg) != run_name("m", _cfg(skip=True, decoder_lr_scale=0.25))


@pytest.mark.parametrize("kind", ["plt", "clt"])
def test_decoders_learn_at_their_own_rate(kind: str) -> None:
    """decoder_lr_scale: Adam's first step moves each weight by its group's rate (times the sign of its
    gradient), so the decoders move by lr times the scale and everything else by lr."""
    from transcoders.train import adam, param_groups

    torch.manual_seed(0)
    tc = build_transcoder(TranscoderConfig(kind=kind, n_layers=3, d_model=8, d_features=32, activation="topk", k=4,
                                           skip=True))
    cfg = TrainConfig(kind=kind, d_features=32, activation="topk", k=4, skip=True, lr=1e-2, decoder_lr_scale=0.25)
    before = {name: p.detach().clone() for name, p in tc.named_parameters()}
    opt = adam(param_groups(tc, cfg), lr=cfg.learning_rate)
    tc(torch.randn(16, 3, 8)).recon.square().sum().backward()
    opt.step()
    checked = set()
    for name, p in tc.named_parameters():
        if p.grad is None:
            continue
        clear = p.grad.abs() > 1e-4  # Adam's eps (1e-8) is negligible against these gradients
        rate = 1e-2 * (0.25 if name.startswith("W_dec") else 1.0)
        moved = (p.detach() - before[name]).abs()[clear]
        torch.testing.assert_close(moved, torch.full_like(moved, rate), rtol=1e-3, atol=0)
        checked.add(name.split(".")[0])
    assert {"W_dec", "W_enc", "W_skip"} <= checked
    # At the default scale Adam gets the plain parameter list: runs and checkpoints from before are unchanged.
    plain = param_groups(tc, dataclasses.replace(cfg, decoder_lr_scale=1.0))
    trainable = [p for p in tc.parameters() if p.requires_grad]
    assert len(plain) == len(trainable) and all(a is b for a, b in zip(plain, trainable, strict=True))
