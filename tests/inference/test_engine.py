"""The fast generation engine: token-for-token equality with `model.generate`, log-probs equal to
a full recompute, EOS handling, sampling filters checked on hand-made logits, input errors.

The models are randomly initialised with `initializer_range=0.2` (10x the default): with the
default the untrained model just repeats its last input token, which would let position or
cache bugs go unnoticed; the wider init gives varied continuations whose top-2 logit gaps stay
well above fp32 rounding, so greedy comparisons are stable.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from minigpt.errors import UserError
from minigpt.inference import (
    GenerationEngine,
    apply_repetition_penalty,
    filter_logits,
    sample_next_token,
)
from minigpt.model import MiniGPTConfig, MiniGPTForCausalLM

VOCAB = 512
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [300, 12], [100, 200, 300, 7], [42]]


def make_model(num_key_value_heads: int = 2, **overrides) -> MiniGPTForCausalLM:
    torch.manual_seed(0)
    cfg = MiniGPTConfig.from_preset(
        "tiny",
        vocab_size=VOCAB,
        num_key_value_heads=num_key_value_heads,
        initializer_range=0.2,
        eos_token_id=None,
        max_position_embeddings=64,
        **overrides,
    )
    return MiniGPTForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def model() -> MiniGPTForCausalLM:
    return make_model()


def hf_greedy(model, ids, mask, n, **kw):
    with torch.no_grad():
        return model.generate(
            ids, attention_mask=mask, max_new_tokens=n, do_sample=False, pad_token_id=1, **kw
        )


def completion_logprobs(model, out) -> torch.Tensor:
    """log p_model(token) of every completion token by one full forward over `sequences`."""
    p = out.prompt_mask.shape[1]
    with torch.no_grad():
        logits = model(out.sequences, attention_mask=out.attention_mask).logits.float()
    logp = logits[:, p - 1 : -1].log_softmax(-1)  # position t predicts token t + 1
    return logp.gather(2, out.completion_ids[..., None]).squeeze(2)


# ------------------------------------------------------------------ equality with model.generate


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_batch1_matches_model_generate(model, prompt):
    engine = GenerationEngine(model)
    out = engine.generate([prompt], 24, do_sample=False)
    ids = torch.tensor([prompt])
    expected = hf_greedy(model, ids, torch.ones_like(ids), 24)
    assert out.sequences.shape == (1, len(prompt) + 24)
    assert torch.equal(out.sequences, expected)
    # The continuation is not a trivial repeat, so positions and the cache are exercised.
    assert len(set(out.completion_ids[0].tolist())) > 5


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_left_padded_batch_matches_model_generate_and_single_rows(kv_heads):
    model = make_model(num_key_value_heads=kv_heads)
    engine = GenerationEngine(model)
    out = engine.generate(PROMPTS, 20, do_sample=False)
    p = max(len(x) for x in PROMPTS)
    assert out.prompt_mask.tolist() == [[0] * (p - len(x)) + [1] * len(x) for x in PROMPTS]
    assert out.sequences[:, :p][out.prompt_mask == 0].eq(1).all()  # left padding is the pad id
    expected = hf_greedy(model, out.sequences[:, :p], out.prompt_mask, 20)
    assert torch.equal(out.sequences, expected)
    # Padding must not change a row: each row equals that prompt decoded alone.
    for row, prompt in enumerate(PROMPTS):
        alone = engine.generate([prompt], 20, do_sample=False)
        assert torch.equal(out.completion_ids[row], alone.completion_ids[0])


def test_tensor_prompts_with_mask_equal_list_prompts(model):
    engine = GenerationEngine(model)
    from_lists = engine.generate(PROMPTS, 8, do_sample=False)
    p = from_lists.prompt_mask.shape[1]
    from_tensor = engine.generate(
        from_lists.sequences[:, :p], 8, do_sample=False, attention_mask=from_lists.prompt_mask
    )
    assert torch.equal(from_tensor.sequences, from_lists.sequences)


def test_repetition_penalty_greedy_matches_model_generate(model):
    # Unpadded prompts: transformers also penalises pad ids present in input_ids, we do not.
    engine = GenerationEngine(model)
    for prompt in PROMPTS[:2]:
        out = engine.generate([prompt], 20, do_sample=False, repetition_penalty=1.5)
        ids = torch.tensor([prompt])
        expected = hf_greedy(model, ids, torch.ones_like(ids), 20, repetition_penalty=1.5)
        assert torch.equal(out.sequences, expected)
        plain = engine.generate([prompt], 20, do_sample=False)
        assert not torch.equal(out.sequences, plain.sequences)  # the penalty did change something


# ------------------------------------------------------------------ EOS


def test_eos_stops_only_its_row_and_pads_after(model):
    free = GenerationEngine(model).generate(PROMPTS[:2], 20, do_sample=False)
    row0, row1 = free.completion_ids[0].tolist(), free.completion_ids[1].tolist()
    # An id that row 0 produces at step j (first time) and row 1 never produces.
    j = next(i for i, t in enumerate(row0) if t not in row1 and t not in row0[:i] and i >= 2)
    eos = row0[j]
    engine = GenerationEngine(model, eos_token_id=[VOCAB - 1, eos], pad_token_id=3)
    out = engine.generate(PROMPTS[:2], 20, do_sample=False, return_logprobs=True)
    assert out.completion_ids[0, : j + 1].tolist() == row0[: j + 1]
    assert out.completion_ids[0, j + 1 :].eq(3).all()
    assert out.completion_mask[0].tolist() == [1] * (j + 1) + [0] * (20 - j - 1)
    assert out.logprobs[0, j + 1 :].eq(0).all()
    assert out.completion_ids[1].tolist() == row1
    assert out.completion_mask[1].eq(1).all()
    # Alone, the row that stops ends the loop early: N = j + 1 steps.
    alone = engine.generate(PROMPTS[:1], 20, do_sample=False)
    assert alone.completion_ids.shape == (1, j + 1)
    # stop_on_eos=False keeps going through the EOS id.
    assert engine.generate(PROMPTS[:1], 20, do_sample=False, stop_on_eos=False).completion_ids[0].tolist() == row0
    # The stream yields the tokens before the EOS, not the EOS itself.
    assert list(engine.stream(PROMPTS[0], 20, do_sample=False)) == row0[:j]


def test_eos_defaults_to_model_config():
    model = make_model()
    free = GenerationEngine(model).generate(PROMPTS[:1], 12, do_sample=False).completion_ids[0].tolist()
    model.config.eos_token_id = free[4]
    first = free.index(free[4])
    out = GenerationEngine(model).generate(PROMPTS[:1], 12, do_sample=False)
    assert out.completion_ids.shape[1] == first + 1


# ------------------------------------------------------------------ log-probs


def test_logprobs_equal_full_forward_recompute(model):
    engine = GenerationEngine(model)
    out = engine.generate(
        PROMPTS, 16, temperature=0.7, top_k=20, top_p=0.9, repetition_penalty=1.3, seed=3, return_logprobs=True
    )
    assert out.logprobs.dtype == torch.float32 and out.logprobs.shape == (len(PROMPTS), 16)
    expected = completion_logprobs(model, out)
    # Raw model log-probs at temperature 1, not those of the penalised/tempered/filtered ones.
    torch.testing.assert_close(out.logprobs, expected, atol=1e-4, rtol=0)
    assert not torch.allclose(out.sampling_logprobs, out.logprobs, atol=1e-2)
    assert (out.sampling_logprobs <= 0).all()


def test_top_k_1_sampling_equals_greedy(model):
    engine = GenerationEngine(model)
    greedy = engine.generate(PROMPTS, 16, do_sample=False, return_logprobs=True)
    sampled = engine.generate(PROMPTS, 16, do_sample=True, temperature=1.3, top_k=1, seed=0, return_logprobs=True)
    assert torch.equal(sampled.sequences, greedy.sequences)
    # A one-token distribution has probability 1: log-prob 0 under the sampling distribution.
    assert sampled.sampling_logprobs.abs().max() < 1e-6
    torch.testing.assert_close(sampled.logprobs, greedy.logprobs)


def test_seeded_sampling_is_reproducible_and_seed_dependent(model):
    engine = GenerationEngine(model)
    a = engine.generate(PROMPTS, 24, temperature=1.5, seed=11)
    b = engine.generate(PROMPTS, 24, temperature=1.5, seed=11)
    c = engine.generate(PROMPTS, 24, temperature=1.5, seed=12)
    assert torch.equal(a.sequences, b.sequences)
    assert not torch.equal(a.sequences, c.sequences)
    streamed = []
    for token in engine.stream(PROMPTS[2], 24, temperature=1.5, seed=11):
        assert not torch.is_inference_mode_enabled()  # the engine's mode must not leak to the caller
        streamed.append(token)
    assert streamed == engine.generate([PROMPTS[2]], 24, temperature=1.5, seed=11).completion_ids[0].tolist()


def test_outputs_are_ordinary_tensors_usable_for_training(model):
    out = GenerationEngine(model).generate(PROMPTS, 4, do_sample=False, return_logprobs=True)
    assert not out.sequences.is_inference() and not out.logprobs.is_inference()
    loss = model(out.sequences, attention_mask=out.attention_mask).logits.float().mean()
    loss.backward()  # would raise if `sequences` were an inference tensor saved for backward
    assert model.lm_head.weight.grad is not None
    model.zero_grad(set_to_none=True)


def test_bf16_decoding_stays_close_to_fp32(model):
    out = GenerationEngine(model, dtype=torch.bfloat16).generate(PROMPTS, 12, do_sample=False, return_logprobs=True)
    assert next(model.parameters()).dtype == torch.float32  # the model itself is untouched
    # bf16 log-probs of the chosen tokens agree with the exact fp32 recompute to bf16 accuracy
    # (this wide-init model has large logits, so bf16 rounding reaches a few 0.1 at worst; a
    # position or cache bug shifts log-probs by whole nats).
    err = (out.logprobs - completion_logprobs(model, out)).abs()
    assert err.mean() < 0.1 and err.max() < 0.5
    # and the first greedy token (short context, little rounding) equals the fp32 engine's.
    fp32 = GenerationEngine(model).generate(PROMPTS, 1, do_sample=False)
    assert torch.equal(out.completion_ids[:, 0], fp32.completion_ids[:, 0])


# ------------------------------------------------------------------ sampling helpers


def test_repetition_penalty_hand_computed():
    logits = torch.tensor([[2.0, -1.0, 0.5, -0.5, 3.0]])
    seen = torch.tensor([[True, True, False, False, True]])
    # seen and positive -> /2, seen and negative -> *2, unseen unchanged.
    expected = torch.tensor([[1.0, -2.0, 0.5, -0.5, 1.5]])
    assert torch.equal(apply_repetition_penalty(logits, seen, 2.0), expected)
    assert torch.equal(logits, torch.tensor([[2.0, -1.0, 0.5, -0.5, 3.0]]))  # input not modified


def test_top_p_never_samples_outside_the_nucleus():
    probs = torch.tensor([0.5, 0.3, 0.1, 0.06, 0.04])
    logits = probs.log().repeat(20000, 1)
    gen = torch.Generator().manual_seed(0)
    # Mass above token 1 is 0.5 < 0.75 (kept); above token 2 it is 0.8 >= 0.75 (dropped).
    tokens = sample_next_token(logits, top_p=0.75, generator=gen)
    assert set(tokens.tolist()) == {0, 1}
    # Renormalised nucleus: P(0) = 0.5 / 0.8 = 0.625; 20000 draws -> std 0.0034.
    assert abs(tokens.eq(0).float().mean().item() - 0.625) < 0.02
    # A tiny top_p still keeps the most likely token.
    assert sample_next_token(logits[:50], top_p=1e-4, generator=gen).eq(0).all()
    # top_k=2 keeps the two largest logits; temperature -> 0 limit is the argmax.
    assert set(sample_next_token(logits, top_k=2, generator=gen).tolist()) == {0, 1}


@pytest.mark.parametrize("top_p", [0.3, 0.9, 0.97])
def test_top_p_keeps_the_same_tokens_as_transformers(top_p):
    """The sort-free nucleus (numpy value sort + threshold) keeps exactly the tokens that
    `transformers`' TopPLogitsWarper keeps, on peaked and on flat random rows."""
    from transformers.generation.logits_process import TopPLogitsWarper

    gen = torch.Generator().manual_seed(int(top_p * 100))
    logits = torch.randn(64, 500, generator=gen) * torch.linspace(0.05, 6.0, 64)[:, None]
    ours = torch.isfinite(filter_logits(logits, top_p=top_p))
    theirs = torch.isfinite(TopPLogitsWarper(top_p)(None, logits.clone()))
    assert torch.equal(ours, theirs)
    assert ours.sum(-1).min() >= 1 and ours.sum(-1).max() > 1


def test_prepacked_bf16_linear_is_bit_identical_and_used(model):
    """oneDNN-prepacked bf16 weights give exactly F.linear's result for any leading shape, and
    the bf16 engine on CPU actually runs its matmuls through them."""
    from minigpt.inference.prepack import Prepacked, can_prepack, packed_linear, prepack

    if not can_prepack():
        pytest.skip("this torch build or CPU cannot prepack bf16 weights for oneDNN (needs avx512bw/vl/dq or avx_ne_convert)")
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(48, 40, generator=gen).bfloat16()
    b = torch.randn(48, generator=gen).bfloat16()
    packed = prepack(w, b)
    assert isinstance(packed, Prepacked)
    for shape in [(1, 40), (16, 1, 40), (3, 7, 40)]:
        x = torch.randn(*shape, generator=gen).bfloat16()
        assert torch.equal(packed_linear(x, packed), F.linear(x, w, b))
    engine = GenerationEngine(model, dtype=torch.bfloat16)
    kinds = {type(v) for v in engine._prepared_linears(torch.bfloat16).values()}
    assert Prepacked in kinds


def test_filter_logits_temperature_and_top_k_values():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    out = filter_logits(logits, temperature=2.0, top_k=2)
    assert out[0, 1].item() == 1.5 and out[0, 2].item() == 1.0
    assert math.isinf(out[0, 0].item()) and math.isinf(out[0, 3].item())


# ------------------------------------------------------------------ errors


def test_context_length_error_names_both_numbers(model):
    engine = GenerationEngine(model)
    with pytest.raises(UserError, match=r"7.*58.*64"):
        engine.generate([PROMPTS[0]], 58)
    assert engine.generate([PROMPTS[0]], 57, do_sample=False).sequences.shape[1] == 64  # exactly fits


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(prompts=[[1, 2], []]), "at least one token"),
        (dict(prompts=[[1, VOCAB]]), "outside the vocabulary"),
        (dict(prompts=[[1, 2]], top_p=0.0), "top_p"),
        (dict(prompts=[[1, 2]], top_k=-1), "top_k"),
        (dict(prompts=[[1, 2]], temperature=0.0, do_sample=True), "temperature"),
        (dict(prompts=[[1, 2]], max_new_tokens=0), "max_new_tokens"),
        (dict(prompts=[[1, 2]], repetition_penalty=0.0), "repetition_penalty"),
        (dict(prompts=torch.tensor([[1, 2, 3]]), attention_mask=torch.tensor([[1, 1, 0]])), "left-padded"),
    ],
)
def test_bad_input_raises_user_error(model, kwargs, match):
    kwargs = {"max_new_tokens": 4, **kwargs}
    with pytest.raises(UserError, match=match):
        GenerationEngine(model).generate(**kwargs)


def test_bad_engine_arguments_raise_user_error(model):
    with pytest.raises(UserError, match="MiniGPTForCausalLM"):
        GenerationEngine(torch.nn.Linear(2, 2))
    with pytest.raises(UserError, match="dtype"):
        GenerationEngine(model, dtype=torch.float64)
    with pytest.raises(UserError, match="one prompt"):
        GenerationEngine(model).stream(torch.tensor([[1, 2]]), 4)


def test_prepared_weights_follow_parameter_updates():
    """Low-precision weights are cached between calls but rebuilt after an in-place update."""
    import torch

    from minigpt.inference import GenerationEngine
    from minigpt.model import MiniGPTConfig, MiniGPTForCausalLM

    torch.manual_seed(0)
    model = MiniGPTForCausalLM(
        MiniGPTConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, initializer_range=0.3)
    ).eval()
    engine = GenerationEngine(model, dtype=torch.bfloat16)
    prompt = [[5, 9, 13, 2]]
    first = engine.generate(prompt, 6, temperature=0, stop_on_eos=False).completion_ids
    again = engine.generate(prompt, 6, temperature=0, stop_on_eos=False).completion_ids
    assert torch.equal(first, again)
    with torch.no_grad():
        model.lm_head.weight.mul_(-1.0)  # flips every logit: the greedy choice must change
    flipped = engine.generate(prompt, 6, temperature=0, stop_on_eos=False).completion_ids
    fresh = GenerationEngine(model, dtype=torch.bfloat16).generate(prompt, 6, temperature=0, stop_on_eos=False).completion_ids
    assert torch.equal(flipped, fresh) and not torch.equal(flipped, first)


def test_int8_weight_only_mode_stays_close_to_the_model():
    """int8 weight-only decoding: per-channel quantization error is small, so the raw
    log-probs of the chosen tokens stay near a full-precision recompute."""
    import torch

    from minigpt.inference import GenerationEngine
    from minigpt.model import MiniGPTConfig, MiniGPTForCausalLM

    torch.manual_seed(0)
    model = MiniGPTForCausalLM(
        MiniGPTConfig(vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, initializer_range=0.3)
    ).eval()
    out = GenerationEngine(model, dtype=torch.int8).generate([[3, 7, 11, 19, 23]], 8, temperature=0, stop_on_eos=False, return_logprobs=True)
    with torch.no_grad():
        logits = model(out.sequences).logits.float().log_softmax(-1)
    p = out.sequences.shape[1] - 8
    ref = logits[0, p - 1 : -1].gather(1, out.completion_ids[0, :, None])[:, 0]
    assert torch.allclose(out.logprobs[0].float(), ref, atol=0.15)


def test_draw_samples_the_given_distribution_and_never_a_zero_probability_token():
    """Inverse-CDF sampling: over 200,000 draws from p = (0.1, 0, 0.2, 0.7) the frequencies are
    within 0.005 of p (5 standard errors of the largest, sqrt(0.7·0.3/2e5) ≈ 0.001), the
    zero-probability token never appears, and a fixed generator seed repeats the draw."""
    from minigpt.inference.sampling import draw

    probs = torch.tensor([[0.1, 0.0, 0.2, 0.7]]).repeat(200_000, 1)
    g = torch.Generator().manual_seed(0)
    toks = draw(probs, g)
    freq = torch.bincount(toks, minlength=4).float() / toks.numel()
    assert freq[1] == 0
    assert torch.allclose(freq, probs[0], atol=0.005)
    again = draw(probs, torch.Generator().manual_seed(0))
    assert torch.equal(toks, again)
