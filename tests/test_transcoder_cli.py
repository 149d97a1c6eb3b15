"""The ``transcoders`` command line: flags, presets, and a whole train → save → evaluate → load run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from circuits import cli, load_model, tiny_model
from circuits.transcoders_cli import main
from transcoders import load_transcoders


def test_sparsity_must_be_given() -> None:
    with pytest.raises(SystemExit, match=r"--k K .* or --l0 TARGET"):
        main(["train", "--kind", "plt", "--width", "64"])


def test_preset_for_another_model() -> None:
    with pytest.raises(SystemExit, match="preset smollm2-quick is for smollm2-135m-instruct, not gpt2"):
        main(["train", "--preset", "smollm2-quick", "--model", "gpt2"])


@pytest.mark.parametrize(("preset", "flags", "want"), [
    ("smollm2-clt", [], {"skip": False, "decoder_lr_scale": 0.25, "decay_fraction": 0.5, "model_batch": 8}),
    ("smollm2-clt", ["--skip", "--decoder-lr-scale", "1"], {"skip": True, "decoder_lr_scale": 1.0}),
    ("smollm2-quick", ["--skip"], {"skip": True, "decoder_lr_scale": 1.0}),
    ("smollm2-quick", ["--skip", "--no-skip"], {"skip": False}),
    ("smollm2-quick", ["--decay-fraction", "0.2", "--warmup-steps", "50", "--model-batch", "16"],
     {"decay_fraction": 0.2, "warmup_steps": 50, "model_batch": 16, "lr": 2e-3}),
])
def test_flags_override_the_preset(preset: str, flags: list[str], want: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """--skip/--no-skip, --decoder-lr-scale and the schedule's flags replace the preset's; no flag keeps the preset's."""
    import circuits.transcoders_cli as tcli

    seen = []

    def stop_after(args):  # the config the flags describe, then stop before any model is loaded
        seen.append(real(args)[0])
        raise SystemExit(0)

    real = tcli._train_config
    monkeypatch.setattr(tcli, "_train_config", stop_after)
    with pytest.raises(SystemExit):
        main(["train", "--preset", preset, *flags])
    assert {name: getattr(seen[0], name) for name in want} == want


def test_a_preset_on_other_text_needs_its_own_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The preset's folder holds the model's default set: a set trained on the user's text must not land there."""
    monkeypatch.setenv("CIRCUITS_CACHE", str(tmp_path / "cache"))
    (tmp_path / "notes.txt").write_text("some text of the user's own")
    with pytest.raises(SystemExit, match=r"--preset smollm2-quick with --text/--packaged .* Fix: pass --out DIR"):
        main(["train", "--preset", "smollm2-quick", "--text", str(tmp_path / "notes.txt")])
    written = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert written == [] and not (tmp_path / "cache" / "transcoders" / "smollm2-quick").exists()


def test_presets_are_listed(capsys: pytest.CaptureFixture[str]) -> None:
    main(["presets"])
    out = capsys.readouterr().out
    assert "smollm2-quick" in out and "(default)" in out and "smollm2-clt" in out


def test_circuits_transcoders_is_the_same_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["transcoders", "presets"]) == 0
    assert "smollm2-quick" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"--k K .* or --l0 TARGET"):
        cli.main(["transcoders", "train", "--kind", "plt", "--width", "64"])


def test_python_m_transcoders_names_the_command_that_works() -> None:
    """``python -m transcoders`` cannot run the command (transcoders never imports circuits): it says, in
    one line, what to run instead, and the spelling it gives works."""
    proc = subprocess.run([sys.executable, "-m", "transcoders", "presets"], capture_output=True, text=True,
                          check=False, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    said = [line for line in proc.stderr.splitlines() if "python -m transcoders" in line]
    assert len(said) == 1 and "Traceback" not in proc.stderr
    assert "`transcoders presets`" in said[0] and "`python -m circuits transcoders presets`" in said[0]
    proc = subprocess.run([sys.executable, "-m", "circuits", "transcoders", "presets"], capture_output=True,
                          text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "smollm2-quick" in proc.stdout


def saved_model_and_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny model saved to ``tmp_path/model`` and documents in ``tmp_path/text``, for the command line."""
    monkeypatch.setenv("CIRCUITS_CACHE", str(tmp_path / "cache"))  # the token cache of this text goes here
    model = tiny_model("llama", n_layers=2, d_model=16, d_mlp=32, d_vocab=64, n_ctx=64, init_scale=4.0)
    model.hf.save_pretrained(tmp_path / "model")
    model.tokenizer.save_pretrained(tmp_path / "model")
    text = tmp_path / "text"
    text.mkdir()
    # Documents of the tiny tokenizer's words. Which land in the 3% held-out split hangs on their paths
    # (tmp_path's number), so 600, not 300: with 300 about one run in twenty held out under 256 tokens.
    for i in range(600):
        (text / f"doc{i}.txt").write_text(" ".join(f"t{(i * 7 + j * j) % 60 + 1}" for j in range(60)))
    return text


def test_train_evaluate_and_load_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    text = saved_model_and_text(tmp_path, monkeypatch)
    out = tmp_path / "set"
    main(["train", "--model", str(tmp_path / "model"), "--kind", "clt", "--width", "32", "--k", "4",
          "--n-tokens", "1024", "--batch-tokens", "128", "--seq-len", "32", "--precision", "fp32", "--text", str(text),
          "--out", str(out), "--run-dir", str(tmp_path / "run"), "--eval-tokens", "256", "--seed", "3"])
    printed = capsys.readouterr().out
    assert "recovered" in printed and (out / "eval.json").is_file()
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["model_kind"] == "cross_layer_transcoder" and config["circuit_engine"]["train_config"]["seed"] == 3
    tc = load_transcoders(load_model(str(tmp_path / "model")), out)
    assert tc.cfg.kind == "clt" and tc.cfg.d_features == 32 and tc.cfg.k == 4
    main(["evaluate", "--model", str(tmp_path / "model"), "--set", str(out), "--n-tokens", "256",
          "--seq-len", "32", "--text", str(text), "--precision", "fp32", "--per-layer"])
    printed = capsys.readouterr().out
    assert "recovered" in printed and "kl_alone" in printed and "kl_restored" in printed
    tuned = tmp_path / "tuned"
    main(["finetune", "--model", str(tmp_path / "model"), "--set", str(out), "--out", str(tuned), "--n-tokens", "256",
          "--seq-len", "32", "--text", str(text), "--eval-tokens", "256"])
    printed = capsys.readouterr().out
    assert "before: " in printed and "after: " in printed
    meta = yaml.safe_load((tuned / "config.yaml").read_text())["circuit_engine"]
    assert meta["finetune_tokens"] == 256 and meta["kind"] == "clt"
    assert meta["finetune_lr"] == 1e-5 and meta["finetune_params"] == "decoders"  # a CLT's defaults, as used
    trained = yaml.safe_load((out / "config.yaml").read_text())["circuit_engine"]
    for key in ("tokens", "train_seconds", "train_config"):  # its training's record goes with it: its cost counts it
        assert meta[key] == trained[key]
    assert meta["finetune_seconds"] > 0 and meta["finetune_cpu_seconds"] > 0
    after = load_transcoders(load_model(str(tmp_path / "model")), tuned)
    assert torch.equal(after.W_enc, tc.W_enc) and not torch.equal(after.W_dec[0], tc.W_dec[0])


def test_a_set_built_with_an_older_recipe_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A preset's recipe can change after a user built it: the cached set is kept (it is theirs to
    replace), and `presets` says which fields differ and how to train the current one."""
    from transcoders import PRESETS
    from transcoders.sets import preset_dir, stale_fields
    from transcoders.train import config_record

    monkeypatch.setenv("CIRCUITS_CACHE", str(tmp_path))
    assert stale_fields("smollm2-quick") == []  # not built
    recipe = config_record(PRESETS["smollm2-quick"].config)
    where = preset_dir("smollm2-quick")
    where.mkdir(parents=True)
    (where / "config.yaml").write_text(yaml.safe_dump({"circuit_engine": {"train_config": recipe}}))
    assert stale_fields("smollm2-quick") == []  # current
    (where / "config.yaml").write_text(yaml.safe_dump(
        {"circuit_engine": {"train_config": {**recipe, "batch_tokens": 1024, "num_threads": 7}}}))
    assert stale_fields("smollm2-quick") == ["batch_tokens"]  # threads do not change the result
    main(["presets"])
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("smollm2-quick"))
    assert "older recipe: batch_tokens differ" in line and "(default)" in line
    # A set saved before decoder_lr_scale existed was trained at its old behaviour (1.0): against a recipe
    # at 0.25 it is stale, though its config has no such key.
    clt = config_record(PRESETS["smollm2-clt"].config)
    assert clt["decoder_lr_scale"] == 0.25
    preset_dir("smollm2-clt").mkdir(parents=True)
    old_clt = {k: v for k, v in clt.items() if k != "decoder_lr_scale"}
    (preset_dir("smollm2-clt") / "config.yaml").write_text(
        yaml.safe_dump({"circuit_engine": {"train_config": old_clt}}))
    assert stale_fields("smollm2-clt") == ["decoder_lr_scale"]
    # A CLT started from a preset's PLT is stale when that PLT's recipe has changed since.
    (preset_dir("smollm2-clt") / "config.yaml").write_text(yaml.safe_dump({"circuit_engine": {
        "train_config": clt, "init_train_config": {**recipe, "lr": 1e-3, "num_threads": 7}}}))
    assert stale_fields("smollm2-clt") == ["smollm2-quick's lr"]
    (preset_dir("smollm2-clt") / "config.yaml").write_text(yaml.safe_dump({"circuit_engine": {
        "train_config": clt, "init_train_config": recipe}}))
    assert stale_fields("smollm2-clt") == []


@pytest.mark.parametrize(("flags", "want"), [
    ([], ("clt", 1024, "topk", 128)),  # the preset's shape; it need not be built
    (["--k", "64"], ("clt", 1024, "topk", 64)),  # a flag still overrides (check_compatible then refuses it)
])
def test_init_from_takes_the_plts_shape(flags: list[str], want: tuple, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """`transcoders train --init-from PRESET` without shape flags trains a CLT of the PLT's shape."""
    import circuits.transcoders_cli as tcli

    monkeypatch.setenv("CIRCUITS_CACHE", str(tmp_path))
    seen = []

    def stop_after(args):
        seen.append(real(args)[0])
        raise SystemExit(0)

    real = tcli._train_config
    monkeypatch.setattr(tcli, "_train_config", stop_after)
    with pytest.raises(SystemExit):
        main(["train", "--init-from", "smollm2-quick", *flags])
    assert (seen[0].kind, seen[0].d_features, seen[0].activation, seen[0].k) == want


def test_the_long_preset_is_the_quick_recipe_on_more_tokens() -> None:
    """benchmarks/quality_budget.py builds the PLT curve from the quick recipe; to 1.5M tokens that run
    must be the long preset's own run folder, so the curve and the preset share one (resumable) run."""
    from transcoders import PRESETS
    from transcoders.train import run_name

    quick, long = PRESETS["smollm2-quick"], PRESETS["smollm2-long"]
    extended = quick.train_config(n_tokens=long.config.n_tokens)
    assert run_name(quick.model, extended) == run_name(long.model, long.config)
    assert long.config.n_tokens > 5 * quick.config.n_tokens
