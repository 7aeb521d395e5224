"""Tensor-parallel runs: `pytest ... --tp N` starts the other N - 1 ranks itself.

The pytest process is rank 0. It spawns ranks 1..N-1 (fresh interpreters), and every rank
joins one torch.distributed process group (gloo on CPU, nccl on cuda, hccl on npu), loads
its slice of the model (cut on the fly from a full checkpoint, or read from
`part_model/{rank}`) and runs the same engine call in lockstep: rank 0 broadcasts each call
(prefill, decode, ...) and its inputs, every rank computes, rank 0 returns the logits (the LM
head is replicated, so they are whole). `TensorParallelRunner` is an ordinary runner to the
suites.

A rank that dies ends the run with an error naming it instead of a hang: rank 0 checks the
other ranks before every call, and every collective has a timeout.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist

from harness.devices import get_backend, pinned_precision
from harness.layer_hooks import Recorder
from harness.net import free_port
from harness.runners import right_padded
from models.engine import Engine, generate
from models.loading import build_model
from models.precision import FP32, Precision
from models.transformer import streamed_weight_bytes, weight_bytes

BACKENDS = {"cpu": "gloo", "cuda": "nccl", "npu": "hccl"}
# Every collective's limit. HCCL's own connect timeout defaults to 120 s and Ascend advises
# more on a loaded host; a dead rank is found sooner anyway (checked before every call).
TIMEOUTS = {"cpu": timedelta(seconds=120), "cuda": timedelta(seconds=600),
            "npu": timedelta(seconds=1800)}


class RankFailed(RuntimeError):
    """Another rank of a tensor-parallel run died or stopped answering."""


def _join(rank: int, world_size: int, hardware: str) -> None:
    """Bind this rank to its device, then join the group. nccl and hccl take the current
    device (every rank would otherwise use device 0); a spawned rank imports torch_npu
    itself (with TORCH_DEVICE_BACKEND_AUTOLOAD=0 nothing else would); fp32 is pinned on every
    rank as on rank 0. Under nccl a failed or timed-out collective raises instead of
    aborting the process (pytest would die with it)."""
    if hardware == "npu":
        importlib.import_module("torch_npu")
    if hardware == "cuda":
        os.environ.setdefault("TORCH_NCCL_BLOCKING_WAIT", "1")
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "0")
    if hardware != "cpu":
        getattr(torch, hardware).set_device(rank)
    pinned_precision(get_backend(hardware))
    dist.init_process_group(BACKENDS[hardware], rank=rank, world_size=world_size,
                            timeout=TIMEOUTS[hardware])


def _on_cpu(value):
    """Call arguments as rank 0 broadcasts them: a pickled device tensor would be rebuilt on
    rank 0's device in every rank."""
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, (list, tuple)):
        return type(value)(_on_cpu(v) for v in value)
    return value


def _load(checkpoint, rank: int, world_size: int, hardware: str, precision: Precision,
          lm_head: bool, compile: bool, hf: bool = False, trust_remote_code: bool = False):
    """This rank's engine (its part_model directory, or the full checkpoint cut here), or
    with `hf` an hf port's rank: `checkpoint/part_model/{rank}` loaded by transformers under
    the environment torchrun gives that rank (the group is already up, so its modeling code
    finds torch.distributed initialised, as under torchrun and the seeds' main.py)."""
    if hf:
        from harness.ports.hf import HFRunner, enter_rank

        path = enter_rank(checkpoint, rank, world_size, int(os.environ["MASTER_PORT"]))
        return HFRunner(path, hardware=hardware, dtype=precision.dtype,
                        trust_remote_code=trust_remote_code, device_index=rank)
    device = torch.device("cpu") if hardware == "cpu" else torch.device(hardware, rank)
    model = build_model(checkpoint, precision, rank=rank, world_size=world_size,
                        lm_head=lm_head, device=device)
    return Engine(model, compile=compile)


class _Rank:
    """What every rank runs of a call rank 0 broadcasts: an engine call, or the start
    (`record`, a row) or end (`recorded`) of recording its layer values for localization
    (`harness.numerics.layers`); at the end rank 0 gathers every rank's."""

    def __init__(self, engine):
        self.engine, self.recorder = engine, None

    def run(self, name: str, args: tuple):
        if name == "record":
            self.recorder = Recorder(self.engine.model, *args)
            return None
        if name == "recorded":
            values, self.recorder = self.recorder.close(), None
            gathered = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
            dist.gather_object(values, gathered, dst=0)
            return gathered
        return getattr(self.engine, name)(*args)


def _serve(rank: int, world_size: int, port: int, args: dict) -> None:
    """A rank > 0: join the group, load, then run whatever rank 0 broadcasts."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(args.pop("threads"))
    _join(rank, world_size, args["hardware"])
    worker = _Rank(_load(rank=rank, world_size=world_size, **args))
    dist.barrier()
    while True:
        message = [None]
        dist.broadcast_object_list(message, src=0)
        name, call_args = message[0]
        if name == "stop":
            break
        worker.run(name, call_args)
    dist.destroy_process_group()


class TensorParallelRunner:
    """A runner whose model is split over `world_size` ranks (this process is rank 0): our
    engine, or with `hf` an hf port's `part_model/{rank}` directories."""

    def __init__(self, checkpoint, world_size: int, precision: Precision = FP32, *,
                 hardware: str = "cpu", lm_head: bool = False, compile: bool = False,
                 device_logits: bool = False, hf: bool = False,
                 trust_remote_code: bool = False):
        if dist.is_initialized():
            raise RankFailed("a tensor-parallel group is already running in this process")
        self.world_size, self.device_logits, self.precision = world_size, device_logits, precision
        self.hf = hf
        self._threads = torch.get_num_threads()
        threads = max(1, (os.cpu_count() or 1) // world_size)
        port = free_port()
        args = dict(checkpoint=str(checkpoint), hardware=hardware, precision=precision,
                    lm_head=lm_head, compile=compile, hf=hf,
                    trust_remote_code=trust_remote_code)
        context = multiprocessing.get_context("spawn")
        self.ranks = [context.Process(target=_serve, args=(r, world_size, port,
                                                           {**args, "threads": threads}),
                                      daemon=True, name=f"llmgate-tp-rank{r}")
                      for r in range(1, world_size)]
        for process in self.ranks:
            process.start()
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        torch.set_num_threads(threads)
        try:
            _join(0, world_size, hardware)
            self._engine = _load(rank=0, world_size=world_size, **args)
            dist.barrier()
        except Exception as e:
            self.close()
            raise RankFailed(f"tensor-parallel start failed: {self._dead() or e}") from None
        self._rank = _Rank(self._engine)
        self.model = self._engine.model  # rank 0's slice (its config is the whole model's)
        self.config = self.model.config

    def _dead(self) -> str:
        dead = [f"rank {r} exited with code {p.exitcode}"
                for r, p in enumerate(self.ranks, start=1) if p.exitcode is not None]
        return "; ".join(dead)

    def _call(self, name: str, *args):
        dead = self._dead()
        if dead:
            raise RankFailed(f"tensor-parallel {dead}")
        try:
            dist.broadcast_object_list([(name, _on_cpu(args))], src=0)
            result = self._rank.run(name, args)
        except RuntimeError as e:  # a collective failed or timed out
            raise RankFailed(f"tensor-parallel {name} failed: {self._dead() or e}") from None
        return result

    def _out(self, logits):
        return logits if self.device_logits else logits.float().cpu()

    def prefill(self, input_ids, attention_mask=None, all_logits=False):
        return self._out(self._call("prefill", input_ids, attention_mask, all_logits))

    def decode(self, next_ids):
        return self._out(self._call("decode", next_ids))

    def prefill_shared(self, prefix, suffixes, all_logits=False):
        if self.hf:
            return self._out(self._call("prefill_shared", prefix, suffixes, all_logits))
        return self._out(self._call("prefill_shared", prefix, *right_padded(suffixes),
                                    all_logits))

    def reset(self):
        self._call("reset")

    def reserve(self, new_tokens: int):
        self._call("reserve", new_tokens)

    def release(self):
        self._call("release")

    @property
    def generates_by_decode(self) -> bool:
        """The engine's ranks generate with the harness's loop; an hf port's with its own."""
        return not self.hf

    def generate(self, input_ids, attention_mask, new_tokens):
        if self.hf:  # every rank runs the port's own generation loop
            return self._call("generate", input_ids, attention_mask, new_tokens)
        return generate(_GroupEngine(self), input_ids, attention_mask, new_tokens,
                        ignore_eos=True)

    def weight_bytes(self) -> int:
        return weight_bytes(self.model)

    def streamed_weight_bytes(self) -> int:
        return streamed_weight_bytes(self.model)

    @contextmanager
    def recording(self, row: int):
        """Every rank records its layer values on `row` while the block runs; the list it
        yields then holds one dict per rank (`harness.layer_hooks.Recorder`)."""
        per_rank = []
        self._call("record", row)
        try:
            yield per_rank
        finally:
            per_rank += self._call("recorded")

    def close(self) -> None:
        """Stop the other ranks and leave the group (safe to call twice)."""
        if dist.is_initialized():
            try:
                if not self._dead():
                    dist.broadcast_object_list([("stop", ())], src=0)
            except RuntimeError:
                pass
            dist.destroy_process_group()
        for process in self.ranks:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
        torch.set_num_threads(self._threads)


class _GroupEngine:
    """The Engine calls of a tensor-parallel runner, run by every rank (for `generate`)."""

    def __init__(self, runner: TensorParallelRunner):
        self._runner = runner
        self.model = runner.model

    def __getattr__(self, name: str):
        return lambda *args: self._runner._call(name, *args)
