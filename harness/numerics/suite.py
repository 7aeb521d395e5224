"""The numerics suite as the run sees it: its marker and the sequences its grid runs."""

from harness.numerics.grid import length_requests
from harness.suite import Suite

SUITE = Suite(
    name="numerics",
    marker="compares ported logits with the transformers reference",
    length_requests=length_requests)
