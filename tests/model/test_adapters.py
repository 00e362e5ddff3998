"""Adapters besides LoRA: bottleneck (Houlsby / Pfeiffer), IA³ and prompt tuning — what trains,
identity at the start, save / load / merge or remove, the engine, and `sft --adapter.method`."""

from __future__ import annotations

import json

import pytest
import torch

import minigpt  # noqa: F401
from minigpt.errors import UserError
from minigpt.model import MiniGPTConfig, MiniGPTForCausalLM
from minigpt.model.adapters import (
    apply_bottleneck_adapters,
    apply_ia3,
    apply_prompt_tuning,
    has_bottleneck_adapters,
    remove_bottleneck_adapters,
)
from minigpt.model.lora import load_adapter, merge_lora

pytestmark = pytest.mark.usefixtures("one_thread")


def base(seed: int = 0) -> MiniGPTForCausalLM:
    torch.manual_seed(seed)
    cfg = MiniGPTConfig(vocab_size=60, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.2)
    return MiniGPTForCausalLM(cfg).eval()


IDS = torch.randint(0, 60, (2, 10), generator=torch.Generator().manual_seed(1))


def train_a_little(model, steps: int = 3) -> None:
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        model(IDS, labels=IDS).loss.backward()
        opt.step()
    model.eval()


@pytest.mark.parametrize("config,per_block", [("houlsby", 2), ("pfeiffer", 1)])
def test_bottleneck_adapters_start_as_identity_and_train_alone(config, per_block):
    model = base()
    before = model(IDS).logits
    apply_bottleneck_adapters(model, config, reduction_factor=4, verbose=False)
    torch.testing.assert_close(model(IDS).logits, before)  # W_up = 0: the base function
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    width = 32 // 4
    assert all(".adapter.adapter_" in n for n in trainable)
    assert sum(trainable.values()) == 2 * per_block * (32 * width + width + width * 32 + 32)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    train_a_little(model)
    assert not torch.allclose(model(IDS).logits, before, atol=1e-4)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)


def test_bottleneck_save_load_remove_and_no_merge(tmp_path):
    model = base()
    model.save_pretrained(tmp_path / "base")
    model = MiniGPTForCausalLM.from_pretrained(tmp_path / "base").eval()
    plain = model(IDS).logits
    apply_bottleneck_adapters(model, "houlsby", reduction_factor=4, verbose=False)
    train_a_little(model)
    adapted = model(IDS).logits
    model.save_pretrained(tmp_path / "adapter")
    files = sorted(p.name for p in (tmp_path / "adapter").iterdir())
    assert "model.safetensors" not in files and "adapter_model.safetensors" in files
    assert "adapter_base.json" in files  # the base's fingerprint, checked on load as for LoRA
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "MINIGPT_BOTTLENECK" and cfg["base_model_name_or_path"] == "../base"
    fresh = MiniGPTForCausalLM.from_pretrained(tmp_path / "base").eval()
    load_adapter(fresh, tmp_path / "adapter")
    torch.testing.assert_close(fresh(IDS).logits, adapted)
    with pytest.raises(UserError, match="cannot be merged"):
        merge_lora(fresh)
    remove_bottleneck_adapters(fresh)
    assert not has_bottleneck_adapters(fresh)
    torch.testing.assert_close(fresh(IDS).logits, plain)
    twice = apply_bottleneck_adapters(MiniGPTForCausalLM.from_pretrained(tmp_path / "base"), "pfeiffer", verbose=False)
    with pytest.raises(UserError, match="already"):
        load_adapter(twice, tmp_path / "adapter")


def test_engine_runs_a_model_with_bottleneck_adapters():
    from minigpt.inference.engine import GenerationEngine

    model = base(2)
    apply_bottleneck_adapters(model, "houlsby", reduction_factor=2, verbose=False)
    train_a_little(model)
    prompt = [3, 4, 5, 6]
    ours = GenerationEngine(model, pad_token_id=0).generate([prompt], max_new_tokens=12, do_sample=False, stop_on_eos=False)
    ref = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert ours.completion_ids[0].tolist() == ref[0, 4:].tolist()


def test_ia3_trains_scales_only_saves_loads_and_merges(tmp_path):
    model = base(3)
    model.save_pretrained(tmp_path / "base")
    model = MiniGPTForCausalLM.from_pretrained(tmp_path / "base").eval()
    before = model(IDS).logits
    apply_ia3(model, verbose=False)
    torch.testing.assert_close(model(IDS).logits, before)  # scales start at 1
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("ia3_l" in n for n in trainable)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 2 * (16 + 16 + 64)  # k, v outputs; down_proj input
    train_a_little(model)
    adapted = model(IDS).logits
    model.save_pretrained(tmp_path / "ia3")
    assert json.loads((tmp_path / "ia3" / "adapter_config.json").read_text())["peft_type"] == "IA3"
    fresh = MiniGPTForCausalLM.from_pretrained(tmp_path / "base").eval()
    load_adapter(fresh, tmp_path / "ia3")
    torch.testing.assert_close(fresh(IDS).logits, adapted)
    merge_lora(fresh)
    assert not any("ia3" in n for n, _ in fresh.named_parameters())
    torch.testing.assert_close(fresh(IDS).logits, adapted, atol=1e-5, rtol=1e-5)


def test_prompt_tuning_learns_virtual_tokens_the_sft_objective_can_train(tmp_path):
    from peft import PeftModel

    from minigpt.objectives.sft import SFTObjective

    model = base(4)
    pm = apply_prompt_tuning(model, num_virtual_tokens=5, verbose=False)
    trainable = [(n, p) for n, p in pm.named_parameters() if p.requires_grad]
    assert len(trainable) == 1 and trainable[0][1].shape == (5, 32)
    targets = IDS.clone()
    targets[:, :4] = -100
    batch = {"input_ids": IDS, "targets": targets, "attention_mask": torch.ones_like(IDS)}
    pm.train()
    out = SFTObjective().compute_loss(pm, batch)
    assert out.logits.shape == (2, 10, 60)  # the virtual positions are not scored
    out.loss_sum.backward()
    assert trainable[0][1].grad.abs().sum() > 0
    with torch.no_grad():
        trainable[0][1].add_(0.5)
    pm.eval()
    logits = pm(input_ids=IDS, attention_mask=torch.ones_like(IDS)).logits
    assert logits.shape == (2, 15, 60)
    pm.save_pretrained(tmp_path / "prompt")
    again = PeftModel.from_pretrained(base(4), tmp_path / "prompt").eval()
    torch.testing.assert_close(again(input_ids=IDS, attention_mask=torch.ones_like(IDS)).logits, logits)


def test_sft_with_houlsby_adapters_saves_the_adapter_alone(tmp_path):
    from tiny_models import save_tiny_chat_model

    from minigpt.model.loading import load_model_dir
    from minigpt.recipes.sft import sft
    from minigpt.train.config import TrainConfig

    recs = [{"instruction": f"Say {i}", "output": f"number {i}"} for i in range(20)]
    save_tiny_chat_model(tmp_path / "base", [json.dumps(r) for r in recs] * 5, vocab_size=300)
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    train = TrainConfig(max_steps=3, batch_size=4, lr=1e-2, warmup_steps=0, precision="fp32", device="cpu", eval_interval=0,
                        eval_batches=0, save_interval=0, progress=False, tensorboard=False)
    from minigpt.model.options import AdapterOptions

    sft(model=str(tmp_path / "base"), data=str(tmp_path / "d.jsonl"), out=str(tmp_path / "run"), max_length=32, val_fraction=0.1,
        adapter=AdapterOptions(method="houlsby", reduction_factor=4), train=train)
    assert not (tmp_path / "run" / "model.safetensors").exists()
    net, _ = load_model_dir(tmp_path / "run", MiniGPTForCausalLM, adapters=True)
    assert has_bottleneck_adapters(net)
    with pytest.raises(UserError, match="choose one"):
        from minigpt.model.options import LoraOptions

        sft(model=str(tmp_path / "base"), data=str(tmp_path / "d.jsonl"), out=str(tmp_path / "run2"), max_length=32,
            adapter=AdapterOptions(method="ia3"), lora=LoraOptions(rank=4), train=train)
