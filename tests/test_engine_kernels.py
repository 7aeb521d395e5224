"""The engine's compiled decode and its one-query attention against the eager and SDPA paths."""

import pytest
import torch
import torch.nn.functional as F

from models.attention import one_query_attention
from models.config import TINY_MODELS
from models.engine import Engine
from models.layers import CPU_DENSE, Linear, can_use_cpu_dense
from models.loading import build_model, load_model
from models.precision import FP32, Precision
from models.transformer import streamed_weight_bytes, weight_bytes
from tests.conftest import tiny_checkpoint, tiny_model
from tests.test_engine import ATOL, BF16_ATOL, _prompt


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["falcon-tiny", "bloom-tiny"])
def test_compiled_decode_matches_eager(name, dtype):
    """Compiled, one engine serves a padded batch, one row unpadded, then a prompt that needs
    a larger cache, and gives eager's logits throughout. In bf16 its one-token steps attend
    through `one_query_attention`: under the padding mask, and Bloom's ALiBi bias."""
    model = load_model(tiny_checkpoint(name), dtype=dtype)
    atol = BF16_ATOL if dtype == torch.bfloat16 else ATOL
    ids, mask = _prompt()
    long = torch.randint(3, 49152, (1, 40), generator=torch.Generator().manual_seed(4))
    batches = [(ids, mask), (ids[:1], mask[:1]), (long, torch.ones_like(long))]

    def run(engine, ids, mask):
        return [engine.prefill(ids, mask)] + [engine.decode(ids[:, t]) for t in range(4)]

    eager, compiled = Engine(model, headroom=8), Engine(model, headroom=8, compile=True)
    for batch in batches:
        for a, b in zip(run(eager, *batch), run(compiled, *batch)):
            torch.testing.assert_close(a.float(), b.float(), atol=atol, rtol=0)
    assert compiled.model.cache_shape == (1, 48)


def test_compiled_models_in_one_process_keep_their_own_graphs():
    """Compiled graphs are cached per code object, shared by every model instance: the guards
    on modules and parameters are what keep a model on F.linear, one on `CPU_DENSE` and a bf16
    one apart (a compile that dropped them ran the second model on the first one's graph)."""
    path = tiny_checkpoint("qwen-tiny")
    ids, mask = _prompt()
    models = [build_model(path, FP32, cpu_dense=False), build_model(path, FP32),
              build_model(path, Precision.of("bf16"))]
    for model in models:
        for a, b in zip(_steps(Engine(model), ids[:1], mask[:1]),
                        _steps(Engine(model, compile=True), ids[:1], mask[:1])):
            atol = BF16_ATOL if a.dtype == torch.bfloat16 else ATOL
            torch.testing.assert_close(a.float(), b.float(), atol=atol, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("mask", [None, "bool", "additive"])
def test_one_query_attention_is_sdpas(dtype, kv_heads, mask):
    g = torch.Generator().manual_seed(0)
    B, H, S, D = 2, 4, 7, 8
    q = torch.randn(B, H, 1, D, generator=g).to(dtype)
    k, v = (torch.randn(B, kv_heads, S, D, generator=g).to(dtype) for _ in range(2))
    if mask == "bool":
        mask = torch.arange(S).expand(B, 1, 1, S) >= torch.tensor([0, 3])[:, None, None, None]
    elif mask == "additive":
        mask = torch.randn(B, H, 1, S, generator=g).to(dtype)
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double(),
                                              attn_mask=mask if mask is None or mask.dtype
                                              == torch.bool else mask.double(), enable_gqa=True)
    got = one_query_attention(q, k, v, mask)
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), expected, atol=1e-6 if dtype == torch.float32
                               else 1e-2, rtol=0)


@pytest.mark.parametrize("name", TINY_MODELS)
def test_prompt_in_chunks_equals_one_forward(name):
    model = tiny_model(name)
    ids = torch.randint(3, 49152, (2, 12), generator=torch.Generator().manual_seed(5))
    pad = torch.tensor([0, 3])
    model.allocate_cache(2, 12)
    with torch.inference_mode():
        whole = model(ids, 0, pad, all_logits=True)
        first = model(ids[:, :5], 0, pad, all_logits=True)
        rest = model(ids[:, 5:], 5, pad, all_logits=True)
        unpadded_whole = model(ids, 0, None, all_logits=True)
        model(ids[:, :7], 0, None)
        unpadded_rest = model(ids[:, 7:], 7, None, all_logits=True)
    torch.testing.assert_close(torch.cat([first, rest], dim=1), whole, atol=ATOL, rtol=0)
    torch.testing.assert_close(unpadded_rest, unpadded_whole[:, 7:], atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", TINY_MODELS)
def test_cpu_dense_layers_give_f_linears_logits(name):
    """On the CPU every dense layer, the tied LM head included (on the embedding's own
    weight), runs on `CPU_DENSE`: eager oneDNN's kernel in fp32, compiled at batch 1 inductor's
    multiply-and-sum. The logits stay those of F.linear to rounding, with the same weights in
    memory."""
    path = tiny_checkpoint(name)
    plain, fast = build_model(path, FP32, cpu_dense=False), build_model(path, FP32)
    layers = [m for m in fast.modules() if isinstance(m, Linear)]
    assert fast.lm_head is not None and fast.lm_head in layers
    assert all(m.method is CPU_DENSE for m in layers)
    if plain.lm_head is None:
        assert fast.lm_head.weight is fast.embed.weight
    assert weight_bytes(fast) == weight_bytes(plain)
    assert streamed_weight_bytes(fast) == streamed_weight_bytes(plain)
    compiled = [Engine(fast, compile=True)] * (name == "falcon-tiny")
    ids, mask = _prompt()
    for batch in (ids, mask), (ids[:1], mask[:1]):  # compiled: oneDNN, then multiply-and-sum
        reference = _steps(Engine(plain), *batch)
        for engine in [Engine(fast), *compiled]:
            for a, b in zip(reference, _steps(engine, *batch)):
                torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_a_compiled_cpu_dense_layer_is_f_linear(dtype):
    """Compiled, one row goes through inductor's multiply-and-sum (summed in float32, as
    F.linear sums half-precision products), more rows through oneDNN in fp32 or F.linear."""
    g = torch.Generator().manual_seed(0)
    with torch.device("meta"):
        layer = Linear(64, 300, bias=True, split="column")
    layer.weight = torch.nn.Parameter(torch.randn(300, 64, generator=g).to(dtype), False)
    layer.bias = torch.nn.Parameter(torch.randn(300, generator=g).to(dtype), False)
    CPU_DENSE.convert(layer)
    compiled = torch.compile(layer, dynamic=False)
    for rows in (1, 3):
        x = torch.randn(1, rows, 64, generator=g).to(dtype)
        expected = F.linear(x, layer.weight, layer.bias)
        for got in layer(x), compiled(x):
            assert got.dtype == dtype and got.shape == expected.shape
            torch.testing.assert_close(got, expected)


def _steps(engine, ids, mask):
    return [engine.prefill(ids, mask, all_logits=True)] + [engine.decode(ids[:, t])
                                                           for t in range(4)]


def test_which_layers_run_on_cpu_dense():
    path = tiny_checkpoint("qwen-tiny")
    bf16, w8a16, w8a8 = (build_model(path, Precision.of(d)) for d in ("bf16", "w8a16", "w8a8"))
    assert all(m.method is CPU_DENSE for m in bf16.modules() if isinstance(m, Linear))
    for model, scheme in (w8a16, "w8a16"), (w8a8, "w8a8"):
        methods = {name: m.method for name, m in model.named_modules() if isinstance(m, Linear)}
        assert methods.pop("lm_head") is CPU_DENSE  # the LM head is not quantized
        assert all(method.scheme == scheme for method in methods.values())
    assert can_use_cpu_dense("cpu", torch.float16)
    assert not can_use_cpu_dense("cuda", torch.float32)
    assert not can_use_cpu_dense("cpu", torch.int8)
