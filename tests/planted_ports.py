"""Ports with one planted bug each, for the layer localization to find: remote-code
directories (transformers' Llama with one layer changed, run by the hf port) and an engine
with one layer's norm changed. The planted place is the answer each test expects."""

import json
import shutil
import textwrap
from pathlib import Path

from harness.ports.engine import PortedRunner
from models.precision import FP32

SCALED_MLP = textwrap.dedent('''
    """transformers' Llama whose layer 1 MLP output is 10% too large (a fused kernel's
    wrong scale)."""
    from transformers import LlamaForCausalLM


    def _scaled(module, inputs, output):
        return output * 1.1


    class PlantedLlamaForCausalLM(LlamaForCausalLM):
        def __init__(self, config):
            super().__init__(config)
            self.model.layers[1].mlp.register_forward_hook(_scaled)
''')

WRONG_ROTARY_BASE = textwrap.dedent('''
    """transformers' Llama whose layer 1 attention rotates by a rotary base 100 times too
    small (the other layers' is right)."""
    import copy

    from transformers import LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding


    class PlantedLlamaForCausalLM(LlamaForCausalLM):
        def __init__(self, config):
            super().__init__(config)
            wrong = copy.deepcopy(config)
            wrong.rope_parameters = {**config.rope_parameters,
                                     "rope_theta": config.rope_parameters["rope_theta"] / 100}
            made = []

            def wrong_base(module, args, kwargs):
                if not made:  # built at the first call: weights load on the meta device
                    made.append(LlamaRotaryEmbedding(wrong))
                hidden = kwargs["hidden_states"]
                kwargs["position_embeddings"] = made[0](hidden, kwargs["position_ids"])
                return args, kwargs
            self.model.layers[1].self_attn.register_forward_pre_hook(wrong_base,
                                                                     with_kwargs=True)
''')

# The seeds' tensor-parallel modeling file, except that rank 1 keeps its own partial sum of
# layer 0's MLP instead of the all-reduced one (it still joins the collective). Rank 0's
# values stay right until layer 1 sums rank 1's share, computed from the wrong input.
SKIPS_ALL_REDUCE = textwrap.dedent('''
    """A tensor-parallel Llama whose rank 1 skips the all-reduce of layer 0's MLP output."""
    import torch.distributed as dist
    from transformers import LlamaForCausalLM


    def _sum_over_ranks(skip):
        def hook(module, inputs, output):
            if dist.is_initialized() and dist.get_world_size() > 1:
                if skip and dist.get_rank() == 1:
                    dist.all_reduce(output.clone())
                    return output
                dist.all_reduce(output)
            return output
        return hook


    class ParallelLlamaForCausalLM(LlamaForCausalLM):
        def __init__(self, config):
            super().__init__(config)
            for i, layer in enumerate(self.model.layers):
                layer.self_attn.o_proj.register_forward_hook(_sum_over_ranks(False))
                layer.mlp.down_proj.register_forward_hook(_sum_over_ranks(i == 0))
''')


def remote_code_port(source: Path, out: Path, code: str,
                     class_name: str = "PlantedLlamaForCausalLM") -> Path:
    """`source`'s weights in `out` beside `code` as `modeling_planted.py`, named by
    config.json's auto_map."""
    shutil.copytree(source, out)
    (out / "modeling_planted.py").write_text(code)
    config = json.loads((out / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": f"modeling_planted.{class_name}"}
    (out / "config.json").write_text(json.dumps(config))
    return out


def norm_eps(path, *, model, precision, hardware):
    """Our engine, with layer 1's attention norm epsilon 1.0 instead of the checkpoint's:
    the tiny model's hidden states are large (mean square ~150), so a change of 1e-2 moves
    that norm's output by only 3e-5, below the fp32 tolerance."""
    runner = PortedRunner(path, precision or FP32, hardware=hardware)
    runner.model.blocks[1].attn_norm.eps = 1.0
    return runner
