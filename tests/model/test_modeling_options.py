"""The architecture options the speedruns use: QK-norm and zero-initialised residual projections.
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

    config = ModelConfig(preset="tiny", qk_norm=True, zero_init_residual=True).build_config(300, {})
    assert config.qk_norm is True and config.zero_init_residual is True
