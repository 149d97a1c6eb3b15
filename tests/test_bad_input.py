"""A catalogue of bad input: one case per kind, each refused with an error that names the problem and
the fix, and nothing lost (a user's files byte-identical afterwards, no partial or temporary file).

Other test files check some of these in depth (test_trace_errors, test_model_errors, test_transcoder_io,
test_transcoder_train, test_cli_trace); this is the one place that lists them all. Every case builds
tiny models in code.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from _threads import one_thread  # noqa: F401  (small tensors: one torch thread is faster on a shared CPU)
from graph_helpers import hand_made_graph, tiny_setup

import graphs
import transcoders
from circuits import (
    ModelLoadError,
    ModelNotFoundError,
    PromptError,
    cli,
    load_model,
    tiny_model,
    trace,
    transcoders_cli,
)
from circuits.discovery import Circuit
from circuits.discovery.heads.circuit import CircuitFileError
from circuits.discovery.features.graph import FeatureCircuit, FeatureCircuitFileError
from circuits.discovery.heads.node_circuit import NodeCircuit
from circuits.labels import FeatureLabels, fingerprint, load_labels
from circuits.patching import EdgePatcher
from circuits.tasks.task import Task, logit_diff
from graphs import GraphFileError
from transcoders import (
    NonFiniteError,
    TrainConfig,
    TranscoderConfig,
    TranscoderLoadError,
    TranscoderModelMismatchError,
    TranscoderShapeError,
    build_transcoder,
    load_transcoders,
    save_transcoders,
    train,
)
from transcoders.checkpoint import CHECKPOINT, CheckpointMismatchError, transcoder_from_checkpoint
from transcoders.writes import MARKER, OutputFolderError

PROMPT = "t1 t2 t3 t4 t5 t6"
L, D, F = 2, 8, 12


# --- helpers --------------------------------------------------------------------------------------


def tree(folder: Path) -> dict[str, bytes | None]:
    """Every entry under ``folder``, hidden ones too (a left-over temporary file shows up): files by
    content, folders as None."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


@contextlib.contextmanager
def refused(exc_type: type[BaseException], *fragments: str, fix: str = "Fix:") -> Iterator[pytest.ExceptionInfo]:
    """Expect ``exc_type`` whose message holds every fragment (what is wrong) and ``fix``."""
    with pytest.raises(exc_type) as info:
        yield info
    message = str(info.value)
    for part in (*fragments, fix):
        assert part in message, f"{part!r} is not in the message: {message!r}"


@contextlib.contextmanager
def unchanged(folder: Path) -> Iterator[None]:
    """The body may fail, but ``folder`` is byte-identical afterwards."""
    before = tree(folder)
    try:
        yield
    finally:
        assert tree(folder) == before, "the user's files changed"


def cli_refused(capsys: pytest.CaptureFixture[str], main, argv: list[str], *fragments: str) -> str:
    """Run a command line that must stop with exit status 2 and say each fragment on stderr."""
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse
        status = exc.code
    assert status == 2
    err = capsys.readouterr().err
    for part in fragments:
        assert part in err, f"{part!r} is not in stderr: {err!r}"
    return err


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", n_layers=L, d_model=D, d_mlp=16, d_vocab=40, n_ctx=16)


def random_set(model_name: str = "tiny-llama", *, d_model: int = D, d_features: int = F, seed: int = 0):
    torch.manual_seed(seed)
    cfg = TranscoderConfig(kind="plt", n_layers=L, d_model=d_model, d_features=d_features, activation="topk", k=3,
                           model_name=model_name)
    return build_transcoder(cfg).eval()


@pytest.fixture
def saved_set(tmp_path: Path) -> Path:
    return save_transcoders(random_set(), tmp_path / "set")


def cli_with_tiny_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """``circuits trace`` loads tiny_setup()'s model and transcoders instead of the real ones."""
    import circuits

    model, tc = tiny_setup()
    monkeypatch.setattr(circuits, "load_model", lambda *a, **k: model)
    monkeypatch.setattr(transcoders, "load_transcoders", lambda *a, **k: tc)


def trace_to(out: Path) -> Path:
    model, tc = tiny_setup()
    return cli.trace_to_dir(PROMPT, out, model=model, transcoders=tc, svg=False)


# --- transcoder sets ------------------------------------------------------------------------------


def test_corrupted_safetensors_file(model, saved_set: Path) -> None:
    (saved_set / "layer_1.safetensors").write_bytes(np.random.default_rng(0).bytes(1000))
    with unchanged(saved_set), refused(TranscoderLoadError, "layer_1.safetensors is not a readable safetensors",
                                       "Fix: download or save it again"):
        load_transcoders(model, saved_set)


def test_truncated_safetensors_file(model, saved_set: Path) -> None:
    file = saved_set / "layer_0.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    with unchanged(saved_set), refused(TranscoderLoadError, "layer_0.safetensors", "truncated or damaged"):
        load_transcoders(model, saved_set)


def test_missing_layer_file(model, saved_set: Path) -> None:
    (saved_set / "layer_1.safetensors").unlink()
    with unchanged(saved_set), refused(TranscoderLoadError, "missing layer file", "layer_1.safetensors",
                                       "Fix: copy or download the complete set"):
        load_transcoders(model, saved_set)


def test_layer_file_from_another_set(model, saved_set: Path, tmp_path: Path) -> None:
    other = save_transcoders(random_set(d_features=F + 4), tmp_path / "other")
    shutil.copy(other / "layer_1.safetensors", saved_set / "layer_1.safetensors")
    with unchanged(saved_set), refused(TranscoderLoadError, "layer_1.safetensors", "like the other layers"):
        load_transcoders(model, saved_set)


def test_config_missing_a_required_key(model, saved_set: Path) -> None:
    cfg_file = saved_set / "config.yaml"
    config = yaml.safe_load(cfg_file.read_text())
    del config["model_kind"]
    cfg_file.write_text(yaml.safe_dump(config))
    with unchanged(saved_set), refused(TranscoderLoadError, "lacks 'model_kind'", "Fix: add it"):
        load_transcoders(model, saved_set)


def test_config_that_is_not_yaml(model, saved_set: Path) -> None:
    (saved_set / "config.yaml").write_text("model_kind: [transcoder_set\n  : oops\n")
    with unchanged(saved_set), refused(TranscoderLoadError, "config.yaml", "YAML"):
        load_transcoders(model, saved_set)


def test_config_with_an_unknown_activation(model, saved_set: Path) -> None:
    cfg_file = saved_set / "config.yaml"
    cfg_file.write_text(cfg_file.read_text().replace("activation: topk", "activation: gelu"))
    with unchanged(saved_set), refused(TranscoderLoadError, "activation: 'gelu'", "Fix: set activation"):
        load_transcoders(model, saved_set)


def test_config_with_an_unsupported_hook(model, saved_set: Path) -> None:
    cfg_file = saved_set / "config.yaml"
    cfg_file.write_text(cfg_file.read_text().replace("mlp.hook_in", "attn.hook_z"))
    with unchanged(saved_set), refused(TranscoderLoadError, "'attn.hook_z'", "supported: inputs"):
        load_transcoders(model, saved_set)


def test_nan_weights(model, saved_set: Path) -> None:
    from safetensors.torch import load_file, save_file

    file = saved_set / "layer_1.safetensors"
    tensors = load_file(str(file))
    tensors["W_dec"][2, 3] = float("nan")
    save_file(tensors, str(file))
    with unchanged(saved_set), refused(NonFiniteError, "layer_1.safetensors holds NaN", "'W_dec'",
                                       "Fix: the file is damaged or training diverged"):
        load_transcoders(model, saved_set)


def test_transcoders_made_for_another_model(model, tmp_path: Path) -> None:
    where = save_transcoders(random_set("google/gemma-2-2b"), tmp_path / "set")
    with unchanged(where), refused(TranscoderModelMismatchError, "made for model 'google/gemma-2-2b'",
                                   "'tiny-llama'", "Fix: load the model it was made for"):
        load_transcoders(model, where)


def test_transcoders_of_another_width(model, tmp_path: Path) -> None:
    where = save_transcoders(random_set(d_model=2 * D), tmp_path / "set")
    with unchanged(where), refused(TranscoderShapeError, f"d_model={2 * D}", f"has {L} layers of d_model={D}",
                                   "Fix: load a set trained on this model"):
        load_transcoders(model, where)


def test_unknown_preset_name(model, capsys: pytest.CaptureFixture[str]) -> None:
    with refused(TranscoderLoadError, "no transcoder set at no-such-preset", "smollm2-quick", "Fix: check the path"):
        load_transcoders(model, "no-such-preset")
    cli_refused(capsys, transcoders_cli.main, ["train", "--preset", "nope"],
                "argument --preset: invalid choice: 'nope'", "smollm2-quick")


# --- the output folder ----------------------------------------------------------------------------


def test_out_that_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "graph.json"
    target.write_text("{}")
    with unchanged(tmp_path), refused(OutputFolderError, "is a file, not a folder", "Fix: pass a folder path"):
        trace_to(target)


def test_out_inside_a_file(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with unchanged(tmp_path), refused(OutputFolderError, "notes.txt is a file, so nothing can be written inside it",
                                      "Fix: choose a path whose folders are folders"):
        trace_to(tmp_path / "notes.txt" / "out")


def test_out_where_no_folder_can_be_made() -> None:
    with refused(OutputFolderError, "/proc/circuit-engine-out", "Fix:"):
        trace_to(Path("/proc/circuit-engine-out"))


def test_out_a_users_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "chapter1.tex").write_text("four years of work")
    with unchanged(tmp_path), refused(OutputFolderError, "did not write (thesis)", "Fix: pass a new or empty folder"):
        trace_to(tmp_path)
    cli_with_tiny_model(monkeypatch)
    with unchanged(tmp_path):
        cli_refused(capsys, cli.main, ["trace", PROMPT, "--out", str(tmp_path), "--no-svg", "--label-tokens", "0"],
                    "error:", "did not write", "Fix:")


def test_out_with_a_damaged_marker(tmp_path: Path) -> None:
    out = trace_to(tmp_path / "out")
    (out / MARKER).write_text("not json")
    with unchanged(tmp_path), refused(OutputFolderError, f"{MARKER} is unreadable", "Fix: pass a new folder"):
        trace_to(out)


def test_full_disk_while_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    previous = trace_to(tmp_path / "previous")

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(graphs, "summary", no_space)  # summary.md is written after graph.json and graph.graphml
    with unchanged(tmp_path), refused(OutputFolderError, "no space left on the device", "summary.md",
                                      "Fix: free some space"):
        trace_to(previous)
    with refused(OutputFolderError, "no space left on the device"):
        trace_to(tmp_path / "fresh")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["previous"]


# --- prompts and trace options --------------------------------------------------------------------


def test_prompt_longer_than_the_context(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    model, tc = tiny_setup()
    long = " ".join(["t1"] * (model.dims.n_ctx + 1))
    with refused(PromptError, f"{model.dims.n_ctx + 1} tokens", f"context of {model.dims.n_ctx}",
                 f"Fix: cut the prompt to at most {model.dims.n_ctx} tokens"):
        trace(long, model, tc)
    cli_with_tiny_model(monkeypatch)
    cli_refused(capsys, cli.main, ["trace", long, "--out", str(tmp_path / "out"), "--no-svg", "--label-tokens", "0"],
                "error: the prompt is 33 tokens", "Fix:")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("prompt", ["", " \n\t"])
def test_empty_prompt(prompt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                      monkeypatch: pytest.MonkeyPatch) -> None:
    model, tc = tiny_setup()
    # trace() says it before tokenizing (circuits/attribution/tracing.py), naming the fix without "Fix:".
    with refused(PromptError, "the prompt is empty", fix="pass some text"):
        trace(prompt, model, tc)
    with refused(PromptError, "the prompt is empty", "Fix:"):
        model.tokenize(prompt)
    cli_with_tiny_model(monkeypatch)
    cli_refused(capsys, cli.main, ["trace", prompt, "--out", str(tmp_path / "out"), "--no-svg", "--label-tokens", "0"],
                "error: the prompt is empty: pass some text")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["0", "-3", "abc", "1.5"])
def test_max_feature_nodes_not_a_positive_number(value: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    cli_refused(capsys, cli.main, ["trace", PROMPT, "--out", str(tmp_path / "out"), "--max-feature-nodes", value],
                f"--max-feature-nodes must be a positive number or 'all', not '{value}'", "Fix:")
    assert list(tmp_path.iterdir()) == []


# --- models ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/no/such/dir", "./no-such-model", "no/such/model/dir", "missing.gguf"])
def test_model_path_that_does_not_exist(path: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with refused(ModelNotFoundError, f"no model at {path!r}: the path does not exist", "Fix: check the path"):
        load_model(path)
    cli_refused(capsys, cli.main, ["trace", PROMPT, "--out", str(tmp_path / "out"), "--model", path],
                "error: no model at", "Fix:")
    assert list(tmp_path.iterdir()) == []


def test_model_directory_with_a_damaged_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "llama", ')
    with unchanged(tmp_path), refused(ModelLoadError, "could not be read", "Fix: save it again with save_pretrained"):
        load_model(str(tmp_path))


# --- graph files ----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".txt", ".svg", ""])
def test_graph_file_with_the_wrong_suffix(suffix: str, tmp_path: Path) -> None:
    graph = hand_made_graph(with_extras=False)
    path = tmp_path / f"graph{suffix}"
    with refused(ValueError, "cannot save a graph as", "Fix: use a path ending in one of .npz, .graphml, .json"):
        graphs.save(graph, path)
    assert list(tmp_path.iterdir()) == []
    path.write_text("mine")
    with unchanged(tmp_path), refused(ValueError, "cannot read a graph from", "Fix: pass a file ending in one of"):
        graphs.load(path)


@pytest.mark.parametrize("suffix", [".npz", ".json", ".graphml"])
@pytest.mark.parametrize("damage", ["truncated", "random bytes"])
def test_damaged_graph_file(suffix: str, damage: str, tmp_path: Path) -> None:
    path = graphs.save(hand_made_graph(with_extras=False), tmp_path / f"graph{suffix}")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else np.random.default_rng(0).bytes(2000))
    with unchanged(tmp_path), refused(GraphFileError, "is not a readable graph file", "Fix: write it again"):
        graphs.load(path)


def test_file_of_another_kind_as_a_graph(tmp_path: Path) -> None:
    np.savez(tmp_path / "weights.npz", header=np.array('{"format": "something else"}'))
    (tmp_path / "list.json").write_text("[1, 2, 3]")
    with unchanged(tmp_path):
        with refused(GraphFileError, "is not an attribution graph written by AttributionGraph.save"):
            graphs.load(tmp_path / "weights.npz")
        with refused(ValueError, "not a viewer graph: no 'metadata' field"):
            graphs.load(tmp_path / "list.json")


# --- saved circuits -------------------------------------------------------------------------------


@pytest.mark.parametrize("reader, error, says", [
    (Circuit.load, CircuitFileError, "not a readable circuit file"),
    (NodeCircuit.read, ValueError, "cannot read a node circuit"),
    (FeatureCircuit.load, FeatureCircuitFileError, "cannot read"),
], ids=["Circuit.load", "NodeCircuit.read", "FeatureCircuit.load"])
@pytest.mark.parametrize("content", [b'{"format": "circuit-engine', bytes(range(256))], ids=["truncated", "binary"])
def test_damaged_circuit_file(reader, error: type[Exception], says: str, content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "circuit.json"
    path.write_bytes(content)
    with unchanged(tmp_path), refused(error, says, "Fix:"):
        reader(path)


def test_feature_circuit_file_missing_fields(tmp_path: Path) -> None:
    from circuits.discovery.features.graph import FORMAT, VERSION

    path = tmp_path / "circuit.json"
    path.write_text(f'{{"format": "{FORMAT}", "version": {VERSION}, "nodes": []}}')
    with unchanged(tmp_path), refused(FeatureCircuitFileError, "damaged feature circuit file", "KeyError"):
        FeatureCircuit.load(path)


# --- discovery tasks ------------------------------------------------------------------------------


def _task(*, n_pos: int = 5, corrupted_pos: int | None = None, answer: int = 3) -> Task:
    ids = torch.arange(1, n_pos + 1).repeat(2, 1)
    corrupted = torch.arange(2, (corrupted_pos or n_pos) + 2).repeat(2, 1)
    return Task("bad", ids, corrupted, torch.full((2, 1), answer), torch.full((2, 1), 4), torch.tensor([n_pos - 1]),
                logit_diff)


def test_task_prompts_of_different_lengths() -> None:
    with refused(ValueError, "clean (2, 5) and corrupted (2, 6)", "equal token length", "Fix: pad or reword"):
        _task(corrupted_pos=6)


def test_task_answers_outside_the_vocabulary(model) -> None:
    with refused(ValueError, "answers holds token id 99", "vocabulary 0..39", "Fix: build the task with this "
                                                                            "model's tokenizer"):
        EdgePatcher(model, _task(answer=99))


def test_task_longer_than_the_context(model) -> None:
    with refused(ValueError, "prompts of 20 tokens", "context of 16", "Fix: build the task with shorter prompts"):
        EdgePatcher(model, _task(n_pos=20))


# --- training -------------------------------------------------------------------------------------


def _train_cfg(**kw) -> TrainConfig:
    base = dict(kind="plt", d_features=8, activation="topk", k=2, n_tokens=14 * 4, seq_len=8, model_batch=2,
                chunk_batches=2, batch_tokens=14, warmup_steps=1, checkpoint_every=2, seed=0, precision="fp32")
    return TrainConfig(**{**base, **kw})


def _batches():
    g = torch.Generator().manual_seed(0)
    while True:
        yield torch.randint(1, 40, (2, 8), generator=g)


@pytest.fixture
def trained_run(model, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    train(model, _train_cfg(), run_dir=run, token_batches=_batches, progress=False)
    assert (run / CHECKPOINT).is_file()
    return run


def test_resuming_with_a_changed_config(model, trained_run: Path) -> None:
    with unchanged(trained_run), refused(CheckpointMismatchError, "different configuration",
                                         "d_features: 8 -> 12", "Fix: use another run directory"):
        train(model, _train_cfg(d_features=12), run_dir=trained_run, token_batches=_batches, progress=False)


@pytest.mark.parametrize("damage", ["truncated", "random bytes"])
def test_damaged_checkpoint(model, trained_run: Path, damage: str) -> None:
    file = trained_run / CHECKPOINT
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2] if damage == "truncated" else np.random.default_rng(0).bytes(4096))
    with unchanged(trained_run):
        with refused(CheckpointMismatchError, "cannot be read as a training checkpoint",
                     "Fix: pass another run directory (--run-dir), or delete this file"):
            train(model, _train_cfg(), run_dir=trained_run, token_batches=_batches, progress=False)
        with refused(CheckpointMismatchError, "cannot be read as a training checkpoint"):
            transcoder_from_checkpoint(trained_run)


def _train_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model, *flags: str) -> list[str]:
    monkeypatch.setattr(transcoders_cli, "_load_model", lambda name, device: model)
    monkeypatch.setenv("CIRCUITS_CACHE", str(tmp_path / "cache"))
    return ["train", "--width", "8", "--k", "2", "--n-tokens", "56", "--batch-tokens", "14", "--seq-len", "8",
            "--precision", "fp32", "--eval-tokens", "0", "--out", str(tmp_path / "set"),
            "--run-dir", str(tmp_path / "run"), *flags]


def test_training_text_that_is_missing(model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    argv = _train_cli(tmp_path, monkeypatch, model, "--text", str(tmp_path / "no-such.txt"))
    monkeypatch.setattr(transcoders_cli, "_load_model", lambda *a: pytest.fail("the model loads before --text fails"))
    with refused(FileNotFoundError, "no-such.txt' does not exist", "Fix: check the path"):
        transcoders_cli.main(argv)
    assert list(tmp_path.iterdir()) == []


def test_training_text_that_is_empty(model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = tmp_path / "texts"
    text.mkdir()
    (text / "empty.txt").write_text("")
    with unchanged(text), refused(ValueError, "the corpus has no 'train' documents (0 documents", "Fix: add text"):
        transcoders_cli.main(_train_cli(tmp_path, monkeypatch, model, "--text", str(text / "empty.txt")))
    assert not (tmp_path / "set").exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags, says", [
    (["--l0", "4", "--activation", "topk"], "a target --l0 steers a JumpReLU"),
    (["--k", "500", "--width", "64"], "k=500 must be in 1..d_features=64"),
], ids=["l0-with-topk", "k-wider-than-width"])
def test_contradictory_training_flags(flags: list[str], says: str, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transcoders_cli, "_load_model", lambda *a: pytest.fail("the model loads before the check"))
    with refused(ValueError, says):
        transcoders_cli.main(["train", *flags, "--out", str(tmp_path / "set")])
    assert list(tmp_path.iterdir()) == []


def test_unknown_precision(capsys: pytest.CaptureFixture[str]) -> None:
    with refused(ValueError, "precision must be one of auto, bf16, fp32, not 'half'", "Fix: pass 'auto'"):
        TrainConfig(precision="half")
    cli_refused(capsys, transcoders_cli.main, ["train", "--k", "4", "--precision", "half"],
                "argument --precision: invalid choice: 'half'", "'fp32'")


# --- feature labels -------------------------------------------------------------------------------


def _labels_for(tc) -> FeatureLabels:
    k, width = 2, 3
    return FeatureLabels(np.zeros((L, F, k), np.float32), np.full((L, F, k), -1, np.int32),
                         np.full((L, F, k, width), -1, np.int32), [[""] * F for _ in range(L)], before=1,
                         info={"fingerprint": fingerprint(tc)})


def test_labels_computed_for_other_weights(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    mine, other = random_set(seed=0), random_set(seed=1)
    where = _labels_for(other).save(tmp_path / "labels")
    with unchanged(tmp_path), caplog.at_level(logging.WARNING, logger="circuits.labels"):
        assert load_labels(where, mine) is None  # ignored: never shown for these weights
    assert "made for other transcoder weights; ignoring them" in caplog.text
    assert load_labels(where, other) is not None


def test_damaged_labels_file(tmp_path: Path) -> None:
    tc = random_set()
    where = _labels_for(tc).save(tmp_path / "labels")
    (where / "feature_labels.json").write_text('{"format": "circuit-engine feature lab')
    with unchanged(tmp_path), refused(ValueError, "feature_labels.json is damaged",
                                      "Fix: delete feature_labels.json and feature_labels.safetensors"):
        load_labels(where, tc)
    (where / "feature_labels.json").unlink()
    assert load_labels(where, tc) is None  # half a pair: computed again

