"""RLHF with PPO: `minigpt ppo --model SFT_DIR --reward_model RM_DIR --data prompts.jsonl`.

The one training loop trains an `ActorCritic` (the policy and its critic): the loop draws a
batch of prompts, the objective (`minigpt.objectives.ppo.PPOObjective`) samples a completion
for each, scores it with the reward model and/or rule rewards, subtracts a per-token KL
penalty to the starting policy, computes GAE advantages with the critic's values, and hands
out `ppo_epochs` passes of micro-batches. Every micro-batch group of `train.grad_accum` is one
optimizer update, so `train.max_steps` counts updates: a rollout gives
`ppo_epochs × ceil(batch_size / mini_batch_size) / grad_accum` of them (fewer after a
`target_kl` early stop). A checkpoint taken in the middle of a rollout resumes at the next
rollout (the rest of the current one is skipped); with the defaults every 4th step ends a
rollout and `save_interval` is a multiple of 4.

OUT holds the policy (loadable with `AutoModelForCausalLM`, or an adapter with LoRA), its
tokenizer, and the trained critic in `OUT/value_model/`. Held-out prompts are decoded greedily
before training, every `--train.eval_interval` steps and at the end, and scored with the same
reward.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

from minigpt.errors import UserError
from minigpt.inference.options import SamplingOptions
from minigpt.model.options import LoraOptions
from minigpt.objectives.config import PPO_SAMPLING, PPO_TRAIN_DEFAULTS, RLHFConfig
from minigpt.recipes.common import fit_policy, load_prompt_data, refuse_existing_run, check_online_rl_options
from minigpt.train.config import TrainConfig


def ppo(
    model: str,
    data: str | list[str] | None = None,
    out: str = "runs/ppo",
    reward_model: str | None = None,
    reward: str = "model",
    value_model: str | None = None,
    ppo: RLHFConfig = RLHFConfig(),
    sampling: SamplingOptions = PPO_SAMPLING,
    max_prompt_length: int = 256,
    system: str | None = None,
    val_fraction: float = 0.1,
    max_val: int | None = 200,
    lora: LoraOptions = LoraOptions(),
    train: TrainConfig = PPO_TRAIN_DEFAULTS,
    resume: bool = False,
    overwrite: bool = False,
    save_dir: str | None = None,
) -> dict[str, Any]:
    """RLHF with PPO: a policy and a critic trained on a reward model's (or rule rewards') scores.

    Args:
        model: the starting policy directory (usually an SFT model); also the KL reference.
        data: prompt files: `{"prompt": text or messages, ...columns}`, preference records
            (their prompts, e.g. the reward model's training data), GSM8K or Alpaca records.
        out: run directory (policy, tokenizer, value_model/, checkpoints, metrics).
        reward_model: a reward model directory (`minigpt reward`) with the policy's tokenizer.
        reward: reward functions and weights, e.g. `model`, `model,format:0.5` or
            `format,answer`; names: model (needs --reward_model), format, answer, length,
            repetition.
        value_model: where the critic starts: a reward model directory (its decoder and
            head), or a language model directory such as the SFT model (its decoder and a new
            score head). Default: a copy of --reward_model, or without one a new score head on
            the policy's decoder.
        ppo: the algorithm (`--ppo.kl_coef 0.05 --ppo.ppo_epochs 2 --ppo.adaptive_kl ...`; see
            `minigpt.objectives.config.RLHFConfig`): ppo_epochs, clip_epsilon, kl_coef,
            kl_estimator, adaptive_kl / kl_target / kl_horizon, gamma, gae_lambda, vf_coef,
            clip_range_value, entropy_coef, value_learning_rate (the critic's; default
            train.lr), mini_batch_size (0 = a whole rollout of train.batch_size),
            whiten_advantages, target_kl, missing_eos_penalty. The policy's learning rate is
            `--train.lr`.
        sampling: how completions are sampled (`--sampling.max_new_tokens`, `.temperature`, `.top_k`,
            `.top_p`, `.repetition_penalty`; see `minigpt.inference.options.SamplingOptions`).
        max_prompt_length: prompts with more tokens are skipped (counted).
        system: a system message for prompts that have none.
        val_fraction: share of prompts held out for evaluation.
        max_val: at most this many held-out prompts.
        lora: LoRA adapters (`--lora.rank 8 --lora.alpha 16 ...`; rank 0 = train every weight): see
            `minigpt.model.lora.LoraOptions`. LoRA trains the policy's adapters only (the KL reference is
            then the policy with its adapters disabled); the critic is trained in full.
        train: optimisation settings (`batch_size` = prompts per rollout, `max_steps` =
            optimizer updates, `lr` = the policy's learning rate).
        resume: continue from the newest checkpoint in `out` (at the next rollout).
        overwrite: discard a run already in `out`.
        save_dir: shorthand for `--out`.

    Returns the final training metrics plus `val_reward`, `val_reward/<name>` after training
    and `val_..._before` for the starting policy.

    Raises:
        UserError: the reward model or value model uses another tokenizer (both directories
            named), `model` reward without --reward_model, bad settings or data.
    """
    from minigpt.evaluation.policy import ENGINE_DTYPE, evaluate_policy

    from minigpt.model import count_parameters
    from minigpt.objectives.ppo import PPOObjective
    from minigpt.model.loading import check_same_tokenizer, is_reward_model_dir, load_reward_model
    from minigpt.model.loading import load_base_model
    from minigpt.tokenizer.chat import chat_eos_ids
    from minigpt.objectives.ppo import ActorCritic
    from minigpt.model.reward_model import create_reward_model
    from minigpt.rewards.functions import make_reward, parse_reward_spec
    from minigpt.train.distributed import init_distributed, pick_device, pick_precision
    from minigpt.train.loop import seed_everything

    check_online_rl_options(lora, sampling)
    if ppo.learning_rate is not None:
        raise UserError("--ppo.learning_rate is the Python API's spelling; on the command line the learning rate is --train.lr")
    precision = pick_precision(train.precision, pick_device(train.device))  # "auto" resolved
    data = [data] if isinstance(data, str) else list(data or [])
    out_dir = Path(save_dir or out)
    rank, _, device = init_distributed(pick_device(train.device))
    say = print if rank == 0 else (lambda *a, **k: None)
    refuse_existing_run(out_dir, resume, overwrite, inputs={"model": model, "reward_model": reward_model, "value_model": value_model, "data": data})
    names = [name for name, _ in parse_reward_spec(reward)]
    if "model" in names and reward_model is None:
        raise UserError("--reward model needs --reward_model DIR (a reward model trained with `minigpt reward`)")
    for other, role in ((reward_model, "the reward model"), (value_model, "the value model")):
        if other is not None:
            check_same_tokenizer(model, other, role=role)
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
        rm, _ = load_reward_model(reward_model)
        rm = rm.to(device).eval()
        rm.requires_grad_(False)
    if value_model is not None and is_reward_model_dir(Path(value_model)):
        critic, _ = load_reward_model(value_model)
    elif value_model is not None:  # a language model: its decoder under a new score head
        critic = create_reward_model(value_model, hidden_size=net.config.hidden_size)
    elif rm is not None:
        critic = copy.deepcopy(rm)
    else:
        critic = create_reward_model(net, hidden_size=net.config.hidden_size)  # before LoRA: a plain decoder copy
    critic.config.dropout = 0.0
    critic.requires_grad_(True)
    critic.train()
    reward_fn = make_reward(reward, reward_model=rm, tokenizer=tok, max_completion_length=sampling.max_new_tokens)
    train_ds, val_ds = load_prompt_data(data, tok, max_prompt_length, val_fraction, max_val, train.seed, system, say)
    ref = None
    if (ppo.kl_coef > 0 or ppo.adaptive_kl) and lora.rank <= 0:
        ref, _ = load_base_model(model)
        ref = ref.to(device).eval()
        ref.requires_grad_(False)
    if lora.rank > 0:
        from minigpt.model.lora import apply_lora

        apply_lora(net, rank=lora.rank, alpha=lora.alpha, target_modules=lora.targets, verbose=rank == 0)
    eos = chat_eos_ids(tok)
    net.generation_config.eos_token_id = eos[0]
    net.generation_config.pad_token_id = tok.pad_token_id
    objective = PPOObjective(ppo, sampling, reward_fn, tok, None, ref, ENGINE_DTYPE.get(precision), eos, tok.pad_token_id, train.grad_accum)
    actor_critic = ActorCritic(net, critic, value_lr_scale=(ppo.value_learning_rate or train.lr) / train.lr)
    trainable = sum(p.numel() for p in actor_critic.parameters() if p.requires_grad)
    say(
        f"policy: {count_parameters(net) / 1e6:.2f} M parameters, critic {count_parameters(critic) / 1e6:.2f} M; "
        f"{trainable / 1e6:.3f} M trainable; {train.batch_size} prompts per rollout × {ppo.ppo_epochs} epochs, "
        f"reward {reward}, kl_coef {ppo.kl_coef}{' (adaptive)' if ppo.adaptive_kl else ''}"
    )
    run_info = {
        "stage": "ppo",
        "model": str(Path(model).resolve()),
        "data": [d if isinstance(d, str) else "records" for d in data],
        "reward": reward,
        "reward_model": None if reward_model is None else str(Path(reward_model).resolve()),
        "value_model": None if value_model is None else str(Path(value_model).resolve()),
        "ppo": dataclasses.asdict(ppo),
        "sampling": dataclasses.asdict(sampling),
        "max_prompt_length": max_prompt_length,
        "system": system,
        "val_fraction": val_fraction,
        "max_val": max_val,
        "lora": dataclasses.asdict(lora),
        "train": dataclasses.asdict(train),
    }

    def evaluate(m):
        return evaluate_policy(m.policy, tok, val_ds, reward_fn, sampling.max_new_tokens, precision)

    metrics = fit_policy(actor_critic, objective, train_ds, train, out_dir, evaluate, val_ds, tok, run_info, resume, overwrite, say)
    say(
        f"{'adapter' if lora.rank > 0 else 'policy'} saved to {out_dir} (critic in {out_dir / 'value_model'}); "
        f"chat with it: minigpt chat --model {out_dir}"
    )
    return metrics


__all__ = ["ppo"]
