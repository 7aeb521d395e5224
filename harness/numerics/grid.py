"""The numerics suite's case grid, and the longest sequences it will run."""

from __future__ import annotations

from itertools import product
from typing import TYPE_CHECKING

from harness.cases import Case

if TYPE_CHECKING:
    from harness.settings import Settings

# New tokens of the numerics suite's greedy-generation test (fp32 only).
GREEDY_NEW_TOKENS = 32


def cases(settings: Settings, *, dtypes=None, batches=None, seqlens=None,
          out=None) -> list[Case]:
    """The numerics grid, model-major so that each model is loaded once per process."""
    out = settings.decode_steps if out is None else out
    return [Case(m, h, d, b, s, out, tags=settings.tags, port=p.case_port)
            for m in settings.models for p in settings.ports.of(m) for h, d, b, s in product(
                settings.hardware, settings.model_dtypes(m, dtypes or settings.dtypes, p),
                # a server batches its requests itself: one prompt per case
                [1] if p.served else batches or settings.batches,
                seqlens or settings.seqlens)]


def length_requests(settings: Settings) -> list[tuple[list[str], int, str]]:
    """(models, tokens, what asks for them): the longest sequence each check will run."""
    longest, shortest, steps = max(settings.seqlens), min(settings.seqlens), settings.decode_steps
    requests = [(settings.models, longest + steps,
                 f"--seqlen {longest} + --decode-steps {steps}")]
    if "fp32" in settings.dtypes:
        requests.append((settings.models, shortest + GREEDY_NEW_TOKENS,
                         f"--seqlen {shortest} + {GREEDY_NEW_TOKENS} generated tokens "
                         "(greedy generation)"))
    return requests
