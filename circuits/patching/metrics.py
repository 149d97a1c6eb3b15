"""Metrics on patched outputs, the normalised faithfulness, and MIB's area-under-curve scores."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor

from circuits.replacement.evaluate import token_kl
from circuits.tasks.task import at_least_float32


def kl_to_clean(logits: Tensor, clean_logits: Tensor) -> Tensor:
    """KL(clean ‖ patched), mean over prompts and positions.

    ``logits``, ``clean_logits``: ``[n, n_positions, d_vocab]``. 0 for the unpatched model.
    """
    logp = at_least_float32(logits).log_softmax(-1)
    logq = at_least_float32(clean_logits).log_softmax(-1)
    return token_kl(logq, logp).mean()


def answer_prob(logits: Tensor, answers: Tensor, wrong: Tensor | None = None) -> Tensor:
    """Mean probability of ``answers[:, 0]`` at the last metric position. ``logits``: ``[n, P, d_vocab]``."""
    p = at_least_float32(logits[:, -1]).softmax(-1)
    return p.gather(1, answers[:, :1].to(p.device)).mean()


def faithfulness(m_circuit: float | Tensor, m_full: float, m_empty: float) -> float | Tensor:
    """f = (m(C) − m(∅)) / (m(M) − m(∅)): 1 for the full model, 0 for the empty circuit (MIB's form)."""
    denom = m_full - m_empty
    if abs(float(denom)) < 1e-12:
        raise ValueError("the full model and the empty circuit score the same on this metric, so faithfulness "
                         "is undefined: use prompts where the corruption changes the metric")
    return (m_circuit - m_empty) / denom


MIB_BUDGETS: tuple[float, ...] = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
"""The edge budgets (fractions of all edges) at which MIB evaluates a circuit-discovery method."""


def area_under_curve(budgets: Sequence[float], faithfulness: Sequence[float], *,
                     log_scale: bool = False) -> tuple[float, float]:
    """MIB's circuit performance ratio and circuit-model distance over edge budgets.

    ``budgets`` are fractions of the edges (increasing), ``faithfulness`` f at each. With the
    trapezoid rule over the budgets (their logs with ``log_scale``):

        CPR = ∫ f(k) dk        (higher is better)
        CMD = ∫ |1 − f(k)| dk  (lower is better)

    over [budgets[0], budgets[-1]], as MIB's ``evaluate_area_under_curve`` computes them (with
    MIB's budgets both lie in [0, 0.999] when f stays in [0, 1]).
    """
    x = np.asarray(budgets, dtype=float)
    f = np.asarray(faithfulness, dtype=float)
    if x.shape != f.shape or x.ndim != 1 or len(x) < 2:
        raise ValueError("budgets and faithfulness need the same length, at least 2")
    if np.any(np.diff(x) <= 0):
        raise ValueError("budgets must increase")
    if log_scale:
        x = np.log(x)
    dx = np.diff(x)
    cpr = float(np.sum(dx * (f[1:] + f[:-1]) / 2))
    g = np.abs(1 - f)
    cmd = float(np.sum(dx * (g[1:] + g[:-1]) / 2))
    return cpr, cmd


class PerPromptMean:
    """Mixed into a patcher whose prompts come in ``chunks`` with ``_metric(logits, chunk)`` (the chunk's
    metric) and ``prompt_metrics(logits, chunk)`` (``[b]`` one per prompt)."""

    _per_prompt_mean: bool | None = None

    @property
    def per_prompt_mean(self) -> bool:
        """Whether the task's metric is the mean of per-prompt metrics (checked once on the clean run),
        which lets ACDC decide a test on part of the prompts (``circuits.discovery.heads.chunked``)."""
        if self._per_prompt_mean is None:
            c = self.chunks[0]  # type: ignore[attr-defined]
            whole = float(self._metric(c.clean_logits, c))  # type: ignore[attr-defined]
            parts = float(self.prompt_metrics(c.clean_logits, c).mean())  # type: ignore[attr-defined]
            self._per_prompt_mean = abs(whole - parts) <= 1e-5 * max(1.0, abs(whole))
        return self._per_prompt_mean
