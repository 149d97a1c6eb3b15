"""Bad input gets an error that names the problem and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from circuits import DeviceError, ModelLoadError, ModelNotFoundError, PromptError, load_model, tiny_model
from circuits.models import UnsupportedArchitectureError, spec_for
from circuits.models.loading import resolve_dtype


def test_unknown_model_name() -> None:
    with pytest.raises(ModelNotFoundError, match=r"unknown model 'no-such-org/not-a-model-3141'.*smollm2"):
        load_model("no-such-org/not-a-model-3141")


def test_directory_that_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelNotFoundError, match=r"is not a model: a model directory holds config.json"):
        load_model(str(tmp_path))


def test_gguf_file_that_does_not_parse(tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + bytes(range(256)) * 8)
    with pytest.raises(ModelLoadError, match=r"does not parse.*download it again"):
        load_model(str(bad))


def test_truncated_real_gguf_header(tmp_path: Path) -> None:
    """A file that is not GGUF at all, in a directory of its own, is found and refused."""
    (tmp_path / "model.gguf").write_bytes(b"not a gguf file")
    with pytest.raises(ModelLoadError, match="does not parse"):
        load_model(str(tmp_path))


@pytest.mark.parametrize("prompt", ["", "   \n"])
def test_empty_prompt(prompt: str) -> None:
    model = tiny_model("llama")
    with pytest.raises(PromptError, match="prompt is empty"):
        model.tokenize(prompt)
    with pytest.raises(PromptError, match="prompt is empty"):
        model.record(prompt, [("resid_post", 0)])


def test_prompt_longer_than_the_context() -> None:
    model = tiny_model("gpt2", n_ctx=16)
    with pytest.raises(PromptError, match="17 tokens but .* context of 16: shorten it"):
        model.tokenize(" ".join(["t1"] * 17))
    assert model.tokenize(" ".join(["t1"] * 16)).shape == (1, 16)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA, so 'cuda' is a valid device")
def test_device_that_is_not_there() -> None:
    with pytest.raises(DeviceError, match="not present.*device='cpu'"):
        load_model(None, device="cuda")


def test_bad_device_and_dtype_names() -> None:
    with pytest.raises(DeviceError, match="not a device name"):
        load_model(None, device="gpu7")
    with pytest.raises(ValueError, match="not a float dtype"):
        resolve_dtype("int8")
    assert resolve_dtype("bfloat16") is torch.bfloat16


def test_unsupported_architecture() -> None:
    with pytest.raises(UnsupportedArchitectureError, match="not in the architecture map.*llama"):
        spec_for("mamba")


def test_unknown_site_names_the_valid_ones() -> None:
    model = tiny_model("llama")
    with pytest.raises(KeyError, match="valid sites: resid_pre"):
        model.record("t1 t2", [("mlp_input", 0)])


def test_multi_token_answer_is_refused() -> None:
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="not one"):
        model.token_id("t1 t2")
