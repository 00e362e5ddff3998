"""Online RL recipe: `minigpt grpo --model SFT_DIR --data prompts.jsonl --reward format,answer`.

GRPO and GSPO (`--algorithm gspo`) through the one training loop: the loop draws a batch of
prompts, the objective samples `group_size` completions for each on the fast engine, scores
them with the chosen reward functions, and trains on group-relative advantages. Held-out
prompts are decoded greedily before training, every `--train.eval_interval` steps and at the
end; the mean reward (and each reward function's mean, e.g. the answer accuracy) is reported.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from minigpt.errors import UserError
from minigpt.recipes.common import check_options, refuse_existing_run
from minigpt.train.callbacks import Callback
from minigpt.train.config import TrainConfig

GRPO_TRAIN_DEFAULTS = TrainConfig(
    max_steps=200,
    batch_size=8,
    lr=1e-6,
    min_lr_ratio=1.0,
    warmup_steps=0,
    weight_decay=0.0,
    beta2=0.99,
    eval_interval=50,
    save_interval=50,
    log_interval=1,
)

#: Compute dtype of the sampling engine per training precision.
_ENGINE_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


@torch.no_grad()
def evaluate_policy(
    model: torch.nn.Module,
    tok,
    dataset,
    reward_fn,
    max_new_tokens: int,
    precision: str = "bf16",
    batch_size: int = 64,
    samples: int = 0,
    temperature: float = 0.7,
    seed: int = 0,
) -> dict[str, float]:
    """Greedy completions of every held-out prompt, scored by `reward_fn`.

    Returns `{"reward": mean total reward, "reward/<name>": mean of each reward function,
    "completion_length": mean tokens}`; the answer reward's mean is the accuracy. With
    `samples > 0` it also samples that many completions per prompt at `temperature` (seeded,
    so two evaluations draw alike) and adds `sampled_reward` and `sampled_reward/<name>`, the
    means over all samples (mean@k: what RL optimises directly, and less noisy than greedy).
    """
    out = _score_policy(model, tok, dataset, reward_fn, max_new_tokens, precision, batch_size, 1, 0.0, None)
    if samples > 0:
        sampled = _score_policy(model, tok, dataset, reward_fn, max_new_tokens, precision, batch_size, samples, temperature, seed)
        out.update({f"sampled_{k}": v for k, v in sampled.items() if k.startswith("reward")})
    return out


def _score_policy(model, tok, dataset, reward_fn, max_new_tokens, precision, batch_size, group, temperature, seed) -> dict[str, float]:
    """Mean rewards of `group` completions per held-out prompt (temperature 0 = greedy)."""
    from minigpt.data.prompts import collate_prompts
    from minigpt.objectives.rollout import eval_mode, score_rollout
    from minigpt.tokenizer.chat import chat_eos_ids
    from minigpt.inference.rollout import RolloutEngine

    engine = RolloutEngine(model, chat_eos_ids(tok), tok.pad_token_id, _ENGINE_DTYPE.get(precision))
    totals: list[float] = []
    per: dict[str, list[float]] = {}
    lengths: list[float] = []
    with eval_mode(model):
        step = max(1, batch_size // group)
        for s in range(0, len(dataset), step):
            batch = collate_prompts([dataset[i] for i in range(s, min(s + step, len(dataset)))])
            rollout = engine.sample(
                batch["prompt_ids"], group, max_new_tokens, temperature=temperature, seed=None if seed is None else seed + s
            )
            t, p = score_rollout(reward_fn, tok, rollout, batch["prompt_ids"], batch["prompt"], batch["columns"])
            totals += t.tolist()
            for k, v in p.items():
                per.setdefault(k, []).extend(0.0 if x is None else float(x) for x in v)
            lengths += rollout.completion_lengths.float().tolist()
    n = max(len(totals), 1)
    out = {"reward": sum(totals) / n, "completion_length": sum(lengths) / max(len(lengths), 1)}
    out.update({f"reward/{k}": sum(v) / max(len(v), 1) for k, v in per.items()})
    return out


class PolicyEvaluation(Callback):
    """Every `interval` steps: greedy held-out evaluation of the policy, logged as `val_*`."""

    def __init__(self, evaluate, interval: int, say=print) -> None:
        self.evaluate, self.interval, self.say = evaluate, interval, say

    def on_step_end(self, trainer, metrics) -> None:
        if self.interval > 0 and trainer.step % self.interval == 0 and trainer.step < trainer.total_steps:
            t0 = time.perf_counter()
            ev = {f"val_{k}": v for k, v in self.evaluate(trainer.model).items()}
            trainer.elapsed += time.perf_counter() - t0
            trainer._log(ev)
            self.say(f"step {trainer.step}: " + describe(ev))


def describe(ev: dict[str, float]) -> str:
    """One line of held-out figures (`val_reward`, each `val_reward/<name>`)."""
    keys = ["val_reward"] + sorted(k for k in ev if k.startswith("val_reward/")) + ["val_completion_length"]
    keys += ["val_sampled_reward"] + sorted(k for k in ev if k.startswith("val_sampled_reward/"))
    return ", ".join(f"{k[4:]} {ev[k]:.3f}" for k in keys if k in ev)


def load_prompt_data(data: Sequence[str] | Sequence[dict], tok, max_prompt_length: int, val_fraction: float, max_val: int | None, seed: int, system: str | None, say=print):
    """Prompt datasets of every source, split into train / held-out prompts.

    Returns `(train, val | None)` (`PromptDataset`-like: `len`, `[i]`).

    Raises:
        UserError: no data, a malformed record, nothing usable.
    """
    from minigpt.data.prompts import PromptDataset
    from minigpt.data.sft import pick_validation

    if not data:
        raise UserError('--data is required: JSONL files of {"prompt": ..., "answer": ...} records (GSM8K {"question","answer"} works too)')
    items, sources = [], [data] if isinstance(data[0], dict) else data
    for source in sources:
        ds = PromptDataset(source, tok, max_prompt_length=max_prompt_length, system=system)
        skipped = {k: v for k, v in ds.stats.items() if k.startswith("skipped_") and v}
        say(f"{source if isinstance(source, str) else 'prompts'}: {ds.stats['records']} records -> {len(ds)} prompts" + (f" (skipped: {skipped})" if skipped else ""))
        items += ds.items
    val_idx = pick_validation(len(items), val_fraction, seed, max_val, what="prompt(s)") if val_fraction > 0 else set()
    train = [it for i, it in enumerate(items) if i not in val_idx]
    val = [it for i, it in enumerate(items) if i in val_idx]
    if not train:
        raise UserError("no training prompts left after holding out the validation split; lower --val_fraction")
    say(f"prompts: {len(train)} train / {len(val)} held-out")
    return train, (val or None)


def fit_policy(model, objective, train_ds, train: TrainConfig, out_dir: Path, evaluate, val_ds, tok, run_info: dict, resume: bool, overwrite: bool, say) -> dict[str, Any]:
    """The online-RL recipes' shared tail: build the loop's `Trainer` over prompt batches, run
    `evaluate(model)` (greedy held-out rewards) before training, every `train.eval_interval`
    steps (as a callback) and after, and train.

    Returns the final training metrics plus `val_*` after training, `val_*_before` for the
    starting policy, `train_seconds` and `steps`.
    """
    from minigpt.data.prompts import collate_prompts
    from minigpt.train.loop import Trainer

    callbacks = [PolicyEvaluation(evaluate, train.eval_interval, say)] if val_ds else []
    quiet_train = dataclasses.replace(train, eval_interval=0)  # evaluation is the callback's
    trainer = Trainer(model, objective, train_ds, quiet_train, out_dir, collate_fn=collate_prompts, callbacks=callbacks, save_with_model=tok, run_info=run_info)
    before = {}
    if val_ds and not resume:
        before = {f"val_{k}": v for k, v in evaluate(trainer.model).items()}
        say(f"held-out before training ({len(val_ds)} prompts, greedy): {describe(before)}")
    t0 = time.time()
    metrics = trainer.fit(resume=resume, overwrite=overwrite)
    metrics["train_seconds"] = time.time() - t0
    metrics["steps"] = trainer.step
    if val_ds:
        after = {f"val_{k}": v for k, v in evaluate(trainer.model).items()}
        trainer._log(after)
        metrics.update(after)
        say(f"done: {trainer.step} steps in {metrics['train_seconds']:.0f} s; held-out {describe(after)}")
    metrics.update({f"{k}_before": v for k, v in before.items()})
    return metrics


def grpo(
    model: str,
    data: str | list[str] | None = None,
    out: str = "runs/grpo",
    reward: str = "format,answer",
    reward_model: str | None = None,
    algorithm: str = "grpo",
    group_size: int = 4,
    advantage_type: str = "normalized",
    scale_rewards: bool = True,
    beta: float = 0.0,
    kl_estimator: str = "k3",
    clip_epsilon: float | None = None,
    clip_epsilon_high: float | None = None,
    num_iterations: int = 1,
    mini_batch_size: int = 0,
    aggregation: str | None = None,
    max_new_tokens: int = 128,
    max_prompt_length: int = 256,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    mask_truncated_completions: bool = False,
    system: str | None = None,
    eval_data: str | list[str] | None = None,
    eval_samples: int = 0,
    val_fraction: float = 0.1,
    max_val: int | None = 200,
    lora_rank: int = 0,
    lora_alpha: float = 16.0,
    lora_targets: list[str] | None = None,
    train: TrainConfig = GRPO_TRAIN_DEFAULTS,
    resume: bool = False,
    overwrite: bool = False,
    save_dir: str | None = None,
) -> dict[str, Any]:
    """Online RL with verifiable or learned rewards: GRPO and GSPO.

    Args:
        model: the starting policy directory (usually an SFT model).
        data: prompt files: `{"prompt": text or messages, ...columns}` (extra fields such as
            `answer` go to the reward functions), GSM8K `{"question", "answer"}`, Alpaca, or
            preference records (their prompts).
        out: run directory (policy, tokenizer, checkpoints, metrics).
        reward: reward functions and weights, e.g. `format,answer` or `format:0.2,answer`;
            names: format, answer, length, repetition, model (needs --reward_model).
        reward_model: a reward model directory (`minigpt reward`) for the `model` reward.
        algorithm: grpo (token-level ratio) or gspo (sequence-level ratio and clipping).
        group_size: completions sampled per prompt (G).
        advantage_type: normalized, relative (leave-one-out) or rank.
        scale_rewards: divide normalized advantages by the group std (off = Dr. GRPO).
        beta: KL penalty weight to the starting policy (0 = no reference is loaded).
        kl_estimator: k1, k2 or k3.
        clip_epsilon: lower clip range of the ratio (default 0.2; gspo 3e-4).
        clip_epsilon_high: upper clip range (default = clip_epsilon; gspo 4e-4).
        num_iterations: optimisation passes over each batch of samples.
        mini_batch_size: completions per micro-batch (0 = all of a rollout batch).
        aggregation: token or sequence mean of the loss (default token; gspo sequence).
        max_new_tokens: longest completion.
        max_prompt_length: prompts with more tokens are skipped (counted).
        temperature: sampling temperature.
        top_p: nucleus sampling (1.0 = off).
        top_k: top-k sampling (0 = off).
        mask_truncated_completions: leave completions cut at max_new_tokens out of the loss.
        system: a system message for prompts that have none.
        eval_data: prompt files to evaluate on instead of a held-out share of `data`.
        eval_samples: also sample this many completions per held-out prompt at the training
            temperature and report their mean rewards (`val_sampled_reward…`); 0 = greedy only.
        val_fraction: share of prompts held out for evaluation (when no `eval_data`).
        max_val: at most this many held-out prompts.
        lora_rank: > 0 trains LoRA adapters only (the KL reference is then the model with its
            adapters disabled).
        lora_alpha: LoRA scaling numerator.
        lora_targets: module names to adapt (default: every linear layer of the blocks).
        train: optimisation settings (`batch_size` = prompts per rollout batch).
        resume: continue from the newest checkpoint in `out` (at the next rollout batch).
        overwrite: discard a run already in `out`.
        save_dir: shorthand for `--out`.

    Returns the final training metrics plus `val_reward`, `val_reward/<name>` after training
    and `val_..._before` for the starting policy.
    """
    from minigpt.model import count_parameters
    from minigpt.objectives.grpo import GRPOObjective
    from minigpt.recipes.sft import chat_eos_ids, load_base_model
    from minigpt.rl.grpo import GRPOConfig
    from minigpt.rl.rewards import make_reward
    from minigpt.train.distributed import init_distributed, pick_device, pick_precision
    from minigpt.train.loop import seed_everything

    precision = pick_precision(train.precision, pick_device(train.device))  # "auto" resolved
    config = GRPOConfig(
        algorithm=algorithm, group_size=group_size, advantage_type=advantage_type, scale_rewards=scale_rewards,
        learning_rate=train.lr, beta=beta, kl_estimator=kl_estimator, clip_epsilon=clip_epsilon,
        clip_epsilon_high=clip_epsilon_high, num_iterations=num_iterations, mini_batch_size=mini_batch_size,
        aggregation=aggregation, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
        mask_truncated_completions=mask_truncated_completions, precision=precision,
    )
    data = [data] if isinstance(data, str) else list(data or [])
    out_dir = Path(save_dir or out)
    rank, _, device = init_distributed(pick_device(train.device))
    say = print if rank == 0 else (lambda *a, **k: None)
    check_options(
        lora_rank=(lora_rank, lora_rank >= 0, "≥ 0 (0 = train every weight)"),
        group_size=(group_size, group_size >= 2, "≥ 2 (with one sample per prompt every group-relative advantage is 0)"),
    )
    refuse_existing_run(out_dir, resume, overwrite, inputs={"model": model, "reward_model": reward_model, "data": data, "eval_data": eval_data})
    seed_everything(train.seed)
    net, tok = load_base_model(model)
    net.config.dropout = 0.0  # ratio == 1 on the first pass needs the same forward as sampling
    if max_prompt_length + max_new_tokens > net.config.max_position_embeddings:
        raise UserError(
            f"max_prompt_length {max_prompt_length} + max_new_tokens {max_new_tokens} exceeds the model's context "
            f"({net.config.max_position_embeddings} tokens)"
        )
    rm = None
    if reward_model is not None:
        from minigpt.recipes.reward import check_same_tokenizer, load_reward_model

        check_same_tokenizer(model, reward_model, role="the reward model")
        rm, _ = load_reward_model(reward_model)
        rm = rm.to(device).eval()
        rm.requires_grad_(False)
    reward_fn = make_reward(reward, reward_model=rm, tokenizer=tok, max_completion_length=max_new_tokens)
    if eval_data:
        train_ds, _ = load_prompt_data(data, tok, max_prompt_length, 0.0, None, train.seed, system, say)
        eval_data = [eval_data] if isinstance(eval_data, str) else list(eval_data)
        val_ds, _ = load_prompt_data(eval_data, tok, max_prompt_length, 0.0, None, train.seed, system, say)
        val_ds = val_ds[:max_val] if max_val else val_ds
    else:
        train_ds, val_ds = load_prompt_data(data, tok, max_prompt_length, val_fraction, max_val, train.seed, system, say)
    ref = None
    if beta > 0 and lora_rank <= 0:
        ref, _ = load_base_model(model)
        ref = ref.to(device).eval()
        ref.requires_grad_(False)
    if lora_rank > 0:
        from minigpt.model.lora import apply_lora

        apply_lora(net, rank=lora_rank, alpha=lora_alpha, target_modules=lora_targets, verbose=rank == 0)
    eos = chat_eos_ids(tok)
    net.generation_config.eos_token_id = eos[0]
    net.generation_config.pad_token_id = tok.pad_token_id
    objective = GRPOObjective(config, reward_fn, tok, ref, _ENGINE_DTYPE.get(precision), eos, tok.pad_token_id, train.grad_accum)
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    say(
        f"model: {count_parameters(net) / 1e6:.2f} M parameters, {trainable / 1e6:.3f} M trainable; {algorithm}, "
        f"group {group_size} × {train.batch_size} prompts, reward {reward}, beta {beta}"
    )
    run_info = {
        "stage": "grpo",
        "model": str(Path(model).resolve()),
        "data": [d if isinstance(d, str) else "records" for d in data],
        "reward": reward,
        "reward_model": None if reward_model is None else str(Path(reward_model).resolve()),
        "config": dataclasses.asdict(config),
        "max_prompt_length": max_prompt_length,
        "system": system,
        "eval_data": eval_data,
        "eval_samples": eval_samples,
        "val_fraction": val_fraction,
        "max_val": max_val,
        "lora": {"rank": lora_rank, "alpha": lora_alpha, "targets": lora_targets},
        "train": dataclasses.asdict(train),
    }

    def evaluate(m):
        return evaluate_policy(m, tok, val_ds, reward_fn, max_new_tokens, precision, samples=eval_samples, temperature=temperature)

    metrics = fit_policy(net, objective, train_ds, train, out_dir, evaluate, val_ds, tok, run_info, resume, overwrite, say)
    say(f"{'adapter' if lora_rank > 0 else 'policy'} saved to {out_dir}; chat with it: minigpt chat --model {out_dir}")
    return metrics
