"""The one optimizer step (`minigpt.train.step.OptimizerStep`) that the loop and the Python-API
trainers share: exact accumulation, the NaN guard, clipping, empty updates."""

from __future__ import annotations

import pytest
import torch

from minigpt.errors import UserError
from minigpt.train.objective import LossOutput
from minigpt.train.step import OptimizerStep, TrainingDivergedError


class SquaredError:
    """`L = Σ_rows (w·x − y)²`, one unit per row whose `weight` is 1; reports `hits`."""

    def num_units(self, batch):
        return int(batch["weight"].sum())

    def compute_loss(self, model, batch):
        pred = model(batch["x"]).squeeze(-1)
        per_row = (pred - batch["y"]) ** 2 * batch["weight"]
        return LossOutput(per_row.sum(), self.num_units(batch), sums={"hits": float(batch["weight"].sum())}, metrics={"m": 2.0})


def _linear(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Linear(3, 1, bias=False)


def _batch(rows, weight=None):
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 3, generator=g)
    y = torch.randn(rows, generator=g)
    return {"x": x, "y": y, "weight": torch.ones(rows) if weight is None else weight}


def _split(batch):
    return [{k: v[i : i + 1] for k, v in batch.items()} for i in range(batch["x"].shape[0])]


def test_micro_batches_give_the_update_of_one_batch():
    """4 micro-batches of one row move the weights exactly as one batch of 4 rows, and report
    the same mean loss: both minimise the mean over the update's 4 units."""
    whole = _batch(4)
    a, b = _linear(), _linear()
    step_a = OptimizerStep(a, SquaredError(), torch.optim.SGD(a.parameters(), lr=0.1), max_grad_norm=0)
    step_b = OptimizerStep(b, SquaredError(), torch.optim.SGD(b.parameters(), lr=0.1), max_grad_norm=0)
    with torch.no_grad():
        expected_loss = float(((a(whole["x"]).squeeze(-1) - whole["y"]) ** 2).mean())
    out_a = step_a([whole])
    out_b = step_b(_split(whole))
    assert torch.allclose(a.weight, b.weight, atol=1e-6)
    assert out_a.loss == pytest.approx(expected_loss, rel=1e-5)
    assert out_b.loss == pytest.approx(expected_loss, rel=1e-5)
    assert out_b.metrics["hits"] == 1.0 and out_b.metrics["m"] == 2.0  # sums per unit; means
    assert out_b.num_units == 4


def test_clipping_bounds_the_update_and_reports_the_norm_before_it():
    """With SGD(lr=1) the update is the clipped gradient: its norm is max_grad_norm, while the
    reported grad_norm is the norm before clipping (computed here by hand)."""
    model = _linear()
    batch = _batch(4)
    batch["y"] = batch["y"] + 100.0  # a large gradient
    pred = model(batch["x"]).squeeze(-1)
    (((pred - batch["y"]) ** 2).mean()).backward()
    norm = float(model.weight.grad.norm())
    model.zero_grad()
    before = model.weight.detach().clone()
    out = OptimizerStep(model, SquaredError(), torch.optim.SGD(model.parameters(), lr=1.0), max_grad_norm=0.5)([batch])
    assert out.grad_norm == pytest.approx(norm, rel=1e-5) and norm > 0.5
    assert float((model.weight.detach() - before).norm()) == pytest.approx(0.5, rel=1e-4)


def test_a_nan_loss_raises_before_touching_the_weights():
    model = _linear()
    before = model.weight.detach().clone()
    batch = _batch(2)
    batch["y"][0] = float("nan")
    step = OptimizerStep(model, SquaredError(), torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(TrainingDivergedError, match="loss is nan") as caught:
        step([batch])
    assert caught.value.loss != caught.value.loss  # NaN
    assert torch.equal(model.weight, before) and model.weight.grad is None


def test_an_update_without_units_is_an_error_or_skipped():
    model = _linear()
    before = model.weight.detach().clone()
    empty = _batch(2, weight=torch.zeros(2))
    with pytest.raises(UserError, match="has no units: nothing in it carries loss"):
        OptimizerStep(model, SquaredError(), torch.optim.SGD(model.parameters(), lr=0.1))([empty])
    out = OptimizerStep(model, SquaredError(), torch.optim.SGD(model.parameters(), lr=0.1), empty="skip")([empty])
    assert out.skipped and torch.equal(model.weight, before)
    with pytest.raises(UserError, match="'error' or 'skip'"):
        OptimizerStep(model, SquaredError(), torch.optim.SGD(model.parameters(), lr=0.1), empty="ignore")


def test_the_schedule_steps_once_per_update_and_lr_is_the_one_used():
    model = _linear()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5**s)
    step = OptimizerStep(model, SquaredError(), opt, sched)
    assert [step(_split(_batch(2))).lr for _ in range(3)] == [1.0, 0.5, 0.25]


def test_python_api_trainers_share_the_step():
    """The reward-model trainer used to step a NaN loss into its weights; through the shared
    step it refuses, weights intact. DPO, GRPO and PPO hold the same step class."""
    from minigpt.model import MiniGPTConfig
    from minigpt.model.reward_model import MiniGPTRewardModel
    from minigpt.trainers.reward_model import RewardModelTrainer

    torch.manual_seed(0)
    config = MiniGPTConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, intermediate_size=64, max_position_embeddings=32)
    rm = MiniGPTRewardModel(config)
    trainer = RewardModelTrainer(rm, train={"lr": 1e-2})
    assert isinstance(trainer.optimizer_step, OptimizerStep)
    ids = torch.randint(3, 50, (2, 6))
    before = {k: v.clone() for k, v in rm.state_dict().items()}
    with pytest.raises(TrainingDivergedError):
        trainer.train_step(ids, ids.flip(1), margin=torch.tensor([float("nan"), 0.0]))
    assert all(torch.equal(before[k], v) for k, v in rm.state_dict().items())
    out = trainer.train_step(ids, ids.flip(1))
    assert set(out) == {"loss", "accuracy", "chosen_reward", "rejected_reward", "reward_margin", "grad_norm"}
    assert any(not torch.equal(before[k], v) for k, v in rm.state_dict().items())

    from minigpt.model import MiniGPTForCausalLM
    from minigpt.rl import create_dpo_trainer, create_grpo_trainer, create_rlhf_trainer

    policy = MiniGPTForCausalLM(config)
    for trainer in (create_dpo_trainer(policy), create_grpo_trainer(policy), create_rlhf_trainer(policy, rm)):
        assert isinstance(trainer.optimizer_step, OptimizerStep) and trainer.optimizer_step.objective is trainer.objective


def test_the_norm_is_taken_in_the_models_parameter_order():
    """The global norm sums per-tensor norms in order, so the order decides the last bit of the
    clip factor (and, over hundreds of steps, the run). Optimizer groups (decay / no decay) list
    parameters in another order than the model; the step still walks the model's order, and
    keeps only the parameters the optimizer updates."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    w0, b0, w1, b1 = model.parameters()
    opt = torch.optim.SGD([{"params": [w1, w0]}, {"params": [b1]}], lr=0.1)  # b0 is not trained
    step = OptimizerStep(model, SquaredError(), opt)
    assert [id(p) for p in step.parameters()] == [id(w0), id(w1), id(b1)]
