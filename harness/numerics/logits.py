"""Per-position comparison of two logit streams (ported vs reference).

A position whose ported logits hold NaN or Inf has every metric NaN, and every aggregate that
meets a NaN is NaN: a broken port can never look close to the reference.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class LogitStats:
    """Aggregates over every compared position (rows x steps)."""

    positions: int
    max_abs_diff: float  # max |dlogit|
    min_cosine: float
    top1_agreement: float  # share of positions whose argmax agrees
    max_kl: float  # max KL(reference || ported)
    kl_share: float  # share of positions whose KL exceeds the threshold given to summarize
    nonfinite_positions: int = 0  # positions whose ported logits hold NaN or Inf
    mean_kl: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def position_metrics(reference: Tensor, ported: Tensor) -> dict[str, Tensor]:
    """Metrics per position for logits (..., V); both are compared in float32."""
    reference, ported = reference.float(), ported.float()
    ref_logp = torch.log_softmax(reference, dim=-1)
    port_logp = torch.log_softmax(ported, dim=-1)
    kl = (ref_logp.exp() * (ref_logp - port_logp)).sum(-1).clamp(min=0)
    metrics = {
        "max_abs": (reference - ported).abs().amax(-1),
        "cosine": torch.nn.functional.cosine_similarity(reference, ported, dim=-1),
        "top1": (reference.argmax(-1) == ported.argmax(-1)).float(),
        "kl": kl,
    }
    broken = ~torch.isfinite(ported).all(-1)
    return {name: value.masked_fill(broken, float("nan")) for name, value in metrics.items()}


def summarize(steps: list[tuple[Tensor, Tensor]], kl_threshold: float = 1e-4) -> LogitStats:
    """Stats over a list of (reference, ported) logits, one pair per step, each (B, V)."""
    reference = torch.stack([r for r, _ in steps])
    ported = torch.stack([p for _, p in steps])
    m = position_metrics(reference, ported)
    over = (m["kl"] > kl_threshold).float().masked_fill(m["kl"].isnan(), float("nan"))
    return LogitStats(
        positions=m["kl"].numel(),
        max_abs_diff=m["max_abs"].max().item(),
        min_cosine=m["cosine"].min().item(),
        top1_agreement=m["top1"].mean().item(),
        max_kl=m["kl"].max().item(),
        kl_share=over.mean().item(),
        nonfinite_positions=int(m["kl"].isnan().sum()),
        mean_kl=m["kl"].mean().item(),
    )
