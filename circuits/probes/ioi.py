"""Head roles in the IOI circuit, by probes alone: no circuit, no ablation.

Positions (Wang et al., 2022): IO and S1 are the two names of the first clause, S2 the
repeated subject, END the last token. A role is a place a head acts, what it reads there
(attention; at END, shares of the attention not on the sink, see ``circuits.probes.attention``)
and, where the role writes the answer, what its OV circuit writes:

- ``name mover``: attends END → IO and copies IO (Wang et al.);
- ``negative name mover``: attends END → IO and suppresses IO (Wang et al.);
- ``copy suppression``: attends END → S1/S2 and suppresses S, which raises IO over S — the
  mechanism McDougall et al. (2023) found behind GPT-2's negative heads, pointed at the subject;
- ``S mover``: attends END → S1/S2 and copies S, which lowers IO over S (a name mover reading
  the wrong name). With the two above, every pairing of the name a head reads at END with
  the sign its OV writes;
- ``S-inhibition``: attends END → S2 (Wang et al.);
- ``amplifier``: attends END → END and its OV, fed the END residual, writes IO (``amplifier``)
  or suppresses it (``negative amplifier``). Deep models have late heads that read the answer
  already formed at END and scale it; Wang's 12-layer GPT-2 circuit has none, SmolLM2's
  layer 29 has two of the largest effects;
- ``induction``, ``duplicate-token``, ``previous-token``: S2 → S1+1, S2 → S1, S1+1 → S1 on the
  IOI prompts (raw shares: the early name positions have too few keys for sink-free shares to
  mean much), or the same patterns on random repeated tokens without the sink (Wang et al.);
- ``current-token``: a token attends to itself, on random repeated tokens without the sink
  (early heads that carry a token's identity).

``role_base_rate`` says how many of all the model's heads pass some role: a probe that passes
most heads says little about a circuit whose heads pass it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from circuits.models.adapter import Model
from circuits.probes.attention import attention_patterns, attention_score, repeated_token_scores, without_sink
from circuits.probes.ov import residual_at, residual_copying, residual_copying_both
from circuits.tasks.task import Task

Head = tuple[int, int]


def _check(task: Task) -> dict:
    if task.name != "ioi" or "io_pos" not in task.info:
        raise ValueError("IOI probes need a task from circuits.tasks.ioi.dataset (it records the name positions)")
    return task.info


def ioi_attention_scores(model: Model, task: Task, *, exclude_sink: bool = False) -> dict[str, Tensor]:
    """Attention of every head between the IOI positions, ``[n_layers, n_heads]`` per pattern:
    ``name_mover`` END→IO, ``s_inhibition`` END→S2, ``end_to_s`` END→S1, ``end_to_end`` END→END,
    ``duplicate_token`` S2→S1, ``induction`` S2→S1+1, ``previous_token`` S1+1→S1 and
    ``current_token`` from each name to itself. ``exclude_sink``: shares of the attention that is
    not on position 0."""
    info = _check(task)
    pat = attention_patterns(model, task.clean)
    return _pattern_scores(without_sink(pat) if exclude_sink else pat, info)


def _pattern_scores(pat: Tensor, info: dict) -> dict[str, Tensor]:
    """``ioi_attention_scores`` from patterns ``[L, B, H, T, T]`` already taken."""
    end, io, s1, s2 = info["end_pos"], info["io_pos"], info["s1_pos"], info["s2_pos"]
    names = torch.stack([io, s1, s2], 1)  # [B, 3]
    return {
        "name_mover": attention_score(pat, end, io),
        "s_inhibition": attention_score(pat, end, s2),
        "end_to_s": attention_score(pat, end, s1),
        "end_to_end": attention_score(pat, end, end),
        "duplicate_token": attention_score(pat, s2, s1),
        "induction": attention_score(pat, s2, s1 + 1),
        "previous_token": attention_score(pat, s1 + 1, s1),
        "current_token": attention_score(pat, names, names),
    }


def ioi_copying_scores(model: Model, task: Task, *, k: int = 5, sign: float = 1.0, read: str = "io",
                       target: str = "io", resid: Tensor | None = None) -> Tensor:
    """OV check ``[n_layers, n_heads]``: feed each head the residual stream at position ``read``
    (``"io"``, ``"s1"``, ``"s2"`` or ``"end"``: what it reads when it attends there) and count the prompts
    whose ``target`` name (``"io"`` or ``"s"``) is in the top ``k`` of its direct logits; ``sign=-1``
    for suppression. The default is Wang et al.'s name-mover check. ``resid``: the residual stream
    at ``read`` (``residual_at``, ``[n_layers, n, d_model]``) when the caller already has it."""
    info = _check(task)
    positions = {"io": info["io_pos"], "s1": info["s1_pos"], "s2": info["s2_pos"], "end": info["end_pos"]}
    targets = {"io": task.answers[:, 0], "s": task.wrong[:, 0]}
    if read not in positions or target not in targets:
        raise ValueError(f"read is one of {sorted(positions)} and target one of {sorted(targets)}; "
                         f"got {read!r}, {target!r}")
    if resid is None:
        resid = residual_at(model, task.clean, positions[read])
    return residual_copying(model, resid, targets[target], k=k, sign=sign)


# A head passes a role when its probe clears the threshold: shares of the non-sink attention for
# the IOI patterns (``attention``), attention shares on random repeats (``pattern``), the fraction
# of prompts for the OV checks (``ov``).
IOI_ROLE_THRESHOLDS: dict[str, float] = {"attention": 0.3, "pattern": 0.3, "ov": 0.5}


def ioi_probe_scores(model: Model, task: Task) -> dict[str, Tensor]:
    """Every score the roles read, ``[n_layers, n_heads]`` each (see ``ioi_head_roles``)."""
    info = _check(task)
    pat = attention_patterns(model, task.clean)  # one forward for the sink-free and the raw shares
    scores = {f"att_{k}": v for k, v in _pattern_scores(without_sink(pat), info).items()}
    scores.update({f"raw_{k}": v for k, v in _pattern_scores(pat, info).items()})
    scores.update({f"rep_{k}": v for k, v in repeated_token_scores(model, exclude_sink=True).items()})
    reads = ("io", "s1", "s2", "end")
    at = residual_at(model, task.clean, torch.stack([info[f"{read}_pos"] for read in reads], 1))  # [L, n, 4, d]
    resid = {read: at[:, :, i] for i, read in enumerate(reads)}

    io, s = task.answers[:, 0], task.wrong[:, 0]
    scores["copies_io"], scores["suppresses_io"] = residual_copying_both(model, resid["io"], io)
    # S is read at S1 or S2; a head passes with either.
    (copy_s1, supp_s1), (copy_s2, supp_s2) = (residual_copying_both(model, resid[r], s) for r in ("s1", "s2"))
    scores["copies_s"], scores["suppresses_s"] = torch.maximum(copy_s1, copy_s2), torch.maximum(supp_s1, supp_s2)
    scores["amplifies_io"], scores["damps_io"] = residual_copying_both(model, resid["end"], io)
    return scores


def roles_from_scores(s: dict[str, Tensor], head: Head, thresholds: dict[str, float] | None = None) -> list[str]:
    """The roles one head passes, from ``ioi_probe_scores``."""
    t = {**IOI_ROLE_THRESHOLDS, **(thresholds or {})}
    v = {k: float(x[head]) for k, x in s.items()}
    att, ov = t["attention"], t["ov"]
    found = []
    if v["att_name_mover"] >= att:
        if v["copies_io"] >= ov:
            found.append("name mover")
        if v["suppresses_io"] >= ov:
            found.append("negative name mover")
    if v["att_s_inhibition"] + v["att_end_to_s"] >= att:
        if v["suppresses_s"] >= ov:
            found.append("copy suppression")
        if v["copies_s"] >= ov:
            found.append("S mover")
    if v["att_s_inhibition"] >= att:
        found.append("S-inhibition")
    if v["att_end_to_end"] >= att:
        if v["amplifies_io"] >= ov:
            found.append("amplifier")
        if v["damps_io"] >= ov:
            found.append("negative amplifier")
    for role, key in (("induction", "induction"), ("duplicate-token", "duplicate_token"),
                      ("previous-token", "previous_token")):
        if max(v[f"raw_{key}"], v[f"rep_{key}"]) >= t["pattern"]:
            found.append(role)
    if v["rep_current_token"] >= t["pattern"]:
        found.append("current-token")
    return found


def ioi_head_roles(model: Model, task: Task, heads: Sequence[Head] | None = None, *,
                   thresholds: dict[str, float] | None = None) -> dict[Head, list[str]]:
    """The roles each head passes (see the module docstring), ``{(layer, head): [roles]}`` for
    ``heads`` (default every head); an empty list means no probe recognises the head."""
    scores = ioi_probe_scores(model, task)
    if heads is None:
        heads = [(l, h) for l in range(model.n_layers) for h in range(model.n_heads)]
    return {(int(l), int(h)): roles_from_scores(scores, (int(l), int(h)), thresholds) for l, h in heads}


def role_base_rate(roles: dict[Head, list[str]]) -> dict[str, float]:
    """Of the heads in ``roles``: the fraction passing each role, and ``"any"``."""
    n = max(len(roles), 1)
    names = sorted({r for found in roles.values() for r in found})
    rate = {name: sum(name in found for found in roles.values()) / n for name in names}
    rate["any"] = sum(bool(found) for found in roles.values()) / n
    return rate
