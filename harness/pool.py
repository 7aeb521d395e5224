"""The runners a pytest session has loaded, reused across tests, and the hardware gate.

A case asks the pool for its port (`ported`) and for the transformers reference
(`reference`); each is loaded once and kept until a case asks for another model of its role
(one port, one reference, one served port at a time).
Unavailable hardware or dtype skips the case with the reason (or fails it, if the run requires
that hardware).
"""

from __future__ import annotations

import ctypes
import gc
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import transformers

from harness.cases import Case
from harness.devices import Backend, get_backend, pinned_precision
from harness.ports.registry import PORT_KINDS, PortRequest
from harness.reference_runner import ReferenceRunner
from harness.reference_store import (
    ENTRY_FORMAT,
    REFERENCE_CODE,
    ReferenceStore,
    ReferenceStoreError,
    directory_digest,
)
from harness.runners import Closable, Runner, Served
from harness.seam import CheckedRunner
from harness.settings import Settings
from harness.weights import WeightResolver
from models.precision import Precision


def release_memory() -> None:
    """Give dropped models' memory back now: transformers models hold reference cycles (gc),
    and glibc keeps freed small blocks in its heap (malloc_trim returns them to the system),
    so the next model would otherwise load on top of the last one's pages."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _role(key: tuple) -> str:
    """A pool key's first item: port (a model this process or its ranks hold), reference,
    served or tokenizer."""
    return key[0]


class RunnerPool:
    """Loaded runners, reused across tests: at most one port and one reference model at a
    time (and one served port), so a run holds about a port's and a reference's bytes
    whatever its selection; tokenizers stay. The suites run each model x dtype's cases
    together (`harness.ordering`), so each is loaded once."""

    def __init__(self, settings: Settings, weights: WeightResolver | None = None,
                 run_dir: Path | None = None):
        """weights: where each model's weights are (default: resolved from `settings`);
        run_dir: where a server the run starts (llama-cpp ports) keeps its log."""
        self.settings, self.run_dir = settings, run_dir
        self.weights = weights or WeightResolver(settings.model_paths, settings.cache_dir)
        self._runners: OrderedDict[tuple, object] = OrderedDict()  # runners, tokenizers
        # What cases need of the reference, kept once computed (and stored, with a store).
        self.references = ReferenceStore(settings.reference_store, settings.reference_mode)
        self._digests: dict[str, str] = {}

    def _get(self, key: tuple, make):
        if key not in self._runners:
            role = _role(key)
            if role != "tokenizer":  # one resident model per role: the old one goes first
                for k in [k for k in self._runners if _role(k) == role]:
                    self._drop(k)
                release_memory()
            self._runners[key] = make()
            release_memory()  # what building it allocated and freed (casts, fake-quant)
        return self._runners[key]

    def _drop(self, key: tuple) -> None:
        runner = self._runners.pop(key)
        if isinstance(runner, Closable):
            runner.close()

    def close(self) -> None:
        """Stop tensor-parallel ranks; free everything."""
        for key in list(self._runners):
            self._drop(key)

    def backend(self, case: Case) -> Backend:
        """The case's backend; unavailable hardware or dtype skips (or fails, if required)."""
        backend = get_backend(case.hardware)
        ok, reason = backend.availability()
        if ok and case.dtype not in backend.dtypes():
            ok, reason = False, f"{case.dtype} is not supported on {case.hardware}"
        if not ok:
            if self.settings.require_hardware:
                pytest.fail(f"{case.hardware} required but unavailable: {reason}", pytrace=False)
            pytest.skip(f"{case.hardware}: {reason}")
        problem = backend.fp32_problem(pinned_precision(backend))
        if problem and case.dtype == "fp32":
            pytest.fail(f"{case.hardware} does not compute fp32 in fp32 here: {problem}",
                        pytrace=False)
        return backend

    def ported(self, case: Case, **options) -> Runner:
        """The case's port: our engine (split over --tp ranks; `options` go to it: compile,
        device_logits), an hf directory, a plug-in's runner or a served port. What a port
        that computes logits returns is checked at the seam (`harness.seam`); a served port's
        top-K are checked where they are compared."""
        runner = self._port(case, **options)
        if isinstance(runner, Served):
            return runner
        return CheckedRunner(runner, self.config(case.model).vocab_size)

    def runnable(self, case: Case) -> Backend:
        """The case's backend, or a skip (a fail, if required) where its hardware, dtype or
        port cannot run it: checked before any reference work is done for it."""
        backend = self.backend(case)
        if self.settings.int8_problem(case):  # the default int8 dtypes of an hf port
            pytest.skip(self.settings.int8_problem(case))
        return backend

    def _port(self, case: Case, **options) -> Runner:
        spec = self.settings.port(case)
        backend = None if spec.served else self.runnable(case)
        request = PortRequest(case, spec, self.settings, self.weights, backend,
                              tokenizer=lambda: self.tokenizer(case.model),
                              config=self.config(case.model),
                              log_dir=self.run_dir or self.settings.results_root,
                              options=options)
        key = (("served", case.model, spec.name) if spec.served else
               ("port", spec.kind, case.model, case.hardware, case.dtype, case.port,
                *sorted(options.items())))
        return self._get(key, lambda: PORT_KINDS[spec.kind](request))

    def is_served(self, case: Case) -> bool:
        """Whether the case's port is a server (no model in this process)."""
        return self.settings.port(case).served

    def reference(self, model: str, dtype: str = "fp32") -> ReferenceRunner:
        """transformers from the model's float weights; an int8 dtype is simulated in
        floating point (`fake_quantize_`), in that scheme's activation dtype."""
        if self.references.mode == "stored":
            raise ReferenceStoreError(f"--reference-mode stored never loads the reference model "
                                      f"({model} {dtype}), and this check needs it; run it with "
                                      "--reference-mode auto or live")
        weights = self.weights.weights(model)
        if not weights.source.is_dir():
            raise FileNotFoundError(f"{weights.path}: the float checkpoint it was made from, "
                                    f"{weights.source}, is not there (the transformers "
                                    "reference reads it)")
        return self._get(("reference", model, dtype), lambda: ReferenceRunner(
            weights.source, Precision.of(dtype, "cpu"), lm_head=self.settings.quantize_lm_head))

    def reference_outputs(self, model: str, kind: str, compute, **fields) -> dict:
        """What `compute()` (which asks for the reference model itself) gives for this `kind`
        and `fields` (shape, prompt digest, dtype...), computed once per run and, with
        --reference-store, once per store."""
        key = {"format": ENTRY_FORMAT, "code": REFERENCE_CODE, "kind": kind, "model": model,
               **fields,
               "transformers": transformers.__version__, "torch": torch.__version__.split("+")[0],
               "quantize_lm_head": self.settings.quantize_lm_head}
        if self.references.directory is not None:  # across runs: the checkpoint's content
            key["checkpoint"] = self._checkpoint_digest(model)
        return self.references.get(key, compute)

    def _checkpoint_digest(self, model: str) -> str:
        """The reference checkpoint's and tokenizer's content (hashed once per file version,
        remembered in the cache directory)."""
        if model not in self._digests:
            weights = self.weights.weights(model)
            cache = self.settings.cache_dir / "content-digests.json"
            parts = {directory_digest(weights.source, cache),
                     directory_digest(weights.files, cache)}
            self._digests[model] = "+".join(sorted(parts))
        return self._digests[model]

    def config(self, model: str):
        """The model's structure as registered (its positions, vocabulary, ...)."""
        from models.config import get_config

        return get_config(model)

    def tokenizer(self, model: str):
        from transformers import AutoTokenizer

        files = self.weights.weights(model).files
        return self._get(("tokenizer", model), lambda: AutoTokenizer.from_pretrained(files))
