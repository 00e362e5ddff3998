"""LoRA / DoRA / prefix tuning through `peft`: what trains, what stays frozen, merge and reload
equivalence, the adapter-directory loaders and the user errors."""

from __future__ import annotations

import copy
import json
import shutil
import sys
import types

import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer

import minigpt  # noqa: F401 — registers MiniGPT with the Auto classes
from minigpt.errors import UserError
from minigpt.model import MiniGPTConfig, MiniGPTForCausalLM, count_parameters
from minigpt.model.lora import adapters_disabled, apply_lora, apply_prefix_tuning, load_adapter, merge_lora
from minigpt.objectives.lm import CausalLMObjective
from minigpt.inference.loading import load_model_and_tokenizer
from minigpt.recipes.merge import merge
from minigpt.model.checks import model_fingerprint
from minigpt.tokenizer import load_tokenizer, train_tokenizer
from minigpt.train.config import TrainConfig
from minigpt.train.loop import Trainer

from tiny_models import random_blocks

VOCAB = 272  # the 264 ids of the smallest tokenizer (256 bytes + 8 specials) and 8 merges
C, F, LAYERS, HEADS, KV = 32, 64, 2, 4, 2  # head_dim D = C / HEADS = 8
RANK = 4


def Blocks(n_blocks: int = 16, block: int = 12, seed: int = 0):
    """Random-token blocks (`tiny_models.random_blocks`)."""
    return random_blocks(VOCAB, n_blocks, block, seed)


def tiny_config(**kw) -> MiniGPTConfig:
    base = dict(vocab_size=VOCAB, hidden_size=C, intermediate_size=F, num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV)
    return MiniGPTConfig(**{**base, **kw})


def tiny_model(seed: int = 0, **kw) -> MiniGPTForCausalLM:
    torch.manual_seed(seed)
    return MiniGPTForCausalLM(tiny_config(**kw))


def train(model, out_dir, steps: int = 4) -> None:
    """A few AdamW steps of the real loop at a high lr; no weight decay, so a weight moves only
    when its gradient is non-zero."""
    cfg = TrainConfig(
        max_steps=steps, batch_size=4, lr=2e-2, warmup_steps=0, weight_decay=0.0, precision="fp32", device="cpu",
        eval_interval=0, save_interval=0, log_interval=1, progress=False, tensorboard=False, seed=1,
    )
    Trainer(model, CausalLMObjective(), Blocks(), cfg, out_dir).fit()


def probe(seed: int = 7) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def logits(model) -> torch.Tensor:
    model.eval()
    return model(input_ids=probe(), use_cache=False).logits


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread (conftest)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A base saved with a tokenizer, loaded back, given rank-4 LoRA and trained 4 steps."""
    root = tmp_path_factory.mktemp("lora")
    base_dir = root / "base"
    tiny_model(0).save_pretrained(base_dir)
    train_tokenizer(["hello world, the cat sat"] * 5, vocab_size=VOCAB, out_dir=base_dir)
    model = MiniGPTForCausalLM.from_pretrained(str(base_dir))
    apply_lora(model, rank=RANK, alpha=8, verbose=False)
    model.generation_config.eos_token_id = [3, 0]  # as SFT sets it: saved beside the adapter
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, root / "adapter")
    return types.SimpleNamespace(model=model.eval(), before=before, base_dir=base_dir, adapter_dir=root / "adapter", root=root)


def test_apply_lora_leaves_only_adapter_weights_trainable(capsys):
    """Untied head so lm_head is its own tensor. Per block (in, out) of the seven projections:
    q (32, 32), k (32, 16), v (32, 16), o (32, 32), gate (32, 64), up (32, 64), down (64, 32)
    where 16 = KV·D = 2·8; LoRA adds A (r, in) + B (out, r) = r·(in + out) each:
    r·(64 + 48 + 48 + 64 + 96 + 96 + 96) = 4·512 = 2048 per block, 4096 for two blocks."""
    model = tiny_model(tie_word_embeddings=False)
    total_before = count_parameters(model)
    same = apply_lora(model, rank=RANK)
    assert same is model
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert sum(p.numel() for _, p in trainable) == 2 * RANK * 512 == 4096
    assert all(".lora_A." in n or ".lora_B." in n for n, _ in trainable)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight", "model.layers.0.input_layernorm.weight"} <= frozen
    assert "model.layers.1.mlp.down_proj.base_layer.weight" in frozen
    assert not any("lm_head.lora" in n for n, _ in model.named_parameters())  # lm_head not a default target
    out = capsys.readouterr().out
    assert f"trainable 4,096 / total {total_before + 4096:,}" in out


def test_training_changes_every_adapter_weight_and_no_base_weight(trained):
    """B starts at zero, so only B moves in step 1; A moves from step 2 on, once B != 0."""
    after = dict(trained.model.named_parameters())
    adapters = [n for n in after if "lora_" in n]
    assert len(adapters) == 2 * 7 * LAYERS
    for n in adapters:
        assert not torch.equal(after[n].detach(), trained.before[n]), f"{n} did not change"
    for n, p in after.items():
        if "lora_" not in n:
            assert torch.equal(p.detach(), trained.before[n]), f"base weight {n} changed"
    assert all(torch.equal(trained.before[n], torch.zeros_like(trained.before[n])) for n in adapters if "lora_B" in n)


def test_adapter_directory_holds_the_adapter_alone(trained):
    files = {p.name for p in trained.adapter_dir.iterdir() if p.is_file()}
    assert {"adapter_model.safetensors", "adapter_config.json"} <= files
    assert not any(f.startswith("model") for f in files)  # no full weights
    cfg = json.loads((trained.adapter_dir / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == RANK
    # Where the base is, relative to the adapter: the trainer's folder layout is not recorded.
    assert cfg["base_model_name_or_path"] == "../base"
    record = json.loads((trained.adapter_dir / "adapter_base.json").read_text())
    assert record == {"base_model_sha256": model_fingerprint(trained.base_dir)}


def test_merged_logits_equal_adapted_logits(trained):
    """Also checks the merge formula for one layer: W' = W + (alpha / r)·B A (Hu et al. eq. 3),
    with alpha / r = 8 / 4 = 2."""
    model = copy.deepcopy(trained.model)
    adapted = logits(model)
    with adapters_disabled(model):
        assert (logits(model) - adapted).abs().max() > 1e-3  # the adapter matters
    assert torch.equal(logits(model), adapted)  # and is back on
    q = model.model.layers[0].self_attn.q_proj
    expected_w = q.base_layer.weight + 2.0 * q.lora_B["default"].weight @ q.lora_A["default"].weight
    merged = merge_lora(model)
    assert merged is model and type(merged) is MiniGPTForCausalLM
    assert not any(isinstance(m, BaseTunerLayer) for m in merged.modules())
    assert sorted(merged.state_dict()) == sorted(tiny_model().state_dict())
    torch.testing.assert_close(merged.model.layers[0].self_attn.q_proj.weight, expected_w, rtol=0, atol=1e-6)
    assert (logits(merged) - adapted).abs().max() <= 1e-5
    with pytest.raises(UserError, match="no LoRA adapters"):
        merge_lora(merged)


def test_adapter_save_load_round_trip(trained):
    fresh = MiniGPTForCausalLM.from_pretrained(str(trained.base_dir))
    base_logits = logits(fresh)
    assert load_adapter(fresh, trained.adapter_dir) is fresh
    assert torch.equal(logits(fresh), logits(trained.model))
    assert (logits(fresh) - base_logits).abs().max() > 1e-3
    assert not any(p.requires_grad for p in fresh.parameters())  # loaded for inference
    with pytest.raises(UserError, match="already has LoRA"):
        load_adapter(fresh, trained.adapter_dir)


@pytest.mark.parametrize("trainable", [False, True])
def test_adapters_disabled_gives_the_base_and_keeps_what_trains(trained, trainable):
    """Inside `adapters_disabled` the model is the base; after it, the adapters are back and
    every parameter's requires_grad is what it was (peft's switch flips the adapters' flags)."""
    model = load_adapter(MiniGPTForCausalLM.from_pretrained(str(trained.base_dir)), trained.adapter_dir, trainable=trainable)
    base = MiniGPTForCausalLM.from_pretrained(str(trained.base_dir))
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    assert any(flags.values()) == trainable
    with adapters_disabled(model):
        assert torch.equal(logits(model), logits(base))
    assert torch.equal(logits(model), logits(trained.model))
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    with pytest.raises(UserError, match="no adapters"):
        with adapters_disabled(base):
            pass


def test_load_adapter_rejects_other_bases_and_non_adapters(trained, tmp_path):
    wider = tiny_model(hidden_size=64)
    with pytest.raises(UserError, match=r"has shape \(32, 4\) but this base's model.layers.0.mlp.down_proj is Linear\(in=64, out=64\)"):
        load_adapter(wider, trained.adapter_dir)
    assert not any(isinstance(m, BaseTunerLayer) for m in wider.modules())  # untouched
    deeper_adapter = tmp_path / "deep"
    deep = apply_lora(tiny_model(num_hidden_layers=3), rank=RANK, verbose=False)
    deep.save_pretrained(deeper_adapter)
    with pytest.raises(UserError, match="model.layers.2.*not a linear layer of this base"):
        load_adapter(tiny_model(), deeper_adapter)
    # Built in memory, not loaded from a directory: no base path to record.
    with pytest.raises(UserError, match="base_model_name_or_path is empty"):
        load_model_and_tokenizer(deeper_adapter, device="cpu")
    with pytest.raises(UserError, match="no adapter_config.json"):
        load_adapter(tiny_model(), trained.base_dir)


def test_load_model_and_tokenizer_on_an_adapter_dir(trained, tmp_path):
    model, tok = load_model_and_tokenizer(trained.adapter_dir, device="cpu")
    assert torch.equal(logits(model), logits(trained.model))
    base_vocab = load_tokenizer(trained.base_dir).get_vocab()
    assert tok.get_vocab() == base_vocab  # the base's tokenizer (the adapter dir has none)
    assert model.generation_config.eos_token_id == [3, 0]  # the adapter dir's generation config
    # A tokenizer inside the adapter directory wins over the base's (same size, other merges).
    own = tmp_path / "own"
    shutil.copytree(trained.adapter_dir, own)
    shutil.copytree(trained.base_dir, tmp_path / "base")  # "../base" from the copy
    other_vocab = train_tokenizer(["zebra quokka jumps over fjords"] * 5, vocab_size=VOCAB, out_dir=own).get_vocab()
    assert other_vocab != base_vocab
    assert load_model_and_tokenizer(own, device="cpu")[1].get_vocab() == other_vocab
    cfg = json.loads((own / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "someone/hub-model"
    (own / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="'someone/hub-model' is not a local model directory") as info:
        load_model_and_tokenizer(own, device="cpu")
    # chat and generate take no base option: the way out named is one they can take.
    assert "--model)" not in str(info.value) and "minigpt merge" in str(info.value) and "adapter_config.json" in str(info.value)


def test_fingerprint_follows_the_weights_not_the_files(trained, tmp_path):
    """The same weights saved again (another folder, sharded, another transformers release)
    keep the fingerprint; one changed weight or one architecture field changes it."""
    base = MiniGPTForCausalLM.from_pretrained(str(trained.base_dir))
    want = model_fingerprint(trained.base_dir)
    base.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    cfg = json.loads((tmp_path / "sharded" / "config.json").read_text())
    cfg["transformers_version"] = "0.0.1"
    (tmp_path / "sharded" / "config.json").write_text(json.dumps(cfg))
    assert model_fingerprint(tmp_path / "sharded") == want
    with torch.no_grad():
        base.model.norm.weight[0] += 1e-3
    base.save_pretrained(tmp_path / "nudged")
    assert model_fingerprint(tmp_path / "nudged") != want
    cfg = json.loads((trained.base_dir / "config.json").read_text())
    shutil.copytree(trained.base_dir, tmp_path / "theta")
    (tmp_path / "theta" / "config.json").write_text(json.dumps({**cfg, "rope_theta": 123.0}))
    assert model_fingerprint(tmp_path / "theta") != want


def test_adapter_refuses_a_base_with_other_weights(trained, tmp_path):
    """Same shapes, other weights: the adapter's recorded fingerprint tells them apart in
    load_adapter, generate/chat and merge; each can be told to go ahead."""
    from minigpt.cli import main

    root = tmp_path / "moved"
    shutil.copytree(trained.root, root)  # base and adapter moved together: "../base" still finds the base
    model, _ = load_model_and_tokenizer(root / "adapter", device="cpu")
    assert model.name_or_path == str(root / "base") and torch.equal(logits(model), logits(trained.model))
    impostor = tiny_model(seed=5)
    impostor.save_pretrained(root / "base")  # replaces the weights, keeps the tokenizer
    with pytest.raises(UserError, match=r"trained on another base model than .*base \(base fingerprint [0-9a-f]{12}…"):
        load_adapter(MiniGPTForCausalLM.from_pretrained(str(root / "base")), root / "adapter")
    with pytest.raises(UserError, match="--allow_base_mismatch"):
        load_model_and_tokenizer(root / "adapter", device="cpu")
    forced = load_adapter(MiniGPTForCausalLM.from_pretrained(str(root / "base")), root / "adapter", check_base=False)
    assert not torch.equal(logits(forced), logits(trained.model))
    assert main(["generate", "--model", str(root / "adapter"), "--prompt", "hi", "--sampling.max_new_tokens", "2"]) == 2
    assert main(["generate", "--model", str(root / "adapter"), "--prompt", "hi", "--sampling.max_new_tokens", "2", "--allow_base_mismatch"]) == 0
    with pytest.raises(UserError, match="another base model"):
        merge(str(root / "base"), str(root / "adapter"), str(tmp_path / "merged"))
    assert not (tmp_path / "merged").exists()
    merge(str(root / "base"), str(root / "adapter"), str(tmp_path / "merged"), allow_base_mismatch=True)
    assert (tmp_path / "merged" / "model.safetensors").is_file()


def test_older_adapters_without_a_record_still_load(trained, tmp_path):
    """Adapters written before the fingerprint (absolute base path, no adapter_base.json), or
    by peft (a path relative to the current directory) load as before."""
    old = tmp_path / "old"
    shutil.copytree(trained.adapter_dir, old)
    (old / "adapter_base.json").unlink()
    cfg = json.loads((old / "adapter_config.json").read_text())
    (old / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": str(trained.base_dir.resolve())}))
    assert torch.equal(logits(load_model_and_tokenizer(old, device="cpu")[0]), logits(trained.model))
    (old / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": "base"}))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(trained.root)
        assert torch.equal(logits(load_model_and_tokenizer(old, device="cpu")[0]), logits(trained.model))


def test_merge_command_writes_a_plain_model(trained, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "merged"
    merge(str(trained.base_dir), str(trained.adapter_dir), str(out))
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= files
    assert not any(f.startswith("adapter") for f in files)
    loaded = AutoModelForCausalLM.from_pretrained(str(out))
    assert type(loaded) is MiniGPTForCausalLM
    assert (logits(loaded) - logits(trained.model)).abs().max() <= 1e-5
    assert loaded.generation_config.eos_token_id == [3, 0]
    with pytest.raises(UserError, match="--overwrite"):
        merge(str(trained.base_dir), str(trained.adapter_dir), str(out))
    merge(str(trained.base_dir), str(trained.adapter_dir), str(out), overwrite=True)
    with pytest.raises(UserError, match="no adapter_config.json"):
        merge(str(trained.base_dir), str(trained.base_dir), str(tmp_path / "x"))
    other = tmp_path / "other_base"
    tiny_model(hidden_size=64).save_pretrained(other)
    with pytest.raises(UserError, match="different base"):
        merge(str(other), str(trained.adapter_dir), str(tmp_path / "y"))
    assert not (tmp_path / "y").exists()


def test_dora_trains_magnitudes_and_merges_exactly(tmp_path):
    """DoRA adds a magnitude vector (out,) per layer: per block 32+16+16+32+64+64+32 = 256."""
    model = tiny_model(1)
    apply_lora(model, rank=RANK, use_dora=True, verbose=False)
    mags = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_magnitude_vector" in n}
    assert sum(p.numel() for p in mags.values()) == LAYERS * 256
    base = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    train(model, tmp_path / "dora")
    now = dict(model.named_parameters())
    assert all(not torch.equal(now[n].detach(), v) for n, v in mags.items())
    assert all(torch.equal(now[n].detach(), v) for n, v in base.items())
    adapted = logits(model)
    fresh = load_adapter(tiny_model(1), tmp_path / "dora")  # the magnitudes travel with the adapter
    assert torch.equal(logits(fresh), adapted)
    assert (logits(merge_lora(model)) - adapted).abs().max() <= 1e-5


def test_unknown_target_module_lists_the_linear_layers():
    model = tiny_model()
    with pytest.raises(UserError) as err:
        apply_lora(model, target_modules=["q_proj", "qkv_proj"])
    msg = str(err.value)
    assert "['qkv_proj']" in msg
    assert "down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj" in msg
    with pytest.raises(UserError, match="input_layernorm"):
        apply_lora(model, target_modules="input_layernorm")  # exists, but is not a linear layer
    with pytest.raises(UserError, match="tie_word_embeddings"):
        apply_lora(model, target_modules="lm_head")
    assert not any(isinstance(m, BaseTunerLayer) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())


def test_qlora_says_what_is_missing(monkeypatch):
    model = tiny_model()
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError) as err:
        apply_lora(model, quantize="4bit")
    assert "bitsandbytes package" in str(err.value) and "CUDA GPU" in str(err.value)
    monkeypatch.setitem(sys.modules, "bitsandbytes", types.ModuleType("bitsandbytes"))  # installed
    with pytest.raises(UserError) as err:
        apply_lora(model, quantize="8bit")
    assert "CUDA GPU" in str(err.value) and "bitsandbytes" not in str(err.value).split("needs")[1].split(";")[0]
    with pytest.raises(UserError, match="'4bit' or '8bit'"):
        apply_lora(model, quantize="3bit")
    assert not any(isinstance(m, BaseTunerLayer) for m in model.modules())


def test_prefix_tuning_trains_only_the_prefix_and_acts_as_past_key_values(tmp_path):
    """Trainable: P virtual tokens × layers × (key, value) × KV heads × D = 3·2·2·2·8 = 192.
    The prefix must act exactly like a KV cache holding those vectors: peft lays the
    embedding (P, L·2·KV·D) out as (L·2, KV, P, D) per batch row, key then value per layer."""
    from transformers.cache_utils import DynamicCache

    base = tiny_model(2)
    pm = apply_prefix_tuning(base, num_virtual_tokens=3, verbose=False)
    trainable = {n: p for n, p in pm.named_parameters() if p.requires_grad}
    assert sum(p.numel() for p in trainable.values()) == 192
    frozen = {n: p.detach().clone() for n, p in base.named_parameters()}
    prefix_before = {n: p.detach().clone() for n, p in trainable.items()}
    train(pm, tmp_path / "prefix")
    assert all(not torch.equal(p.detach(), prefix_before[n]) for n, p in trainable.items())
    assert all(torch.equal(p.detach(), frozen[n]) for n, p in base.named_parameters())

    pm.eval()
    x = probe()
    emb = next(iter(trainable.values())).detach()  # (P, L·2·KV·D)
    kv = emb.view(3, LAYERS * 2, KV, C // HEADS).permute(1, 2, 0, 3)  # (L·2, KV, P, D)
    cache = DynamicCache(config=base.config)
    for layer in range(LAYERS):
        k, v = kv[2 * layer], kv[2 * layer + 1]
        cache.update(k[None].expand(2, -1, -1, -1), v[None].expand(2, -1, -1, -1), layer)
    with torch.no_grad():
        want = base(input_ids=x, past_key_values=cache, attention_mask=torch.ones(2, 13, dtype=torch.long)).logits
        got = pm(input_ids=x, attention_mask=torch.ones(2, 10, dtype=torch.long)).logits
        plain = base(input_ids=x).logits
    assert (got - want).abs().max() <= 1e-5
    assert (got - plain).abs().max() > 1e-3

    # Greedy generation with the prefix == argmax of full recomputation at every step.
    out = pm.generate(input_ids=x[:1], attention_mask=torch.ones(1, 10, dtype=torch.long), max_new_tokens=4, do_sample=False)
    seq = x[:1]
    with torch.no_grad():
        for _ in range(4):
            nxt = pm(input_ids=seq, attention_mask=torch.ones_like(seq)).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
    assert torch.equal(out, seq)

    pm.save_pretrained(tmp_path / "prefix_adapter")
    with pytest.raises(UserError, match="PREFIX_TUNING"):
        load_adapter(tiny_model(2), tmp_path / "prefix_adapter")


def test_merge_after_transformers_load_adapter_saves_plain_keys(trained, tmp_path):
    """`model.load_adapter` (transformers') records peft's key renaming on the model; merge_lora
    must drop it, or save_pretrained would write `base_model.model.*` keys nobody can load."""
    from safetensors import safe_open

    model = MiniGPTForCausalLM.from_pretrained(str(trained.base_dir))
    try:
        model.load_adapter(str(trained.adapter_dir))
    except ValueError as e:  # transformers' integration gates the peft release it accepts
        if "peft" not in str(e).lower():
            raise
        pytest.skip(f"transformers' own adapter loading refuses this peft release: {e}")
    merge_lora(model).save_pretrained(tmp_path / "m")
    with safe_open(str(tmp_path / "m" / "model.safetensors"), framework="pt") as f:
        assert set(f.keys()) == set(tiny_model().state_dict()) - {"lm_head.weight"}  # tied head not stored
    assert (logits(MiniGPTForCausalLM.from_pretrained(str(tmp_path / "m"))) - logits(trained.model)).abs().max() <= 1e-5
