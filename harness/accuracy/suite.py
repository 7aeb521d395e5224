"""The accuracy suite as the run sees it: its options and settings, its start-up check of
the ports and its session end."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from harness.accuracy.options import AccuracySettings, add_options
from harness.accuracy.session import finish
from harness.suite import Suite

if TYPE_CHECKING:
    from harness.settings import Settings


def check_cloze_ports(settings: Settings) -> None:
    """Cloze scoring needs each continuation token's log-probability; a server lists the
    next token's top-K only."""
    cloze = [t for t in settings.suites["accuracy"].tasks if t.endswith("-cloze")]
    served = next((s for s in settings.ports.specs() if s.served), None)
    if cloze and served:
        raise pytest.UsageError(f"--task {cloze[0]}: a served port ({served.given}) gives no "
                                "log-probability of each continuation token; cloze tasks run "
                                "on the engine, hf and plug-in ports (letter form: --task "
                                f"{cloze[0].removesuffix('-cloze')})")


SUITE = Suite(
    name="accuracy",
    marker="scores the port on C-Eval, MMLU and HumanEval against stored baselines",
    length_requests=lambda settings: [],
    add_options=add_options,
    settings=AccuracySettings.from_config,
    check=check_cloze_ports,
    finish=finish)
