"""A remote-code model file as the source documents ship them (`modeling_alpaca.py` beside a
config.json whose `auto_map` names it): here transformers' Llama under another name, so a
test can tell that the directory's own code ran."""

from transformers import LlamaForCausalLM


class TinyLlamaForCausalLM(LlamaForCausalLM):
    pass
