"""Numerics checks: teacher-forced comparison of runners and the per-dtype verdicts.

Kept apart from the pytest suite so the logic is tested with dummy runners; the suite calls
`teacher_forced_case` and records what it returns.
"""

from __future__ import annotations

import math
import tomllib
import zlib
from functools import cache
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor

from harness.cases import Case
from harness.devices import QUANTIZED
from harness.numerics.localize import located, step_metrics
from harness.numerics.logits import LogitStats, summarize
from harness.reference_store import tensor_digest
from harness.runners import Runner
from harness.verdicts import (
    Verdict,
    at_least,
    at_most,
    first_lines,
    nonfinite_rows,
    verdict,
)
from models.config import TINY_MODELS

QUANTIZED_KEYS = ("top1_agreement", "mean_kl", "max_kl", "min_cosine", "relative_to_fake",
                  "fake_slack")
SERVED_KEYS = ("max_abs_logprob_diff", "top1_agreement", "kl_lower_bound", "tail_slack",
               "greedy_min_leading")
THRESHOLDS_FILE = Path(str(resources.files("harness.numerics") / "thresholds.toml"))


def load_thresholds(path: Path = THRESHOLDS_FILE) -> dict:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"{path}: cannot read thresholds ({e})") from None
    for section, keys in {"fp32": ("top1_agreement", "max_abs_diff_tiny", "max_abs_diff_real",
                                   "padding_abs_diff_tiny", "padding_abs_diff_real"),
                          "reduced": ("relative_to_reference", "kl_max",
                                      "kl_position_threshold", "kl_max_share",
                                      "padding_relative"),
                          "layers": ("fp32_relative", "relative_to_reference"),
                          **{scheme: QUANTIZED_KEYS for scheme in QUANTIZED}}.items():
        for key in keys:
            if not isinstance(data.get(section, {}).get(key), (int, float)):
                raise ValueError(f"{path}: missing number [{section}] {key}")
    for profile in ("16bit", "4bit"):
        for key in SERVED_KEYS:
            if not isinstance(data.get(f"served_{profile}", {}).get(key), (int, float)):
                raise ValueError(f"{path}: missing number [served_{profile}] {key}")
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


def runner_up_tokens(logits: Tensor) -> Tensor:
    """Per row of `logits` (B, V), its second most likely token: never the greedy choice.

    A port that ignores the token it is fed and continues with its own greedy choice is then
    fed something else at every step, and its logits part from the reference's. The runner-up
    keeps the text as close as a non-greedy token can to what the model expects, where the
    limits in thresholds.toml were measured."""
    # The argmax masked out (not topk's rank 1, which may order tied maxima otherwise).
    return logits.float().scatter(-1, logits.argmax(-1, keepdim=True), -math.inf) \
        .argmax(-1).cpu()


def teacher_forced(reference: Runner, others: list[Runner], ids: Tensor, mask: Tensor | None,
                   steps: int, forced: list[Tensor] | None = None) -> tuple[list, list[Tensor]]:
    """Feed every runner the same prompt and the same next tokens.

    The next tokens are `forced`, else chosen from the reference's logits by
    `runner_up_tokens` (never its greedy choice). Returns, per step, [reference logits,
    other logits...] and the tokens fed.
    """
    logits = [r.prefill(ids, mask) for r in [reference, *others]]
    history, tokens = [logits], []
    for step in range(steps):
        next_ids = forced[step] if forced is not None else runner_up_tokens(logits[0])
        tokens.append(next_ids)
        logits = [r.decode(next_ids) for r in [reference, *others]]
        history.append(logits)
    return history, tokens


# Names the token-forcing rule in stored reference entries: change it with `runner_up_tokens`.
FORCING_RULE = "runner-up"


@cache
def thresholds_version() -> int:
    """The shipped thresholds' version: stored reference entries are keyed by it."""
    return load_thresholds()["version"]


def reference_fields(case: Case, ids: Tensor, mask: Tensor, dtype: str) -> dict:
    """What a teacher-forced reference entry depends on, beside the model and versions."""
    return {"dtype": dtype, "batch": case.batch, "seqlen": case.seqlen, "out": case.out,
            "prompt": tensor_digest(ids, mask), "forcing": FORCING_RULE,
            "thresholds": thresholds_version()}


def reference_run(pool, case: Case) -> dict[str, Tensor]:
    """The fp32 reference's teacher-forced run of the case's prompt, computed once per run
    (and per store): `ids` and `mask` (B, T), the `tokens` it chose to feed (steps, B) and
    its `logits` (steps + 1, B, V), step 0 the prefill's. Every runner of the case is then fed
    these tokens, each alone: the reference model is needed again only for outputs not yet
    kept."""
    ids, mask = make_prompt(case, pool.config(case.model).vocab_size)

    def compute():
        history, tokens = teacher_forced(pool.reference(case.model), [], ids, mask, case.out)
        return {"ids": ids, "mask": mask, "tokens": torch.stack(tokens),
                "logits": torch.stack([step[0] for step in history])}
    return pool.reference_outputs(case.model, "teacher-forced", compute,
                                  **reference_fields(case, ids, mask, "fp32"))


def forced_logits(runner: Runner, run: dict[str, Tensor]) -> Tensor:
    """Logits (steps + 1, B, V) of `runner` fed a `reference_run`'s prompt and tokens."""
    history, _ = teacher_forced(runner, [], run["ids"], run["mask"], len(run["tokens"]),
                                list(run["tokens"]))
    return torch.stack([step[0].float().cpu() for step in history])


def reduced_reference_logits(pool, case: Case, run: dict[str, Tensor]) -> Tensor:
    """transformers in the case's dtype (bf16/fp16, or an int8 scheme simulated in floating
    point) fed the fp32 reference's tokens: what the relative rules compare the port with."""
    def compute():
        return {"logits": forced_logits(pool.reference(case.model, case.dtype), run)}
    return pool.reference_outputs(
        case.model, "teacher-forced", compute, fed=tensor_digest(run["tokens"]),
        **reference_fields(case, run["ids"], run["mask"], case.dtype))["logits"]


def sequence_logits(runner: Runner, ids: Tensor, forced: list[Tensor]) -> Tensor:
    """Logits (steps + 1, V) of one unpadded sequence (1, T) fed the `forced` tokens."""
    history, _ = teacher_forced(runner, [], ids, None, len(forced), forced)
    return torch.stack([step[0][0] for step in history])


def stats_against_reference(history: list, index: int, thresholds: dict) -> LogitStats:
    """Runner `index` of a `teacher_forced` history against the reference (index 0)."""
    return summarize([(step[0], step[index]) for step in history],
                     kl_threshold=thresholds["reduced"]["kl_position_threshold"])


def nonfinite_failures(history: list, index: int) -> list[str]:
    """Where runner `index` produced NaN/Inf: step (0 is the prefill), row and how many
    values, noting where the reference (index 0) was not finite either."""
    return first_lines([
        f"step {step} row {row}: {count} non-finite logits"
        + (" (the reference's too)" if reference_too else "")
        for step, logits in enumerate(history)
        for row, count, reference_too in nonfinite_rows(logits[0], logits[index])])


def pretrained_limits(model: str) -> bool:
    """Whether `model` is judged by the pretrained fp32 limits: every model but the tiny ones,
    which keep theirs wherever their weights come from (a --model-path directory has been
    verified to have the tiny structure, whose small logits the tiny limits are made for)."""
    return model not in TINY_MODELS


def _abs_limit(thresholds: dict, pretrained: bool) -> float:
    return thresholds["fp32"]["max_abs_diff_real" if pretrained else "max_abs_diff_tiny"]


def fp32_verdict(ported: LogitStats, thresholds: dict, pretrained: bool,
                 nonfinite: list[str] = ()) -> Verdict:
    t = thresholds["fp32"]
    limit = _abs_limit(thresholds, pretrained)
    failures = list(nonfinite)
    if not at_most(ported.max_abs_diff, limit):
        failures.append(f"max |dlogit| {ported.max_abs_diff:.3g} > {limit:g}")
    if not at_least(ported.top1_agreement, t["top1_agreement"]):
        failures.append(f"top-1 agreement {ported.top1_agreement:.4f} < {t['top1_agreement']}")
    return verdict(failures, limit, f"max |dlogit| <= {limit:g}", **ported.as_dict())


def meets_kl_rule(stats: LogitStats, thresholds: dict) -> bool:
    t = thresholds["reduced"]
    return at_most(stats.max_kl, t["kl_max"]) and at_most(stats.kl_share, t["kl_max_share"])


def reduced_verdict(ported: LogitStats, reference: LogitStats, thresholds: dict,
                    pretrained: bool, nonfinite: list[str] = ()) -> Verdict:
    """bf16/fp16: no further from fp32 than transformers in that dtype (x factor).

    Where transformers itself is not finite in that dtype there is no relative limit: the
    port must then meet the KL rule on its own.
    """
    t = thresholds["reduced"]
    factor, fp32_limit = t["relative_to_reference"], _abs_limit(thresholds, pretrained)
    failures = list(nonfinite)
    reference_finite = math.isfinite(reference.max_abs_diff)
    limit = factor * reference.max_abs_diff + fp32_limit if reference_finite else float("nan")
    rule = (f"max |dlogit| <= {factor} x transformers ({reference.max_abs_diff:.3g}) "
            f"+ {fp32_limit:g}" if reference_finite else "KL rule (transformers not finite)")
    if reference_finite and not at_most(ported.max_abs_diff, limit):
        failures.append(f"max |dlogit| {ported.max_abs_diff:.3g} > {limit:.3g} "
                        f"({factor} x transformers' {reference.max_abs_diff:.3g} "
                        f"+ {fp32_limit:g})")
    kl_required = meets_kl_rule(reference, thresholds) or not reference_finite
    if kl_required and not meets_kl_rule(ported, thresholds):
        why = "transformers meets it" if reference_finite else "transformers is not finite"
        failures.append(f"KL rule: max KL {ported.max_kl:.3g} (<= {t['kl_max']:g}), share over "
                        f"{t['kl_position_threshold']:g} {ported.kl_share:.3%} "
                        f"(<= {t['kl_max_share']:.1%}); {why}")
    return verdict(failures, limit, rule, **ported.as_dict())


def quantized_verdict(scheme: str, ported: LogitStats, fake: LogitStats, thresholds: dict,
                      nonfinite: list[str] = ()) -> Verdict:
    """w8a16/w8a8 against the fp32 reference: the scheme's absolute limits (top-1 agreement,
    mean and max KL, cosine), and a mean KL at most `relative_to_fake` times that of
    transformers running the same scheme in floating point (`fake_quantize_`) — the part of
    the error our int8 kernels add."""
    t = thresholds[scheme]
    failures = list(nonfinite)
    # Where the scheme itself, run by transformers in floating point, agrees less often than
    # the floor (9 positions at batch 1 make a coarse rate), the port must agree as often.
    floor = min(t["top1_agreement"], fake.top1_agreement)
    if not at_least(ported.top1_agreement, floor):
        whose = "" if floor == t["top1_agreement"] else " (fake-quant transformers')"
        failures.append(f"top-1 agreement {ported.top1_agreement:.4f} < {floor:.4g}{whose}")
    if not at_most(ported.mean_kl, t["mean_kl"]):
        failures.append(f"mean KL {ported.mean_kl:.3g} > {t['mean_kl']:g}")
    if not at_most(ported.max_kl, t["max_kl"]):
        failures.append(f"max KL {ported.max_kl:.3g} > {t['max_kl']:g}")
    if not at_least(ported.min_cosine, t["min_cosine"]):
        failures.append(f"min cosine {ported.min_cosine:.5f} < {t['min_cosine']}")
    factor, slack = t["relative_to_fake"], t["fake_slack"]
    limit = factor * fake.mean_kl + slack
    if not at_most(ported.mean_kl, limit):
        failures.append(f"mean KL {ported.mean_kl:.3g} > {factor} x fake-quant transformers' "
                        f"{fake.mean_kl:.3g} + {slack:g}")
    return verdict(failures, limit, f"{scheme}: mean KL <= {t['mean_kl']:g} and <= {factor} x "
                   f"fake-quant ({fake.mean_kl:.3g}) + {slack:g}", **ported.as_dict())


def teacher_forced_case(case: Case, pool, thresholds: dict) -> tuple[Verdict, dict]:
    """The port against the fp32 reference, teacher-forced, judged by the case's precision:
    fp32 by the fp32 limits; bf16/fp16 relative to transformers in that dtype; an int8 scheme
    by its limits and relative to transformers running it in floating point. Returns the
    verdict and that second transformers' metrics (`reference_*` / `fake_quant_*`).

    pool: `ported(case)` gives the port, `reference_outputs` what the references computed
    (`RunnerPool`). The fp32 reference runs first (its outputs are usually kept from the
    model's fp32 cases), then the port, then transformers in the case's dtype. The verdict
    carries the per-step curve and, when it fails, where the port first left the limit
    (`harness.numerics.localize`)."""
    pool.runnable(case)
    run = reference_run(pool, case)
    runs = [run["logits"], forced_logits(pool.ported(case), run)]
    if case.dtype != "fp32":
        runs.append(reduced_reference_logits(pool, case, run))
    history = [list(step) for step in zip(*runs)]  # per step: [reference, port, (theirs)]
    pretrained = pretrained_limits(case.model)
    ours = stats_against_reference(history, 1, thresholds)
    nonfinite = nonfinite_failures(history, 1)
    if case.dtype == "fp32":
        result, extra = fp32_verdict(ours, thresholds, pretrained, nonfinite), {}
    else:
        theirs = stats_against_reference(history, 2, thresholds)
        if case.precision.scheme:
            result = quantized_verdict(case.dtype, ours, theirs, thresholds, nonfinite)
            prefix = "fake_quant_"
        else:
            result = reduced_verdict(ours, theirs, thresholds, pretrained, nonfinite)
            prefix = "reference_"
        extra = {f"{prefix}{k}": v for k, v in theirs.as_dict().items() if k != "positions"}
    return located(result, case, pool, thresholds, step_metrics(history, 1), run), extra
