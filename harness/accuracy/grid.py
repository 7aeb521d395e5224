"""The accuracy suite's case grid: models x hardware x dtypes x batches, per task."""

from __future__ import annotations

from itertools import product
from typing import TYPE_CHECKING

from harness.accuracy.case import shots_for
from harness.accuracy.options import DEFAULT_BATCH
from harness.accuracy.prompts import is_code
from harness.cases import Case

if TYPE_CHECKING:
    from harness.settings import Settings


def cases(settings: Settings, task: str) -> list[Case]:
    """A task's cases; the reference runner (transformers) runs on the CPU only."""
    acc = settings.suites["accuracy"]
    if task not in acc.tasks:
        return []
    reference = acc.runner == "reference"
    tags = ((f"n{acc.samples}",) if is_code(task)
            else (f"{shots_for(task, acc)}shot",)) + (("reference",) if reference else ())
    return [Case(m, h, d, b, task=task, tags=(*tags, *settings.tags), port=p.case_port)
            for m in settings.models for p in settings.ports.of(m) for h, d, b in product(
                ["cpu"] if reference else settings.hardware,
                settings.model_dtypes(m, settings.dtypes_given or ["fp32"], p),
                settings.batches_given or [DEFAULT_BATCH])]
