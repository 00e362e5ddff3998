"""The training loop: invariances, exact resume, crash safety, callbacks, schedules."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from minigpt.errors import UserError
from minigpt.model import MiniGPTConfig, MiniGPTForCausalLM
from minigpt.train.objective import LossOutput
from minigpt.objectives.lm import CausalLMObjective
from minigpt.train import checkpoint as ckpt
from minigpt.train.callbacks import Callback, CallbackList
from minigpt.train.config import TrainConfig
from minigpt.train import rundir
from minigpt.train.loop import Trainer, TrainingDivergedError, TrainingInterrupted
from minigpt.train.optim import param_groups, warmup_cosine

from tiny_models import random_blocks

VOCAB = 48


def Blocks(n_blocks: int, block: int = 16, seed: int = 0):
    """Fixed blocks of a random token stream (`tiny_models.random_blocks`)."""
    return random_blocks(VOCAB, n_blocks, block, seed)


def tiny_model(seed: int = 0) -> MiniGPTForCausalLM:
    torch.manual_seed(seed)
    cfg = MiniGPTConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    return MiniGPTForCausalLM(cfg)


def config(**kw) -> TrainConfig:
    base = dict(
        max_steps=6, batch_size=4, lr=1e-2, warmup_steps=2, precision="fp32", device="cpu", eval_interval=0,
        save_interval=0, log_interval=1, progress=False, tensorboard=False, seed=3,
    )
    base.update(kw)
    return TrainConfig(**base)


def run(tmp_path, name, model=None, data=None, callbacks=(), resume=False, **kw) -> Trainer:
    t = Trainer(model or tiny_model(), CausalLMObjective(), data or Blocks(64), config(**kw), tmp_path / name, callbacks=callbacks)
    t.fit(resume=resume)
    return t


class GradAtFirstStep(Callback):
    """Copies every gradient after the last micro-batch of step 1 (before clipping/update)."""

    def __init__(self, accum: int) -> None:
        self.accum, self.batches, self.grads = accum, 0, None

    def on_batch_end(self, trainer, metrics) -> None:
        self.batches += 1
        if self.batches == self.accum:
            self.grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters()}


def test_grad_accumulation_invariance(tmp_path):
    """8 sequences in one micro-batch and 8 micro-batches of one sequence see the same data in
    the same order and average over the same tokens, so the step's gradient is the same."""
    ga, gb = GradAtFirstStep(1), GradAtFirstStep(8)
    a = run(tmp_path, "a", batch_size=8, grad_accum=1, max_steps=3, callbacks=[ga])
    b = run(tmp_path, "b", batch_size=1, grad_accum=8, max_steps=3, callbacks=[gb])
    for name, g in ga.grads.items():
        assert torch.allclose(g, gb.grads[name], atol=1e-7, rtol=1e-4), name
    assert [h["loss"] for h in a.history] == pytest.approx([h["loss"] for h in b.history], rel=1e-4)


class StopAt(Callback):
    def __init__(self, step: int) -> None:
        self.at = step

    def on_step_end(self, trainer, metrics) -> None:
        if trainer.step >= self.at:
            trainer.should_stop = True


def test_resume_equals_uninterrupted(tmp_path):
    full = run(tmp_path, "full", max_steps=10)
    part = run(tmp_path, "part", max_steps=10, callbacks=[StopAt(4)])
    assert part.step == 4
    resumed = run(tmp_path, "part", model=tiny_model(seed=99), max_steps=10, resume=True)  # other init: weights must come from the checkpoint
    losses_full = [h["loss"] for h in full.history]
    assert [h["loss"] for h in part.history] + [h["loss"] for h in resumed.history] == losses_full
    for pa, pb in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(pa, pb)
    # The token count survives the resume: 4 blocks of 16 tokens per step, 10 steps.
    assert resumed.tokens_seen == full.tokens_seen == 10 * 4 * 16

    def counts(name):
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return [r["train/tokens"] for r in rows if "train/tokens" in r]

    assert counts("part") == counts("full") == [64 * k for k in range(1, 11)]
    env = json.loads((tmp_path / "full" / "environment.json").read_text())
    assert env["precision"] == "fp32" and env["device"] == "cpu" and env["world_size"] == 1


def test_crash_during_checkpoint_save_keeps_previous(tmp_path, monkeypatch):
    t = run(tmp_path, "r", max_steps=4, save_interval=2)
    good = ckpt.latest_checkpoint(tmp_path / "r")
    assert good is not None and good.name == "step_00000004"
    good_state, good_weights = ckpt.load_checkpoint(good)

    def boom(*a, **k):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(ckpt.torch, "save", boom)
    t.step = 6
    with pytest.raises(OSError):
        t.save()
    monkeypatch.undo()
    assert ckpt.latest_checkpoint(tmp_path / "r") == good
    state, weights = ckpt.load_checkpoint(good)
    assert state["step"] == good_state["step"] == 4
    assert all(torch.equal(weights[k], good_weights[k]) for k in weights)
    assert not (tmp_path / "r" / "checkpoints" / "step_00000006").exists()


@pytest.mark.parametrize(
    "failure",
    [
        OSError(28, "No space left on device"),
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1408 vs 1318"),  # torch.save's zip writer
        RuntimeError("[enforce fail at inline_container.cc:858] . PytorchStreamWriter failed writing file data/0: file write failed"),
    ],
    ids=["ENOSPC", "unexpected-pos", "file-write-failed"],
)
def test_full_disk_during_a_checkpoint_is_a_clear_error_and_resume_is_exact(tmp_path, monkeypatch, failure):
    """The device fills while step 4's checkpoint is written: a DiskFullError that names the
    checkpoint kept (step 2), no partial folder left; with space back, --resume ends exactly
    where an uninterrupted run does."""
    from minigpt.errors import DiskFullError

    full = run(tmp_path, "full", max_steps=6, save_interval=2)
    real_save = ckpt.torch.save

    def fill_up(obj, path, *a, **k):
        if "step_00000004" in str(path):
            real_save(obj, path, *a, **k)  # bytes written, then the device is full
            raise failure
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(ckpt.torch, "save", fill_up)
    with pytest.raises(DiskFullError, match=r"writing checkpoint step_00000004; the last complete checkpoint, step_00000002, is kept"):
        run(tmp_path, "r", max_steps=6, save_interval=2)
    monkeypatch.undo()
    root = tmp_path / "r" / "checkpoints"
    assert [p.name for p in root.iterdir() if p.name.startswith("step_")] == ["step_00000002"]
    assert not any(p.name.startswith(".") for p in root.iterdir()) and not (tmp_path / "r" / ".tok-tmp").exists()
    resumed = run(tmp_path, "r", model=tiny_model(seed=99), max_steps=6, save_interval=2, resume=True)
    assert all(torch.equal(a, b) for a, b in zip(full.model.parameters(), resumed.model.parameters()))


def test_is_disk_full_sees_through_wrapped_errors():
    from minigpt.errors import is_disk_full

    try:
        try:
            raise OSError(122, "Disk quota exceeded")  # EDQUOT
        except OSError as inner:
            raise RuntimeError("saving failed") from inner
    except RuntimeError as outer:
        assert is_disk_full(outer)
    assert is_disk_full(Exception("Error while serializing: IoError(Os { code: 28, kind: StorageFull })"))  # safetensors
    assert not is_disk_full(OSError(13, "Permission denied"))
    assert not is_disk_full(RuntimeError("CUDA out of memory"))


def test_keep_last_prunes_old_checkpoints(tmp_path):
    run(tmp_path, "k", max_steps=6, save_interval=1, keep_last=2)
    names = [p.name for p in ckpt.checkpoint_dirs(tmp_path / "k")]
    assert names == ["step_00000005", "step_00000006"]


def test_resume_without_a_checkpoint_starts_from_step_0(tmp_path):
    """A run stopped before its first checkpoint: `--resume` starts it over cleanly."""
    fresh = run(tmp_path, "fresh", max_steps=4)
    (tmp_path / "early").mkdir()
    (tmp_path / "early" / "metrics.jsonl").write_text('{"step": 1, "train/loss": 9.0}\n')
    with pytest.warns(RuntimeWarning, match="no checkpoint yet"):
        resumed = run(tmp_path, "early", max_steps=4, resume=True)
    assert resumed.step == 4
    assert all(torch.equal(a, b) for a, b in zip(fresh.model.parameters(), resumed.model.parameters()))
    steps = [json.loads(line)["step"] for line in (tmp_path / "early" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps.count(1) == 1  # the stale row of step 1 is gone


def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    full = run(tmp_path, "full", max_steps=6)
    run(tmp_path, "c", max_steps=6, save_interval=2, keep_last=3, callbacks=[StopAt(4)])
    assert [p.name for p in ckpt.checkpoint_dirs(tmp_path / "c")] == ["step_00000002", "step_00000004"]
    (ckpt.latest_checkpoint(tmp_path / "c") / ckpt.STATE_FILE).write_bytes(b"not a checkpoint")
    with pytest.warns(RuntimeWarning, match="skipping checkpoint .*step_00000004.*corrupt"):
        resumed = run(tmp_path, "c", model=tiny_model(seed=99), max_steps=6, resume=True)
    assert all(torch.equal(a, b) for a, b in zip(full.model.parameters(), resumed.model.parameters()))
    for p in ckpt.checkpoint_dirs(tmp_path / "c"):
        (p / ckpt.STATE_FILE).write_bytes(b"not a checkpoint")
    with pytest.warns(RuntimeWarning, match="skipping"), pytest.raises(UserError, match="no readable checkpoint"):
        run(tmp_path, "c", max_steps=8, resume=True)


def test_metrics_rows_after_the_resumed_step_are_dropped(tmp_path):
    """Killed after logging steps 5-6 but before checkpointing them: the resumed run logs those
    steps again, and each step keeps one row."""
    run(tmp_path, "m", max_steps=6, save_interval=4, keep_last=3)
    for name in ("step_00000006",):
        shutil.rmtree(tmp_path / "m" / "checkpoints" / name)
    run(tmp_path, "m", max_steps=7, resume=True)
    rows = [json.loads(line) for line in (tmp_path / "m" / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in rows if "train/loss" in r]
    assert train_steps == [1, 2, 3, 4, 5, 6, 7]


def test_partial_writes_are_removed_at_start(tmp_path):
    run(tmp_path, "p", max_steps=2)
    junk = [tmp_path / "p" / "checkpoints" / ".tmp-step_00000004-12345", tmp_path / "p" / "checkpoints" / ".old-step_00000002-12345", tmp_path / "p" / ".final-tmp"]
    for d in junk:
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"half")
    with pytest.warns(RuntimeWarning, match="interrupted write"):
        run(tmp_path, "p", max_steps=3, resume=True)
    assert not any(d.exists() for d in junk)


class SignalAt(Callback):
    """Sends `signum` to this process `times` times at the end of step `at`."""

    def __init__(self, at: int, signum: int, times: int = 1) -> None:
        self.at, self.signum, self.times = at, signum, times

    def on_step_end(self, trainer, metrics) -> None:
        if trainer.step == self.at:
            for _ in range(self.times):
                os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_a_checkpoint_and_resume_equals_uninterrupted(tmp_path, signum):
    full = run(tmp_path, "full", max_steps=8)
    before = signal.getsignal(signum)
    with pytest.raises(TrainingInterrupted) as info:
        run(tmp_path, "sig", max_steps=8, callbacks=[SignalAt(3, signum)])
    assert (info.value.signum, info.value.step) == (signum, 3)
    assert info.value.checkpoint == ckpt.latest_checkpoint(tmp_path / "sig") and info.value.checkpoint.name == "step_00000003"
    assert signal.getsignal(signum) is before  # the handler is put back
    assert not (tmp_path / "sig" / "model.safetensors").exists()  # an interrupted run is not a finished model
    resumed = run(tmp_path, "sig", model=tiny_model(seed=99), max_steps=8, resume=True)
    assert all(torch.equal(a, b) for a, b in zip(full.model.parameters(), resumed.model.parameters()))


def test_second_signal_stops_at_once(tmp_path):
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN under `nohup … &`
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "twice", max_steps=8, save_interval=2, callbacks=[SignalAt(3, signal.SIGINT, times=2)])
    assert signal.getsignal(signal.SIGINT) is before
    assert ckpt.latest_checkpoint(tmp_path / "twice").name == "step_00000002"  # the last good one, untouched
    resumed = run(tmp_path, "twice", max_steps=8, resume=True)
    assert resumed.step == 8


def test_a_signal_during_the_final_save_lets_the_run_complete(tmp_path, capsys):
    """Ctrl-C once the last step is done: the final save completes and fit returns normally,
    saying so, rather than promising a checkpoint of a step that will not run."""
    t = Trainer(tiny_model(), CausalLMObjective(), Blocks(64), config(max_steps=4), tmp_path / "f")
    real_save_final = t.save_final
    before = signal.getsignal(signal.SIGINT)

    def save_final_after_ctrl_c():
        os.kill(os.getpid(), signal.SIGINT)
        real_save_final()

    t.save_final = save_final_after_ctrl_c
    t.fit()
    assert t.step == 4 and (tmp_path / "f" / "model.safetensors").is_file()
    err = capsys.readouterr().err
    assert "SIGINT received as the run finishes: completing its final evaluation and save" in err and "finishing step" not in err
    assert signal.getsignal(signal.SIGINT) is before


def test_a_second_process_on_the_same_out_is_refused(tmp_path):
    """The lock names the holder's PID, and a holder killed with SIGKILL leaves no stale lock."""
    out = tmp_path / "busy"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import time; from minigpt.train.rundir import lock_run_dir; lock_run_dir({str(out)!r}); print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=f"in use by another minigpt process \\(PID {holder.pid}\\)"):
            run(tmp_path, "busy", max_steps=2)
        assert not (out / "run.json").exists()  # refused before touching anything
    finally:
        holder.kill()
        holder.wait()
    assert (out / rundir.LOCK_FILE).exists()  # left behind by the killed holder ...
    assert run(tmp_path, "busy", max_steps=2).step == 2  # ... and no obstacle
    assert not (out / rundir.LOCK_FILE).exists()  # released when fit returns


def test_out_dir_with_other_run_is_refused(tmp_path):
    run(tmp_path, "o", max_steps=2)
    before = sorted(p.name for p in (tmp_path / "o").iterdir())
    with pytest.raises(UserError, match="already holds"):
        run(tmp_path, "o", max_steps=3)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == before


class NaNAfter:
    """LM objective whose loss turns NaN from the given call on."""

    def __init__(self, after: int) -> None:
        self.inner, self.calls, self.after = CausalLMObjective(), 0, after

    def num_units(self, batch):
        return self.inner.num_units(batch)

    def compute_loss(self, model, batch):
        self.calls += 1
        out = self.inner.compute_loss(model, batch)
        if self.calls > self.after:
            out = LossOutput(out.loss_sum * float("nan"), out.num_units)
        return out


class SlowStart(NaNAfter):
    """LM objective whose first `slow` calls each take `delay` seconds longer."""

    def __init__(self, slow: int, delay: float) -> None:
        super().__init__(after=10**9)
        self.slow, self.delay = slow, delay

    def compute_loss(self, model, batch):
        if self.calls < self.slow:
            time.sleep(self.delay)
        return super().compute_loss(model, batch)


@pytest.mark.usefixtures("one_thread")  # less contention with a parallel test worker: steady step times
def test_time_budget_is_refitted_after_slow_first_steps(tmp_path):
    """max_steps=0 + max_time: the step count fitted on slow first steps is refitted later, so
    the run uses its budget (fitting once at step 6 would stop after ~29 steps, about 1 s in)."""
    t = Trainer(tiny_model(), SlowStart(5, 0.1), Blocks(64), config(max_steps=0, max_time=3.0), tmp_path / "slow")
    t.fit()
    assert t.step > 40
    assert 0.5 * 3.0 < t.elapsed <= 3.0 + 0.5  # the old fit stopped about 1 s in


def test_fixed_steps_give_the_same_model_on_a_slower_machine(tmp_path):
    """A run with `max_steps` and a generous `max_time` safety cap ends with bit-identical
    weights whether its steps are fast or slowed down (a slower machine): the wall clock
    decides nothing."""
    fast = run(tmp_path, "fast", max_steps=8, max_time=600.0)
    slow = Trainer(tiny_model(), SlowStart(8, 0.05), Blocks(64), config(max_steps=8, max_time=600.0), tmp_path / "slow")
    slow.fit()
    assert fast.step == slow.step == 8
    for (name, a), (_, b) in zip(fast.model.named_parameters(), slow.model.named_parameters()):
        assert torch.equal(a, b), name


def test_safety_cap_that_bites_warns_with_the_steps_done(tmp_path):
    """A `max_time` cap reached before `max_steps` stops the run and says so."""
    t = Trainer(tiny_model(), SlowStart(100, 0.1), Blocks(64), config(max_steps=50, max_time=0.3), tmp_path / "cap")
    with pytest.warns(RuntimeWarning, match=r"stopped the run at step \d+ of 50"):
        t.fit()
    assert 1 <= t.step < 50


def test_auto_precision_follows_the_device():
    """`auto` picks a precision the CPU can train in (never fp16, which needs CUDA); explicit
    names pass through; anything else is refused."""
    from minigpt.train.distributed import pick_precision

    cpu = torch.device("cpu")
    assert pick_precision("auto", cpu) in ("bf16", "fp32")
    assert [pick_precision(n, cpu) for n in ("bf16", "fp16", "fp32")] == ["bf16", "fp16", "fp32"]
    with pytest.raises(ValueError, match="auto, bf16, fp16 or fp32"):
        pick_precision("fp8", cpu)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    t = Trainer(tiny_model(), NaNAfter(3), Blocks(64), config(max_steps=10, save_interval=2), tmp_path / "n")
    with pytest.raises(TrainingDivergedError, match="step 4"):
        t.fit()
    good = ckpt.latest_checkpoint(tmp_path / "n")
    assert good.name == "step_00000002"
    _, weights = ckpt.load_checkpoint(good)
    assert all(torch.isfinite(w).all() for w in weights.values())
    # the NaN gradient never reached the weights in memory either
    assert all(torch.isfinite(p).all() for p in t.model.parameters())


def test_every_trainable_parameter_changes(tmp_path):
    model = tiny_model()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    run(tmp_path, "p", model=model, max_steps=2)
    for n, p in model.named_parameters():
        assert not torch.equal(start[n], p), n


def test_eval_reports_bits_per_byte(tmp_path):
    """With every token worth 2 bytes, bpb = val_loss / (2 ln 2)."""
    import numpy as np

    obj = CausalLMObjective(np.full(VOCAB, 2))
    t = Trainer(tiny_model(), obj, Blocks(32), config(max_steps=2), tmp_path / "e", val_dataset=Blocks(8, seed=5))
    m = t.fit()
    assert m["val_bpb"] == pytest.approx(m["val_loss"] / (2 * math.log(2)), rel=1e-6)
    assert m["val_loss"] == pytest.approx(math.log(m["val_ppl"]), rel=1e-6)


def test_rows_say_how_much_of_their_time_went_to_evaluation(tmp_path, monkeypatch):
    """Rows before the first evaluation between steps carry no `eval_time_s`; later ones carry
    the evaluation seconds so far, which grow with each evaluation, stay below `time_s`, and
    include the 0.1 s each evaluation is made to sleep here. A resumed run keeps counting."""
    import time as time_module

    real = Trainer.evaluate

    def slow(self):
        time_module.sleep(0.1)
        return real(self)

    monkeypatch.setattr(Trainer, "evaluate", slow)
    kw = dict(max_steps=6, eval_interval=2)
    t = Trainer(tiny_model(), CausalLMObjective(), Blocks(32), config(**kw), tmp_path / "e", val_dataset=Blocks(8, seed=5), callbacks=[StopAt(3)])
    t.fit()
    t = Trainer(tiny_model(), CausalLMObjective(), Blocks(32), config(**kw), tmp_path / "e", val_dataset=Blocks(8, seed=5))
    t.fit(resume=True)
    rows = [json.loads(line) for line in (tmp_path / "e" / "metrics.jsonl").read_text().splitlines()]
    first_eval = next(k for k, r in enumerate(rows) if "val_loss" in r)
    assert rows[first_eval]["step"] == 2 and all("eval_time_s" not in r for r in rows[:first_eval])
    between = {r["step"]: r["eval_time_s"] for r in rows if "val_loss" in r and r["step"] in (2, 4)}
    assert between[2] >= 0.1 and between[4] >= between[2] + 0.1  # step 4's count includes step 2's, across the resume
    assert all(r["eval_time_s"] < r["time_s"] for r in rows[first_eval:])


def test_callbacks_priority_and_conflicts():
    order = []

    class A(Callback):
        priority = 20

        def on_step_end(self, trainer, metrics):
            order.append("A")

    class B(Callback):
        priority = 10

        def on_step_end(self, trainer, metrics):
            order.append("B")

    class C(Callback):
        conflicts_with = ("A",)

    CallbackList([A(), B()]).fire("on_step_end", None, {})
    assert order == ["B", "A"]
    with pytest.raises(UserError, match="C conflicts with A"):
        CallbackList([A(), C()])


def test_callback_events_fire(tmp_path):
    seen = {"batch": 0, "step": 0, "epoch": [], "start": 0, "end": 0}

    class Count(Callback):
        def on_train_start(self, trainer):
            seen["start"] += 1

        def on_batch_end(self, trainer, metrics):
            seen["batch"] += 1

        def on_step_end(self, trainer, metrics):
            seen["step"] += 1

        def on_epoch_end(self, trainer, epoch):
            seen["epoch"].append(epoch)

        def on_train_end(self, trainer):
            seen["end"] += 1

    # 16 blocks, 4 per micro-batch, 2 micro-batches per step: an epoch every 2 steps
    run(tmp_path, "cb", data=Blocks(16), max_steps=5, grad_accum=2, callbacks=[Count()])
    assert seen["batch"] == 10 and seen["step"] == 5 and seen["start"] == seen["end"] == 1
    assert seen["epoch"] == [0, 1]


def test_warmup_cosine_schedule():
    f = warmup_cosine(warmup_steps=10, total_steps=lambda: 110, min_lr_ratio=0.1)
    assert f(0) == pytest.approx(0.1)  # (0 + 1) / 10
    assert f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)  # cosine starts at its peak
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway: cos(pi/2) = 0
    assert f(110) == pytest.approx(0.1)
    assert f(500) == pytest.approx(0.1)


def test_param_groups_decay_policy():
    model = tiny_model()
    decay, no_decay = param_groups(model, 0.1)
    emb = model.model.embed_tokens.weight
    assert any(p is emb for p in no_decay["params"])
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p is not emb for p in decay["params"])
    assert any(p is model.model.norm.weight for p in no_decay["params"])
    decay2, _ = param_groups(model, 0.1, decay_embeddings=True)
    assert any(p is emb for p in decay2["params"])
    n_unique = len({id(p) for p in model.parameters()})
    assert len(decay["params"]) + len(no_decay["params"]) == n_unique  # tied weights counted once


def test_compiled_model_trains_like_eager(tmp_path):
    """`train.compile` wraps the model in torch.compile: same losses (to rounding), evaluation
    and checkpointing still work on the wrapped model."""
    eager = run(tmp_path, "eager", max_steps=3, eval_interval=2, save_interval=2)
    compiled = Trainer(tiny_model(), CausalLMObjective(), Blocks(64), config(max_steps=3, eval_interval=2, save_interval=2, compile=True), tmp_path / "compiled", val_dataset=Blocks(8, seed=1))
    compiled.fit()
    assert [h["loss"] for h in compiled.history] == pytest.approx([h["loss"] for h in eager.history], rel=1e-4)
    assert ckpt.latest_checkpoint(tmp_path / "compiled").name == "step_00000003"
    assert compiled.last_eval["val_loss"] > 0


def test_latest_pointer_never_leads_outside_the_run(tmp_path):
    """`checkpoints/latest` naming `../../other/...` (or a link out of the run) is ignored:
    the resume takes this run's own newest checkpoint."""
    run(tmp_path, "other", max_steps=5)
    run(tmp_path, "mine", max_steps=2)
    pointer = tmp_path / "mine" / "checkpoints" / "latest"
    pointer.write_text("../../other/checkpoints/step_00000005\n")
    assert ckpt.latest_checkpoint(tmp_path / "mine") == tmp_path / "mine" / "checkpoints" / "step_00000002"
    (tmp_path / "mine" / "checkpoints" / "step_00000009").symlink_to(tmp_path / "other" / "checkpoints" / "step_00000005")
    pointer.write_text("step_00000009\n")
    assert ckpt.latest_checkpoint(tmp_path / "mine") == tmp_path / "mine" / "checkpoints" / "step_00000002"
    resumed = run(tmp_path, "mine", max_steps=3, resume=True)
    assert resumed.step == 3


def test_resume_with_another_model_shape_is_one_clear_error(tmp_path):
    run(tmp_path, "shape", max_steps=2)
    torch.manual_seed(0)
    wider = MiniGPTForCausalLM(MiniGPTConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    with pytest.raises(UserError, match=r"written for a model of another shape \(size mismatch for .*run\.json"):
        run(tmp_path, "shape", model=wider, max_steps=4, resume=True)


def test_activation_checkpointing_gives_the_plain_gradients_and_saves_activations():
    """Chen et al. 2016: recomputing each block in backward changes memory, not the math. With
    dropout on, the recomputation replays the same masks (the RNG state is saved)."""
    from minigpt.model import MiniGPTConfig as Cfg
    from minigpt.train.loop import enable_activation_checkpointing

    def grads(checkpointed: bool):
        torch.manual_seed(0)
        model = MiniGPTForCausalLM(Cfg(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                       num_attention_heads=4, num_key_value_heads=2, dropout=0.1)).train()
        if checkpointed:
            enable_activation_checkpointing(model)
        ids = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(1))
        torch.manual_seed(5)  # the dropout masks
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters()}, sum(saved)

    plain_loss, plain, plain_saved = grads(False)
    ckpt_loss, ckpt, ckpt_saved = grads(True)
    assert ckpt_loss == plain_loss
    assert plain.keys() == ckpt.keys()
    for name in plain:
        assert torch.allclose(plain[name], ckpt[name], atol=1e-6, rtol=1e-5), name
    assert ckpt_saved < 0.5 * plain_saved  # far fewer activations kept for backward


def test_the_loop_trains_the_same_with_gradient_checkpointing(tmp_path):
    plain = run(tmp_path, "plain", max_steps=4)
    ckpt = run(tmp_path, "ckpt", max_steps=4, gradient_checkpointing=True)
    for a, b in zip(plain.model.parameters(), ckpt.model.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    assert all(layer.gradient_checkpointing for layer in ckpt.model.model.layers)
    with pytest.raises(UserError, match="does not support activation checkpointing"):
        run(tmp_path, "lin", model=torch.nn.Linear(2, 2), max_steps=1, gradient_checkpointing=True)


def test_perplexity_only_for_token_nll_objectives_and_empty_batches_name_their_units(tmp_path):
    """`val_ppl` is exp(val_loss) only where the loss is a next-token NLL (LM, SFT): an MLM,
    contrastive, reward or DPO loss is not one. An update with nothing to train on names what
    the objective counts."""
    from minigpt.objectives.contrastive import ContrastiveObjective
    from minigpt.objectives.mlm import MLMObjective
    from minigpt.objectives.preference import PreferenceObjective
    from minigpt.objectives.reward_model import RewardObjective
    from minigpt.objectives.sft import SFTObjective
    from minigpt.train.step import OptimizerStep

    assert CausalLMObjective.token_nll and SFTObjective.token_nll
    for cls in (MLMObjective, ContrastiveObjective, RewardObjective, PreferenceObjective):
        assert not getattr(cls, "token_nll", False), cls
    t = Trainer(tiny_model(), CausalLMObjective(), Blocks(16), config(max_steps=1), tmp_path / "lm", val_dataset=Blocks(4, seed=5))
    assert "val_ppl" in t.fit()

    class NotNLL(CausalLMObjective):
        token_nll = False

    m = Trainer(tiny_model(), NotNLL(), Blocks(16), config(max_steps=1), tmp_path / "other", val_dataset=Blocks(4, seed=5)).fit()
    assert "val_ppl" not in m and "val_loss" in m
    model = tiny_model()
    step = OptimizerStep(model, CausalLMObjective(), torch.optim.SGD(model.parameters(), lr=0.1))
    ids = torch.randint(0, VOCAB, (2, 8))
    with pytest.raises(UserError, match="no supervised tokens"):
        step([{"input_ids": ids, "targets": torch.full_like(ids, -100)}])
    mlm_step = OptimizerStep(model, MLMObjective(), torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(UserError, match="no masked tokens"):
        mlm_step([{"input_ids": ids, "labels": torch.full_like(ids, -100)}])


def test_tokens_per_second_counts_real_tokens_not_padding():
    """A micro-batch's tokens are its attention mask's 1s (padding left out), for every view of
    a pair batch; a packed block without a mask counts whole."""
    from minigpt.train.step import real_tokens

    ids = torch.zeros(2, 5, dtype=torch.long)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert real_tokens({"input_ids": ids, "attention_mask": mask}) == 8
    assert real_tokens({"input_ids_1": ids, "attention_mask_1": mask, "input_ids_2": ids[:, :2]}) == 8 + 4
    assert real_tokens({"input_ids": ids}) == 10


class Recording(NaNAfter):
    """LM objective that keeps each batch's `input_ids` and `targets` it was given."""

    def __init__(self) -> None:
        super().__init__(after=10**9)
        self.batches: list[tuple[torch.Tensor, torch.Tensor]] = []

    def compute_loss(self, model, batch):
        self.batches.append((batch["input_ids"].clone(), batch["targets"].clone()))
        return super().compute_loss(model, batch)


def _recorded(tmp_path, name, **kw) -> list[tuple[torch.Tensor, torch.Tensor]]:
    objective = Recording()
    Trainer(tiny_model(), objective, Blocks(64), config(max_steps=10, batch_size=8, **kw), tmp_path / name).fit()
    return objective.batches


def test_sequence_length_warmup_recuts_the_same_tokens_into_shorter_rows(tmp_path):
    """Blocks of 16, warmup over 8 steps: lengths 2, 2, 4, 4, 8, 8, 16, 16 (a quarter of the
    warmup at each of 16/8, 16/4, 16/2, then 16), and each step's rows are its plain batch cut
    in order, so the tokens trained on per step are those of the run without warmup."""
    plain = _recorded(tmp_path, "plain")
    warm = _recorded(tmp_path, "warm", seq_len_warmup_steps=8)
    assert [x.shape[1] for x, _ in warm] == [2, 2, 4, 4, 8, 8, 16, 16, 16, 16]
    for (x, y), (px, py) in zip(warm, plain):
        assert x.shape[0] * x.shape[1] == 8 * 16
        assert torch.equal(x.reshape(8, 16), px) and torch.equal(y.reshape(8, 16), py)


def test_batch_size_warmup_keeps_the_first_rows(tmp_path):
    """Batch 8, warmup over 4 steps: ceil(8 · (1/4 + 3/4 · s/4)) = 2, 4, 5, 7 rows, then 8;
    the rows kept are the first rows of the batch the sampler drew."""
    plain = _recorded(tmp_path, "plain")
    warm = _recorded(tmp_path, "warm", batch_size_warmup_steps=4)
    assert [x.shape for x, _ in warm] == [(2, 16), (4, 16), (5, 16), (7, 16)] + [(8, 16)] * 6
    for (x, y), (px, py) in zip(warm, plain):
        assert torch.equal(x, px[: len(x)]) and torch.equal(y, py[: len(y)])


def test_shape_warmups_resume_exactly_and_refuse_other_batches(tmp_path):
    """A run stopped inside both warmups resumes on the shapes and losses of an uninterrupted
    one; batches that are not plain token blocks are refused with the option named."""
    full = run(tmp_path, "full", max_steps=8, batch_size=8, seq_len_warmup_steps=6, batch_size_warmup_steps=4)
    run(tmp_path, "part", max_steps=8, batch_size=8, seq_len_warmup_steps=6, batch_size_warmup_steps=4, callbacks=[StopAt(3)])
    resumed = run(tmp_path, "part", max_steps=8, batch_size=8, seq_len_warmup_steps=6, batch_size_warmup_steps=4, resume=True)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history][3:]

    class WithMask(torch.utils.data.Dataset):
        def __len__(self):
            return 16

        def __getitem__(self, i):
            return {"input_ids": torch.arange(8) % VOCAB, "targets": torch.arange(1, 9) % VOCAB, "attention_mask": torch.ones(8, dtype=torch.long)}

    with pytest.raises(UserError, match="seq_len_warmup_steps.*attention_mask"):
        Trainer(tiny_model(), CausalLMObjective(), WithMask(), config(seq_len_warmup_steps=2), tmp_path / "masked").fit()
    with pytest.raises(UserError, match="train.batch_size_warmup_steps: must be an integer ≥ 0"):
        config(batch_size_warmup_steps=-1)
