"""Judging policies: held-out rewards of a policy's greedy (and sampled) replies, as the RL
recipes report them, and the win rate of one policy's replies over another's on the same
prompts by a reward model (the head-to-head figure of RLHF papers, e.g. Stiennon et al. 2020).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


@torch.no_grad()
def sample_replies(
    model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int = 64,
    temperature: float = 0.7,
    top_p: float = 0.9,
    seed: int = 0,
    batch_size: int = 16,
    dtype: torch.dtype | None = torch.bfloat16,
) -> list[list[int]]:
    """One reply per prompt (token-id lists, chat-rendered with the generation prompt), the stop
    token left out. Batch `i` is drawn with seed `seed + i·batch_size`, so two models asked with
    the same arguments sample with the same random numbers."""
    from minigpt.objectives.rollout import decode_completions, eval_mode
    from minigpt.tokenizer.chat import chat_eos_ids
    from minigpt.inference.rollout import RolloutEngine

    engine = RolloutEngine(model, chat_eos_ids(tokenizer), tokenizer.pad_token_id, dtype)
    out: list[list[int]] = []
    with eval_mode(model):
        for s in range(0, len(prompts), batch_size):
            rollout = engine.sample(prompts[s : s + batch_size], 1, max_new_tokens, temperature, top_p=top_p, seed=seed + s)
            out += decode_completions(tokenizer, rollout)[1]
    return out


def win_rate(
    reward_model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    replies: Sequence[Sequence[int]],
    baseline_replies: Sequence[Sequence[int]],
) -> dict[str, float]:
    """Reward-model win rate of `replies` over `baseline_replies` (one each per prompt).

    Each reply is scored as `prompt + reply + <|im_end|>` by
    `minigpt.rewards.functions.RewardModelScorer`; a win counts 1, a tie ½.

    Returns floats: `win_rate`, `mean_reward`, `baseline_mean_reward`, `mean_reply_tokens`,
    `baseline_mean_reply_tokens`, and `prompts` (the count).

    Raises:
        ValueError: the three sequences differ in length.
    """
    from minigpt.rewards.functions import RewardModelScorer

    if not len(prompts) == len(replies) == len(baseline_replies):
        raise ValueError(f"{len(prompts)} prompts, {len(replies)} replies and {len(baseline_replies)} baseline replies")
    score = RewardModelScorer(reward_model, tokenizer)
    n = len(prompts)
    new = torch.tensor(score([""] * n, [""] * n, prompt_ids=list(prompts), completion_ids=list(replies)))
    base = torch.tensor(score([""] * n, [""] * n, prompt_ids=list(prompts), completion_ids=list(baseline_replies)))
    wins = (new > base).float() + 0.5 * (new == base).float()
    return {
        "prompts": float(n),
        "win_rate": float(wins.mean()),
        "mean_reward": float(new.mean()),
        "baseline_mean_reward": float(base.mean()),
        "mean_reply_tokens": sum(map(len, replies)) / max(n, 1),
        "baseline_mean_reply_tokens": sum(map(len, baseline_replies)) / max(n, 1),
    }


#: Compute dtype of the sampling engine per training precision.
ENGINE_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


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

    engine = RolloutEngine(model, chat_eos_ids(tok), tok.pad_token_id, ENGINE_DTYPE.get(precision))
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
