"""What every suite gives the run: the `Suite` interface.

Each of numerics, perf and accuracy exposes one `Suite` (`harness.<name>.suite.SUITE`), and
the list of them (`harness.suites.SUITES`) drives the options, the settings check and each
session's end. A suite's own settings are built from the options and the run-wide core
`Settings`, and kept in `settings.suites[name]`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pytest

    from harness.settings import Settings

# (models, tokens, what asks for them): a sequence a suite will run, checked at start-up
LengthRequest = tuple[list[str], int, str]


def _none(*_) -> None:
    return None


def _no_records(rows: list[dict], settings: Settings) -> list[dict]:
    return []


def _run_models(settings: Settings) -> list[str]:
    return settings.models


@dataclass(frozen=True)
class Suite:
    """name: the suite's directory under suites/ and its marker; marker: the marker's help.

    add_options(group): its options in llmgate's option group.
    settings(config, core): its own settings (None: it has none) from the options and the
      run-wide core; a bad option is a `pytest.UsageError`.
    length_requests(settings): the longest sequences its grid will run, per model.
    check(settings): start-up checks that need the whole run's settings.
    finish(rows, settings): records only the whole run can give, at the session's end.
    models(settings): the models its grid lists (beyond `settings.models`).
    """

    name: str
    marker: str
    length_requests: Callable[[Settings], list[LengthRequest]]
    add_options: Callable[[Any], None] = _none
    settings: Callable[[pytest.Config, Settings], Any] = _none
    check: Callable[[Settings], None] = _none
    finish: Callable[[list[dict], Settings], list[dict]] = _no_records
    models: Callable[[Settings], list[str]] = _run_models
