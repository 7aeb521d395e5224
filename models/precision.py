"""What a case computes in: the dtype axis of the grid, split once into its two parts.

A dtype name is either a float type ("fp32", "bf16", "fp16": weights and activations in it) or
an int8 scheme ("w8a16", "w8a8": int8 weights, activations in a float type that depends on the
hardware). `Precision.of(name, hardware)` is the one place that split is made; the model
builder, the runners and the records all take the resulting value.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
# INT8 schemes on the dtype axis: int8 weights with 16-bit activations, or int8 activations too.
QUANTIZED = ("w8a16", "w8a8")
ALL_DTYPES = (*DTYPES, *QUANTIZED)


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; valid: {', '.join(DTYPES)}")
    return DTYPES[name]


@dataclass(frozen=True)
class Precision:
    """name: the grid's dtype name; dtype: the activations' (and float weights') torch dtype;
    scheme: the int8 scheme of the linear layers, None for float weights."""

    name: str
    dtype: torch.dtype
    scheme: str | None = None

    @classmethod
    def of(cls, name: str, hardware: str = "cpu") -> Precision:
        """The precision a case of dtype `name` runs in on `hardware`. W8A16 means 16-bit
        activations: bf16 on the CPU (where PyTorch's int8 weight-pack kernel takes bf16),
        fp16 on accelerators. W8A8 quantizes activations per token and rescales into fp32 on
        the CPU, fp16 elsewhere."""
        if name == "w8a16":
            return cls(name, torch.bfloat16 if hardware == "cpu" else torch.float16, name)
        if name == "w8a8":
            return cls(name, torch.float32 if hardware == "cpu" else torch.float16, name)
        return cls(name, parse_dtype(name))

    @property
    def dtype_name(self) -> str:
        """The activations' float type by its grid name ("bf16" for w8a16 on the CPU)."""
        return DTYPE_NAMES[self.dtype]


FP32 = Precision.of("fp32")
