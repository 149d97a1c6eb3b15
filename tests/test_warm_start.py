"""A CLT started from a PLT: it computes what the PLT computes, then training only adds to it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from transcoders import TranscoderConfig, build_transcoder, load_transcoders, train
from transcoders.train import run_name
from transcoders.warm_start import check_compatible, start_from_plt, weights_digest

from tests.test_transcoder_train import _cfg, _model, _rows


def _pair(skip: bool, activation: str = "topk") -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    cfg = dict(n_layers=4, d_model=8, d_features=16, activation=activation, k=3, skip=skip)
    plt = build_transcoder(TranscoderConfig(kind="plt", **cfg)).double()
    clt = build_transcoder(TranscoderConfig(kind="clt", **cfg)).double()
    with torch.no_grad():
        for p in plt.parameters():
            p.normal_()  # every weight matters, the skip and biases included
        plt.input_scale.uniform_(0.5, 2.0)
        plt.output_scale.uniform_(0.5, 2.0)
        clt.input_scale.uniform_(0.5, 2.0)  # other scales: the copy must re-express the PLT in them
        clt.output_scale.uniform_(0.5, 2.0)
    return plt, clt


@pytest.mark.parametrize("skip, activation, folded", [
    (False, "topk", False), (True, "topk", False), (True, "relu", True), (False, "jumprelu", True)])
def test_the_started_clt_computes_the_plt(skip: bool, activation: str, folded: bool) -> None:
    plt, clt = _pair(skip, activation)
    if folded:
        plt.fold_normalisation()  # a saved set: scales folded into the weights
    start_from_plt(clt, plt)
    x = torch.randn(7, 4, 8, dtype=torch.float64) * 3
    want, got = plt(x), clt(x)
    torch.testing.assert_close(got.acts, want.acts)
    torch.testing.assert_close(got.recon, want.recon)
    assert all(float(W.detach()[:, 1:].abs().max()) == 0 for W in clt.W_dec[:-1]), "cross-layer decoders start at zero"


@pytest.mark.parametrize("change, message", [
    ({"k": 5}, "k=3, the CLT k=5"),
    ({"skip": True}, "skip=False, the CLT skip=True"),
    ({"d_features": 32}, "d_features=16, the CLT d_features=32"),
])
def test_a_mismatched_plt_is_refused(change: dict, message: str) -> None:
    base = dict(n_layers=4, d_model=8, d_features=16, activation="topk", k=3, skip=False)
    plt = build_transcoder(TranscoderConfig(kind="plt", **base))
    clt = build_transcoder(TranscoderConfig(kind="clt", **{**base, **change}))
    with pytest.raises(ValueError, match=message):
        check_compatible(clt, plt)
    with pytest.raises(ValueError, match="not kind 'clt'"):
        check_compatible(clt, clt)


def test_a_warm_started_clt_trains_its_decoders(tmp_path: Path) -> None:
    """From a trained PLT, with the encoders frozen: the encoders stay the PLT's, the cross-layer
    decoders learn, and the reconstruction on unseen inputs gets better than the PLT's."""
    model = _model()
    train(model, _cfg(n_tokens=44 * 30), run_dir=tmp_path / "plt-run", save_dir=tmp_path / "plt",
          token_batches=_rows(), progress=False)
    plt = load_transcoders(model, tmp_path / "plt")
    given = {name: t.clone() for name, t in plt.state_dict().items()}
    cfg = _cfg(kind="clt", n_tokens=44 * 30, init_from=str(tmp_path / "plt"), freeze_encoder=True, lr=1e-2)
    first: list[float] = []
    clt = train(model, cfg, run_dir=tmp_path / "clt-run", save_dir=tmp_path / "clt", token_batches=_rows(1),
                progress=False, init=plt, metadata={"init_set": "plt"},
                callback=lambda step, s: first.append(float(s.fvu.mean())) if step == 1 else None)
    torch.testing.assert_close(clt.W_enc, plt.W_enc)  # frozen, and both saved folded
    torch.testing.assert_close(clt.b_enc, plt.b_enc)
    assert float(clt.W_dec[0].detach()[:, 1:].abs().max()) > 0, "the cross-layer decoders learnt"
    for name, t in plt.state_dict().items():  # the caller's PLT is read, never trained or moved
        assert t.device == given[name].device and torch.equal(t, given[name]), name
    # Held out: rows neither run saw.
    x, y = _pairs(model, seed=7)
    with torch.no_grad():
        fvu = {name: float(((tc(x).recon - y) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()) for name, tc in
               (("plt", plt), ("clt", clt))}
    assert fvu["clt"] < 0.95 * fvu["plt"], fvu
    saved = load_transcoders(model, tmp_path / "clt")
    torch.testing.assert_close(saved(x).recon, clt(x).recon, rtol=1e-5, atol=1e-5)
    assert first, "the callback ran"


def _pairs(model, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(MLP input, MLP output) ``[N, n_layers, d_model]`` for fresh rows, as training harvests them."""
    from transcoders.harvest import harvest

    tokens = torch.randint(1, 64, (8, 12), generator=torch.Generator().manual_seed(seed))
    x, y = harvest(model, tokens, precision="fp32")
    return x.float(), y.float()


def test_init_is_part_of_the_run(tmp_path: Path) -> None:
    """A run started from other features is another run, and init_from needs the set loaded."""
    base = dict(n_layers=3, d_model=16, d_features=32, activation="topk", k=4)
    a = build_transcoder(TranscoderConfig(kind="plt", **base))
    b = build_transcoder(TranscoderConfig(kind="plt", **base))
    assert weights_digest(a) != weights_digest(b)
    cfg = _cfg(kind="clt", init_from="some-set")
    assert run_name("m", cfg, init=weights_digest(a)) != run_name("m", cfg, init=weights_digest(b))
    assert run_name("m", cfg, init=weights_digest(a)) != run_name("m", _cfg(kind="clt"))
    with pytest.raises(ValueError, match="needs it loaded as init"):
        train(_model(), cfg, run_dir=tmp_path, token_batches=_rows(), progress=False)
    with pytest.raises(ValueError, match="needs it loaded as init"):
        train(_model(), _cfg(kind="clt"), run_dir=tmp_path, token_batches=_rows(), progress=False, init=a)


@pytest.mark.parametrize("kw, message", [
    ({"kind": "plt", "init_from": "x"}, "init_from starts a CLT"),
    ({"kind": "clt", "freeze_encoder": True}, "without init_from is at random"),
])
def test_bad_warm_start_config(kw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _cfg(**kw)


def test_a_clt_from_a_plt_on_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`transcoders train --init-from SET --freeze-encoder`: the CLT keeps the PLT's encoders and
    records where it started and how long that took."""
    import yaml

    from circuits import load_model
    from circuits.transcoders_cli import main

    from tests.test_transcoder_cli import saved_model_and_text

    text = saved_model_and_text(tmp_path, monkeypatch)
    common = ["--model", str(tmp_path / "model"), "--n-tokens", "1024", "--batch-tokens", "128", "--seq-len", "32",
              "--precision", "fp32", "--text", str(text), "--eval-tokens", "0"]
    main(["train", "--kind", "plt", "--width", "32", "--k", "4", *common, "--out", str(tmp_path / "plt"),
          "--run-dir", str(tmp_path / "r1")])
    # No --kind, --width or --k: a CLT started from a PLT takes the PLT's shape.
    main(["train", *common, "--out", str(tmp_path / "clt"), "--run-dir", str(tmp_path / "r2"),
          "--init-from", str(tmp_path / "plt"), "--freeze-encoder", "--seed", "1"])
    meta = yaml.safe_load((tmp_path / "clt" / "config.yaml").read_text())["circuit_engine"]
    plt_meta = yaml.safe_load((tmp_path / "plt" / "config.yaml").read_text())["circuit_engine"]
    assert meta["init_set"] == str(tmp_path / "plt")
    assert meta["init_train_seconds"] == plt_meta["train_seconds"] and meta["train_config"]["freeze_encoder"]
    assert meta["init_train_config"] == plt_meta["train_config"]  # what stale_fields checks a preset's init by
    model = load_model(str(tmp_path / "model"))
    plt, clt = load_transcoders(model, tmp_path / "plt"), load_transcoders(model, tmp_path / "clt")
    assert (clt.cfg.kind, clt.cfg.d_features, clt.cfg.k) == ("clt", 32, 4)
    torch.testing.assert_close(clt.W_enc, plt.W_enc)
