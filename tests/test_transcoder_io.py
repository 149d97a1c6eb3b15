"""Saving and loading in circuit-tracer's format: round trips, the exact layout, published formats, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors import safe_open
from safetensors.torch import save_file

from circuits import tiny_model
from transcoders import (
    HubUnavailableError,
    NonFiniteError,
    TranscoderConfig,
    TranscoderLoadError,
    TranscoderModelMismatchError,
    TranscoderShapeError,
    build_transcoder,
    load_transcoder_dir,
    load_transcoders,
    save_transcoders,
)
from transcoders.cache import hub_reachable
from transcoders.hub import parse_hf

L, D, FEAT = 3, 8, 12


def _random(kind: str, activation: str, skip: bool, seed: int = 0, model_name: str = "tiny-llama"):
    torch.manual_seed(seed)
    cfg = TranscoderConfig(kind=kind, n_layers=L, d_model=D, d_features=FEAT, activation=activation, k=3, skip=skip,
                           model_name=model_name)
    tc = build_transcoder(cfg).double().eval()
    with torch.no_grad():
        for p in tc.parameters():
            p.normal_(0, 0.5)
        tc.log_threshold.uniform_(-3, 0)
        tc.input_scale.uniform_(0.5, 2.0)
        tc.output_scale.uniform_(0.5, 2.0)
    return tc


@pytest.mark.parametrize("kind", ["plt", "clt"])
@pytest.mark.parametrize("activation", ["jumprelu", "topk"])
@pytest.mark.parametrize("skip", [False, True])
def test_round_trip_gives_identical_outputs(tmp_path: Path, kind: str, activation: str, skip: bool) -> None:
    tc = _random(kind, activation, skip)
    x = torch.randn(6, L, D, dtype=torch.float64)
    before = tc(x)
    save_transcoders(tc, tmp_path / "set", dtype=torch.float64)
    loaded = load_transcoder_dir(tmp_path / "set", dtype=torch.float64)
    after = loaded(x)
    assert loaded.cfg.kind == kind and loaded.cfg.activation == activation and (loaded.W_skip is not None) == skip
    torch.testing.assert_close(after.acts, before.acts, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(after.recon, before.recon, rtol=1e-12, atol=1e-12)
    assert torch.all(tc.input_scale != 1), "saving must not fold the caller's transcoder"
    # A second round trip of the loaded (already folded) set is bit-identical.
    save_transcoders(loaded, tmp_path / "again", dtype=torch.float64)
    assert torch.equal(load_transcoder_dir(tmp_path / "again", dtype=torch.float64)(x).recon, after.recon)


def _their_plt(path: Path, x: torch.Tensor) -> torch.Tensor:
    """circuit-tracer's SingleLayerTranscoder math, read straight from the files."""
    out = []
    for i in range(x.shape[-2]):
        with safe_open(str(path / f"layer_{i}.safetensors"), framework="pt") as f:
            t = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        pre = F.linear(x[:, i], t["W_enc"], t["b_enc"])
        acts = pre * (pre > t["activation_function.threshold"])
        out.append(acts @ t["W_dec"] + t["b_dec"] + x[:, i] @ t["W_skip"].T)
    return torch.stack(out, 1)


def _their_clt(path: Path, x: torch.Tensor) -> torch.Tensor:
    """circuit-tracer's CrossLayerTranscoder math (encode, JumpReLU per layer, decode), from the files."""
    n = x.shape[-2]
    enc, dec = [], []
    for i in range(n):
        with safe_open(str(path / f"W_enc_{i}.safetensors"), framework="pt") as f:
            enc.append({k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118
        with safe_open(str(path / f"W_dec_{i}.safetensors"), framework="pt") as f:
            dec.append(f.get_tensor(f"W_dec_{i}"))
    W_enc = torch.stack([e[f"W_enc_{i}"] for i, e in enumerate(enc)])
    b_enc = torch.stack([e[f"b_enc_{i}"] for i, e in enumerate(enc)])
    b_dec = torch.stack([e[f"b_dec_{i}"] for i, e in enumerate(enc)])
    thr = torch.stack([e[f"threshold_{i}"] for i, e in enumerate(enc)])[:, None]  # [n, 1, F]
    feats = torch.einsum("lbd,lfd->lbf", x.transpose(0, 1), W_enc) + b_enc[:, None]
    acts = feats * (feats > thr)
    recon = b_dec[:, None].repeat(1, x.shape[0], 1)
    for s in range(n):
        recon[s:] += torch.einsum("bf,ftd->tbd", acts[s], dec[s])
    return recon.transpose(0, 1)


@pytest.mark.parametrize("kind", ["plt", "clt"])
def test_files_follow_circuit_tracers_layout(tmp_path: Path, kind: str) -> None:
    """Recomputing circuit-tracer's forward from the saved files reproduces ours: orientation and keys."""
    tc = _random(kind, "jumprelu", skip=kind == "plt")
    save_transcoders(tc, tmp_path, dtype=torch.float64)
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert config["model_kind"] == ("transcoder_set" if kind == "plt" else "cross_layer_transcoder")
    assert (config["feature_input_hook"], config["feature_output_hook"]) == ("mlp.hook_in", "hook_mlp_out")
    assert config["model_name"] == "tiny-llama"
    x = torch.randn(5, L, D, dtype=torch.float64)
    theirs = _their_plt(tmp_path, x) if kind == "plt" else _their_clt(tmp_path, x)
    torch.testing.assert_close(theirs, tc(x).recon, rtol=1e-10, atol=1e-10)


def test_gemma_scope_npz_reading_the_unweighted_norm(tmp_path: Path) -> None:
    """A GemmaScope-style set (npz, W_enc [d_model, d_features], ln2.hook_normalized) loads onto mlp_in."""
    model = tiny_model("gemma2", n_layers=2, d_model=16)
    rng = np.random.default_rng(0)
    params = []
    for i in range(2):
        p = {"W_enc": rng.normal(size=(16, 10)), "W_dec": rng.normal(size=(10, 16)), "b_enc": rng.normal(size=10),
             "b_dec": rng.normal(size=16), "threshold": rng.uniform(0, 0.5, size=10)}
        np.savez(tmp_path / f"layer_{i}.npz", **{k: v.astype(np.float32) for k, v in p.items()})
        params.append(p)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({
        "model_name": "google/tiny-gemma2", "model_kind": "transcoder_set", "feature_input_hook": "ln2.hook_normalized",
        "feature_output_hook": "hook_mlp_out", "transcoders": ["layer_0.npz", "layer_1.npz"]}))
    with pytest.raises(TranscoderLoadError, match="pass the model"):
        load_transcoder_dir(tmp_path)
    tc = load_transcoder_dir(tmp_path, model)
    assert tc.cfg.input_site == "mlp_in" and tc.cfg.activation == "jumprelu"
    ids = torch.randint(1, 60, (1, 7))
    for layer in range(2):
        resid_mid, mlp_in = model.record_batch(ids, [("resid_pre", layer), ("mlp_in", layer)]).values()
        norm = model.norm("ln_mlp", layer)
        seen = {}
        h = norm.register_forward_pre_hook(lambda _m, a: seen.__setitem__("r", a[0]))
        model.hf(ids)
        h.remove()
        r = seen["r"]
        normalised = r * torch.rsqrt(r.pow(2).mean(-1, keepdim=True) + norm.eps)
        p = params[layer]
        theirs = normalised @ torch.tensor(p["W_enc"], dtype=torch.float32) + torch.tensor(p["b_enc"], dtype=torch.float32)
        torch.testing.assert_close(tc.pre_acts(mlp_in, layer), theirs, rtol=1e-4, atol=1e-4)


def test_gemma_scope_2_keys(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    w = {"w_enc": torch.randn(D, FEAT, generator=g), "w_dec": torch.randn(FEAT, D, generator=g),
         "b_enc": torch.randn(FEAT, generator=g), "b_dec": torch.randn(D, generator=g),
         "threshold": torch.rand(FEAT, generator=g), "affine_skip_connection": torch.randn(D, D, generator=g)}
    for i in range(L):
        save_file(w, str(tmp_path / f"layer_{i}.safetensors"))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({
        "model_kind": "transcoder_set", "feature_input_hook": "mlp.hook_in", "feature_output_hook": "hook_mlp_out"}))
    tc = load_transcoder_dir(tmp_path)
    x = torch.randn(4, D)
    pre = x @ w["w_enc"] + w["b_enc"]
    expected = (pre * (pre > w["threshold"])) @ w["w_dec"] + w["b_dec"] + x @ w["affine_skip_connection"]
    torch.testing.assert_close(tc.decode_layer(tc.encode(x, 1).acts[:, None].expand(4, L, FEAT), 1)
                               + tc.skip_layer(x, 1), expected, rtol=1e-5, atol=1e-5)


def test_resid_mid_sets_keep_their_site(tmp_path: Path) -> None:
    tc = _random("clt", "jumprelu", skip=False)
    save_transcoders(tc, tmp_path)
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    config["feature_input_hook"] = "blocks.{layer}.hook_resid_mid"  # circuit-tracer's published CLTs read this
    del config["circuit_engine"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    assert load_transcoder_dir(tmp_path).cfg.input_site == "resid_mid"


# --- bad input ------------------------------------------------------------------------------------


def test_missing_layer_file(tmp_path: Path) -> None:
    save_transcoders(_random("plt", "jumprelu", False), tmp_path)
    (tmp_path / "layer_1.safetensors").unlink()
    with pytest.raises(TranscoderLoadError, match=r"missing layer file .*layer_1\.safetensors.*complete set"):
        load_transcoder_dir(tmp_path)


def test_missing_clt_decoder_file(tmp_path: Path) -> None:
    save_transcoders(_random("clt", "jumprelu", False), tmp_path)
    (tmp_path / "W_dec_2.safetensors").unlink()
    with pytest.raises(TranscoderLoadError, match=r"missing layer file .*W_dec_2\.safetensors"):
        load_transcoder_dir(tmp_path)


def test_nan_in_weights(tmp_path: Path) -> None:
    save_transcoders(_random("plt", "jumprelu", False), tmp_path)
    file = tmp_path / "layer_2.safetensors"
    with safe_open(str(file), framework="pt") as f:
        t = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    t["W_dec"][3, 1] = float("nan")
    save_file(t, str(file))
    with pytest.raises(NonFiniteError, match=r"layer_2\.safetensors holds NaN .*'W_dec'.*train it again"):
        load_transcoder_dir(tmp_path)


def test_config_naming_another_model(tmp_path: Path) -> None:
    model = tiny_model("llama", n_layers=L, d_model=D)
    save_transcoders(_random("plt", "topk", False, model_name="google/gemma-2-2b"), tmp_path)
    with pytest.raises(TranscoderModelMismatchError, match=r"made for model 'google/gemma-2-2b'.*tiny-llama.*Fix"):
        load_transcoders(model, tmp_path)
    assert load_transcoders(model, tmp_path, check_model=False).cfg.n_layers == L


def test_shapes_that_do_not_fit_the_model(tmp_path: Path) -> None:
    save_transcoders(_random("plt", "topk", False), tmp_path)
    model = tiny_model("llama", n_layers=2, d_model=D)
    with pytest.raises(TranscoderShapeError, match=r"3 layers of d_model=8, but tiny-llama has 2 layers"):
        load_transcoders(model, tmp_path)
    tc = _random("plt", "topk", False)
    with pytest.raises(TranscoderShapeError, match=r"reads MLP inputs \[\.\.\., n_layers=3, d_model=8\], got \(4, 3, 9\)"):
        tc(torch.randn(4, L, D + 1, dtype=torch.float64))
    with pytest.raises(TranscoderShapeError, match="layer 5"):
        tc.encode(torch.randn(4, D, dtype=torch.float64), 5)


def test_not_a_set(tmp_path: Path) -> None:
    model = tiny_model("llama", n_layers=L, d_model=D)
    with pytest.raises(TranscoderLoadError, match="no transcoder set at"):
        load_transcoders(model, tmp_path / "nowhere")
    with pytest.raises(TranscoderLoadError, match="no config.yaml"):
        load_transcoders(model, tmp_path)
    with pytest.raises(TranscoderLoadError, match="no default transcoder set for 'tiny-llama'"):
        load_transcoders(model)


def test_default_set_not_built_names_the_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIRCUITS_CACHE", str(tmp_path))
    model = tiny_model("llama", n_layers=L, d_model=D)
    with pytest.raises(TranscoderLoadError, match=r"transcoders train --preset smollm2-quick"):
        load_transcoders(model, "smollm2-quick")


def test_parse_hf() -> None:
    assert parse_hf("hf://mntss/clt-gemma-2-2b-426k") == ("mntss/clt-gemma-2-2b-426k", None, None)
    assert parse_hf("hf://org/repo/sub/dir@v1") == ("org/repo", "sub/dir", "v1")
    assert parse_hf("hf://org/repo/file.npz?revision=main") == ("org/repo", "file.npz", "main")
    with pytest.raises(ValueError, match="hf://org/repo"):
        parse_hf("org/repo")


def test_hub_offline_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = tiny_model("llama", n_layers=L, d_model=D)
    with pytest.raises(HubUnavailableError, match=r"cannot load hf://circuit-engine/no-such-set: the Hugging Face hub "
                                                  r"is not reachable.*Fix"):
        load_transcoders(model, "hf://circuit-engine/no-such-set")


@pytest.mark.hub
@pytest.mark.skipif(not hub_reachable(), reason="the Hugging Face hub is not reachable from this machine")
def test_published_clt_loads_from_the_hub() -> None:  # pragma: no cover - needs the network
    from transcoders.sets import fetch_hf

    where = fetch_hf("hf://mntss/clt-131k")
    tc = load_transcoder_dir(where)
    assert tc.cfg.kind == "clt" and tc.cfg.n_layers > 0
