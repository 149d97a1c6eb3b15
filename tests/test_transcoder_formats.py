"""Published formats are read exactly as their publishers write them.

For each format, files are written to a temporary folder the way the publisher's own code writes
them (file names, keys, orientations, dtypes, config keys; the function followed is named on each
writer), from weights built in memory; the loaded set must trace the same graph as those weights.
Where a format folds extra arithmetic into our weights (sparsify's normalisation and cross-layer
division), the loaded set is checked against that arithmetic recomputed from the files.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from _threads import one_thread  # noqa: F401  (small tensors: one torch thread is faster on a shared CPU)
from safetensors.torch import load_file, save_file

from circuits import tiny_model, trace
from transcoders import (
    TranscoderConfig,
    TranscoderLoadError,
    build_transcoder,
    load_transcoder_dir,
    load_transcoders,
    save_transcoders,
)
from transcoders.model import Transcoder

L, D, FEAT, K = 3, 16, 24, 4
F64, F32 = torch.float64, torch.float32
IDS = [3, 17, 5, 22, 9, 31, 12]


def _model(family: str = "llama"):
    return tiny_model(family, seed=1, dtype=F64, init_scale=3.0, n_layers=L, d_model=D, n_heads=4, n_kv_heads=2,
                      d_mlp=48, d_vocab=40, n_ctx=16)


@pytest.fixture(scope="module")
def llama():
    return _model("llama")


def _reference(model, kind: str, activation: str, *, skip: bool = False, output_site: str = "mlp_resid",
               seed: int = 0) -> Transcoder:
    """A random float64 set whose every weight is a float32 value (float32 files hold it exactly), with
    thresholds in [0.5, 1.5] and about a third of the features above them on ``IDS`` (so TopK's k=4 of 24
    are all positive)."""
    torch.manual_seed(seed)
    cfg = TranscoderConfig(kind=kind, n_layers=L, d_model=D, d_features=FEAT, activation=activation, k=K, skip=skip,
                           model_name=model.name, output_site=output_site)
    tc = build_transcoder(cfg).double().eval()
    with torch.no_grad():
        for p in tc.parameters():
            p.normal_(0, 0.3)
        tc.log_threshold.uniform_(math.log(0.5), math.log(1.5))
        _, rec = model.record(IDS, [("mlp_in", l) for l in range(L)])
        for l in range(L):
            pre = tc.pre_acts(rec[("mlp_in", l)], l)
            tc.b_enc[l] += 1.0 - pre.quantile(2 / 3)
        for p in tc.parameters():
            p.copy_(p.float().double())
        tc.log_threshold.copy_(tc.threshold.float().double().log())
    return tc


def _same_trace(model, ours: Transcoder, loaded: Transcoder) -> None:
    """Our trace on the loaded set equals our trace on the in-memory weights: nodes and every edge."""
    a = trace(IDS, model, ours, dtype=F64, device="cpu", max_logits=3)
    b = trace(IDS, model, loaded, dtype=F64, device="cpu", max_logits=3)
    assert a.n_features > 0
    for col in ("kind", "layer", "position", "feature", "token_id"):
        np.testing.assert_array_equal(b.nodes[col], a.nodes[col], err_msg=col)
    for col in ("activation", "pre_activation", "bias"):
        np.testing.assert_allclose(b.nodes[col], a.nodes[col], rtol=1e-9, atol=1e-9, err_msg=col)
    np.testing.assert_allclose(b.adjacency.toarray(), a.adjacency.toarray(), rtol=1e-9, atol=1e-9)


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(F32).contiguous()


def _active_per_position(tc: Transcoder, model) -> torch.Tensor:
    """``[n_pos, n_layers]`` the number of active features on ``IDS``."""
    _, rec = model.record(IDS, [("mlp_in", l) for l in range(L)])
    x = torch.stack([rec[("mlp_in", l)] for l in range(L)], dim=-2)
    return (tc.encode(x).acts != 0).sum(-1)


# --- circuit-tracer ------------------------------------------------------------------------------


def _write_ct_plt(tc: Transcoder, path: Path, config: dict, *, k_in_files: bool = False) -> None:
    """decoderesearch/circuit-tracer, transcoder/single_layer_transcoder.py, SingleLayerTranscoder.to_safetensors
    (``layer_{i}.safetensors``: W_enc [d_features, d_model], W_dec, b_enc, b_dec, activation_function.threshold for
    JumpReLU, ``k`` (0-d) for TopK, W_skip [d_model(out), d_model(in)]) and a config.yaml as hf_utils.load_transcoders
    reads it (activation and k at the top level)."""
    path.mkdir(parents=True, exist_ok=True)
    for i in range(L):
        t = {"W_enc": _f32(tc.W_enc[i].T), "W_dec": _f32(tc.W_dec[i]), "b_enc": _f32(tc.b_enc[i]),
             "b_dec": _f32(tc.b_dec[i])}
        if tc.cfg.activation == "jumprelu":
            t["activation_function.threshold"] = _f32(tc.threshold[i])
        if k_in_files:
            t["k"] = torch.tensor(tc.cfg.k)
        if tc.W_skip is not None:
            t["W_skip"] = _f32(tc.W_skip[i].T)
        save_file(t, str(path / f"layer_{i}.safetensors"))
    (path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def _write_ct_clt(tc: Transcoder, path: Path, config: dict) -> None:
    """circuit-tracer, transcoder/cross_layer_transcoder.py, CrossLayerTranscoder.to_safetensors: W_enc_{i}.safetensors
    (W_enc_{i} [d_features, d_model], b_enc_{i}, b_dec_{i}, threshold_{i} [d_features]) and W_dec_{i}.safetensors
    (W_dec_{i} [d_features, n_layers - i, d_model])."""
    path.mkdir(parents=True, exist_ok=True)
    for i in range(L):
        enc = {f"W_enc_{i}": _f32(tc.W_enc[i].T), f"b_enc_{i}": _f32(tc.b_enc[i]), f"b_dec_{i}": _f32(tc.b_dec[i])}
        if tc.cfg.activation == "jumprelu":
            enc[f"threshold_{i}"] = _f32(tc.threshold[i])
        save_file(enc, str(path / f"W_enc_{i}.safetensors"))
        save_file({f"W_dec_{i}": _f32(tc.W_dec[i])}, str(path / f"W_dec_{i}.safetensors"))
    (path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def _ct_config(model, kind: str, **top) -> dict:
    return {"model_name": model.name, "model_kind": kind, "feature_input_hook": "mlp.hook_in",
            "feature_output_hook": "hook_mlp_out", **top}


@pytest.mark.parametrize("skip", [False, True])
def test_circuit_tracer_plt_jumprelu(tmp_path: Path, llama, skip: bool) -> None:
    ours = _reference(llama, "plt", "jumprelu", skip=skip)
    _write_ct_plt(ours, tmp_path, _ct_config(llama, "transcoder_set"))
    loaded = load_transcoder_dir(tmp_path, llama, dtype=F64)
    assert loaded.cfg.activation == "jumprelu" and (loaded.W_skip is not None) == skip
    _same_trace(llama, ours, loaded)


@pytest.mark.parametrize("k_from", ["config", "files"])
def test_circuit_tracer_plt_topk(tmp_path: Path, llama, k_from: str) -> None:
    """activation: topk and k at config.yaml's top level (hf_utils.load_transcoders), or k only in the layer
    files (to_safetensors' 0-d ``k``): TopK with that k, never ReLU."""
    ours = _reference(llama, "plt", "topk")
    top = {"activation": "topk", "k": K} if k_from == "config" else {"activation": "topk"}
    _write_ct_plt(ours, tmp_path, _ct_config(llama, "transcoder_set", **top), k_in_files=k_from == "files")
    loaded = load_transcoder_dir(tmp_path, llama, dtype=F64)
    assert (loaded.cfg.activation, loaded.cfg.k) == ("topk", K)
    assert torch.all(_active_per_position(loaded, llama) == K)
    _same_trace(llama, ours, loaded)


def test_circuit_tracer_clt_jumprelu(tmp_path: Path, llama) -> None:
    ours = _reference(llama, "clt", "jumprelu")
    _write_ct_clt(ours, tmp_path, _ct_config(llama, "cross_layer_transcoder"))
    loaded = load_transcoder_dir(tmp_path, llama, dtype=F64)
    assert loaded.cfg.kind == "clt" and loaded.cfg.activation == "jumprelu"
    _same_trace(llama, ours, loaded)


def test_circuit_tracer_clt_topk(tmp_path: Path, llama) -> None:
    ours = _reference(llama, "clt", "topk")
    _write_ct_clt(ours, tmp_path, _ct_config(llama, "cross_layer_transcoder", activation="topk", k=K))
    loaded = load_transcoder_dir(tmp_path, llama, dtype=F64)
    assert (loaded.cfg.kind, loaded.cfg.activation, loaded.cfg.k) == ("clt", "topk", K)
    assert torch.all(_active_per_position(loaded, llama) == K)
    _same_trace(llama, ours, loaded)


def test_clt_decoders_in_the_file_dtype_are_mapped_not_copied(tmp_path: Path, llama) -> None:
    """Loaded in the files' dtype on the CPU, a CLT's decoders are views of the files (read on first use)."""
    ours = _reference(llama, "clt", "jumprelu")
    _write_ct_clt(ours, tmp_path, _ct_config(llama, "cross_layer_transcoder"))
    mapped = load_transcoder_dir(tmp_path, dtype=F32)
    copied = load_transcoder_dir(tmp_path, dtype=F64)
    for s in range(L):
        assert not mapped.W_dec[s].untyped_storage().resizable()  # a buffer we do not own: the mapping
        assert copied.W_dec[s].untyped_storage().resizable()
        torch.testing.assert_close(mapped.W_dec[s].double(), copied.W_dec[s], rtol=0, atol=0)
    with torch.no_grad():
        mapped.W_dec[0].zero_()  # copy-on-write: the file keeps its values
    assert torch.equal(load_file(str(tmp_path / "W_dec_0.safetensors"))["W_dec_0"].double(), copied.W_dec[0])


def test_our_saved_topk_sets_say_topk_where_circuit_tracer_reads_it(tmp_path: Path, llama) -> None:
    """save_transcoders writes activation: topk and k at the top level (circuit-tracer's load_transcoder_set
    builds TopK(k) from them); a set saved before that (k only under circuit_engine) still loads as TopK."""
    ours = _reference(llama, "plt", "batchtopk")
    save_transcoders(ours, tmp_path / "set", dtype=F64)
    text = (tmp_path / "set" / "config.yaml").read_text()
    config = yaml.safe_load(text)
    assert (config["activation"], config["k"]) == ("topk", K) and "ReLU" not in text
    assert config["circuit_engine"]["activation"] == "batchtopk"
    assert (load_transcoder_dir(tmp_path / "set").cfg.activation, load_transcoder_dir(tmp_path / "set").cfg.k) == (
        "batchtopk", K)
    del config["activation"], config["k"]  # the layout saved before: k under circuit_engine only
    (tmp_path / "set" / "config.yaml").write_text(yaml.safe_dump(config))
    assert load_transcoder_dir(tmp_path / "set").cfg.k == K
    clt = _reference(llama, "clt", "topk")
    save_transcoders(clt, tmp_path / "clt", dtype=F64)
    config = yaml.safe_load((tmp_path / "clt" / "config.yaml").read_text())
    assert (config["activation"], config["k"]) == ("topk", K)
    _same_trace(llama, clt, load_transcoder_dir(tmp_path / "clt", llama, dtype=F64))


# --- GemmaScope ------------------------------------------------------------------------------------


def test_gemma_scope_npz_listed_under_transcoders(tmp_path: Path) -> None:
    """google/gemma-scope-2b-pt-transcoders' params.npz (W_enc [d_model, d_features], threshold), listed under
    ``transcoders:`` with feature_input_hook ln2.hook_normalized, as circuit-tracer's GemmaScope configs do; read
    as single_layer_transcoder.py's load_gemma_scope_transcoder reads it. The reference reads mlp_in with the
    norm's weight divided out of the encoder (Gemma's RMSNorm computes n · (1 + w))."""
    model = _model("gemma2")
    ours = _reference(model, "plt", "jumprelu")
    paths = []
    for i in range(L):
        # The gain Gemma2RMSNorm.forward applies, in float32 as it computes: mlp_in = normalised · gain.
        gain = (1.0 + model.norm("ln_mlp", i).weight.detach().float()).double()
        W_enc = _f32(ours.W_enc[i] * gain[:, None])  # reads the normalised residual
        with torch.no_grad():
            ours.W_enc[i] = W_enc.double() / gain[:, None]
        folder = tmp_path / f"layer_{i}" / "width_16k" / "average_l0_7"
        folder.mkdir(parents=True)
        np.savez(folder / "params.npz", W_enc=W_enc.numpy(), W_dec=_f32(ours.W_dec[i]).numpy(),
                 b_enc=_f32(ours.b_enc[i]).numpy(), b_dec=_f32(ours.b_dec[i]).numpy(),
                 threshold=_f32(ours.threshold[i]).numpy())
        paths.append(str(folder / "params.npz"))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({
        "model_name": model.name, "model_kind": "transcoder_set", "feature_input_hook": "ln2.hook_normalized",
        "feature_output_hook": "hook_mlp_out", "transcoders": paths}))
    loaded = load_transcoder_dir(tmp_path, model, dtype=F64)
    assert (loaded.cfg.input_site, loaded.cfg.activation) == ("mlp_in", "jumprelu")
    _same_trace(model, ours, loaded)


# --- sparsify --------------------------------------------------------------------------------------

SPARSIFY_CFG = {"activation": "topk", "expansion_factor": 32, "normalize_decoder": True, "num_latents": FEAT, "k": K,
                "multi_topk": False, "skip_connection": False, "transcode": True}


def _hookpoint(family: str, i: int) -> str:
    """sparsify/trainer.py: names under model.base_model: Llama-like ``layers.{i}.mlp``, GPT-2 ``h.{i}.mlp``."""
    return f"h.{i}.mlp" if family == "gpt2" else f"layers.{i}.mlp"


def _write_sparsify_plt(tc: Transcoder, path: Path, family: str) -> None:
    """EleutherAI/sparsify, sparse_coder.py, SparseCoder.save_to_disk: ``{hookpoint}/sae.safetensors`` (save_model:
    encoder.weight [num_latents, d_in], encoder.bias, W_dec [num_latents, d_in], b_dec [d_in], W_skip [d_in(out),
    d_in(in)]) and ``{hookpoint}/cfg.json`` (SparseCoderConfig.to_dict() and d_in); float32, as the trainer
    makes them."""
    for i in range(L):
        folder = path / _hookpoint(family, i)
        folder.mkdir(parents=True)
        state = {"encoder.weight": _f32(tc.W_enc[i].T), "encoder.bias": _f32(tc.b_enc[i]),
                 "W_dec": _f32(tc.W_dec[i]), "b_dec": _f32(tc.b_dec[i])}
        if tc.W_skip is not None:
            state["W_skip"] = _f32(tc.W_skip[i].T)
        save_file(state, str(folder / "sae.safetensors"))
        (folder / "cfg.json").write_text(json.dumps({**SPARSIFY_CFG, "skip_connection": tc.W_skip is not None,
                                                     "d_in": D}))


@pytest.mark.parametrize(("family", "skip"), [("llama", False), ("llama", True), ("gpt2", False)])
def test_sparsify_plt_topk(tmp_path: Path, llama, family: str, skip: bool) -> None:
    model = llama if family == "llama" else _model("gpt2")
    ours = _reference(model, "plt", "topk", skip=skip, output_site="mlp_out")
    _write_sparsify_plt(ours, tmp_path, family)
    loaded = load_transcoder_dir(tmp_path, model, dtype=F64)
    assert (loaded.cfg.kind, loaded.cfg.activation, loaded.cfg.k) == ("plt", "topk", K)
    assert (loaded.cfg.input_site, loaded.cfg.output_site) == ("mlp_in", "mlp_out")
    assert (loaded.W_skip is not None) == skip
    assert torch.all(_active_per_position(loaded, model) == K)
    _same_trace(model, ours, loaded)


def _clt_cfg(s: int, n_targets: int, **extra) -> dict:
    """EleutherAI/clt-training (branch clt) sparsify/config.py SparseCoderConfig.to_dict(), n_targets from
    trainer.py (min(cross_layer, n_layers - position)), plus d_in."""
    return {"dtype": "none", "activation": "topk", "expansion_factor": 32, "normalize_decoder": True,
            "num_latents": FEAT, "k": K, "skip_connection": False, "transcode": True, "tp_output": True,
            "n_targets": n_targets, "n_sources": min(s + 1, n_targets), "normalize_io": False,
            "divide_cross_layer": False, "train_post_encoder": True, "post_encoder_scale": False,
            "per_source_tied": False, "secondary_target_tied": False, "coalesce_topk": "none",
            "topk_coalesced": False, "use_fp8": False, **extra, "d_in": D}


def _write_clt_training(path: Path, states: list[dict], cfgs: list[dict], run: dict | None = None) -> None:
    """clt-training's SparseCoder.save_to_disk (save_sharded of state_dict()): the ParameterLists W_decs.{j},
    b_decs.{j}, W_skips.{j}, post_encs.{j} and the aliases W_dec, b_dec, W_skip of index 0 saved beside them
    (each moved to the CPU on its own, so safetensors sees no shared memory); the run's TrainConfig as config.json."""
    for i, (state, cfg) in enumerate(zip(states, cfgs, strict=True)):
        folder = path / f"layers.{i}.mlp"
        folder.mkdir(parents=True)
        aliases = {name: state[f"{name}s.0"].clone() for name in ("W_dec", "b_dec", "W_skip") if f"{name}s.0" in state}
        save_file({k: _f32(v) for k, v in {**state, **aliases}.items()}, str(folder / "sae.safetensors"))
        (folder / "cfg.json").write_text(json.dumps(cfg))
    if run is not None:
        (path / "config.json").write_text(json.dumps(run))


def test_sparsify_clt_topk(tmp_path: Path, llama) -> None:
    """A cross-layer set as clt-training writes it (cross_layer = n_layers): W_decs.{j} is the write to layer s + j."""
    ours = _reference(llama, "clt", "topk", skip=True, output_site="mlp_out")
    states = []
    for s in range(L):
        state = {"encoder.weight": ours.W_enc[s].T, "encoder.bias": ours.b_enc[s]}
        for j in range(L - s):
            state[f"W_decs.{j}"] = ours.W_dec[s][:, j]
            state[f"b_decs.{j}"] = ours.b_dec[s] if j == 0 else torch.zeros(D)
            state[f"W_skips.{j}"] = ours.W_skip[s].T if j == 0 else torch.zeros(D, D)
            state[f"post_encs.{j}"] = torch.zeros(FEAT)
        states.append(state)
    _write_clt_training(tmp_path, states, [_clt_cfg(s, L - s, skip_connection=True) for s in range(L)],
                        {"model": llama.name, "cross_layer": L, "hookpoints": [f"layers.{i}.mlp" for i in range(L)]})
    loaded = load_transcoder_dir(tmp_path, llama, dtype=F64)
    cfg = loaded.cfg
    assert (cfg.kind, cfg.activation, cfg.k, cfg.model_name) == ("clt", "topk", K, llama.name)
    assert torch.all(_active_per_position(loaded, llama) == K)
    _same_trace(llama, ours, loaded)


def _clt_training_forward(path: Path, x: torch.Tensor) -> torch.Tensor:
    """clt-training's forward, recomputed from the files: sparse_coder.py SparseCoder.encode (normalize_input,
    relu, top k) and runner.py CrossLayerRunner.decode with MidDecoder.__call__ (post_encs/post_enc_scales, W_decs,
    b_decs, skips from each source's own input, division of earlier sources' writes, denormalize_output).
    ``x [n, n_layers, d_in]`` MLP inputs → ``[n, n_layers, d_in]``."""
    live: dict[int, dict] = {}
    out = []
    for t in range(x.shape[1]):
        cfg = json.loads((path / f"layers.{t}.mlp" / "cfg.json").read_text())
        w = {k: v.double() for k, v in load_file(str(path / f"layers.{t}.mlp" / "sae.safetensors")).items()}
        d = cfg["d_in"]
        xt = x[:, t] * (d**0.5 / w["in_norm"]) if cfg["normalize_io"] else x[:, t]
        vals, idx = torch.relu(xt @ w["encoder.weight"].T + w["encoder.bias"]).topk(cfg["k"], dim=-1)
        live[t] = {"cfg": cfg, "w": w, "x": xt, "vals": vals, "idx": idx, "index": 0}
        earlier, done, own, divide_by = 0, [], None, 1
        for s, mid in live.items():
            c, ws, j = mid["cfg"], mid["w"], mid["index"]
            divide_by = max(1, len(live) - 1) if c["divide_cross_layer"] else 1
            if j + 1 >= c["n_targets"]:  # MidDecoder.will_be_last, before the call advances the index
                done.append(s)
            acts = mid["vals"] + ws[f"post_encs.{j}"][mid["idx"]] * (mid["vals"] > 0)
            if c["post_encoder_scale"]:
                acts = acts * ws[f"post_enc_scales.{j}"][mid["idx"]]
            y = (acts[..., None] * ws[f"W_decs.{j}"][mid["idx"]]).sum(-2) + ws[f"b_decs.{j}"]
            if c["skip_connection"]:
                y = y + mid["x"] @ ws[f"W_skips.{j}"].mT
            mid["index"] += 1
            if s != t:
                earlier = earlier + y
            else:
                own = y + earlier / divide_by
        if cfg["normalize_io"]:
            own = own * (w["out_norm"] / d**0.5)
        out.append(own)
        for s in done:
            del live[s]
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("cross_layer", [L, 2])
def test_sparsify_clt_normalisation_and_division_fold_exactly(tmp_path: Path, cross_layer: int) -> None:
    """normalize_io (in_norm/out_norm), divide_cross_layer, post_encoder_scale, own-layer skips and a cross_layer
    shorter than the model: the loaded set computes what clt-training's runner computes from the same files."""
    g = torch.Generator().manual_seed(3)
    states, cfgs = [], []
    for s in range(L):
        n = min(cross_layer, L - s)
        state = {"encoder.weight": torch.randn(FEAT, D, generator=g) / 4, "encoder.bias": torch.rand(FEAT, generator=g),
                 "in_norm": torch.rand(1, generator=g) + 3, "out_norm": torch.rand(1, generator=g) + 2}
        for j in range(n):
            state[f"W_decs.{j}"] = torch.randn(FEAT, D, generator=g)
            state[f"b_decs.{j}"] = torch.randn(D, generator=g)
            state[f"W_skips.{j}"] = torch.randn(D, D, generator=g) if j == 0 else torch.zeros(D, D)
            state[f"post_encs.{j}"] = torch.zeros(FEAT)
            state[f"post_enc_scales.{j}"] = torch.rand(FEAT, generator=g) + 0.5
        states.append(state)
        cfgs.append(_clt_cfg(s, n, normalize_io=True, divide_cross_layer=True, post_encoder_scale=True,
                             skip_connection=True))
    _write_clt_training(tmp_path, states, cfgs)
    loaded = load_transcoder_dir(tmp_path, dtype=F64)
    x = torch.randn(9, L, D, generator=g, dtype=F64) * 3
    torch.testing.assert_close(loaded(x).recon, _clt_training_forward(tmp_path, x), rtol=1e-10, atol=1e-10)


# --- bad files say what is wrong and the fix ------------------------------------------------------


def test_unknown_activation_names_the_value_and_the_accepted_ones(tmp_path: Path, llama) -> None:
    _write_ct_plt(_reference(llama, "plt", "topk"), tmp_path, _ct_config(llama, "transcoder_set", activation="gelu"))
    with pytest.raises(TranscoderLoadError, match=r"activation: 'gelu'.*Accepted: 'topk' \(with a top-level k\), "
                                                  r"'relu', 'jumprelu'.*Fix"):
        load_transcoder_dir(tmp_path)


def test_topk_without_k(tmp_path: Path, llama) -> None:
    _write_ct_plt(_reference(llama, "plt", "topk"), tmp_path, _ct_config(llama, "transcoder_set", activation="topk"))
    with pytest.raises(TranscoderLoadError, match=r"activation: topk but gives no k.*Fix: add a top-level `k:"):
        load_transcoder_dir(tmp_path)


def test_disagreeing_k(tmp_path: Path, llama) -> None:
    _write_ct_plt(_reference(llama, "plt", "topk"), tmp_path,
                  _ct_config(llama, "transcoder_set", activation="topk", k=K + 1), k_in_files=True)
    with pytest.raises(TranscoderLoadError, match=r"k disagrees.*config.yaml's k.: 5.*the layer files' k.: 4"):
        load_transcoder_dir(tmp_path)


def test_sparsify_cfg_without_k(tmp_path: Path, llama) -> None:
    _write_sparsify_plt(_reference(llama, "plt", "topk", output_site="mlp_out"), tmp_path, "llama")
    cfg_file = tmp_path / "layers.1.mlp" / "cfg.json"
    cfg = json.loads(cfg_file.read_text())
    del cfg["k"]
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(TranscoderLoadError, match=r"layers\.1\.mlp/cfg\.json lacks 'k'.*default, 32.*Fix: add \"k\""):
        load_transcoder_dir(tmp_path)


@pytest.mark.parametrize(("change", "message"), [
    ({"activation": "groupmax"}, r"activation 'groupmax'; accepted: \['topk', 'batchtopk'\]"),
    ({"transcode": False}, r"transcode: false: this is a sparse autoencoder"),
    ({"coalesce_topk": "concat"}, r"pools activations or decoders across layers \({'coalesce_topk': 'concat'}\)"),
])
def test_sparsify_settings_we_cannot_compute(tmp_path: Path, llama, change: dict, message: str) -> None:
    _write_sparsify_plt(_reference(llama, "plt", "topk", output_site="mlp_out"), tmp_path, "llama")
    cfg_file = tmp_path / "layers.0.mlp" / "cfg.json"
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), **change}))
    with pytest.raises(TranscoderLoadError, match=message):
        load_transcoder_dir(tmp_path)


def test_sparsify_nonzero_post_enc_and_cross_layer_skip_are_refused(tmp_path: Path) -> None:
    states = []
    for s in range(L):
        state = {"encoder.weight": torch.randn(FEAT, D), "encoder.bias": torch.zeros(FEAT)}
        for j in range(L - s):
            state.update({f"W_decs.{j}": torch.randn(FEAT, D), f"b_decs.{j}": torch.zeros(D),
                          f"W_skips.{j}": torch.zeros(D, D), f"post_encs.{j}": torch.zeros(FEAT)})
        states.append(state)
    states[1]["post_encs.1"][7] = 0.25
    _write_clt_training(tmp_path / "a", states, [_clt_cfg(s, L - s, skip_connection=True) for s in range(L)])
    with pytest.raises(TranscoderLoadError, match=r"post_encs\.1 is nonzero.*Fix"):
        load_transcoder_dir(tmp_path / "a")
    states[1]["post_encs.1"].zero_()
    states[0]["W_skips.2"][0, 0] = 1.0
    _write_clt_training(tmp_path / "b", states, [_clt_cfg(s, L - s, skip_connection=True) for s in range(L)])
    with pytest.raises(TranscoderLoadError, match=r"W_skips\.2 is a nonzero skip from layer 0's input to layer 2's"):
        load_transcoder_dir(tmp_path / "b")


def test_sparsify_layout_errors(tmp_path: Path, llama) -> None:
    _write_sparsify_plt(_reference(llama, "plt", "topk", output_site="mlp_out"), tmp_path / "run", "llama")
    with pytest.raises(TranscoderLoadError, match=r"is one sparsify hookpoint \(layers\.0\.mlp\).*Fix: pass"):
        load_transcoder_dir(tmp_path / "run" / "layers.0.mlp")
    (tmp_path / "run" / "layers.1.mlp" / "cfg.json").rename(tmp_path / "run" / "layers.1.mlp" / "cfg.bak")
    with pytest.raises(TranscoderLoadError, match=r"missing hookpoint folder .*layers\.1\.mlp.*every layer"):
        load_transcoders(llama, tmp_path / "run")
    (tmp_path / "run" / "layers.1.mlp" / "cfg.bak").rename(tmp_path / "run" / "layers.1.mlp" / "cfg.json")
    (tmp_path / "run" / "layers.1.self_attn").mkdir()
    (tmp_path / "run" / "layers.1.self_attn" / "cfg.json").write_text("{}")
    with pytest.raises(TranscoderLoadError, match=r"hookpoint 'layers\.1\.self_attn', which is not an MLP"):
        load_transcoder_dir(tmp_path / "run")


# --- memory -----------------------------------------------------------------------------------------


def _peak_load(path: Path, dtype: torch.dtype) -> int:
    """Peak resident bytes above the start while loading ``path``. Writing 5 to /proc/self/clear_refs resets the
    peak (VmHWM) to the current size (Linux); ru_maxrss cannot be reset, so it would measure earlier tests."""
    def status(key: str) -> int:
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key)) * 1024

    Path("/proc/self/clear_refs").write_text("5")
    before = status("VmRSS:")
    tc = load_transcoder_dir(path, dtype=dtype)
    peak = status("VmHWM:") - before
    del tc
    return peak


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="measuring peak memory needs Linux's /proc")
def test_loading_a_clt_holds_its_decoders_at_most_once(tmp_path: Path) -> None:
    """Mapped decoders (the files' dtype, on the CPU) are not resident after loading, nor all at once while
    loading; converted ones (float32 files read as float64) are held once, never beside a second copy."""
    n_layers, d, f = 8, 128, 4096
    g = torch.Generator().manual_seed(0)
    for i in range(n_layers):
        save_file({f"W_enc_{i}": torch.randn(f, d, generator=g) / 8, f"b_enc_{i}": torch.zeros(f),
                   f"b_dec_{i}": torch.zeros(d)}, str(tmp_path / f"W_enc_{i}.safetensors"))
        save_file({f"W_dec_{i}": torch.randn(f, n_layers - i, d, generator=g)},
                  str(tmp_path / f"W_dec_{i}.safetensors"))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({
        "model_kind": "cross_layer_transcoder", "feature_input_hook": "hook_resid_mid",
        "feature_output_hook": "hook_mlp_out"}))
    decoders = sum(f * (n_layers - i) * d * 4 for i in range(n_layers))  # 72 MiB of float32
    encoders = n_layers * f * d * 4  # 16 MiB
    # Measured: about 36 and 178 MiB; the reader before this one took 145 and 247 (every decoder page read in,
    # and float64 converted from a float32 copy of everything).
    assert _peak_load(tmp_path, F32) < encoders + decoders / 2
    assert _peak_load(tmp_path, F64) < 2 * (encoders + decoders) + decoders / 4
