"""Long context: RoPE scaling (linear / dynamic / YaRN) on a trained model, sliding-window
attention in the model, the fast engine and the continuous batcher, and their exports."""

from __future__ import annotations

import json

import pytest
import torch

import minigpt  # noqa: F401 — registers MiniGPT with the Auto classes
from minigpt.errors import UserError
from minigpt.model import MiniGPTConfig, MiniGPTForCausalLM
from minigpt.model.modeling import set_rope_scaling

pytestmark = pytest.mark.usefixtures("one_thread")


def small_model(seed: int = 0, **kw) -> MiniGPTForCausalLM:
    torch.manual_seed(seed)
    base = dict(
        vocab_size=80, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, initializer_range=0.2, rope_theta=10000.0,
    )
    return MiniGPTForCausalLM(MiniGPTConfig(**{**base, **kw})).eval()


def ids(t: int, seed: int = 1, batch: int = 1) -> torch.Tensor:
    return torch.randint(2, 80, (batch, t), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------- RoPE scaling


def test_linear_scaling_is_position_interpolation():
    """PI: position p with factor s rotates exactly like position p / s unscaled."""
    model = small_model()
    rot = model.model.rotary_emb
    x = torch.zeros(1)
    cos0, _ = rot(x, torch.tensor([[3]]))
    set_rope_scaling(model, {"rope_type": "linear", "factor": 2.0}, 64)
    assert model.config.max_position_embeddings == 64
    assert model.config.rope_parameters["original_max_position_embeddings"] == 32
    cos2, _ = model.model.rotary_emb(x, torch.tensor([[6]]))
    torch.testing.assert_close(cos2, cos0)


@pytest.mark.parametrize("rope", [{"rope_type": "yarn", "factor": 4.0}, {"type": "dynamic", "factor": 4.0}, {"rope_type": "linear"}])
def test_scaled_model_exports_to_llama_with_the_same_logits_beyond_the_trained_context(rope, tmp_path):
    """The scaling is transformers' own: the Llama export (same rope_parameters) agrees on a
    sequence 4× the trained context."""
    from transformers import LlamaForCausalLM

    from minigpt.model.export import export_to_llama

    model = small_model(seed=2)
    before = model(ids(96)).logits
    set_rope_scaling(model, rope, 128)
    after = model(ids(96)).logits
    assert not torch.allclose(before, after, atol=1e-3)  # the scaling changed something
    if rope.get("rope_type") == "linear":
        assert model.config.rope_parameters["factor"] == 4.0  # 128 / 32 when not given
    export_to_llama(model, tmp_path / "llama")
    llama = LlamaForCausalLM.from_pretrained(tmp_path / "llama").eval()
    torch.testing.assert_close(llama(ids(96)).logits, after, atol=1e-4, rtol=1e-4)


def test_dynamic_scaling_leaves_the_trained_context_alone():
    model = small_model(seed=3)
    short = model(ids(20)).logits
    set_rope_scaling(model, {"rope_type": "dynamic", "factor": 2.0}, 128)
    torch.testing.assert_close(model(ids(20)).logits, short)


def test_unknown_rope_type_is_refused_and_leaves_the_model_as_it_was():
    model = small_model()
    before = dict(model.config.rope_parameters)
    with pytest.raises(UserError, match="rope_type"):
        set_rope_scaling(model, {"rope_type": "stretchy", "factor": 2.0}, 64)
    assert model.config.rope_parameters == before and model.config.max_position_embeddings == 32


# ----------------------------------------------------------------------- sliding window


def test_sliding_window_hides_exactly_the_tokens_beyond_the_window():
    w = 6
    model = small_model(seed=4, sliding_window=w, num_hidden_layers=1)  # one layer: no relay through the stack
    x = ids(20)
    base = model(x).logits
    far, near = x.clone(), x.clone()
    far[0, 19 - w] = (far[0, 19 - w] + 1) % 80  # just outside the last position's window
    near[0, 19 - w + 1] = (near[0, 19 - w + 1] + 1) % 80  # the oldest token inside it
    torch.testing.assert_close(model(far).logits[0, 19], base[0, 19])
    assert not torch.allclose(model(near).logits[0, 19], base[0, 19], atol=1e-5)
    # Without the window the far token matters.
    full = small_model(seed=4, num_hidden_layers=1)
    assert not torch.allclose(full(far).logits[0, 19], full(x).logits[0, 19], atol=1e-5)


def test_sliding_window_with_cache_equals_the_full_forward():
    model = small_model(seed=5, sliding_window=5)
    x = ids(24)
    full = model(x, use_cache=False).logits
    out = model(x[:, :10], use_cache=True)
    logits = [out.logits]
    cache = out.cache
    for t in range(10, 24):
        out = model(x[:, t : t + 1], cache=cache, use_cache=True)
        cache = out.cache
        logits.append(out.logits)
    torch.testing.assert_close(torch.cat(logits, dim=1), full, atol=1e-5, rtol=1e-5)


def test_engine_and_batcher_respect_the_sliding_window():
    from minigpt.inference.batching import BatchRequest, ContinuousBatcher
    from minigpt.inference.engine import GenerationEngine

    model = small_model(seed=6, sliding_window=5, max_position_embeddings=64)
    prompts = [ids(12, seed=7)[0].tolist(), ids(4, seed=8)[0].tolist()]  # longer and shorter than the window
    engine = GenerationEngine(model, pad_token_id=0)
    out = engine.generate(prompts, max_new_tokens=10, do_sample=True, seed=1, return_logprobs=True, stop_on_eos=False)
    for row, prompt in enumerate(prompts):
        completion = out.completion_ids[row].tolist()
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([prompt + completion])).logits[0, len(prompt) - 1 : -1], -1)
        expected = logp.gather(1, torch.tensor(completion)[:, None])[:, 0]
        torch.testing.assert_close(out.logprobs[row], expected, atol=1e-4, rtol=1e-4)
    # The continuous batcher (one shared cache, per-row positions) gives each prompt its
    # batch-of-one greedy reply, prefilled together and decoded past the window.
    import threading

    eos = set(engine.eos_token_ids)
    greedy = []
    for p in prompts:
        tokens = engine.generate([p], max_new_tokens=20, do_sample=False).completion_ids[0].tolist()
        cut = next((i for i, t in enumerate(tokens) if t in eos), len(tokens))
        greedy.append(tokens[:cut])
    got = [[], []]
    done = [threading.Event(), threading.Event()]
    batcher = ContinuousBatcher(engine, max_batch_size=2, max_length=64)
    try:
        for i, p in enumerate(prompts):
            batcher.submit(BatchRequest(p, 20, temperature=0, on_token=got[i].append, on_finish=lambda r, i=i: done[i].set()))
        batcher.start()
        assert all(d.wait(60) for d in done)
    finally:
        batcher.close()
    assert got == greedy and len(got[0]) > 0


def test_sliding_window_exports_to_mistral_and_llama_refuses(tmp_path):
    from transformers import MistralForCausalLM

    from minigpt.model.export import export_to_hf

    model = small_model(seed=9, sliding_window=6)
    with pytest.raises(UserError, match="--to mistral"):
        export_to_hf(model, tmp_path / "llama", "llama")
    export_to_hf(model, tmp_path / "mistral", "mistral")
    assert json.loads((tmp_path / "mistral" / "config.json").read_text())["sliding_window"] == 6
    theirs = MistralForCausalLM.from_pretrained(tmp_path / "mistral").eval()
    torch.testing.assert_close(theirs(ids(24)).logits, model(ids(24)).logits, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- context-extension recipe


def test_pretrain_init_from_extends_the_context_with_scaled_rope(tmp_path, capsys):
    from minigpt.cli import main

    text = tmp_path / "text.txt"
    text.write_text("".join(f"Once upon a time a fox named {i} ran {i % 5} miles. " for i in range(600)), encoding="utf-8")
    common = ["--train.precision", "fp32", "--train.device", "cpu", "--train.progress", "false", "--train.tensorboard", "false",
              "--train.eval_interval", "0", "--train.batch_size", "2", "--train.max_steps", "2"]
    tiny = ["--model.hidden_size", "32", "--model.intermediate_size", "64", "--model.num_hidden_layers", "2"]
    main(["pretrain", "--data", str(text), "--out", str(tmp_path / "short"), "--model.vocab_size", "300",
          "--model.max_position_embeddings", "32", "--block_size", "32", *tiny, *common])
    # As the README writes it: no --tokenizer, the saved run's own is used (no new one is trained).
    assert main(["pretrain", "--data", str(text), "--out", str(tmp_path / "long"),
                 "--model.init_from", str(tmp_path / "short"), "--model.max_position_embeddings", "128",
                 "--model.rope_scaling", '{"rope_type": "yarn", "factor": 4}', "--block_size", "128", *common]) == 0
    assert (tmp_path / "long" / "tokenizer.json").read_text() == (tmp_path / "short" / "tokenizer.json").read_text()
    assert not (tmp_path / "long" / "tokenizer").exists()
    config = json.loads((tmp_path / "long" / "config.json").read_text())
    assert config["max_position_embeddings"] == 128
    assert config["rope_parameters"]["rope_type"] == "yarn"
    assert config["rope_parameters"]["original_max_position_embeddings"] == 32
    code = main(["pretrain", "--data", str(text), "--out", str(tmp_path / "bad"), "--tokenizer", str(tmp_path / "short" / "tokenizer"),
                 "--model.init_from", str(tmp_path / "short"), "--model.hidden_size", "64", *common])
    assert code != 0 and "--model.hidden_size cannot change a saved model" in capsys.readouterr().err
