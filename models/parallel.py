"""Tensor parallelism: one entry point, `parallelize_(model, rank, world_size, group)`.

Megatron-style, driven by each `Linear`'s declared split, with no family file involved:
  - attention: the fused q|k|v projection is column-split by heads (each rank keeps its query
    heads and their key/value heads; with fewer key/value heads than ranks, as in multi-query
    models, each rank keeps a copy of the one its query heads use); the output projection is
    row-split and its partial sums are all-reduced; each rank's KV cache holds its own heads;
  - MLP: gate|up (or up) column-split, down row-split and all-reduced;
  - norms, embeddings and the LM head are replicated: every rank computes the full logits,
    which costs vocabulary x hidden weights per rank but no gather per step, and keeps the
    numerics of the unsplit model;
  - ALiBi slopes follow the heads.
Communication is torch.distributed (gloo on CPU, nccl on cuda, hccl on npu); it works on
meta tensors too, so a rank's checkpoint slice can be loaded into a model built already split.
"""

from __future__ import annotations

import torch

from models.attention import Attention
from models.layers import MLP, GatedMLP, Linear


class SplitError(ValueError):
    """A world size that does not divide what it must."""


def check_world_size(config, world_size: int) -> None:
    heads, kv = config.num_heads, config.num_kv_heads
    problems = []
    if heads % world_size:
        problems.append(f"{heads} attention heads")
    if kv % world_size and world_size % kv:
        problems.append(f"{kv} key/value heads (neither divides the other)")
    if config.intermediate_size % world_size:
        problems.append(f"MLP width {config.intermediate_size}")
    if problems:
        raise SplitError(f"{config.name}: world size {world_size} does not divide "
                         f"{', '.join(problems)}")


def _span(rank: int, world_size: int, count: int) -> range:
    size = count // world_size
    return range(rank * size, (rank + 1) * size)


def _rows(heads, head_dim: int, offset: int = 0) -> list[int]:
    return [offset + h * head_dim + d for h in heads for d in range(head_dim)]


def _row_parallel(layer: Linear, cols: list[int], group) -> None:
    bias = layer.bias
    layer.shard(cols=cols)
    if bias is not None:
        layer.bias = None
        layer.reduce_bias = bias.data  # a buffer: added once, after the all-reduce
    layer.tp_group = group if group is not None else torch.distributed.group.WORLD


def parallelize_(model, rank: int, world_size: int, group=None) -> None:
    """Keep this rank's part of every split layer; row-parallel outputs reduce over `group`."""
    check_world_size(model.config, world_size)
    if world_size == 1:
        return
    for module in model.modules():
        if isinstance(module, Attention):
            H, KV, D = module.num_heads, module.num_kv_heads, module.head_dim
            q_heads = _span(rank, world_size, H)
            kv_heads = (_span(rank, world_size, KV) if KV % world_size == 0
                        else range(rank * KV // world_size, rank * KV // world_size + 1))
            rows = (_rows(q_heads, D) + _rows(kv_heads, D, H * D)
                    + _rows(kv_heads, D, (H + KV) * D))
            module.qkv.shard(rows=rows, output_sizes=(len(q_heads) * D, len(kv_heads) * D,
                                                       len(kv_heads) * D))
            _row_parallel(module.out, _rows(q_heads, D), group)
            module.num_heads, module.num_kv_heads = len(q_heads), len(kv_heads)
        elif isinstance(module, GatedMLP):
            part = _span(rank, world_size, module.intermediate)
            module.gate_up.shard(rows=list(part) + [module.intermediate + i for i in part],
                                 output_sizes=(len(part), len(part)))
            _row_parallel(module.down, list(part), group)
            module.intermediate = len(part)
        elif isinstance(module, MLP):
            part = list(_span(rank, world_size, module.up.out_features))
            module.up.shard(rows=part)
            _row_parallel(module.down, part, group)
    if getattr(model, "slopes", None) is not None:  # ALiBi: this rank's heads' slopes
        model.slopes = model.slopes[list(_span(rank, world_size, model.config.num_heads))]
    model.tensor_parallel = (rank, world_size)
