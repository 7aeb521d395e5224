"""llmgate's suites, one list that drives the options (`harness.options`), the run's
settings and their start-up checks, and each session's end (`harness.plugin`)."""

from __future__ import annotations

import dataclasses
from types import MappingProxyType

import pytest

from harness.accuracy.suite import SUITE as ACCURACY
from harness.numerics.suite import SUITE as NUMERICS
from harness.perf.suite import SUITE as PERF
from harness.port_directories import check_port_directories
from harness.ports.served import check_endpoints
from harness.settings import Settings
from harness.weights import WeightResolver
from models.config import get_config

SUITES = (NUMERICS, PERF, ACCURACY)


def run_settings(config: pytest.Config) -> Settings:
    """The run's settings: the core's and each suite's, every option checked now."""
    core = Settings.from_config(config)
    own = {suite.name: suite.settings(config, core) for suite in SUITES}
    return dataclasses.replace(core, suites=MappingProxyType(
        {name: value for name, value in own.items() if value is not None}))


def check_run(settings: Settings, weights: WeightResolver) -> None:
    """What needs the whole run's settings, before any model loads: every sequence fits
    its model, each suite's own checks, what hf and plug-in ports load, the endpoints."""
    check_lengths(settings)
    for suite in SUITES:
        suite.check(settings)
    models = [model for suite in SUITES for model in suite.models(settings)]
    check_port_directories(settings, weights, models)
    check_endpoints(settings.ports)


def check_lengths(settings: Settings) -> None:
    """Every sequence the suites' grids will run fits its model's positions."""
    for suite in SUITES:
        for models, tokens, what in suite.length_requests(settings):
            for model in models:
                limit = get_config(model).max_positions
                if tokens > limit:
                    raise pytest.UsageError(f"{model} has {limit} positions; {what} = {tokens} "
                                            "tokens do not fit")


def session_records(rows: list[dict], settings: Settings) -> list[dict]:
    """What only the whole run shows, from each suite's session end."""
    return [record for suite in SUITES for record in suite.finish(rows, settings)]
