"""A served port (an OpenAI-compatible server) behind the parts of the Runner contract a
server can give.

A server has no step-by-step decode and returns no full logits: only the top-K
log-probabilities it lists. So `prefill_shared` (multiple-choice scoring) returns, per row,
the next token's log-probabilities where the server listed them and -inf elsewhere (a
log-softmax of that row keeps the listed tokens' order; an answer letter outside the top-K
comes out non-finite, which the accuracy gate fails); `generate` is the server's own greedy
completion; `prompt_topk` is what the numerics suite compares. `prefill` and `decode` raise:
the suites run a served port's own checks instead (teacher forcing over the echoed prompt,
streamed timing).

Prompts go to the server as text (the tokenizer's decoding of the ids), since not every
server takes token ids (llama-cpp-python's does not): the server's own tokenizer runs, as in
production, and the numerics suite checks that it tokenizes as the reference does.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch import Tensor

from harness.ports.openai import EndpointError, EndpointUnsupported, OpenAIClient, Position
from harness.ports.options import PortSettings, PortSpec
from harness.ports.topk import TopK, piece_ids, topk_from_entries
from models.engine import Generation

PROBE = " A"  # a token of its own after any prompt text


def client_of(ports: PortSettings, spec: PortSpec, url: str | None = None) -> OpenAIClient:
    """The client of a served port: `url` (a server the run started), else its endpoint."""
    return OpenAIClient(url or ports.endpoint_of(spec), ports.endpoint_model,
                        api_key_env=ports.api_key_env, timeout=ports.timeout)


def check_endpoints(ports: PortSettings) -> None:
    """Every openai port's server answers now, before any model loads; what each serves
    names its thresholds profile (`PortSettings.profile_of`)."""
    for spec in ports.specs():
        if spec.kind == "openai":
            try:
                info = client_of(ports, spec).health()
                ports.served_names[ports.endpoint_of(spec)] = info.get("model") or ""
            except EndpointError as e:
                raise pytest.UsageError(f"--port {spec.given}: {e}") from None


class ServedRunner:
    world_size = 1
    served = True

    def __init__(self, client: OpenAIClient, tokenizer, config, *, spec: PortSpec,
                 profile: str, logprobs: int, fix_echo_shift: bool = False,
                 concurrency: int = 4, server=None):
        """config: the model's structure (the registry's); profile: its thresholds profile;
        logprobs: K asked per position; concurrency: requests a batch sends at once;
        server: a `LlamaServer` this runner stops when closed."""
        self.client, self.tokenizer, self.config = client, tokenizer, config
        self.server = server
        self.spec, self.profile, self.logprobs = spec, profile, logprobs
        self.fix_echo_shift, self.concurrency = fix_echo_shift, concurrency
        self.pieces = piece_ids(tokenizer)
        client.health()

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()

    def describe(self) -> dict:
        """What every record of a case run on this port says about it."""
        info = self.client.info
        return {"port_kind": self.spec.kind, "endpoint": info.get("endpoint"),
                "server_log": str(self.server.log_path) if self.server else None,
                "served_model": info.get("model"), "server": info.get("server"),
                "server_version": info.get("version"), "port_profile": self.profile,
                "echo_shift_corrected": self.fix_echo_shift}

    def text(self, ids: Tensor) -> str:
        return self.tokenizer.decode(ids.tolist())

    def _map(self, work, items):
        with ThreadPoolExecutor(max(1, min(self.concurrency, len(items)))) as pool:
            return list(pool.map(work, items))

    # -- what the numerics suite compares ---------------------------------------------------

    def prompt_topk(self, text: str) -> tuple[list[Position], TopK]:
        """The echoed prompt's tokens and the top-K at each position (realigned one position
        earlier with `fix_echo_shift`: entry i then holds what the server listed at i - 1)."""
        positions = self.client.prompt_logprobs(text, self.logprobs)
        entries = [p.top for p in positions]
        if self.fix_echo_shift:
            entries = [{}, *entries[:-1]]
        return positions, topk_from_entries(entries, self.pieces)

    # -- the Runner contract, as far as a server gives it ---------------------------------

    def next_distribution(self, text: str) -> dict[int, float]:
        """The top-K {token id: log-probability} of the token after `text`.

        Read off the first generated token's log-probabilities (one cheap request). A server
        that lists nothing there (some do when the token generated is EOS) is asked for the
        echo of `text` + a probe token, whose entry is the distribution before the probe;
        echoing costs far more (llama.cpp's server: about 9x for a 100-token prompt)."""
        try:
            listed = self.client.next_logprobs(text, self.logprobs)
            return {self.pieces[p]: v for p, v in listed.items() if p in self.pieces}
        except EndpointUnsupported:
            positions, port = self.prompt_topk(text + PROBE)
        if positions[-1].token != PROBE:
            raise EndpointError(f"{self.client.base_url}: the probe {PROBE!r} after the prompt "
                                f"was tokenized as {positions[-1].token!r}, not as a token "
                                "of its own")
        return {int(i): float(v) for i, v in zip(port.ids[-1], port.logprobs[-1]) if i >= 0}

    def prefill_shared(self, prefix: Tensor, suffixes: list[Tensor],
                       all_logits: bool = False) -> Tensor:
        if all_logits:
            raise NotImplementedError(f"{self.spec.name} port: a server lists the next "
                                      "token's top-K, not every position's logits")
        rows = [self.text(torch.cat([prefix, suffix])) for suffix in suffixes]
        listed = self._map(self.next_distribution, rows)
        out = torch.full((len(rows), self.config.vocab_size), float("-inf"))
        for row, entry in enumerate(listed):
            for token, logprob in entry.items():
                out[row, token] = logprob
        return out

    def generate(self, input_ids: Tensor, attention_mask: Tensor | None,
                 new_tokens: int) -> Generation:
        """The server's greedy completion of each row (its real tokens, padding dropped);
        a generated piece no single token id decodes to is -1, and a row the server ended
        early (EOS) is shorter."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        rows = [self.text(ids[mask.bool()]) for ids, mask in zip(input_ids, attention_mask)]
        done = self._map(lambda text: self.client.greedy(text, new_tokens), rows)
        tokens = [[self.pieces.get(t, -1) for t in (c.tokens or [])] for c in done]
        return Generation(tokens, [c.finish_reason or "" for c in done], [])

    def complete_text(self, prompts: list[str], max_new_tokens: int, stop: list[str],
                      temperature: float = 0.0, seed: int | None = None) -> list:
        """(completion text, finish reason) per prompt, with the stop sequences."""
        done = self._map(lambda p: self.client.greedy(
            p, max_new_tokens, stop=stop, tokens=False, temperature=temperature,
            seed=seed), prompts)
        return [(c.text, c.finish_reason or "") for c in done]

    def prefill(self, input_ids, attention_mask=None, all_logits=False):
        """The next token's listed log-probabilities per row (padding dropped), as
        `prefill_shared`; every position's (`all_logits`) only through `prompt_topk`."""
        if all_logits:
            raise NotImplementedError(f"{self.spec.name} port: a server gives no full "
                                      "logits; its prompt's top-K come from prompt_topk")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        rows = [ids[mask.bool()] for ids, mask in zip(input_ids, attention_mask)]
        return self.prefill_shared(torch.tensor([], dtype=torch.long), rows)

    def decode(self, next_ids):
        raise NotImplementedError(f"{self.spec.name} port: a server has no step-by-step decode")

    def reset(self) -> None:
        pass

    def reserve(self, new_tokens: int) -> None:
        pass

    def release(self) -> None:
        pass
