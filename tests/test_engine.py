import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.config import TINY_MODELS
from models.engine import Engine, Sampling, generate, left_padding
from tests.conftest import tiny_model

ATOL = 1e-4  # fp32 tiny models: logits are O(10)
BF16_ATOL = 0.25  # compiled against eager bf16: a few bf16 steps at |logit| 12


@st.composite
def batches(draw):
    """A left-padded batch: prompt lengths per row, then a few decode tokens."""
    batch = draw(st.integers(1, 3))
    width = draw(st.integers(1, 24))
    lengths = [width] + [draw(st.integers(1, width)) for _ in range(batch - 1)]
    steps = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 49152, (batch, width + steps), generator=g)
    mask = torch.ones(batch, width, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, : width - length] = 0
    return ids, mask, width, steps


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(TINY_MODELS), batch=batches())
def test_incremental_decode_equals_full_forward(name, batch):
    ids, mask, width, steps = batch
    engine = Engine(tiny_model(name), headroom=8)
    full_mask = torch.cat([mask, torch.ones(len(ids), steps, dtype=torch.long)], dim=1)
    full = engine.prefill(ids, full_mask, all_logits=True)  # (B, T + steps, V)
    step_logits = [engine.prefill(ids[:, :width], mask)]
    for t in range(steps - 1):
        step_logits.append(engine.decode(ids[:, width + t]))
    for t, logits in enumerate(step_logits):
        torch.testing.assert_close(logits, full[:, width - 1 + t], atol=ATOL, rtol=0)


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(TINY_MODELS), batch=batches())
def test_padded_rows_equal_rows_alone(name, batch):
    ids, mask, width, steps = batch
    engine = Engine(tiny_model(name), headroom=8)
    batched = [engine.prefill(ids[:, :width], mask)]
    batched += [engine.decode(ids[:, width + t]) for t in range(steps - 1)]
    for row in range(len(ids)):
        pad = int((mask[row] == 0).sum())
        alone = [engine.prefill(ids[row:row + 1, pad:width])]
        alone += [engine.decode(ids[row:row + 1, width + t]) for t in range(steps - 1)]
        for a, b in zip(alone, batched):
            torch.testing.assert_close(a[0], b[row], atol=ATOL, rtol=0)


def test_prefill_returns_last_position_unless_all_logits_asked():
    engine = Engine(tiny_model("qwen-tiny"))
    ids = torch.randint(3, 1000, (2, 7))
    last = engine.prefill(ids)
    every = engine.prefill(ids, all_logits=True)
    assert last.shape == (2, 49152) and every.shape == (2, 7, 49152)
    torch.testing.assert_close(every[:, -1], last, atol=ATOL, rtol=0)


def test_right_padding_is_rejected():
    with pytest.raises(ValueError, match="must be left-padded"):
        left_padding(torch.tensor([[1, 1, 0]]))


def test_empty_row_is_rejected():
    with pytest.raises(ValueError, match="a row with no tokens"):
        left_padding(torch.tensor([[1, 1], [0, 0]]))


def test_cache_overflow_is_an_error():
    model = tiny_model("falcon-tiny")
    model.allocate_cache(1, 5)  # the engine keeps a cache that fits: 4 + headroom 1
    engine = Engine(model, headroom=1)
    engine.prefill(torch.randint(3, 1000, (1, 4)))
    engine.decode(torch.tensor([5]))
    with pytest.raises(ValueError, match="1 rows of 6 tokens do not fit the allocated cache "
                                         "of 1 rows x 5"):
        engine.decode(torch.tensor([5]))


@pytest.mark.parametrize("name", ["starcoder-tiny", "qwen-tiny"])  # learned and rotary
def test_prompt_beyond_the_model_positions_is_an_error(name):
    engine = Engine(tiny_model(name))
    with pytest.raises(ValueError, match="513 tokens exceed its 512 positions"):
        engine.prefill(torch.randint(3, 1000, (1, 513)))


def _prompt():
    ids = torch.randint(3, 49152, (2, 6), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    return ids, mask


def test_greedy_generation_is_reproducible_and_fixed_length_ignores_eos():
    engine = Engine(tiny_model("alpaca2-tiny"))
    ids, mask = _prompt()
    first = generate(engine, ids, mask, 10, ignore_eos=True)
    stop = first.tokens[0][0]  # a "stop token" that appears at once
    fixed = generate(engine, ids, mask, 10, stop_tokens=[stop], ignore_eos=True)
    assert fixed.tokens == first.tokens and all(len(t) == 10 for t in fixed.tokens)
    assert fixed.finish_reasons == ["length", "length"]


def test_stop_token_ends_each_row_on_its_own():
    engine = Engine(tiny_model("alpaca2-tiny"))
    ids, mask = _prompt()
    free = generate(engine, ids, mask, 10, ignore_eos=True).tokens
    stop = free[0][3]
    out = generate(engine, ids, mask, 10, stop_tokens=[stop])
    assert out.tokens[0] == free[0][: free[0].index(stop) + 1]
    assert out.finish_reasons[0] == "stop_token"
    if stop not in free[1]:
        assert out.tokens[1] == free[1] and out.finish_reasons[1] == "length"


def test_stop_sequence_matches_decoded_text():
    engine = Engine(tiny_model("bloom-tiny"))
    ids, mask = _prompt()
    free = generate(engine, ids, mask, 8, ignore_eos=True).tokens

    def detokenize(tokens):
        return " ".join(f"t{t}" for t in tokens)

    out = generate(engine, ids, mask, 8, stop_sequences=[f"t{free[0][2]}"], detokenize=detokenize)
    assert out.tokens[0][-1] == free[0][2] and out.finish_reasons[0] == "stop_sequence"
    with pytest.raises(ValueError, match="need a detokenize"):
        generate(engine, ids, mask, 8, stop_sequences=["x"])


def test_sampling_is_seeded_and_top_k_1_is_greedy():
    engine = Engine(tiny_model("starcoder-tiny"))
    ids, mask = _prompt()
    greedy = generate(engine, ids, mask, 6, ignore_eos=True).tokens
    top1 = generate(engine, ids, mask, 6, sampling=Sampling(top_k=1, seed=1),
                    ignore_eos=True).tokens
    assert top1 == greedy
    a = generate(engine, ids, mask, 6, sampling=Sampling(temperature=2.0, seed=7), ignore_eos=True)
    b = generate(engine, ids, mask, 6, sampling=Sampling(temperature=2.0, seed=7), ignore_eos=True)
    c = generate(engine, ids, mask, 6, sampling=Sampling(temperature=2.0, seed=8), ignore_eos=True)
    assert a.tokens == b.tokens and a.tokens != c.tokens


def test_top_p_keeps_only_the_nucleus():
    logits = torch.tensor([[5.0, 4.0, 0.0, -5.0]])
    g = torch.Generator().manual_seed(0)
    drawn = {Sampling(top_p=0.5).sample(logits, g).item() for _ in range(50)}
    assert drawn == {0}
    drawn = {Sampling(top_p=0.9).sample(logits, g).item() for _ in range(200)}
    assert drawn == {0, 1}


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=0), "temperature must be > 0"), (dict(top_p=0), "top_p must be in")])
def test_bad_sampling_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Sampling(**kwargs)
