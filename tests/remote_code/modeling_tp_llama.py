"""A tensor-parallel remote-code model file in the seeds' manner (`modeling_*_parallel_*.py`
in each `part_model/{rank}` directory): each rank holds its share of the attention heads and
of the MLP's intermediate width, and sums the partial outputs of the attention's and the
MLP's output projections across ranks with `torch.distributed.all_reduce`, relying on the
process group the launcher (torchrun, or llmgate's ranks) set up."""

import torch.distributed as dist
from transformers import LlamaForCausalLM


def _sum_over_ranks(module, inputs, output):
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(output)
    return output


class ParallelLlamaForCausalLM(LlamaForCausalLM):
    def __init__(self, config):
        super().__init__(config)
        for layer in self.model.layers:
            layer.self_attn.o_proj.register_forward_hook(_sum_over_ranks)
            layer.mlp.down_proj.register_forward_hook(_sum_over_ranks)
