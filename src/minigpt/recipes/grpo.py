"""Online RL recipe: `minigpt grpo --model SFT_DIR --data prompts.jsonl --reward format,answer`.

GRPO, GSPO (`--grpo.algorithm gspo`) and CISPO (`--grpo.algorithm cispo`) through the one training loop: the loop draws a batch of
prompts, the objective samples `group_size` completions for each on the fast engine, scores
them with the chosen reward functions, and trains on group-relative advantages. Held-out
prompts are decoded greedily before training, every `--train.eval_interval` steps and at the
end; the mean reward (and each reward function's mean, e.g. the answer accuracy) is reported.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from minigpt.errors import UserError
from minigpt.inference.options import SamplingOptions
from minigpt.model.options import LoraOptions
from minigpt.objectives.config import GRPO_SAMPLING, GRPO_TRAIN_DEFAULTS, GRPOConfig
from minigpt.recipes.common import check_options, fit_policy, load_prompt_data, refuse_existing_run, check_online_rl_options
from minigpt.train.config import TrainConfig

def grpo(
    model: str,
    data: str | list[str] | None = None,
    out: str = "runs/grpo",
    reward: str = "format,answer",
    reward_model: str | None = None,
    grpo: GRPOConfig = GRPOConfig(),
    sampling: SamplingOptions = GRPO_SAMPLING,
    max_prompt_length: int = 256,
    system: str | None = None,
    eval_data: str | list[str] | None = None,
    eval_samples: int = 0,
    val_fraction: float = 0.1,
    max_val: int | None = 200,
    lora: LoraOptions = LoraOptions(),
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
        grpo: the algorithm (`--grpo.algorithm gspo --grpo.group_size 8 --grpo.beta 0.04 ...`;
            see `minigpt.objectives.config.GRPOConfig`): algorithm, group_size,
            advantage_type, scale_rewards, beta, kl_estimator, clip ranges, num_iterations,
            mini_batch_size, aggregation, mask_truncated_completions. The learning rate is
            `--train.lr`.
        sampling: how completions are sampled (`--sampling.max_new_tokens`, `.temperature`, `.top_k`,
            `.top_p`, `.repetition_penalty`; see `minigpt.inference.options.SamplingOptions`).
        max_prompt_length: prompts with more tokens are skipped (counted).
        system: a system message for prompts that have none.
        eval_data: prompt files to evaluate on instead of a held-out share of `data`.
        eval_samples: also sample this many completions per held-out prompt at the training
            temperature and report their mean rewards (`val_sampled_reward…`); 0 = greedy only.
        val_fraction: share of prompts held out for evaluation (when no `eval_data`).
        max_val: at most this many held-out prompts.
        lora: LoRA adapters (`--lora.rank 8 --lora.alpha 16 ...`; rank 0 = train every weight): see
            `minigpt.model.lora.LoraOptions`. With LoRA the KL reference is the model with its
            adapters disabled.
        train: optimisation settings (`batch_size` = prompts per rollout batch).
        resume: continue from the newest checkpoint in `out` (at the next rollout batch).
        overwrite: discard a run already in `out`.
        save_dir: shorthand for `--out`.

    Returns the final training metrics plus `val_reward`, `val_reward/<name>` after training
    and `val_..._before` for the starting policy.
    """
    from minigpt.evaluation.policy import ENGINE_DTYPE, evaluate_policy

    from minigpt.model import count_parameters
    from minigpt.objectives.grpo import GRPOObjective
    from minigpt.model.loading import load_base_model
    from minigpt.tokenizer.chat import chat_eos_ids
    from minigpt.rewards.functions import make_reward
    from minigpt.train.distributed import init_distributed, pick_device, pick_precision
    from minigpt.train.loop import seed_everything

    check_online_rl_options(lora, sampling)
    if grpo.learning_rate is not None:
        raise UserError("--grpo.learning_rate is the Python API's spelling; on the command line the learning rate is --train.lr")
    precision = pick_precision(train.precision, pick_device(train.device))  # "auto" resolved
    data = [data] if isinstance(data, str) else list(data or [])
    out_dir = Path(save_dir or out)
    rank, _, device = init_distributed(pick_device(train.device))
    say = print if rank == 0 else (lambda *a, **k: None)
    check_options(**{"grpo.group_size": (grpo.group_size, grpo.group_size >= 2, "≥ 2 (with one sample per prompt every group-relative advantage is 0)")})
    refuse_existing_run(out_dir, resume, overwrite, inputs={"model": model, "reward_model": reward_model, "data": data, "eval_data": eval_data})
    seed_everything(train.seed)
    net, tok = load_base_model(model)
    net.config.dropout = 0.0  # ratio == 1 on the first pass needs the same forward as sampling
    if max_prompt_length + sampling.max_new_tokens > net.config.max_position_embeddings:
        raise UserError(
            f"max_prompt_length {max_prompt_length} + --sampling.max_new_tokens {sampling.max_new_tokens} exceeds the model's context "
            f"({net.config.max_position_embeddings} tokens)"
        )
    rm = None
    if reward_model is not None:
        from minigpt.model.loading import check_same_tokenizer, load_reward_model

        check_same_tokenizer(model, reward_model, role="the reward model")
        rm, _ = load_reward_model(reward_model)
        rm = rm.to(device).eval()
        rm.requires_grad_(False)
    reward_fn = make_reward(reward, reward_model=rm, tokenizer=tok, max_completion_length=sampling.max_new_tokens)
    if eval_data:
        train_ds, _ = load_prompt_data(data, tok, max_prompt_length, 0.0, None, train.seed, system, say)
        eval_data = [eval_data] if isinstance(eval_data, str) else list(eval_data)
        val_ds, _ = load_prompt_data(eval_data, tok, max_prompt_length, 0.0, None, train.seed, system, say)
        val_ds = val_ds[:max_val] if max_val else val_ds
    else:
        train_ds, val_ds = load_prompt_data(data, tok, max_prompt_length, val_fraction, max_val, train.seed, system, say)
    ref = None
    if grpo.beta > 0 and lora.rank <= 0:
        ref, _ = load_base_model(model)
        ref = ref.to(device).eval()
        ref.requires_grad_(False)
    if lora.rank > 0:
        from minigpt.model.lora import apply_lora

        apply_lora(net, rank=lora.rank, alpha=lora.alpha, target_modules=lora.targets, verbose=rank == 0)
    eos = chat_eos_ids(tok)
    net.generation_config.eos_token_id = eos[0]
    net.generation_config.pad_token_id = tok.pad_token_id
    objective = GRPOObjective(grpo, sampling, reward_fn, tok, ref, ENGINE_DTYPE.get(precision), eos, tok.pad_token_id, train.grad_accum)
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    say(
        f"model: {count_parameters(net) / 1e6:.2f} M parameters, {trainable / 1e6:.3f} M trainable; {grpo.algorithm}, "
        f"group {grpo.group_size} × {train.batch_size} prompts, reward {reward}, beta {grpo.beta}"
    )
    run_info = {
        "stage": "grpo",
        "model": str(Path(model).resolve()),
        "data": [d if isinstance(d, str) else "records" for d in data],
        "reward": reward,
        "reward_model": None if reward_model is None else str(Path(reward_model).resolve()),
        "grpo": dataclasses.asdict(objective.config),
        "sampling": dataclasses.asdict(sampling),
        "max_prompt_length": max_prompt_length,
        "system": system,
        "eval_data": eval_data,
        "eval_samples": eval_samples,
        "val_fraction": val_fraction,
        "max_val": max_val,
        "lora": dataclasses.asdict(lora),
        "train": dataclasses.asdict(train),
    }

    def evaluate(m):
        return evaluate_policy(m, tok, val_ds, reward_fn, sampling.max_new_tokens, precision, samples=eval_samples, temperature=sampling.temperature)

    metrics = fit_policy(net, objective, train_ds, train, out_dir, evaluate, val_ds, tok, run_info, resume, overwrite, say)
    say(f"{'adapter' if lora.rank > 0 else 'policy'} saved to {out_dir}; chat with it: minigpt chat --model {out_dir}")
    return metrics
