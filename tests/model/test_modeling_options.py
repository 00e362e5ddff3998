"""The architecture options the speedruns use: QK-norm, zero-initialised residual projections,
squared-ReLU gating and logit soft-capping.
Each is checked by a property that fails without it, through the fast engine too, and against
the exports it allows or refuses."""

from __future__ import annotations

import pytest
import torch

from minigpt.errors import UserError
from minigpt.model import MiniGPTConfig, MiniGPTForCausalLM

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(seed: int = 0, **kw) -> MiniGPTForCausalLM:
    torch.manual_seed(seed)
    cfg = MiniGPTConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, max_position_embeddings=64, **kw)
    return MiniGPTForCausalLM(cfg).eval()


IDS = torch.tensor([[3, 14, 15, 9, 26, 5, 35, 8]])


@torch.no_grad()
def test_qk_norm_makes_attention_blind_to_the_scale_of_queries_and_keys():
    """RMS-normalised per head, q and k lose their scale: multiplying q_proj and k_proj by 7
    leaves the logits unchanged with qk_norm, and changes them without it."""
    for qk_norm, same in ((True, True), (False, False)):
        model = tiny(qk_norm=qk_norm)
        before = model(IDS).logits
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(7)
            layer.self_attn.k_proj.weight.mul_(7)
        after = model(IDS).logits
        assert torch.allclose(before, after, atol=1e-4) == same, qk_norm
    model = tiny(qk_norm=True)
    assert model.model.layers[0].self_attn.q_norm.weight.shape == (8,)  # one gain per head dimension


@torch.no_grad()
def test_the_engine_decodes_a_qk_norm_model_exactly(tmp_path):
    from minigpt.inference.engine import GenerationEngine

    model = tiny(qk_norm=True)
    for layer in model.model.layers:  # gains away from 1, so a skipped norm would show
        layer.self_attn.q_norm.weight.uniform_(0.5, 2.0)
        layer.self_attn.k_norm.weight.uniform_(0.5, 2.0)
    reference = model.generate(IDS, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)[0, IDS.shape[1]:]
    out = GenerationEngine(model, eos_token_id=[]).generate([IDS[0].tolist()], max_new_tokens=12, temperature=0)
    assert out.completion_ids[0].tolist() == reference.tolist()
    model.save_pretrained(tmp_path)
    again = MiniGPTForCausalLM.from_pretrained(tmp_path).eval()
    assert again.config.qk_norm is True
    assert torch.equal(again(IDS).logits, model(IDS).logits)


def test_exports_refuse_qk_norm_with_the_reason(tmp_path):
    from minigpt.model.export import hf_config_from, llama_config_from

    config = tiny(qk_norm=True).config
    for fmt in ("llama", "mistral"):
        with pytest.raises(UserError, match=f"cannot export to {fmt}: the model normalises queries and keys"):
            hf_config_from(config, fmt)
    with pytest.raises(UserError, match="qk_norm"):
        llama_config_from(config)
    assert llama_config_from(tiny(zero_init_residual=True).config).num_hidden_layers == 2  # an init only: exportable


@torch.no_grad()
def test_zero_init_residual_starts_every_block_as_the_identity():
    """o_proj and down_proj start at zero, so the blocks add nothing: the logits are the LM
    head of the final norm of the embeddings. Without the option they are not."""
    for zero in (True, False):
        model = tiny(zero_init_residual=zero)
        projections = [w for layer in model.model.layers for w in (layer.self_attn.o_proj.weight, layer.mlp.down_proj.weight)]
        assert all(bool((w == 0).all()) == zero for w in projections)
        direct = model.lm_head(model.model.norm(model.model.embed_tokens(IDS)))
        assert torch.allclose(model(IDS).logits, direct, atol=1e-5) == zero


def test_the_options_reach_the_command_line_model_group():
    from minigpt.model.options import ModelConfig

    config = ModelConfig(preset="tiny", qk_norm=True, zero_init_residual=True, hidden_act="relu2",
                         final_logit_softcapping=15.0).build_config(300, {})
    assert config.qk_norm is True and config.zero_init_residual is True
    assert config.hidden_act == "relu2" and config.final_logit_softcapping == 15.0
    with pytest.raises(UserError, match="model.hidden_act"):
        ModelConfig(hidden_act="gelu")
    with pytest.raises(UserError, match="model.final_logit_softcapping"):
        ModelConfig(final_logit_softcapping=0.0)
    with pytest.raises(UserError, match="hidden_act must be one of"):
        MiniGPTConfig(hidden_act="tanh")


@torch.no_grad()
def test_relu2_gates_the_feed_forward_with_squared_relu():
    """`down(max(gate x, 0)² · up x)`, computed here by hand, and not the SwiGLU's output."""
    x = torch.randn(2, 5, 32)
    mlp = tiny(hidden_act="relu2").model.layers[0].mlp
    by_hand = mlp.down_proj(torch.clamp(mlp.gate_proj(x), min=0) ** 2 * mlp.up_proj(x))
    assert torch.allclose(mlp(x), by_hand, atol=1e-6)
    silu = tiny(hidden_act="silu").model.layers[0].mlp
    assert not torch.allclose(silu(x), by_hand, atol=1e-3)


@torch.no_grad()
def test_a_relu2_model_decodes_exactly_and_exports_to_llama_with_the_same_logits():
    from transformers import LlamaForCausalLM

    from minigpt.inference.engine import GenerationEngine
    from minigpt.model.export import llama_config_from

    model = tiny(hidden_act="relu2")
    reference = model.generate(IDS, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)[0, IDS.shape[1]:]
    out = GenerationEngine(model, eos_token_id=[]).generate([IDS[0].tolist()], max_new_tokens=12, temperature=0)
    assert out.completion_ids[0].tolist() == reference.tolist()
    llama_config = llama_config_from(model.config)
    assert llama_config.hidden_act == "relu2"
    llama = LlamaForCausalLM(llama_config).eval()
    llama.load_state_dict(model.state_dict())
    assert torch.allclose(llama(IDS).logits, model(IDS).logits, atol=1e-5)


@torch.no_grad()
def test_soft_capping_bounds_the_logits_on_every_path(tmp_path):
    """With a cap c every logit is c·tanh(raw / c) of the uncapped head's: |logit| ≤ c. The
    engine's greedy tokens, the rollout log-probs and the preference log-probs all see the
    capped logits, and the cap survives save / load."""
    from minigpt.inference.engine import GenerationEngine
    from minigpt.inference.rollout import completion_logprobs
    from minigpt.objectives.preference import model_sequence_logprobs

    cap = 2.0
    model = tiny(final_logit_softcapping=cap)
    model.lm_head.weight.mul_(10)  # raw logits past the cap, so capping changes the argmax's margin and the log-probs
    raw = model.lm_head(model.model(IDS).last_hidden_state)
    logits = model(IDS).logits
    assert raw.abs().max() > 1.5 * cap and logits.abs().max() <= cap
    assert torch.allclose(logits, cap * torch.tanh(raw / cap), atol=1e-6)

    reference = model.generate(IDS, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)[0, IDS.shape[1]:]
    out = GenerationEngine(model, eos_token_id=[]).generate([IDS[0].tolist()], max_new_tokens=12, temperature=0)
    assert out.completion_ids[0].tolist() == reference.tolist()

    expected = torch.log_softmax(logits.float(), -1)[0, :-1].gather(-1, IDS[0, 1:, None])[:, 0]  # (T-1,)
    mask = torch.zeros_like(IDS)
    mask[:, 3:] = 1
    got = completion_logprobs(model, IDS, torch.ones_like(IDS), mask[:, 3:])
    assert torch.allclose(got[0], expected[2:], atol=1e-5)
    targets = torch.cat([IDS[:, 1:], torch.tensor([[-100]])], dim=1)
    total, n = model_sequence_logprobs(model, IDS, torch.ones_like(IDS), targets)
    assert int(n) == IDS.shape[1] - 1 and torch.allclose(total, expected.sum(), atol=1e-4)

    model.save_pretrained(tmp_path)
    assert MiniGPTForCausalLM.from_pretrained(tmp_path).config.final_logit_softcapping == cap


def test_exports_refuse_soft_capping_and_gguf_refuses_relu2(tmp_path):
    from minigpt.model.export import hf_config_from
    from minigpt.model.gguf_export import export_to_gguf

    config = tiny(final_logit_softcapping=15.0).config
    for fmt in ("llama", "mistral"):
        with pytest.raises(UserError, match=f"cannot export to {fmt}: the model soft-caps its logits"):
            hf_config_from(config, fmt)
    from tiny_models import save_tiny_chat_model

    save_tiny_chat_model(tmp_path / "relu2", ["the quick brown fox jumps over the lazy dog"] * 20, hidden_act="relu2")
    with pytest.raises(UserError, match="feed-forward uses relu2"):
        export_to_gguf(tmp_path / "relu2", tmp_path / "m.gguf", tokenizer_dir=tmp_path / "relu2")
    assert not (tmp_path / "m.gguf").exists()
