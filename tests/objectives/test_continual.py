"""Continual learning: the EWC penalty and Fisher estimate, KL to the base model, replay, and
the sft options that use them."""

from __future__ import annotations

import json
import math

import pytest
import torch

import minigpt  # noqa: F401
from minigpt.errors import UserError
from minigpt.losses.continual import ewc_penalty, kl_to_reference
from minigpt.model import MiniGPTConfig, MiniGPTForCausalLM
from minigpt.objectives.continual import ContinualObjective, estimate_fisher
from minigpt.objectives.lm import CausalLMObjective

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(seed: int = 0) -> MiniGPTForCausalLM:
    torch.manual_seed(seed)
    cfg = MiniGPTConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                        max_position_embeddings=32, initializer_range=0.3)
    return MiniGPTForCausalLM(cfg)


def lm_batch(seed: int, b: int = 3, t: int = 8) -> dict:
    ids = torch.randint(0, 50, (b, t + 1), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids[:, :-1], "targets": ids[:, 1:]}


def test_ewc_penalty_matches_its_formula():
    p = [torch.tensor([1.0, 2.0]), torch.tensor([[0.5]])]
    a = [torch.tensor([0.0, 3.0]), torch.tensor([[1.5]])]
    f = [torch.tensor([2.0, 0.5]), torch.tensor([[4.0]])]
    # (λ/2)·[2·1² + 0.5·(−1)² + 4·(−1)²] with λ = 3
    assert ewc_penalty(p, a, f, 3.0).item() == pytest.approx(1.5 * (2 + 0.5 + 4))
    with pytest.raises(ValueError):
        ewc_penalty(p, a[:1], f, 1.0)


def test_kl_to_reference_is_the_exact_masked_divergence():
    logits = torch.tensor([[[1.0, 0.0], [0.0, 0.0], [2.0, 1.0]]])
    ref = torch.tensor([[[0.0, 0.0], [5.0, 5.0], [0.0, 2.0]]])
    targets = torch.tensor([[1, -100, 0]])

    def kl(x, y):
        p = [math.exp(v) / sum(math.exp(u) for u in x) for v in x]
        q = [math.exp(v) / sum(math.exp(u) for u in y) for v in y]
        return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))

    expected = kl([1.0, 0.0], [0.0, 0.0]) + kl([2.0, 1.0], [0.0, 2.0])
    assert kl_to_reference(logits, ref, targets).item() == pytest.approx(expected, rel=1e-6)
    assert kl_to_reference(logits, logits, targets).item() == pytest.approx(0.0, abs=1e-7)


def test_fisher_is_the_mean_of_per_sequence_squared_gradients():
    model = tiny(1)
    batch = lm_batch(2)
    fisher = estimate_fisher(model, CausalLMObjective(), [batch], max_rows=2)
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for r in range(2):
        model.zero_grad()
        logits = model(batch["input_ids"][r : r + 1]).logits
        torch.nn.functional.cross_entropy(logits[0], batch["targets"][r]).backward()
        for n, p in model.named_parameters():
            expected[n] += p.grad.pow(2) / 2
    for n in expected:
        torch.testing.assert_close(fisher[n], expected[n], atol=1e-7, rtol=1e-4)
    assert fisher["model.embed_tokens.weight"].sum() > 0


def test_continual_objective_adds_ewc_and_kl_in_training_only():
    model = tiny(3).train()
    reference = tiny(3).eval()
    fisher = {n: torch.full_like(p, 0.5) for n, p in model.named_parameters()}
    objective = ContinualObjective(CausalLMObjective(), model, fisher=fisher, ewc_lambda=2.0, reference=reference, kl_coef=0.1)
    batch = lm_batch(4)
    plain = CausalLMObjective().compute_loss(model, batch)
    start = objective.compute_loss(model, batch)
    # At θ = θ* and p = p_ref both penalties are 0.
    assert start.loss_sum.item() == pytest.approx(plain.loss_sum.item(), rel=1e-6)
    with torch.no_grad():
        model.lm_head.weight.add_(0.1)  # tied: moves the embedding too
    moved_plain = CausalLMObjective().compute_loss(model, batch)
    moved = objective.compute_loss(model, batch)
    n = model.lm_head.weight.numel()
    ewc = 0.5 * 2.0 * 0.5 * n * 0.01
    assert moved.metrics["ewc_penalty"] == pytest.approx(ewc, rel=1e-4)
    with torch.no_grad():
        kl = kl_to_reference(model(batch["input_ids"]).logits, reference(batch["input_ids"]).logits, batch["targets"]).item()
    assert kl > 0 and moved.metrics["kl_to_base"] == pytest.approx(kl / 24, rel=1e-4)
    assert moved.loss_sum.item() == pytest.approx(moved_plain.loss_sum.item() + ewc * 24 + 0.1 * kl, rel=1e-5)
    model.eval()
    assert objective.compute_loss(model, batch).loss_sum.item() == pytest.approx(moved_plain.loss_sum.item(), rel=1e-6)
    with pytest.raises(UserError, match="Fisher"):
        ContinualObjective(CausalLMObjective(), model, fisher={"nothing": torch.zeros(1)}, ewc_lambda=1.0)


def test_replay_share_is_exact(tmp_path):
    from minigpt.data.sft import replay_examples

    old = [([i, i + 1], [0, 1]) for i in range(7)]
    mixed = replay_examples(old, n_train=40, ratio=0.2)
    assert len(mixed) == 10 and len(mixed) / (len(mixed) + 40) == 0.2
    assert len({tuple(x[0]) for x in mixed}) == 7  # cycled through every old conversation
    with pytest.raises(UserError, match="replay_ratio"):
        replay_examples(old, 10, 1.0)


@pytest.fixture(scope="module")
def chat_env(tmp_path_factory):
    from tiny_models import save_tiny_chat_model

    root = tmp_path_factory.mktemp("continual")
    en = [{"instruction": f"Count to {i}", "output": " ".join(str(k) for k in range(1, i % 6 + 2))} for i in range(30)]
    zh = [{"instruction": f"数到{i}", "output": "一二三四五六"[: i % 6 + 1]} for i in range(30)]
    texts = [json.dumps(r, ensure_ascii=False) for r in en + zh] * 3
    save_tiny_chat_model(root / "base", texts, vocab_size=320, max_position_embeddings=96)
    for name, recs in (("en.jsonl", en), ("zh.jsonl", zh)):
        (root / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
    return root


def _sft(root, out, data, **kw):
    from minigpt.recipes.sft import sft
    from minigpt.train.config import TrainConfig

    train = TrainConfig(max_steps=3, batch_size=4, lr=1e-2, warmup_steps=0, precision="fp32", device="cpu", eval_interval=0,
                        eval_batches=0, save_interval=0, log_interval=1, progress=False, tensorboard=False, seed=1)
    return sft(model=str(kw.pop("model", root / "base")), data=str(root / data), out=str(root / out), max_length=48,
               val_fraction=0.1, train=train, **kw)


def test_sft_stages_with_save_fisher_ewc_replay_and_kl(chat_env, capsys):
    from minigpt.objectives.continual import FISHER_FILE, load_fisher

    root = chat_env
    _sft(root, "stage1", "en.jsonl", save_fisher=True, fisher_rows=8)
    assert (root / "stage1" / FISHER_FILE).is_file()
    fisher = load_fisher(root / "stage1")
    assert fisher["model.embed_tokens.weight"].sum() > 0
    _sft(root, "stage2", "zh.jsonl", model=root / "stage1", ewc_lambda=10.0, replay_data=str(root / "en.jsonl"),
         replay_ratio=0.25, kl_to_base=0.5)
    printed = capsys.readouterr().out
    assert "replay: 9 earlier conversations mixed into 27 new ones (0.250 of the training set)" in printed
    rows = [json.loads(line) for line in (root / "stage2" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "train/loss" in r]
    assert all("train/ewc_penalty" in r and "train/kl_to_base" in r for r in train_rows)
    assert train_rows[0]["train/ewc_penalty"] == 0.0 and train_rows[-1]["train/ewc_penalty"] > 0
    # Continued pretraining of the stage-1 model, with EWC (its saved Fisher) and KL to it.
    from minigpt.model.options import ModelConfig
    from minigpt.recipes.pretrain import pretrain
    from minigpt.train.config import TrainConfig

    text = root / "more.txt"
    text.write_text("数到三 一二三. Count to three: 1 2 3. " * 200, encoding="utf-8")
    train = TrainConfig(max_steps=2, batch_size=2, lr=1e-2, warmup_steps=0, precision="fp32", device="cpu", eval_interval=0,
                        eval_batches=0, save_interval=0, log_interval=1, progress=False, tensorboard=False)
    pretrain(data=str(text), out=str(root / "pt"), tokenizer=str(root / "stage1"), model=ModelConfig(init_from=str(root / "stage1")),
             block_size=32, train=train, ewc_lambda=5.0, kl_to_base=0.1)
    rows = [json.loads(line) for line in (root / "pt" / "metrics.jsonl").read_text().splitlines() if "train/loss" in line]
    assert rows[-1]["train/ewc_penalty"] > 0 and rows[-1]["train/kl_to_base"] > 0
    # No Fisher beside the model and no --ewc_data: a clear error.
    with pytest.raises(UserError, match="save_fisher"):
        _sft(root, "stage3", "zh.jsonl", ewc_lambda=1.0)
