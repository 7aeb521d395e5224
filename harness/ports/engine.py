"""The engine's port: the ported model (`models/`) on any backend and precision."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from harness.devices import Backend, get_backend
from harness.runners import right_padded
from models.engine import Engine, generate
from models.loading import build_model
from models.precision import FP32, Precision
from models.transformer import streamed_weight_bytes, weight_bytes


class PortedRunner:
    """The ported model on a device; device work is synchronised before logits return."""

    world_size = 1
    generates_by_decode = True  # `generate` is the harness's loop over prefill/decode

    def __init__(self, checkpoint: str | Path, precision: Precision = FP32, *,
                 hardware: str | Backend = "cpu", headroom: int = 256, compile: bool = False,
                 device_logits: bool = False, lm_head: bool = False, cpu_dense: bool = True):
        """precision: its int8 scheme quantizes the model (from its float32 weights; the LM
        head too if `lm_head`), unless the checkpoint is quantized already, with that scheme.
        device_logits: return logits on the device in the model dtype (the perf loop picks
        tokens there, as a serving loop would) instead of float32 on the CPU.
        cpu_dense: on the CPU, run the float dense layers on faster kernels (`build_model`)."""
        self.backend = get_backend(hardware) if isinstance(hardware, str) else hardware
        self.precision, self.device_logits = precision, device_logits
        self.model = build_model(checkpoint, precision, lm_head=lm_head,
                                 device=self.backend.torch_device(), cpu_dense=cpu_dense)
        self.engine = Engine(self.model, headroom=headroom, compile=compile)

    @property
    def config(self):
        return self.model.config

    def _out(self, logits: Tensor) -> Tensor:
        return logits if self.device_logits else logits.float().cpu()

    def prefill(self, input_ids, attention_mask=None, all_logits=False):
        return self._out(self.engine.prefill(input_ids, attention_mask, all_logits))

    def decode(self, next_ids):
        return self._out(self.engine.decode(next_ids))

    def reset(self):
        self.engine.reset()

    def reserve(self, new_tokens: int) -> None:
        self.engine.reserve(new_tokens)

    def prefill_shared(self, prefix, suffixes, all_logits=False):
        """The prefix runs once (and once per distinct prefix, across calls); its cache is
        copied into every row."""
        return self._out(self.engine.prefill_shared(prefix, *right_padded(suffixes),
                                                    all_logits=all_logits))

    def release(self) -> None:
        """Free the KV cache (the next prefill allocates a new one)."""
        self.engine.release()

    def generate(self, input_ids, attention_mask, new_tokens):
        return generate(self.engine, input_ids, attention_mask, new_tokens, ignore_eos=True)

    def weight_bytes(self) -> int:
        return weight_bytes(self.model)

    def streamed_weight_bytes(self) -> int:
        return streamed_weight_bytes(self.model)
