"""Mixture of experts: routing math, router losses, Mixtral parity, engine, LoRA and the
fine-tuning options (freeze the router, train chosen experts)."""

from __future__ import annotations

import json
import math

import pytest
import torch

import minigpt  # noqa: F401 — registers MiniGPT with the Auto classes
from minigpt.errors import UserError
from minigpt.losses.moe import expert_load, load_balancing_loss, router_z_loss
from minigpt.model import MiniGPTConfig, MiniGPTForCausalLM, count_active_parameters, count_parameters
from minigpt.model.moe import apply_moe_options
from minigpt.model.options import MoeOptions

pytestmark = pytest.mark.usefixtures("one_thread")


def moe_config(**kw) -> MiniGPTConfig:
    base = dict(
        vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, num_local_experts=4, num_experts_per_tok=2,
        initializer_range=0.2,
    )
    return MiniGPTConfig(**{**base, **kw})


def moe_model(seed: int = 0, **kw) -> MiniGPTForCausalLM:
    torch.manual_seed(seed)
    return MiniGPTForCausalLM(moe_config(**kw)).eval()


# ----------------------------------------------------------------------------- routing


def test_config_builds_dense_or_moe_and_refuses_bad_k():
    dense = MiniGPTForCausalLM(moe_config(num_local_experts=0))
    assert not dense.config.is_moe and type(dense.model.layers[0].mlp).__name__ == "MiniGPTMLP"
    moe = moe_model()
    assert moe.config.is_moe and len(moe.model.layers[1].mlp.experts) == 4
    with pytest.raises(UserError, match="num_experts_per_tok"):
        moe_config(num_experts_per_tok=5)
    # Active parameters: K of E experts per layer.
    per_expert = 3 * 32 * 48
    assert count_parameters(moe) - count_active_parameters(moe) == 2 * (4 - 2) * per_expert


def test_block_equals_a_token_by_token_computation():
    """Each token's output is Σ over its top-K experts of (p_e / Σ_topK p) · expert_e(x)."""
    model = moe_model(seed=1)
    block = model.model.layers[0].mlp
    x = torch.randn(3, 5, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y, logits = block(x)
        probs = torch.softmax(block.gate(x.reshape(-1, 32)), -1)
        expected = torch.zeros(15, 32)
        for n, token in enumerate(x.reshape(-1, 32)):
            ranked = sorted(range(4), key=lambda e: -float(probs[n, e]))[:2]
            norm = sum(float(probs[n, e]) for e in ranked)
            for e in ranked:
                expected[n] += float(probs[n, e]) / norm * block.experts[e](token[None])[0]
    assert logits.shape == (15, 4)
    torch.testing.assert_close(y.reshape(-1, 32), expected, atol=1e-5, rtol=1e-5)
    _, weights, chosen = block.route(x.reshape(-1, 32))
    torch.testing.assert_close(weights.sum(-1), torch.ones(15))
    assert torch.equal(chosen, probs.topk(2, dim=-1).indices)
    # The chosen experts are the K most probable: every unchosen probability is ≤ the smallest chosen.
    unchosen = probs.clone().scatter_(1, chosen, -1.0)
    assert bool((unchosen.max(-1).values <= probs.gather(1, chosen).min(-1).values).all())


def test_load_balancing_loss_against_a_hand_computation():
    # Two layers, 3 tokens, 3 experts, K = 1.
    z1 = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [3.0, 0.0, 1.0]])
    z2 = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0], [1.0, 0.0, 0.0]])
    # Layer 1 picks experts 0, 1, 0; layer 2 picks 2, 1, 0: counts [3, 2, 1] over 6 rows.
    f = [3 / 6, 2 / 6, 1 / 6]
    p = [sum(math.exp(r[e]) / sum(math.exp(v) for v in r) for z in (z1, z2) for r in z.tolist()) / 6 for e in range(3)]
    expected = 3 * sum(fe * pe for fe, pe in zip(f, p))
    got = load_balancing_loss((z1, z2), top_k=1)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # Padding: the masked third token drops out of both f and P.
    mask = torch.tensor([[1, 1, 0]])
    f = [1 / 4, 2 / 4, 1 / 4]  # rows: layer1 e0, e1; layer2 e2, e1
    p = [sum(math.exp(r[e]) / sum(math.exp(v) for v in r) for z in (z1, z2) for r in z.tolist()[:2]) / 4 for e in range(3)]
    assert load_balancing_loss((z1, z2), 1, mask).item() == pytest.approx(3 * sum(a * b for a, b in zip(f, p)), rel=1e-6)
    # Perfectly even routing with uniform probabilities gives K.
    even = torch.zeros(4, 4).fill_diagonal_(1e-3)
    assert load_balancing_loss((even,), top_k=1).item() == pytest.approx(1.0, abs=1e-3)
    # And it matches transformers' Mixtral implementation.
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    logits = tuple(torch.randn(10, 4, generator=torch.Generator().manual_seed(s)) for s in range(3))
    assert load_balancing_loss(logits, 2).item() == pytest.approx(float(load_balancing_loss_func(logits, 4, 2)), rel=1e-6)


def test_router_z_loss_and_expert_load():
    z = torch.tensor([[0.0, math.log(3.0)], [2.0, 1.0]])
    expected = (math.log(4.0) ** 2 + math.log(math.exp(2.0) + math.exp(1.0)) ** 2) / 2
    assert router_z_loss((z,)).item() == pytest.approx(expected, rel=1e-6)
    load = expert_load((z, torch.tensor([[5.0, 0.0], [4.0, 0.0]])), top_k=1)
    assert load.tolist() == [[0.5, 0.5], [1.0, 0.0]]


# ------------------------------------------------------------------------ model, objectives


def test_output_carries_router_losses_and_objective_adds_them_in_training_only():
    from minigpt.objectives.lm import CausalLMObjective

    model = moe_model(seed=3, router_z_loss_coef=0.001)
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(4))
    out = model(ids, output_router_logits=True)
    assert len(out.router_logits) == 2 and out.router_logits[0].shape == (24, 4)
    assert out.aux_loss.item() == pytest.approx(load_balancing_loss(out.router_logits, 2).item())
    assert out.router_loss.item() == pytest.approx(0.01 * out.aux_loss.item() + 0.001 * out.router_z_loss.item(), rel=1e-6)
    plain = model(ids)
    assert plain.__class__.__name__ == "CausalLMOutputWithPast"  # routers only on request
    batch = {"input_ids": ids[:, :-1], "targets": ids[:, 1:]}
    objective = CausalLMObjective()
    model.train()
    trained = objective.compute_loss(model, batch)
    model.eval()
    evaluated = objective.compute_loss(model, batch)
    units = 22
    out = model(ids[:, :-1], output_router_logits=True)
    assert trained.loss_sum.item() - evaluated.loss_sum.item() == pytest.approx(out.router_loss.item() * units, rel=1e-4)
    assert set(trained.metrics) == {"moe_aux_loss", "moe_z_loss", "moe_load_max/L0", "moe_load_max/L1"}
    assert 1.0 <= trained.metrics["moe_load_max/L0"] <= 4 / 2  # 1 = even, E/K = one expert in every top-K
    # Gradients reach the router through the balancing loss alone.
    model.zero_grad()
    model.train()
    model(ids, output_router_logits=True).aux_loss.backward()
    assert model.model.layers[0].mlp.gate.weight.grad.abs().sum() > 0


def test_every_expert_gets_a_gradient_slot_even_when_unused():
    """Training runs every expert (empty slices too), so DDP sees every parameter used."""
    model = moe_model(seed=5).train()
    block = model.model.layers[0].mlp
    # Router logits fixed at [5, 4, 0, -1]: top-2 is always experts 0 and 1.
    block.gate.register_forward_hook(lambda module, args, out: out * 0 + torch.tensor([5.0, 4.0, 0.0, -1.0]))
    ids = torch.randint(0, 96, (1, 8), generator=torch.Generator().manual_seed(6))
    model(ids, labels=ids).loss.backward()
    unused = block.experts[3].gate_proj.weight.grad
    assert unused is not None and unused.abs().sum() == 0


def test_save_load_roundtrip_keeps_moe(tmp_path):
    from transformers import AutoModelForCausalLM

    model = moe_model(seed=7)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["num_local_experts"] == 4
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 96, (1, 10), generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(again(ids).logits, model(ids).logits)


# ----------------------------------------------------------------------------- Mixtral


def test_export_to_mixtral_loads_in_plain_transformers_with_the_same_logits(tmp_path):
    from transformers import MixtralForCausalLM

    from minigpt.model.export import export_to_hf
    from minigpt.recipes.export import export_command

    model = moe_model(seed=9)
    export_to_hf(model, tmp_path / "mixtral", "mixtral")
    config = json.loads((tmp_path / "mixtral" / "config.json").read_text())
    assert config["model_type"] == "mixtral" and config["num_local_experts"] == 4
    theirs = MixtralForCausalLM.from_pretrained(tmp_path / "mixtral").eval()
    ids = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(10))
    ours_out, theirs_out = model(ids, output_router_logits=True), theirs(ids, output_router_logits=True)
    torch.testing.assert_close(theirs_out.logits, ours_out.logits, atol=1e-5, rtol=1e-5)
    assert theirs_out.aux_loss.item() == pytest.approx(ours_out.aux_loss.item(), rel=1e-5)
    with pytest.raises(UserError, match="--to mixtral"):
        export_to_hf(model, tmp_path / "llama", "llama")
    with pytest.raises(UserError, match="dense"):
        export_to_hf(moe_model(num_local_experts=0), tmp_path / "m2", "mixtral")
    # The CLI path: `minigpt export --to mixtral`.
    model.save_pretrained(tmp_path / "src")
    path = export_command(str(tmp_path / "src"), to="mixtral", out=str(tmp_path / "cli"))
    torch.testing.assert_close(MixtralForCausalLM.from_pretrained(path).eval()(ids).logits, ours_out.logits, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------- engine


def test_engine_runs_moe_with_the_models_logprobs():
    from minigpt.inference.engine import GenerationEngine

    model = moe_model(seed=11)
    prompts = [[5, 6, 7, 8], [9, 10, 11, 12, 13, 14, 15]]
    engine = GenerationEngine(model, pad_token_id=0)
    out = engine.generate(prompts, max_new_tokens=12, temperature=1.0, do_sample=True, seed=3, return_logprobs=True, stop_on_eos=False)
    assert out.completion_ids.shape == (2, 12)
    for row, prompt in enumerate(prompts):
        completion = out.completion_ids[row].tolist()
        ids = torch.tensor([prompt + completion])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, len(prompt) - 1 : -1].float(), -1)
        expected = logp.gather(1, torch.tensor(completion)[:, None])[:, 0]
        torch.testing.assert_close(out.logprobs[row], expected, atol=1e-4, rtol=1e-4)
    greedy = engine.generate([prompts[1]], max_new_tokens=10, do_sample=False, stop_on_eos=False)
    reference = model.generate(torch.tensor([prompts[1]]), max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert greedy.completion_ids[0].tolist() == reference[0, len(prompts[1]) :].tolist()


# ------------------------------------------------------------------------ LoRA, freezing


def test_lora_targets_every_expert_and_never_the_router():
    from minigpt.model.lora import apply_lora

    model = moe_model(seed=12)
    apply_lora(model, rank=2, verbose=False)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any(".mlp.experts.3.down_proj.lora_A" in n for n in names)
    assert sum(".mlp.experts." in n for n in names) == 2 * 4 * 3 * 2  # layers × experts × projections × (A, B)
    assert not any(".mlp.gate." in n for n in names)


def test_freeze_router_and_train_selected_experts():
    from minigpt.model.lora import apply_lora

    model = moe_model(seed=13).train()
    apply_moe_options(model, MoeOptions(freeze_router=True))
    assert not model.model.layers[0].mlp.gate.weight.requires_grad
    assert model.model.layers[0].self_attn.q_proj.weight.requires_grad

    model = moe_model(seed=13).train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    apply_moe_options(model, MoeOptions(train_experts=[1, 2]))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    ids = torch.randint(0, 96, (4, 16), generator=torch.Generator().manual_seed(14))
    model(ids, labels=ids).loss.backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".mlp.experts.1." in n or ".mlp.experts.2." in n for n in changed)

    model = moe_model(seed=13)
    apply_lora(model, rank=2, verbose=False)
    apply_moe_options(model, MoeOptions(train_experts=[0]))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".mlp.experts.0." in n and "lora_" in n for n in trainable)

    with pytest.raises(UserError, match="0..3"):
        apply_moe_options(moe_model(), MoeOptions(train_experts=[4]))
    with pytest.raises(UserError, match="dense"):
        apply_moe_options(moe_model(num_local_experts=0), MoeOptions(freeze_router=True))


def test_pretrain_and_sft_recipes_train_an_moe_model(tmp_path):
    """`minigpt pretrain --model.num_local_experts 4`, then `sft --moe.train_experts [1]`: the
    logged expert usage is there, and SFT changes expert 1 alone."""
    from safetensors.torch import load_file

    from minigpt.cli import main

    text = tmp_path / "text.txt"
    text.write_text("".join(f"The cat number {i} sat on mat {i % 7}. " for i in range(400)), encoding="utf-8")
    common = ["--train.precision", "fp32", "--train.device", "cpu", "--train.progress", "false", "--train.tensorboard", "false"]
    main([
        "pretrain", "--data", str(text), "--out", str(tmp_path / "pt"), "--model.preset", "tiny", "--model.hidden_size", "32",
        "--model.intermediate_size", "32", "--model.num_hidden_layers", "2", "--model.vocab_size", "300",
        "--model.num_local_experts", "4", "--model.max_position_embeddings", "64", "--block_size", "32",
        "--train.max_steps", "3", "--train.batch_size", "4", "--train.eval_interval", "0", *common,
    ])
    rows = [json.loads(line) for line in (tmp_path / "pt" / "metrics.jsonl").read_text().splitlines()]
    assert any("train/moe_load_max/L1" in r and "train/moe_aux_loss" in r for r in rows)
    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(json.dumps({"instruction": f"Say {i}", "output": f"cat {i}"}) + "\n" for i in range(12)), encoding="utf-8")
    main([
        "sft", "--model", str(tmp_path / "pt"), "--data", str(chat), "--out", str(tmp_path / "sft"), "--max_length", "32",
        "--moe.train_experts", "[1]", "--train.max_steps", "2", "--train.batch_size", "4", "--train.lr", "1e-2",
        "--train.eval_interval", "0", "--val_fraction", "0", *common,
    ])
    before, after = load_file(tmp_path / "pt" / "model.safetensors"), load_file(tmp_path / "sft" / "model.safetensors")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".mlp.experts.1." in k for k in changed)
