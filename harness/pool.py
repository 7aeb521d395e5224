"""The runners a pytest session has loaded, reused across tests, and the hardware gate.

A case asks the pool for its port (`ported`) and for the transformers reference
(`reference`); each is loaded once and kept while it is among the most recent few models.
Unavailable hardware or dtype skips the case with the reason (or fails it, if the run requires
that hardware).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest

from harness.cases import Case
from harness.devices import Backend, get_backend
from harness.runners import PortedRunner, ReferenceRunner, Runner
from harness.settings import Settings
from models.precision import Precision


class RunnerPool:
    """Loaded runners, reused across tests; only the most recent few models stay in memory."""

    def __init__(self, settings: Settings, keep_models: int = 2, run_dir: Path | None = None):
        """run_dir: where a server the run starts (llama-cpp ports) keeps its log."""
        self.settings, self.keep_models, self.run_dir = settings, keep_models, run_dir
        self._runners: OrderedDict[tuple, object] = OrderedDict()  # runners, tokenizers

    def _get(self, key: tuple, make):
        if key not in self._runners:
            models = list(dict.fromkeys(k[1] for k in self._runners))
            if key[1] not in models and len(models) >= self.keep_models:
                for k in [k for k in self._runners if k[1] == models[0]]:
                    self._drop(k)
            if key[0] == "tp":  # one tensor-parallel group at a time
                for k in [k for k in self._runners if k[0] == "tp"]:
                    self._drop(k)
            self._runners[key] = make()
        self._runners.move_to_end(key)
        return self._runners[key]

    def _drop(self, key: tuple) -> None:
        runner = self._runners.pop(key)
        if hasattr(runner, "close"):
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
        return backend

    def ported(self, case: Case, **options) -> Runner:
        """The case's port: our engine (split over --tp ranks; `options` go to it: compile,
        device_logits), an hf directory, a plug-in's runner or a served port."""
        spec = self.settings.port(case)
        if spec.served:
            return self.served(case)
        backend = self.backend(case)
        settings = self.settings
        if spec.kind == "hf" and settings.tp > 1:
            from harness.tp import TensorParallelRunner

            key = ("hf-tp", case.model, case.hardware, case.dtype, case.port)
            return self._get(key, lambda: TensorParallelRunner(
                settings.port_path(case.model), settings.tp, case.precision,
                hardware=case.hardware, hf=True,
                trust_remote_code=settings.ports.trust_remote_code))
        if spec.kind == "hf":
            from harness.ports.hf import HFRunner

            key = ("hf", case.model, case.hardware, case.dtype, case.port)
            return self._get(key, lambda: HFRunner(
                settings.port_path(case.model), hardware=backend, dtype=case.precision.dtype,
                trust_remote_code=settings.ports.trust_remote_code))
        if spec.kind == "plugin":
            key = ("plugin", case.model, case.hardware, case.dtype, case.port)
            return self._get(key, lambda: spec.factory()(
                settings.port_path(case.model), model=case.model, precision=case.precision,
                hardware=case.hardware))
        path = settings.checkpoint(case.model)
        tp, lm_head = settings.tp, settings.quantize_lm_head
        if tp == 1:
            key = ("ported", case.model, case.hardware, case.dtype, *sorted(options.items()))
            return self._get(key, lambda: PortedRunner(path, case.precision, hardware=backend,
                                                       lm_head=lm_head, **options))
        problem = settings.tp_problem(case.model)
        if problem:
            pytest.skip(problem)
        from harness.tp import TensorParallelRunner

        key = ("tp", case.model, case.hardware, case.dtype, *sorted(options.items()))
        return self._get(key, lambda: TensorParallelRunner(
            path, tp, case.precision, hardware=case.hardware, lm_head=lm_head, **options))

    def served(self, case: Case):
        """The served port of the case's model: a server the run starts (llama-cpp, its log
        in the run's directory) or the --endpoint given."""
        from harness.ports.served import ServedRunner

        settings, spec = self.settings, self.settings.port(case)

        def make():
            server, url = None, None
            if spec.kind == "llama-cpp":
                from harness.ports.llama_server import LlamaServer, availability, gguf_of

                usable, why = availability()
                if not usable:
                    pytest.skip(f"llama-cpp port: {why}")
                log = (self.run_dir or settings.results_root) / f"llama-cpp-{case.model}.log"
                server = LlamaServer(gguf_of(spec), log, alias=case.model)
                url = server.start() and server.url
            runner = ServedRunner(settings.ports.client(spec, url), self.tokenizer(case.model),
                                  self.config(case.model), spec=spec,
                                  profile=settings.ports.profile_of(spec),
                                  logprobs=settings.ports.logprobs,
                                  fix_echo_shift=settings.ports.fix_echo_shift, server=server)
            return runner
        return self._get(("served", case.model, spec.name), make)

    def reference(self, model: str, dtype: str = "fp32") -> ReferenceRunner:
        """transformers from the model's float weights; an int8 dtype is simulated in
        floating point (`fake_quantize_`), in that scheme's activation dtype."""
        weights = self.settings.weights(model)
        if not weights.source.is_dir():
            raise FileNotFoundError(f"{weights.path}: the float checkpoint it was made from, "
                                    f"{weights.source}, is not there (the transformers "
                                    "reference reads it)")
        return self._get(("reference", model, dtype), lambda: ReferenceRunner(
            weights.source, Precision.of(dtype, "cpu"), lm_head=self.settings.quantize_lm_head))

    def config(self, model: str):
        """The model's structure as registered (its positions, vocabulary, ...)."""
        from models.config import get_config

        return get_config(model)

    def tokenizer(self, model: str):
        from transformers import AutoTokenizer

        files = self.settings.weights(model).files
        return self._get(("tokenizer", model), lambda: AutoTokenizer.from_pretrained(files))
