"""Test cases: one frozen value per model x hardware x dtype x batch x sequence length."""

from __future__ import annotations

from dataclasses import dataclass

from models.precision import Precision


@dataclass(frozen=True)
class Case:
    """Renders pytest ids like `qwen-tiny-cpu-fp32-bs2-in32-out8` or
    `mmlu-smollm2-135m-cpu-fp32-bs8-0shot`.

    Every field is its own dash-separated token, so `-k "qwen and bs8"` selects by field.
    pytest's -k matches substrings: `-k "bs1-"` selects batch 1 but not batch 16.
    `task` (accuracy) comes first; then the port where it is not the engine (`hf`,
    `llama-cpp`, ...); `tags` (e.g. "5shot", "reference", "tp2") come last.
    """

    model: str
    hardware: str
    dtype: str
    batch: int | str  # "max": the max-batch search
    seqlen: int | None = None
    out: int | None = None
    task: str = ""
    tags: tuple[str, ...] = ()
    port: str = ""  # the --port that runs it ("": the engine)

    @property
    def id(self) -> str:
        parts = [self.task] if self.task else []
        parts += [self.model, self.hardware, self.dtype, f"bs{self.batch}"]
        parts += [f"in{self.seqlen}"] if self.seqlen is not None else []
        parts += [f"out{self.out}"] if self.out is not None else []
        parts += [self.port] if self.port else []
        return "-".join([*parts, *self.tags])

    @property
    def precision(self) -> Precision:
        """What the case computes in: its dtype name split for its hardware."""
        return Precision.of(self.dtype, self.hardware)

    def __str__(self) -> str:
        return self.id
