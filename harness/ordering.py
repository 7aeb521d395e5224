"""The order cases run in: each model x port x dtype together, fp32 first.

The runner pool holds one port and one reference model at a time (`harness.pool`). pytest's own
order runs a suite test by test (every case's teacher-forced check, then every case's padding
check), which would load each model's port and references once per test. Grouped, each is
loaded once per suite; fp32 runs first because its reference outputs are the ones every later
dtype of that model compares against, and they are kept (small) while the reference model is
not.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import groupby

from harness.cases import Case

DTYPE_ORDER = ("fp32", "bf16", "fp16", "w8a16", "w8a8")


def group_key(case: Case) -> tuple:
    rank = DTYPE_ORDER.index(case.dtype) if case.dtype in DTYPE_ORDER else len(DTYPE_ORDER)
    return case.model, case.port, case.hardware, rank, case.dtype


def grouped(items: list, case_of: Callable, suite_of: Callable) -> list:
    """`items` with each suite's cases sorted by model x port x hardware x dtype (stable:
    within a group, pytest's order); suites keep their order, and items without a case stay
    where they are relative to their suite."""
    ordered = []
    for _, block in groupby(items, key=suite_of):
        block = list(block)
        cased = [item for item in block if case_of(item) is not None]
        positions = [i for i, item in enumerate(block) if case_of(item) is not None]
        cased.sort(key=lambda item: group_key(case_of(item)))
        for position, item in zip(positions, cased):
            block[position] = item
        ordered.extend(block)
    return ordered
