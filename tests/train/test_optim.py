"""The optimizers of `minigpt.train.optim`: which parameters Muon takes, `MuonWithAdamW` against
torch's own Muon and AdamW stepped apart, its schedule and state, and a run that resumes exactly."""

from __future__ import annotations

import copy

import pytest
import torch

from minigpt.errors import UserError
from minigpt.model import MiniGPTConfig, MiniGPTForCausalLM
from minigpt.objectives.lm import CausalLMObjective
from minigpt.train.callbacks import Callback
from minigpt.train.config import TrainConfig
from minigpt.train.loop import Trainer
from minigpt.train.optim import MuonWithAdamW, make_optimizer, muon_parameters, newton_schulz

from tiny_models import TokenBlocks

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(seed: int = 0, tie: bool = False) -> MiniGPTForCausalLM:
    torch.manual_seed(seed)
    return MiniGPTForCausalLM(MiniGPTConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                            num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tie))


def loss_of(model: torch.nn.Module) -> torch.Tensor:
    ids = torch.arange(24).reshape(2, 12) % 40
    return model(input_ids=ids, labels=ids).loss


def test_muon_takes_the_block_matrices_and_nothing_else():
    for tie in (False, True):
        model = tiny(tie=tie)
        expected = {id(p) for n, p in model.named_parameters() if ".layers." in n and n.endswith("proj.weight")}
        assert len(expected) == 2 * 7  # q, k, v, o, gate, up, down per layer
        assert muon_parameters(model) == expected


def _reference(b):
    """torch's own Muon (match_rms_adamw, Nesterov) and AdamW built by hand over `b`."""
    hidden = [p for n, p in b.named_parameters() if ".layers." in n and n.endswith("proj.weight")]
    rest = [p for p in b.parameters() if all(p is not h for h in hidden)]
    decayed = [p for p in rest if p.ndim == 2 and not any(p is m.weight for m in b.modules() if isinstance(m, torch.nn.Embedding))]
    flat = [p for p in rest if all(p is not d for d in decayed)]
    muon = torch.optim.Muon(hidden, lr=0.01, weight_decay=0.1, momentum=0.9, nesterov=True, adjust_lr_fn="match_rms_adamw")
    adamw = torch.optim.AdamW([{"params": decayed, "weight_decay": 0.1}, {"params": flat, "weight_decay": 0.0}], lr=0.01,
                              betas=(0.9, 0.95))
    return [muon, adamw]


def _three_steps(pairs):
    for _ in range(3):
        for model, steps in pairs:
            loss_of(model).backward()
            for s in steps:
                s.step()
                s.zero_grad()


def test_muon_with_adamw_equals_torch_muon_and_adamw_stepped_apart():
    """With the Newton-Schulz iteration in bf16, as torch's Muon runs it, the same gradients give
    the same weights (to float rounding); in fp32 (what an AVX2 CPU gets) they agree to bf16's
    precision."""
    train = TrainConfig(optimizer="muon", lr=0.01, weight_decay=0.1, beta1=0.9, beta2=0.95, muon_momentum=0.9)
    assert isinstance(make_optimizer(tiny(), train, fused=False), MuonWithAdamW)
    for ns_dtype, atol in ((torch.bfloat16, 1e-6), (torch.float32, 2e-3)):
        a, b = tiny(), tiny()
        groups = make_optimizer(a, train, fused=False)  # for its parameter split
        opt = MuonWithAdamW(groups.muon.param_groups, groups.adamw.param_groups, 0.01, (0.9, 0.95), momentum=0.9,
                            ns_dtype=ns_dtype)
        _three_steps([(a, [opt]), (b, _reference(b))])
        worst = max((pa - pb).abs().max().item() for pa, pb in zip(a.parameters(), b.parameters()))
        assert worst <= atol, (ns_dtype, worst)
        assert worst > 0 or ns_dtype == torch.bfloat16


def test_newton_schulz_flattens_the_spectrum():
    """A random 32×96 gradient with singular values spread over 1e-2..1 comes out with every
    singular value near 1 (Muon's quintic iteration: within 0.5..1.5), in both orientations."""
    torch.manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(32, 32))
    v, _ = torch.linalg.qr(torch.randn(96, 32))
    grad = u @ torch.diag(torch.logspace(-2, 0, 32)) @ v.T  # (32, 96)
    for g in (grad, grad.T):
        s = torch.linalg.svdvals(newton_schulz(g))
        assert s.min() > 0.5 and s.max() < 1.5, s
    assert torch.linalg.svdvals(grad).min() < 0.02


def test_the_schedule_scales_both_parts_and_the_state_round_trips():
    train = TrainConfig(optimizer="muon", lr=0.02)
    model = tiny()
    opt = make_optimizer(model, train, fused=False)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5)
    assert {g["lr"] for g in opt.muon.param_groups} == {g["lr"] for g in opt.adamw.param_groups} == {0.01}
    for _ in range(2):
        loss_of(model).backward()
        opt.step()
        opt.zero_grad()
        schedule.step()
    twin = copy.deepcopy(model)
    restored = make_optimizer(twin, train, fused=False)
    restored.load_state_dict(copy.deepcopy(opt.state_dict()))
    restored_schedule = torch.optim.lr_scheduler.LambdaLR(restored, lambda step: 0.25)  # a schedule set after loading
    schedule2 = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.25)
    assert {g["lr"] for g in restored.muon.param_groups + restored.adamw.param_groups} == {0.005}
    for m, o in ((model, opt), (twin, restored)):
        loss_of(m).backward()
        o.step()
    for pa, pb in zip(model.parameters(), twin.parameters()):
        assert torch.equal(pa, pb)
    del restored_schedule, schedule2
    with pytest.raises(KeyError):
        restored.load_state_dict(torch.optim.AdamW(model.parameters()).state_dict())  # an AdamW checkpoint


def Blocks(n: int = 32, block: int = 12):
    """A learnable stream (0, 1, ..., 6, 0, 1, ...) cut into blocks."""
    return TokenBlocks(torch.arange(n * block + 1) % 7, block)


class StopAt(Callback):
    def __init__(self, step: int) -> None:
        self.at = step

    def on_step_end(self, trainer, metrics) -> None:
        trainer.should_stop = trainer.step >= self.at


def test_a_muon_run_learns_and_resumes_exactly(tmp_path):
    def run(name, model, resume=False, callbacks=()):
        config = TrainConfig(optimizer="muon", max_steps=6, batch_size=4, lr=0.02, warmup_steps=1, precision="fp32",
                             device="cpu", eval_interval=0, save_interval=0, log_interval=1, progress=False,
                             tensorboard=False, seed=1)
        t = Trainer(model, CausalLMObjective(), Blocks(), config, tmp_path / name, callbacks=callbacks)
        t.fit(resume=resume)
        return t

    full = run("full", tiny())
    assert full.history[-1]["loss"] < full.history[0]["loss"] - 1.0  # the stream is learnable
    assert run("part", tiny(), callbacks=[StopAt(3)]).step == 3
    resumed = run("part", tiny(seed=5), resume=True)  # other init: the weights come from the checkpoint
    for pa, pb in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(pa, pb)


def test_bad_optimizer_settings_name_the_field():
    with pytest.raises(UserError, match="train.optimizer: must be adamw or muon"):
        TrainConfig(optimizer="sgd")
    with pytest.raises(UserError, match="train.muon_momentum"):
        TrainConfig(optimizer="muon", muon_momentum=1.0)


def test_warmup_stable_decay_by_hand():
    """100 steps, warmup 10, decay over the last 20 % to 0.1: 0.1, …, 1 at step 9; 1 through
    step 79; then linear: step 90 is halfway (1 − 0.9 · 0.5 = 0.55), step 100 the floor."""
    from minigpt.train.optim import lr_schedule, warmup_stable_decay

    f = warmup_stable_decay(10, lambda: 100, 0.1, decay_fraction=0.2)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == f(50) == f(79) == 1.0
    assert f(80) == pytest.approx(1.0) and f(90) == pytest.approx(0.55) and f(100) == pytest.approx(0.1)
    assert f(400) == pytest.approx(0.1)
    chosen = lr_schedule(TrainConfig(schedule="wsd", warmup_steps=10, min_lr_ratio=0.1, decay_fraction=0.2), lambda: 100)
    assert [chosen(s) for s in (5, 50, 90)] == [f(s) for s in (5, 50, 90)]
    with pytest.raises(UserError, match="train.schedule: must be cosine or wsd"):
        TrainConfig(schedule="linear")
