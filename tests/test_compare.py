import math

import torch

from harness.compare import position_metrics, summarize


def test_identical_logits_are_perfect():
    logits = torch.randn(3, 50)
    stats = summarize([(logits, logits.clone())])
    assert stats.max_abs_diff == 0 and stats.top1_agreement == 1 and stats.max_kl == 0
    assert math.isclose(stats.min_cosine, 1, abs_tol=1e-6) and stats.positions == 3


def test_metrics_on_known_values():
    reference = torch.tensor([[2.0, 0.0, 0.0]])
    ported = torch.tensor([[0.0, 2.0, 0.0]])
    m = position_metrics(reference, ported)
    assert m["max_abs"].item() == 2.0
    assert m["top1"].item() == 0.0
    assert math.isclose(m["cosine"].item(), 0.0, abs_tol=1e-7)
    p = torch.softmax(reference, -1)
    q = torch.softmax(ported, -1)
    expected_kl = (p * (p.log() - q.log())).sum().item()
    assert math.isclose(m["kl"].item(), expected_kl, rel_tol=1e-5)


def test_kl_share_counts_positions_over_threshold():
    reference = torch.zeros(4, 10)
    ported = reference.clone()
    ported[0, 0] = 1.0  # only position 0 differs
    stats = summarize([(reference, ported)])
    assert stats.kl_share == 0.25 and stats.max_kl > 1e-4
    assert summarize([(reference, ported)], kl_threshold=10.0).kl_share == 0
