"""Every kind of port, built-in or plug-in, in one table behind one factory signature.

A factory makes a port's runner from a `PortRequest` (the case, its port's spec, the run's
settings and weights, the backend, the engine's options). `RunnerPool` looks the case's kind
up in `PORT_KINDS` and caches what it makes (a served kind, `PortSpec.served`, once per model
and port whatever the case's hardware and dtype). A plug-in's own
factory keeps its documented signature (`factory(path, model=, precision=, hardware=)`,
`docs/ports.md`); the `plugin` kind adapts it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from harness.seam import check_factory_result

if TYPE_CHECKING:
    from harness.cases import Case
    from harness.devices import Backend
    from harness.ports.options import PortSpec
    from harness.settings import Settings
    from harness.weights import WeightResolver


@dataclass(frozen=True)
class PortRequest:
    """What a factory is given. backend: the case's (None for a served port); options: the
    engine's (compile, device_logits); tokenizer: the model's, loaded on first call;
    config: the model's structure as registered; log_dir: where a server started keeps its
    log."""

    case: Case
    spec: PortSpec
    settings: Settings
    weights: WeightResolver
    backend: Backend | None
    tokenizer: Callable[[], object]
    config: object
    log_dir: Path
    options: dict = field(default_factory=dict)


def engine(request: PortRequest):
    """The ported engine, split over --tp ranks where the run asks for them."""
    settings, case = request.settings, request.case
    path = request.weights.checkpoint(case.model)
    if settings.tp == 1:
        from harness.ports.engine import PortedRunner

        return PortedRunner(path, case.precision, hardware=request.backend,
                            lm_head=settings.quantize_lm_head, **request.options)
    problem = settings.tp_problem(case.model)
    if problem:
        pytest.skip(problem)
    from harness.tp import TensorParallelRunner

    return TensorParallelRunner(path, settings.tp, case.precision, hardware=case.hardware,
                                lm_head=settings.quantize_lm_head, **request.options)


def hf(request: PortRequest):
    """A HuggingFace directory (remote code with --trust-remote-code), per rank under --tp."""
    settings, case = request.settings, request.case
    path, trust = request.weights.port_path(case.model), settings.ports.trust_remote_code
    if settings.tp > 1:
        from harness.tp import TensorParallelRunner

        return TensorParallelRunner(path, settings.tp, case.precision, hardware=case.hardware,
                                    hf=True, trust_remote_code=trust)
    from harness.ports.hf import HFRunner

    return HFRunner(path, hardware=request.backend, dtype=case.precision.dtype,
                    trust_remote_code=trust)


def plugin(request: PortRequest):
    """A team's runner factory, imported from --port plugin:MODULE:ATTR or an entry point."""
    spec, case = request.spec, request.case
    made = spec.factory()(request.weights.port_path(case.model), model=case.model,
                          precision=case.precision, hardware=case.hardware)
    return check_factory_result(made, f"factory {spec.arg}")


def served(request: PortRequest):
    """An OpenAI-compatible server: the --port openai endpoint, or a llama.cpp server the run
    starts on the GGUF file (its log in the run's directory)."""
    from harness.ports.served import ServedRunner, client_of

    settings, spec, case = request.settings, request.spec, request.case
    server, url = None, None
    if spec.kind == "llama-cpp":
        from harness.ports.llama_server import LlamaServer, availability, gguf_of

        usable, why = availability()
        if not usable:
            pytest.skip(f"llama-cpp port: {why}")
        server = LlamaServer(gguf_of(spec), request.log_dir / f"llama-cpp-{case.model}.log",
                             alias=case.model)
        url = server.start() and server.url
    return ServedRunner(client_of(settings.ports, spec, url), request.tokenizer(), request.config,
                        spec=spec, profile=settings.ports.profile_of(spec),
                        logprobs=settings.ports.logprobs,
                        fix_echo_shift=settings.ports.fix_echo_shift, server=server)


PORT_KINDS: dict[str, Callable[[PortRequest], object]] = {
    "engine": engine, "hf": hf, "plugin": plugin, "openai": served, "llama-cpp": served}
