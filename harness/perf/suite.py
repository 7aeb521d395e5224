"""The perf suite as the run sees it: its options and settings, the sequences its grid runs,
the models it lists and its session end."""

from harness.perf.grid import length_requests
from harness.perf.options import PerfSettings, add_options
from harness.perf.session import finish
from harness.suite import Suite

SUITE = Suite(
    name="perf",
    marker="times the port phase by phase against stored baselines",
    length_requests=length_requests,
    add_options=add_options,
    settings=PerfSettings.from_config,
    finish=finish,
    models=lambda settings: settings.suites["perf"].models)
