"""The masked-LM Python API (`minigpt.pretraining`): the API guide's calls, learning, the encoder
switch, saving and loading, bad input."""

from __future__ import annotations

import pytest
import torch

from minigpt.errors import UserError
from minigpt.model import MiniGPTConfig, MiniGPTForCausalLM
from minigpt.model.encoder import MiniGPTForMaskedLM
from minigpt.pretraining import MLMConfig, create_mlm_pretrainer

VOCAB = 40


def _config(**kw) -> MiniGPTConfig:
    base = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64)
    return MiniGPTConfig(**{**base, **kw})


def _counting_batch(g: torch.Generator, rows: int = 16, length: int = 24) -> torch.Tensor:
    """Rows that count upwards from a random start (mod 30, ids 8..37): a masked token is one
    more than its left neighbour and one less than its right one, so it can be recovered from
    context (a random guess is right 1 time in 30)."""
    start = torch.randint(0, 30, (rows, 1), generator=g)
    return 8 + (start + torch.arange(length)) % 30


def test_seed_api_learns_to_fill_masks():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    model = MiniGPTForMaskedLM(_config())
    trainer = create_mlm_pretrainer(model, 32, {"mask_prob": 0.15, "vocab_size": VOCAB, "mask_token_id": 7, "learning_rate": 3e-3}, train={"seed": 0})
    first = trainer.train_step(_counting_batch(g))
    assert set(first) == {"mlm_loss", "mlm_accuracy", "num_masked"} and all(isinstance(v, float) for v in first.values())
    assert first["num_masked"] > 0
    for _ in range(250):
        last = trainer.train_step(_counting_batch(g))
    assert first["mlm_accuracy"] < 0.2 and last["mlm_accuracy"] > 0.75, (first, last)
    assert last["mlm_loss"] < first["mlm_loss"] / 3, (first, last)


def test_a_causal_model_becomes_the_encoder_with_a_tied_head():
    torch.manual_seed(0)
    causal = MiniGPTForCausalLM(_config())
    before_config = causal.config.to_dict()
    trainer = create_mlm_pretrainer(causal, 32, MLMConfig(mask_token_id=7, use_nsp=False))
    assert causal.config.to_dict() == before_config  # the caller's model stays causal
    assert trainer.model.config.use_bidirectional_attention
    ids = torch.randint(8, VOCAB, (1, 10))
    later = ids.clone()
    later[0, -1] = 8 if int(ids[0, -1]) != 8 else 9
    with torch.no_grad():  # the view sees later tokens at position 0, the causal model does not
        assert not torch.allclose(trainer.model.eval()(ids).logits[0, 0], trainer.model(later).logits[0, 0])
        assert torch.equal(causal.eval()(ids).logits[0, 0], causal(later).logits[0, 0])
    assert trainer.model.model is causal.model
    assert trainer.model.lm_head.weight is causal.model.embed_tokens.weight
    before = causal.model.layers[0].self_attn.q_proj.weight.detach().clone()
    trainer.train_step(torch.randint(8, VOCAB, (4, 16)))
    assert not torch.equal(before, causal.model.layers[0].self_attn.q_proj.weight)  # the decoder itself trains


def test_nsp_head_and_loss():
    torch.manual_seed(0)
    trainer = create_mlm_pretrainer(MiniGPTForMaskedLM(_config(use_nsp=True)), 32, {"use_nsp": True, "mask_token_id": 7})
    out = trainer.train_step(torch.randint(8, VOCAB, (4, 16)), torch.ones(4, 16, dtype=torch.long), torch.tensor([0, 1, 0, 1]))
    assert {"nsp_loss", "nsp_accuracy"} <= set(out) and out["nsp_loss"] > 0


def test_saved_encoder_loads_through_automodel(tmp_path):
    from transformers import AutoModelForMaskedLM

    torch.manual_seed(0)
    model = MiniGPTForMaskedLM(_config()).eval()
    model.save_pretrained(tmp_path)
    again = AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    assert type(again) is MiniGPTForMaskedLM and again.config.use_bidirectional_attention
    ids = torch.randint(8, VOCAB, (2, 10))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)


def test_bad_input_is_a_clear_error():
    model = MiniGPTForMaskedLM(_config())
    with pytest.raises(UserError, match="hidden_size 64 is not the model's"):
        create_mlm_pretrainer(model, 64, {"mask_token_id": 7})
    trainer = create_mlm_pretrainer(model, 32, {"mask_token_id": 7})
    with pytest.raises(UserError, match="use_nsp is False"):
        trainer.train_step(torch.randint(8, VOCAB, (2, 8)), nsp_labels=torch.tensor([0, 1]))
    with pytest.raises(UserError, match="mask_prob"):
        MLMConfig(mask_prob=1.5)
    with pytest.raises(UserError, match="unknown MLMConfig field"):
        MLMConfig.from_dict({"mask_probability": 0.2})
    with pytest.raises(UserError, match="outside the model's vocabulary"):
        create_mlm_pretrainer(model, 32, {"mask_token_id": VOCAB})


def _bidirectional_causal_lm() -> MiniGPTForCausalLM:
    torch.manual_seed(0)
    return MiniGPTForCausalLM(_config(use_bidirectional_attention=True, pad_token_id=0, eos_token_id=1))


@pytest.mark.parametrize("consumer", ["dpo", "grpo", "rlhf", "reward_model", "generate", "engine"])
def test_causal_consumers_refuse_a_model_that_attends_both_ways(consumer):
    """A decoder whose config says `use_bidirectional_attention` would give next-token
    log-probs that see later tokens; everything that needs causal log-probs refuses it."""
    from minigpt.inference.engine import GenerationEngine
    from minigpt.model.reward_model import create_reward_model
    from minigpt.rl import create_dpo_trainer, create_grpo_trainer, create_rlhf_trainer

    model = _bidirectional_causal_lm()
    calls = {
        "dpo": lambda: create_dpo_trainer(model),
        "grpo": lambda: create_grpo_trainer(model),
        "rlhf": lambda: create_rlhf_trainer(model, reward_funcs=lambda **kw: [0.0]),
        "reward_model": lambda: create_reward_model(model),
        "generate": lambda: model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=2),
        "engine": lambda: GenerationEngine(model),
    }
    with pytest.raises(UserError, match="attends both ways"):
        calls[consumer]()
