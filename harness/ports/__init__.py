"""Ports that are not our engine: what a team brings to be tested.

`hf`: a HuggingFace model directory (remote code included) on a torch device. `openai`: an
OpenAI-compatible `/v1/completions` server. `topk`: comparing a served port's echoed top-K
log-probabilities with the reference. `llama_server`: the llama.cpp server run as a real port.
"""
