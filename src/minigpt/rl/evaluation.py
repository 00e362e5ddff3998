"""Judging aligned policies with a reward model: sampled replies and the win rate of one
policy's replies over another's on the same prompts (the head-to-head figure of RLHF papers,
e.g. Stiennon et al. 2020, with the reward model as the judge).
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
    `minigpt.rl.rewards.RewardModelScorer`; a win counts 1, a tie ½.

    Returns floats: `win_rate`, `mean_reward`, `baseline_mean_reward`, `mean_reply_tokens`,
    `baseline_mean_reply_tokens`, and `prompts` (the count).

    Raises:
        ValueError: the three sequences differ in length.
    """
    from minigpt.rl.rewards import RewardModelScorer

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
