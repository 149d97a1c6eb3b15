"""bf16 only where it is measured to be fast: the decision, its overrides, and the paths that obey it."""

from __future__ import annotations

import pytest
import torch

from transcoders import precision
from transcoders.harvest import harvest
from transcoders.precision import CAPABILITY_ENV, PRECISION_ENV, check_precision, use_bf16
from transcoders.train import TrainConfig


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PRECISION_ENV, raising=False)
    monkeypatch.delenv(CAPABILITY_ENV, raising=False)


def _no_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    def probe() -> float:
        raise AssertionError("an AVX2 CPU has no bf16 units: no probe should run")

    monkeypatch.setattr(precision, "_probe_speedup", probe)


def test_avx2_runs_fp32_without_probing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CAPABILITY_ENV, "AVX2")
    _no_probe(monkeypatch)
    assert precision.cpu_capability() == "AVX2"
    assert not use_bf16("cpu")
    assert not use_bf16("cpu", "auto")
    assert use_bf16("cpu", "bf16")  # a user can still force it
    assert "CPU capability AVX2; precision auto -> fp32" in precision.describe("cpu")


@pytest.mark.parametrize(("speedup", "expected"), [(4.0, True), (1.1, False)])
def test_bf16_units_are_confirmed_by_a_probe(monkeypatch: pytest.MonkeyPatch, speedup: float, expected: bool) -> None:
    monkeypatch.setenv(CAPABILITY_ENV, "AVX512_BF16")
    monkeypatch.setattr(precision, "_probe_speedup", lambda: speedup)
    assert use_bf16("cpu") is expected
    assert not use_bf16("cpu", "fp32")


def test_environment_decides_every_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CAPABILITY_ENV, "AVX2")
    _no_probe(monkeypatch)
    monkeypatch.setenv(PRECISION_ENV, "bf16")
    assert use_bf16("cpu")
    assert not use_bf16("cpu", "fp32")  # an explicit choice beats the environment
    monkeypatch.setenv(PRECISION_ENV, "fast")
    with pytest.raises(ValueError, match="precision must be one of auto, bf16, fp32"):
        use_bf16("cpu")


def test_probe_measures_this_machine() -> None:
    speedup = precision._probe_speedup()
    assert speedup > 0
    assert precision._probe_speedup() == speedup  # once per process


@pytest.mark.parametrize("neighbour", ["stops", "starts"])
@pytest.mark.parametrize("reads", [2, 5, 6, 7, 12, 21])
def test_probe_holds_when_a_neighbour_takes_the_cpu_for_part_of_it(monkeypatch: pytest.MonkeyPatch, neighbour: str,
                                                                    reads: int) -> None:
    """A neighbour that stops (or starts) after any of the probe's first clock reads slows whatever runs
    then, 3x: the probe still reads the CPU's speedup (here bf16 at 2x) instead of blaming one precision
    for the neighbour. (Three fp32 timings then three bf16 ones read 6x or 0.67x at 6 reads.)"""
    clock = {"t": 0.0, "reads": 0}

    def fake_clock() -> float:  # each read advances by the cost of the matmul it starts or ends
        now, n = clock["t"], clock["reads"]
        slow = 3.0 if (n < reads) == (neighbour == "stops") else 1.0
        clock["t"] += slow * (0.5 if torch.is_autocast_enabled("cpu") else 1.0) * 1e-3
        clock["reads"] += 1
        return now

    monkeypatch.setattr(precision.time, "perf_counter", fake_clock)
    assert precision._probe_speedup.__wrapped__() == pytest.approx(2.0)


def test_bad_precision_names_the_choices() -> None:
    assert check_precision(True) == "auto" and check_precision(False) == "fp32"
    with pytest.raises(ValueError, match="Fix: pass 'auto'"):
        check_precision("bfloat16")
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainConfig(precision="half")  # type: ignore[arg-type]


def test_harvest_on_a_simulated_avx2_machine_is_exactly_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    from circuits.models.tiny import tiny_model

    monkeypatch.setenv(CAPABILITY_ENV, "AVX2")
    _no_probe(monkeypatch)
    model = tiny_model("llama", seed=0)
    ids = torch.randint(1, 60, (2, 8), generator=torch.Generator().manual_seed(0))
    auto_x, auto_y = harvest(model, ids)
    x, y = harvest(model, ids, precision="fp32")
    assert auto_x.dtype == torch.float32
    torch.testing.assert_close(auto_x, x, rtol=0, atol=0)
    torch.testing.assert_close(auto_y, y, rtol=0, atol=0)
