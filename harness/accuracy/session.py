"""The accuracy suite's session end: what only the whole run can show, as extra records."""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness import named_baselines

if TYPE_CHECKING:
    from harness.settings import Settings


def finish(rows: list[dict], settings: Settings) -> list[dict]:
    """A record of each --accuracy-baseline that no case of the run's latest `rows` met."""
    named = [("--accuracy-baseline", "accuracy", name)
             for name in settings.suites["accuracy"].baselines or []]
    return named_baselines.records(rows, named, settings.baselines_dir)
