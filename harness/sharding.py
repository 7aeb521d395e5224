"""--shard K/N: each host runs a deterministic part of one selection, each model whole on one
part (its weights load once per host); `llmgate merge` joins the parts."""

from __future__ import annotations

import zlib


def shard_models(models: list[str], shards: int) -> dict[str, int]:
    """Model -> shard index (0-based): each model whole on one shard (its weights load once
    per host), the models with most cases first, each to the least loaded shard. The same
    selection always splits the same way."""
    counts: dict[str, int] = {}
    for model in models:
        counts[model] = counts.get(model, 0) + 1
    loads, owner = [0] * shards, {}
    for model in sorted(counts, key=lambda m: (-counts[m], m)):
        index = loads.index(min(loads))
        owner[model], loads[index] = index, loads[index] + counts[model]
    return owner


def outside_shard(items, case_of, shard: tuple[int, int]) -> list:
    """The collected items another shard runs: a case item by its model's shard, any other
    item by a hash of its node id."""
    index, shards = shard
    owner = shard_models([c.model for item in items if (c := case_of(item))], shards)
    return [item for item in items
            if (owner.get(case_of(item).model) if case_of(item)
                else zlib.crc32(item.nodeid.encode()) % shards) != index - 1]
