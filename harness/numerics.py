"""Numerics checks: teacher-forced comparison of runners and the per-dtype verdicts.

Kept apart from the pytest suite so the logic is tested with dummy runners.
"""

from __future__ import annotations

import tomllib
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from harness.cases import Case
from harness.compare import LogitStats, summarize
from harness.runners import Runner

THRESHOLDS_FILE = Path(__file__).resolve().parent.parent / "suites" / "numerics" / "thresholds.toml"


def load_thresholds(path: Path = THRESHOLDS_FILE) -> dict:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"{path}: cannot read thresholds ({e})") from None
    for section, keys in {"fp32": ("top1_agreement", "max_abs_diff_tiny", "max_abs_diff_real",
                                   "padding_abs_diff_tiny", "padding_abs_diff_real"),
                          "reduced": ("relative_to_reference", "kl_max",
                                      "kl_position_threshold", "kl_max_share",
                                      "padding_relative")}.items():
        for key in keys:
            if not isinstance(data.get(section, {}).get(key), (int, float)):
                raise ValueError(f"{path}: missing number [{section}] {key}")
    if not isinstance(data.get("version"), int):
        raise ValueError(f"{path}: missing integer field 'version'")
    return data


def make_prompt(case: Case, vocab_size: int) -> tuple[Tensor, Tensor]:
    """Deterministic ragged left-padded batch: row 0 is full length, later rows shorter."""
    seed = zlib.crc32(f"{case.model}-{case.batch}-{case.seqlen}".encode())
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab_size, (case.batch, case.seqlen), generator=generator)
    mask = torch.ones_like(ids)
    for row in range(1, case.batch):
        mask[row, : row * case.seqlen // (2 * case.batch)] = 0
    return ids, mask


def teacher_forced(reference: Runner, others: list[Runner], ids: Tensor, mask: Tensor | None,
                   steps: int, forced: list[Tensor] | None = None) -> tuple[list, list[Tensor]]:
    """Feed every runner the same prompt and the same next tokens.

    The next tokens are the reference's greedy choices unless `forced` gives them. Returns,
    per step, [reference logits, other logits...] and the tokens fed.
    """
    logits = [r.prefill(ids, mask) for r in [reference, *others]]
    history, tokens = [logits], []
    for step in range(steps):
        next_ids = forced[step] if forced is not None else logits[0].argmax(-1)
        tokens.append(next_ids)
        logits = [r.decode(next_ids) for r in [reference, *others]]
        history.append(logits)
    return history, tokens


def sequence_logits(runner: Runner, ids: Tensor, forced: list[Tensor]) -> Tensor:
    """Logits (steps + 1, V) of one unpadded sequence (1, T) fed the `forced` tokens."""
    history, _ = teacher_forced(runner, [], ids, None, len(forced), forced)
    return torch.stack([step[0][0] for step in history])


def stats_against_reference(history: list, index: int, thresholds: dict) -> LogitStats:
    """Runner `index` of a `teacher_forced` history against the reference (index 0)."""
    return summarize([(step[0], step[index]) for step in history],
                     kl_threshold=thresholds["reduced"]["kl_position_threshold"])


@dataclass
class Verdict:
    passed: bool
    failures: list[str]
    limit: float


def fp32_verdict(ported: LogitStats, thresholds: dict, pretrained: bool) -> Verdict:
    t = thresholds["fp32"]
    limit = t["max_abs_diff_real" if pretrained else "max_abs_diff_tiny"]
    failures = []
    if ported.max_abs_diff > limit:
        failures.append(f"max |dlogit| {ported.max_abs_diff:.3g} > {limit:g}")
    if ported.top1_agreement < t["top1_agreement"]:
        failures.append(f"top-1 agreement {ported.top1_agreement:.4f} < {t['top1_agreement']}")
    return Verdict(not failures, failures, limit)


def meets_kl_rule(stats: LogitStats, thresholds: dict) -> bool:
    t = thresholds["reduced"]
    return stats.max_kl <= t["kl_max"] and stats.kl_share <= t["kl_max_share"]


def reduced_verdict(ported: LogitStats, reference: LogitStats, thresholds: dict,
                    pretrained: bool) -> Verdict:
    """bf16/fp16: no further from fp32 than transformers in that dtype (x factor)."""
    t = thresholds["reduced"]
    fp32_limit = thresholds["fp32"]["max_abs_diff_real" if pretrained else "max_abs_diff_tiny"]
    limit = t["relative_to_reference"] * reference.max_abs_diff + fp32_limit
    failures = []
    if ported.max_abs_diff > limit:
        failures.append(f"max |dlogit| {ported.max_abs_diff:.3g} > {limit:.3g} "
                        f"({t['relative_to_reference']} x transformers' "
                        f"{reference.max_abs_diff:.3g} + {fp32_limit:g})")
    if meets_kl_rule(reference, thresholds) and not meets_kl_rule(ported, thresholds):
        failures.append(f"KL rule: max KL {ported.max_kl:.3g} (<= {t['kl_max']:g}), share over "
                        f"{t['kl_position_threshold']:g} {ported.kl_share:.3%} "
                        f"(<= {t['kl_max_share']:.1%}); "
                        "transformers meets it")
    return Verdict(not failures, failures, limit)
