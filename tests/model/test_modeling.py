"""Equivalence tests for the MiniGPT model.

The reference is `transformers.LlamaForCausalLM`: MiniGPT uses Llama's parameter names and
math, so loading our state_dict into a Llama built from the equivalent `LlamaConfig` must give
the same logits. Beyond that: the loss against a hand-written cross-entropy, KV-cache decoding
against full recomputation, left padding against unpadded sequences, `generate` against a naive
greedy loop, save/load round trips, and the Llama export loaded where `minigpt` cannot be imported.

Models are tiny (hidden 32–64, 2 layers) and their weights are re-drawn at a larger scale than
the default initialisation, so logits are O(1) and a mistake cannot hide under 1e-5.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig, LlamaForCausalLM

import minigpt
from minigpt.errors import UserError
from minigpt.model import PRESETS, MiniGPTConfig, MiniGPTForCausalLM, count_parameters
from minigpt.model.export import EXPORT_MARKER, export_to_llama
from minigpt.recipes.export import export_command

ATOL = 1e-5
RTOL = 1e-5

BASE = dict(
    vocab_size=128,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    pad_token_id=1,
    eos_token_id=0,
)


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Re-draw every parameter so logits are O(1): matrices N(0, 1/sqrt(fan_in)), norm weights
    in [0.5, 1.5] (so a `(1 + w)` or missing norm weight would show), biases N(0, 0.1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
                p.copy_(0.5 + torch.rand(p.shape, generator=gen))
            elif p.ndim == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))
    return model


def make_model(seed: int = 0, **overrides) -> MiniGPTForCausalLM:
    cfg = MiniGPTConfig(**{**BASE, **overrides})
    torch.manual_seed(seed)
    return randomize_(MiniGPTForCausalLM(cfg), seed).eval()


def llama_twin(kwargs: dict, model: MiniGPTForCausalLM) -> LlamaForCausalLM:
    """A `LlamaForCausalLM` built from a hand-written `LlamaConfig` equal to `kwargs` (the
    MiniGPTConfig arguments), holding `model`'s weights (strict load: every key must match)."""
    kw = {**BASE, **kwargs}
    rope = dict(kw.get("rope_scaling") or {"rope_type": "default"})
    rope["rope_theta"] = kw.get("rope_theta", 1e6)
    hidden, heads = kw["hidden_size"], kw["num_attention_heads"]
    cfg = LlamaConfig(
        vocab_size=kw["vocab_size"],
        hidden_size=hidden,
        intermediate_size=kw["intermediate_size"],
        num_hidden_layers=kw["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=kw.get("num_key_value_heads", heads),
        head_dim=hidden // heads,
        max_position_embeddings=kw["max_position_embeddings"],
        rms_norm_eps=kw.get("rms_norm_eps", 1e-6),
        rope_parameters=rope,
        tie_word_embeddings=kw.get("tie_word_embeddings", True),
        attention_bias=kw.get("attention_bias", False),
        mlp_bias=kw.get("mlp_bias", False),
        hidden_act="silu",
        pad_token_id=kw["pad_token_id"],
        eos_token_id=kw["eos_token_id"],
        bos_token_id=None,
    )
    llama = LlamaForCausalLM(cfg).eval()
    result = llama.load_state_dict(model.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return llama


def left_pad(seqs: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad 1-D id tensors -> (ids (B, T), attention_mask (B, T))."""
    t = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), t), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, t - len(s) :] = s
        mask[i, t - len(s) :] = 1
    return ids, mask


def real_ids(n: int, vocab: int, gen: torch.Generator) -> torch.Tensor:
    """Ids that are neither eos (0) nor pad (1), so padding is unambiguous."""
    return torch.randint(2, vocab, (n,), generator=gen)


# --------------------------------------------------------------------------- Llama parity

PARITY_CONFIGS = {
    "mha-tied-theta1e4": dict(num_attention_heads=4, num_key_value_heads=4, rope_theta=10000.0),
    "gqa2-untied": dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False),
    "mqa-linear-scaling": dict(
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=1,
        rope_theta=10000.0,
        rope_scaling={"rope_type": "linear", "factor": 2.0},
    ),
    "odd-sizes": dict(
        vocab_size=97, hidden_size=48, intermediate_size=100, num_attention_heads=3, num_key_value_heads=1
    ),
    "odd-sizes-untied-biases": dict(
        vocab_size=97,
        hidden_size=48,
        intermediate_size=100,
        num_attention_heads=3,
        num_key_value_heads=3,
        tie_word_embeddings=False,
        attention_bias=True,
        mlp_bias=True,
        rms_norm_eps=1e-5,
    ),
    "yarn": dict(
        num_key_value_heads=2,
        rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
    ),
}


@pytest.mark.parametrize("name", list(PARITY_CONFIGS))
def test_logits_match_transformers_llama(name):
    kwargs = PARITY_CONFIGS[name]
    model = make_model(**kwargs)
    llama = llama_twin(kwargs, model)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, model.config.vocab_size, (3, 20), generator=gen)
    with torch.no_grad():
        ours = model(ids).logits
        ref = llama(ids).logits
    assert ours.shape == (3, 20, model.config.vocab_size)
    assert ref.abs().max() > 0.5, "logits too small for the comparison to mean anything"
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("name", ["gqa2-untied", "mqa-linear-scaling", "odd-sizes"])
def test_logits_match_llama_with_left_padding(name):
    """With a left-padded batch, our default positions (counted over real tokens) must equal
    Llama's logits given those positions explicitly, at every real position."""
    kwargs = PARITY_CONFIGS[name]
    model = make_model(**kwargs)
    llama = llama_twin(kwargs, model)
    gen = torch.Generator().manual_seed(2)
    seqs = [real_ids(n, model.config.vocab_size, gen) for n in (12, 5, 9)]
    ids, mask = left_pad(seqs, pad_id=1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ours = model(ids, attention_mask=mask).logits
        ref = llama(ids, attention_mask=mask, position_ids=positions).logits
    real = mask.bool()
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours[real], ref[real], atol=ATOL, rtol=RTOL)


# --------------------------------------------------------------------------- loss and gradients


def test_loss_equals_hand_computed_shifted_cross_entropy():
    model = make_model(tie_word_embeddings=False)
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, model.config.vocab_size, (2, 7), generator=gen)
    labels = ids.clone()
    labels[0, :3] = -100  # a masked prompt
    labels[1, 5] = -100  # a hole in the middle
    with torch.no_grad():
        out = model(ids, labels=labels)
    logp = out.logits.double().log_softmax(-1)
    # Position t predicts labels[t + 1]; the first label is never a target.
    terms = [
        -logp[b, t, labels[b, t + 1]].item()
        for b in range(2)
        for t in range(6)
        if labels[b, t + 1] != -100
    ]
    assert len(terms) == 6 + 6 - 2 - 1  # row 0 loses targets 1, 2; row 1 loses target 5
    assert out.loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)


@pytest.mark.parametrize("tied", [True, False])
def test_every_parameter_gets_a_gradient(tied):
    model = make_model(tie_word_embeddings=tied, attention_bias=True, mlp_bias=True)
    model.train()
    gen = torch.Generator().manual_seed(4)
    ids = torch.randint(0, model.config.vocab_size, (2, 10), generator=gen)
    model(ids, labels=ids).loss.backward()
    params = list(model.named_parameters())
    assert any("lm_head" in n for n, _ in params) != tied  # tied: lm_head is the embedding
    for name, p in params:
        assert p.grad is not None, f"{name} got no gradient"
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"
        assert torch.isfinite(p.grad).all(), name


# --------------------------------------------------------------------------- KV cache


@pytest.mark.parametrize("cache_arg", ["past_key_values", "cache"])
def test_kv_cache_decoding_equals_full_recompute(cache_arg):
    """Under either name of the cache argument: `past_key_values`, or `cache` (the name
    transformers 5.24's `generate` passes)."""
    model = make_model(num_key_value_heads=1)
    gen = torch.Generator().manual_seed(5)
    ids = torch.randint(0, model.config.vocab_size, (2, 14), generator=gen)
    with torch.no_grad():
        full = model(ids, use_cache=False).logits  # (B, T, V)
        out = model(ids[:, :6], use_cache=True)
        torch.testing.assert_close(out.logits, full[:, :6], atol=ATOL, rtol=RTOL)
        cache = out.cache
        assert cache is not None and cache.get_seq_length() == 6
        for t in range(6, 10):  # one token at a time
            step = model(ids[:, t : t + 1], use_cache=True, **{cache_arg: cache})
            torch.testing.assert_close(step.logits[:, 0], full[:, t], atol=ATOL, rtol=RTOL)
        # a chunk of several tokens on top of the cache needs the causal mask within the chunk
        chunk = model(ids[:, 10:14], use_cache=True, **{cache_arg: cache})
        torch.testing.assert_close(chunk.logits, full[:, 10:14], atol=ATOL, rtol=RTOL)
        assert cache.get_seq_length() == 14


def test_kv_cache_with_left_padding_equals_unpadded_full_forward():
    model = make_model()
    gen = torch.Generator().manual_seed(6)
    seqs = [real_ids(n, model.config.vocab_size, gen) for n in (11, 7)]
    prompts = [s[:-4] for s in seqs]
    ids, mask = left_pad(prompts, pad_id=1)
    with torch.no_grad():
        cache = model(ids, attention_mask=mask, use_cache=True).cache
        for k in range(4):
            tok = torch.stack([s[len(s) - 4 + k] for s in seqs])[:, None]  # (B, 1)
            mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], dim=1)
            step = model(tok, attention_mask=mask, past_key_values=cache, use_cache=True).logits[:, 0]
            for b, s in enumerate(seqs):
                alone = model(s[None, : len(s) - 3 + k], use_cache=False).logits[0, -1]
                torch.testing.assert_close(step[b], alone, atol=ATOL, rtol=RTOL)


# --------------------------------------------------------------------------- padding and generate


def test_left_padded_batch_equals_single_sequences():
    model = make_model(num_attention_heads=4, num_key_value_heads=2)
    gen = torch.Generator().manual_seed(7)
    seqs = [real_ids(n, model.config.vocab_size, gen) for n in (3, 9, 6)]
    ids, mask = left_pad(seqs, pad_id=1)
    with torch.no_grad():
        batch = model(ids, attention_mask=mask).logits
        for b, s in enumerate(seqs):
            alone = model(s[None]).logits[0]
            torch.testing.assert_close(batch[b, -len(s) :], alone, atol=ATOL, rtol=RTOL)


def naive_greedy(model, prompt: torch.Tensor, n: int, banned: int | None) -> torch.Tensor:
    """Greedy decoding by full recomputation, no cache: `prompt (T,) -> (T + n,)`."""
    seq = prompt.clone()
    with torch.no_grad():
        for _ in range(n):
            logits = model(seq[None], use_cache=False).logits[0, -1]
            if banned is not None:
                logits[banned] = -float("inf")
            seq = torch.cat([seq, logits.argmax()[None]])
    return seq


def test_greedy_generate_batched_equals_single_and_naive_loop():
    model = make_model(tie_word_embeddings=False)
    gen = torch.Generator().manual_seed(8)
    seqs = [real_ids(n, model.config.vocab_size, gen) for n in (4, 8, 2)]
    ids, mask = left_pad(seqs, pad_id=1)
    n = 6
    # min_new_tokens bans eos, so every row runs the full n steps; the naive loop bans it too.
    kw = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False)
    batched = model.generate(input_ids=ids, attention_mask=mask, **kw)
    assert batched.shape == (3, ids.shape[1] + n)
    assert torch.equal(batched[:, : ids.shape[1]], ids)
    for b, s in enumerate(seqs):
        single = model.generate(input_ids=s[None], attention_mask=torch.ones(1, len(s), dtype=torch.long), **kw)[0]
        assert torch.equal(single, naive_greedy(model, s, n, banned=model.config.eos_token_id))
        assert torch.equal(batched[b, -n:], single[-n:])
    again = model.generate(input_ids=ids, attention_mask=mask, **kw)
    assert torch.equal(again, batched)


def test_sampling_flags():
    model = make_model()
    gen = torch.Generator().manual_seed(9)
    seqs = [real_ids(n, model.config.vocab_size, gen) for n in (5, 3)]
    ids, mask = left_pad(seqs, pad_id=1)
    n = 8
    common = dict(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n)
    greedy = model.generate(**common, do_sample=False)

    # top_k=1 and a vanishing top_p leave only the arg-max: sampling must reproduce greedy.
    torch.manual_seed(0)
    assert torch.equal(model.generate(**common, do_sample=True, top_k=1, temperature=0.7), greedy)
    torch.manual_seed(1)
    assert torch.equal(model.generate(**common, do_sample=True, top_p=1e-9), greedy)

    # Full flag set: shapes, prompt kept, ids valid, reproducible under a seed.
    flags = dict(do_sample=True, temperature=0.8, top_k=5, top_p=0.9, repetition_penalty=1.3)
    torch.manual_seed(123)
    a = model.generate(**common, **flags)
    torch.manual_seed(123)
    b = model.generate(**common, **flags)
    assert a.shape == (2, ids.shape[1] + n)
    assert torch.equal(a[:, : ids.shape[1]], ids)
    assert ((a >= 0) & (a < model.config.vocab_size)).all()
    assert torch.equal(a, b)

    # Each token sampled with top_k=3 is among the 3 best of a cache-free forward of its prefix.
    torch.manual_seed(7)
    out = model.generate(input_ids=seqs[0][None], max_new_tokens=n, min_new_tokens=n, do_sample=True, top_k=3)[0]
    with torch.no_grad():
        for t in range(len(seqs[0]), len(out)):
            logits = model(out[None, :t], use_cache=False).logits[0, -1]
            logits[model.config.eos_token_id] = -float("inf")
            assert out[t] in logits.topk(3).indices


def test_repetition_penalty_scores_match_hand_computation():
    """Keskar et al. 2019 (CTRL): a seen token's logit l becomes l/p if l > 0, else l·p."""
    model = make_model()
    p = 1.7
    gen = torch.Generator().manual_seed(10)
    prompt = real_ids(6, model.config.vocab_size, gen)
    out = model.generate(
        input_ids=prompt[None],
        max_new_tokens=1,
        do_sample=False,
        repetition_penalty=p,
        output_scores=True,
        return_dict_in_generate=True,
    )
    with torch.no_grad():
        logits = model(prompt[None], use_cache=False).logits[0, -1]
    expected = logits.clone()
    for tok in set(prompt.tolist()):
        expected[tok] = logits[tok] / p if logits[tok] > 0 else logits[tok] * p
    torch.testing.assert_close(out.scores[0][0], expected, atol=ATOL, rtol=RTOL)
    assert out.sequences[0, -1].item() == expected.argmax().item()


# --------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("tied", [True, False])
def test_save_pretrained_roundtrip_through_auto_class(tmp_path, tied):
    model = make_model(tie_word_embeddings=tied, rope_scaling={"rope_type": "linear", "factor": 2.0})
    model.save_pretrained(tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert "config.json" in files and any(f.endswith(".safetensors") for f in files)
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "minigpt"

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, MiniGPTForCausalLM)
    assert loaded.config.rope_parameters["rope_type"] == "linear"
    assert loaded.config.tie_word_embeddings is tied
    shares = loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    assert shares is tied
    ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


# --------------------------------------------------------------------------- export to Llama


def _write_tokenizer(directory: Path, size: int = 97) -> None:
    """A word-level tokenizer of `size` ids (the model's vocabulary), saved the way
    `transformers` saves any fast tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<|endoftext|>", "<|pad|>", "[UNK]", "hello", "world", "mini", "gpt"]
    words += [f"word{i}" for i in range(size - len(words))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|pad|>", unk_token="[UNK]")
    fast.save_pretrained(directory)


_CHILD = textwrap.dedent(
    """
    import json, os, sys
    src = os.path.realpath(sys.argv[1])
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != src]
    try:
        import minigpt  # noqa: F401
        importable = True
    except ImportError:
        importable = False
    if importable:
        print(json.dumps({"minigpt_importable": True}))
        sys.exit(0)
    import numpy as np, torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaForCausalLM
    out_dir, work = sys.argv[2], sys.argv[3]
    model = LlamaForCausalLM.from_pretrained(out_dir).eval()
    ids = torch.from_numpy(np.load(os.path.join(work, "ids.npy")))
    with torch.no_grad():
        logits = model(ids).logits
    np.save(os.path.join(work, "llama_logits.npy"), logits.numpy())
    tok = AutoTokenizer.from_pretrained(out_dir)
    gen = GenerationConfig.from_pretrained(out_dir)
    print(json.dumps({
        "minigpt_importable": False,
        "config_class": type(model.config).__name__,
        "model_type": model.config.model_type,
        "dtype": str(model.dtype),
        "encoded": tok("hello mini gpt world")["input_ids"],
        "max_new_tokens": gen.max_new_tokens,
    }))
    """
)


def test_export_loads_in_plain_transformers_without_minigpt(tmp_path):
    kwargs = dict(
        vocab_size=97,
        hidden_size=48,
        intermediate_size=100,
        num_attention_heads=3,
        num_key_value_heads=1,
        tie_word_embeddings=False,
        rope_theta=10000.0,
        rope_scaling={"rope_type": "linear", "factor": 2.0},
    )
    model = make_model(**kwargs)
    run_dir, out_dir = tmp_path / "run", tmp_path / "exported"
    model.save_pretrained(run_dir)
    _write_tokenizer(run_dir)
    GenerationConfig(eos_token_id=0, pad_token_id=1, max_new_tokens=7).save_pretrained(run_dir)

    assert export_to_llama(str(run_dir), out_dir) == out_dir
    names = {p.name for p in out_dir.iterdir()}
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json", EXPORT_MARKER} <= names
    assert any(n.endswith(".safetensors") for n in names)
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth"))]

    ids = torch.randint(0, 97, (2, 13), generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        expected = model(ids).logits.numpy()
    np.save(tmp_path / "ids.npy", ids.numpy())

    src_dir = Path(minigpt.__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(PYTHONPATH="", PYTHONNOUSERSITE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-P", "-c", _CHILD, str(src_dir), str(out_dir), str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["minigpt_importable"] is False, "the child process could still import minigpt"
    assert report["config_class"] == "LlamaConfig" and report["model_type"] == "llama"
    assert report["dtype"] == "torch.float32"
    assert report["max_new_tokens"] == 7
    # Word-level vocabulary above: hello=3, mini=5, gpt=6, world=4.
    assert report["encoded"] == [3, 5, 6, 4]
    got = np.load(tmp_path / "llama_logits.npy")
    assert got.shape == (2, 13, 97)
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=RTOL)


def test_export_config_and_dtype(tmp_path):
    model = make_model(num_key_value_heads=1, rope_theta=5000.0)
    out = export_to_llama(model, tmp_path / "bf16", dtype="bf16")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["num_key_value_heads"] == 1 and cfg["head_dim"] == 8
    assert cfg["rope_parameters"]["rope_theta"] == 5000.0
    assert cfg["hidden_act"] == "silu" and cfg["tie_word_embeddings"] is True
    from safetensors import safe_open

    (weights,) = [p for p in out.iterdir() if p.suffix == ".safetensors"]
    with safe_open(str(weights), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    # The source model is untouched.
    assert next(model.parameters()).dtype == torch.float32
    with pytest.raises(UserError):
        export_to_llama(model, tmp_path / "x", dtype="float8")


def test_export_refuses_foreign_directories_and_replaces_previous_export(tmp_path):
    model = make_model()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="no export made"):
        export_to_llama(model, busy)
    assert (busy / "notes.txt").read_text() == "mine"

    # A previous export is replaced: its files go, a file the user added stays.
    run = tmp_path / "run"
    model.save_pretrained(run)
    _write_tokenizer(run, model.config.vocab_size)
    out = tmp_path / "out"
    export_to_llama(str(run), out)
    assert (out / "tokenizer.json").exists()
    (out / "README.md").write_text("user notes")
    other = make_model(seed=1)
    export_to_llama(other, out)  # in-memory, never loaded from disk: no tokenizer to copy
    assert not (out / "tokenizer.json").exists()
    assert (out / "README.md").read_text() == "user notes"
    reloaded = LlamaForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(0, 128, (1, 7), generator=torch.Generator().manual_seed(13))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, other(ids).logits, atol=ATOL, rtol=RTOL)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name], "temporary directory left behind"


def test_export_user_errors(tmp_path):
    model = make_model()
    with pytest.raises(UserError):
        export_to_llama(str(tmp_path / "missing"), tmp_path / "out")
    with pytest.raises(UserError):
        export_to_llama(torch.nn.Linear(2, 2), tmp_path / "out")
    empty_tok = tmp_path / "tok"
    empty_tok.mkdir()
    with pytest.raises(UserError, match="tokenizer"):
        export_to_llama(model, tmp_path / "out", tokenizer_dir=empty_tok)
    llama_dir = tmp_path / "llama"
    export_to_llama(model, llama_dir)
    with pytest.raises(UserError, match="already a Llama"):
        export_to_llama(str(llama_dir), tmp_path / "again")
    with pytest.raises(UserError, match="format"):
        export_command(str(llama_dir), to="onnx")
    # head_dim given explicitly with a width Llama rejects (hidden not a multiple of heads)
    odd = MiniGPTForCausalLM(MiniGPTConfig(**{**BASE, "hidden_size": 50, "num_attention_heads": 3, "num_key_value_heads": 1, "head_dim": 16}))
    with pytest.raises(UserError, match="multiple"):
        export_to_llama(odd, tmp_path / "odd")
    assert not (tmp_path / "odd").exists()


def test_export_command_defaults_to_sibling_directory(tmp_path, capsys):
    run = tmp_path / "run"
    make_model().save_pretrained(run)
    path = export_command(str(run))
    assert path == tmp_path / "run-llama"
    assert json.loads((path / "config.json").read_text())["model_type"] == "llama"
    assert "run-llama" in capsys.readouterr().out


# --------------------------------------------------------------------------- presets


def expected_parameter_count(cfg: MiniGPTConfig) -> int:
    """Arithmetic from the architecture: embedding (+ separate head if untied), per layer
    q/k/v/o, three SwiGLU matrices and two norm vectors, plus the final norm."""
    c, f, d = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    h, k = cfg.num_attention_heads, cfg.num_key_value_heads
    attn = c * h * d + 2 * c * k * d + h * d * c
    per_layer = attn + 3 * c * f + 2 * c
    embed = cfg.vocab_size * c * (1 if cfg.tie_word_embeddings else 2)
    return embed + cfg.num_hidden_layers * per_layer + c


@pytest.mark.parametrize(
    "name, low, high", [("tiny", 1e6, 3e6), ("small", 24e6, 28e6), ("base", 90e6, 115e6)]
)
def test_preset_parameter_counts(name, low, high):
    assert name in PRESETS
    cfg = MiniGPTConfig.from_preset(name)
    with torch.device("meta"):
        model = MiniGPTForCausalLM(cfg)
    n = count_parameters(model)
    assert n == expected_parameter_count(cfg)
    assert low <= n <= high, f"{name}: {n / 1e6:.2f} M parameters"
    assert count_parameters(model, trainable_only=True) == n


def test_generate_with_static_cache_matches_dynamic():
    """A preallocated `StaticCache` (keys padded to the full buffer, 4-D masks from `generate`)
    gives the same greedy tokens as the growing `DynamicCache`, padded rows included."""
    torch.manual_seed(0)
    m = MiniGPTForCausalLM(
        MiniGPTConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2)
    ).eval()
    x = torch.randint(2, 100, (2, 7))
    am = torch.ones_like(x)
    am[1, :2] = 0
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=1, eos_token_id=None)
    dynamic = m.generate(x, attention_mask=am, **kw)
    static = m.generate(x, attention_mask=am, cache_implementation="static", **kw)
    assert torch.equal(dynamic, static)
    alone = m.generate(x[1:, 2:], cache_implementation="static", **kw)
    assert torch.equal(static[1, 2:], alone[0])
