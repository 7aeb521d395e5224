"""Where in the sequence a teacher-forced port leaves the reference: the per-step curve, and
for a failing case the first (step, row) beyond the case's limit, the token position and text
it was fed there, and whether the prefill was within the limits.

Step 0 is the prefill (the logits after the prompt's last token); step s > 0 is the s-th
decode step, fed the s-th forced token. A row's token position counts from its first real
token (left padding excluded), as the positions the model is given do.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from torch import Tensor

from harness.cases import Case
from harness.numerics.layers import NotLocalizable, localize_layers
from harness.numerics.logits import position_metrics
from harness.reference_store import ReferenceStoreError
from harness.verdicts import Verdict


def step_metrics(history: list, index: int) -> dict[str, Tensor]:
    """`position_metrics` of runner `index` against the reference (index 0), (steps, B)."""
    return position_metrics(torch.stack([step[0] for step in history]),
                            torch.stack([step[index] for step in history]))


def curve(metrics: dict[str, Tensor]) -> dict[str, list[float]]:
    """Per step, the largest |dlogit| and KL over the rows: what the report draws."""
    return {"step_max_abs_diff": metrics["max_abs"].amax(1).tolist(),
            "step_max_kl": metrics["kl"].amax(1).tolist()}


def beyond_rule(dtype: str, scheme: str | None, thresholds: dict,
                limit: float) -> tuple[Callable[[dict], Tensor], str]:
    """Which positions are beyond the case's limit, and the rule in words: fp32 by its
    |dlogit| limit or a different top-1; bf16/fp16 by the relative |dlogit| limit (where
    transformers in that dtype is finite) or the KL rule's per-position maximum; an int8
    scheme by its mean-KL limit or its minimum cosine (its gates are aggregates: this names
    where its error first exceeds what it may average)."""
    if scheme:
        t = thresholds[scheme]
        return (lambda m: (m["kl"] > t["mean_kl"]) | (m["cosine"] < t["min_cosine"]),
                f"KL > {t['mean_kl']:g} or cosine < {t['min_cosine']:g}")
    if dtype == "fp32":
        return (lambda m: (m["max_abs"] > limit) | (m["top1"] < 1),
                f"|dlogit| > {limit:g} or another top-1")
    kl_max = thresholds["reduced"]["kl_max"]
    if not math.isfinite(limit):
        return lambda m: m["kl"] > kl_max, f"KL > {kl_max:g}"
    return (lambda m: (m["max_abs"] > limit) | (m["kl"] > kl_max),
            f"|dlogit| > {limit:.3g} or KL > {kl_max:g}")


def first_divergence(metrics: dict[str, Tensor], beyond: Callable[[dict], Tensor], rule: str,
                     run: dict[str, Tensor], decode: Callable[[int], str]) -> tuple[str, dict]:
    """(a failure line, record fields) for the first position, step by step then row by
    row, beyond `rule` (a non-finite one counts). `run` is the case's `reference_run`: its
    prompt `ids`, `mask` and fed `tokens`. ("", {...}) where no single position is beyond it
    (an aggregate failed)."""
    bad = beyond(metrics) | metrics["kl"].isnan()
    prefill_ok = not bool(bad[0].any())
    fields = {"prefill_within_limits": prefill_ok}
    hits = bad.nonzero().tolist()
    if not hits:
        return "", fields
    step, row = hits[0]
    fed = run["ids"][row, -1] if step == 0 else run["tokens"][step - 1, row]
    position = int(run["mask"][row].sum()) - 1 + step
    text = decode(int(fed))
    fields.update(first_divergence_step=step, first_divergence_row=row,
                  first_divergence_position=position, first_divergence_token=text)
    where = "the prefill" if step == 0 else f"decode step {step}"
    line = (f"first beyond the limit ({rule}): {where}, row {row}, token position {position} "
            f"(fed {text!r}); the prefill {'was within' if prefill_ok else 'was beyond'} the "
            "limits")
    return line, fields


def located(result: Verdict, case: Case, pool, thresholds: dict, metrics: dict,
            run: dict[str, Tensor]) -> Verdict:
    """The verdict with the per-step curve in its metrics and, where it failed, where in the
    sequence the port first left the limit (`first_divergence`) and where in the model
    (`in_the_model`; with --localize, for a passing case too)."""
    result.metrics.update(curve(metrics))
    localize = pool.settings.localize
    if result.passed and not localize:
        return result
    line, fields = "", {}
    if not result.passed:
        beyond, rule = beyond_rule(case.dtype, case.precision.scheme, thresholds,
                                   result.limit)

        def decode(token: int) -> str:
            try:
                return pool.tokenizer(case.model).decode([token])
            except Exception:  # no tokenizer (a test double) or unreadable files: the id
                return f"<token {token}>"
        line, fields = first_divergence(metrics, beyond, rule, run, decode)
        result.metrics.update(fields)
        if line:
            result.failures.append(line)
    if "first_divergence_step" in fields:
        step, row = fields["first_divergence_step"], fields["first_divergence_row"]
    else:  # no single position beyond the limit: where the port is furthest off
        step, row = divmod(int(metrics["max_abs"].nan_to_num(math.inf).argmax()),
                           metrics["max_abs"].shape[1])
    words, layer_fields = in_the_model(case, pool, thresholds, run, step, row)
    result.metrics.update(layer_fields, layer_localization=words)
    if not result.passed:
        result.failures.append(words)
    return result


def in_the_model(case: Case, pool, thresholds: dict, run: dict[str, Tensor], step: int,
                 row: int) -> tuple[str, dict]:
    """`localize_layers` on the case's port at (step, row), timed; where the port has no
    module to hook, the reference model is not loaded (--reference-mode stored) or the
    re-run raised, the reason instead (the case's measured figures and verdict stand)."""
    start = time.perf_counter()
    dtype_reference = None
    if case.dtype != "fp32":
        def dtype_reference():
            return pool.reference(case.model, case.dtype)
    try:
        words, fields = localize_layers(pool.ported(case), pool.reference(case.model),
                                        dtype_reference, run, step, row, thresholds["layers"])
    except (NotLocalizable, ReferenceStoreError) as e:
        return f"not localized in the model: {e}", {}
    except Exception as e:  # the re-run only says where: what was measured stands
        return (f"not localized in the model: the hooked re-run raised {type(e).__name__}: "
                f"{e}"), {}
    fields["localize_seconds"] = time.perf_counter() - start
    return words, fields
