"""Test cases: one frozen value per model x hardware x dtype x batch x sequence length."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    """Renders pytest ids like `qwen-tiny-cpu-fp32-bs2-in32` (or `...-in256-out64`).

    Every field is its own dash-separated token, so `-k "qwen and bs8"` selects by field.
    pytest's -k matches substrings: `-k "bs1-"` selects batch 1 but not batch 16.
    """

    model: str
    hardware: str
    dtype: str
    batch: int | str  # "max": the max-batch search
    seqlen: int
    out: int | None = None

    @property
    def id(self) -> str:
        tail = f"-out{self.out}" if self.out is not None else ""
        return f"{self.model}-{self.hardware}-{self.dtype}-bs{self.batch}-in{self.seqlen}{tail}"

    def __str__(self) -> str:
        return self.id
