"""Policy-gradient losses for online RL: importance ratios (token-level PPO/GRPO, sequence-level
GSPO), the clipped surrogate, CISPO's clipped-weight REINFORCE loss, the clipped value loss,
loss aggregation, and entropy.

Every function here is pure: tensors in, tensors out, computed in fp32 (fp64 stays fp64).
Shapes: `B` rows (completions), `T` completion positions; `logprobs[i, t]` is
`log π(y_{i,t} | x_i, y_{i,<t})` in nats under the policy being trained, `old_logprobs` the same
under the policy that sampled the completions (a constant). Masks are 0/1 in any dtype; a
position is a completion token where `mask != 0`. Per-token losses are 0 at the other positions
and `aggregate` turns them into a sum plus a count, so that the training loop can normalise over
a whole optimizer step (several micro-batches).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from minigpt.losses.names import AGGREGATIONS
from minigpt.errors import UserError

RATIO_LEVELS = ("token", "sequence")

_ENTROPY_CHUNK_ELEMENTS = 1 << 24  # logits per fp32 chunk in `entropy_from_logits` (64 MiB)


def _compute_dtype(*ts: torch.Tensor) -> torch.dtype:
    """fp32, or fp64 when any input already is."""
    return torch.float64 if any(t.dtype == torch.float64 for t in ts) else torch.float32


def _check_same(names: str, *ts: torch.Tensor, dims: int | None = 2) -> None:
    shape = ts[0].shape
    if (dims is not None and len(shape) != dims) or any(t.shape != shape for t in ts[1:]):
        raise ValueError(f"{names} must share one (B, T) shape; got {', '.join(str(tuple(t.shape)) for t in ts)}")


def _masked_stats(keep: torch.Tensor, *per_token: torch.Tensor, maxes: tuple[torch.Tensor, ...] = ()) -> list[float]:
    """Means over the kept entries of each `per_token` tensor, then maxima over the kept entries
    of each of `maxes`, as Python floats with one device sync (0.0 when nothing is kept)."""
    if not bool(keep.any()):
        return [0.0] * (len(per_token) + len(maxes))
    n = keep.sum()
    out = [torch.where(keep, x, torch.zeros_like(x)).sum() / n for x in per_token]
    out += [x[keep].max() for x in maxes]
    return [float(v) for v in torch.stack([o.to(torch.float64) for o in out]).tolist()]


def _ratio_stats(keep: torch.Tensor, clipped: torch.Tensor, ratio: torch.Tensor, log_ratio: torch.Tensor) -> dict[str, float]:
    """The policy losses' statistics over the kept tokens: `clip_fraction` (share of `clipped`,
    a bool `(B, T)`), `ratio_mean`, `ratio_max` and `approx_kl` (mean of `(ρ − 1) − log ρ`, the
    k3 estimate of KL(π_old ‖ π)); call under `torch.no_grad()`."""
    r, lr = ratio.detach(), log_ratio.detach()
    clip_fraction, ratio_mean, approx_kl, ratio_max = _masked_stats(keep, clipped.to(r.dtype), r, (r - 1.0) - lr, maxes=(r,))
    return {"clip_fraction": clip_fraction, "ratio_mean": ratio_mean, "ratio_max": ratio_max, "approx_kl": approx_kl}


def _broadcast_advantages(who: str, advantages: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`(B,)` or `(B, T)` advantages as a `(B, T)` tensor of `like`'s dtype.

    Raises:
        ValueError: any other shape.
    """
    if advantages.dim() == 1 and advantages.shape[0] == like.shape[0]:
        return advantages.to(like.dtype)[:, None].expand_as(like)
    if advantages.shape == like.shape:
        return advantages.to(like.dtype)
    raise ValueError(f"{who}: advantages must be (B,) or (B, T) = {tuple(like.shape)}; got {tuple(advantages.shape)}")


def importance_ratio_log(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    mask: torch.Tensor,
    level: str = "token",
) -> torch.Tensor:
    """Log importance ratio `log π(y)/π_old(y)` for every completion token.

    - `token` (PPO, GRPO): `logprobs − old_logprobs` per token.
    - `sequence` (GSPO, Zheng et al. 2025, arXiv:2507.18071 eq. 7): one ratio per completion,
      `log s_i = (1/|y_i|) Σ_t (logprobs_{i,t} − old_logprobs_{i,t})` over the row's masked-in
      tokens (the log of the geometric mean of the token ratios), broadcast to every token of
      the row. Its gradient w.r.t. `logprobs_{i,t}` is `m_{i,t}/|y_i|`, which is what GSPO's
      sequence-level objective needs; no stop-gradient trick is involved.

    Args:
        logprobs: `(B, T)` log-probs under the current policy (nats), differentiable.
        old_logprobs: `(B, T)` log-probs under the sampling policy (a constant).
        mask: `(B, T)` 0/1 completion mask.
        level: one of `RATIO_LEVELS`.

    Returns:
        `(B, T)` fp32 log ratios, 0 where `mask == 0` (and on rows without tokens).

    Raises:
        UserError (a ValueError): unknown `level`. ValueError: shapes differ or are not 2-D.
    """
    if level not in RATIO_LEVELS:
        raise UserError(f"importance_ratio_log: unknown level {level!r}; known: {', '.join(RATIO_LEVELS)}")
    _check_same("importance_ratio_log: logprobs, old_logprobs and mask", logprobs, old_logprobs, mask)
    dtype = _compute_dtype(logprobs, old_logprobs)
    keep = mask != 0
    zero = torch.zeros((), dtype=dtype, device=logprobs.device)
    diff = torch.where(keep, logprobs.to(dtype) - old_logprobs.to(dtype), zero)
    if level == "token":
        return diff
    n = keep.to(dtype).sum(dim=1, keepdim=True).clamp(min=1.0)
    log_s = diff.sum(dim=1, keepdim=True) / n  # (B, 1)
    return torch.where(keep, log_s.expand_as(diff), torch.zeros_like(diff))


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_epsilon: float = 0.2,
    clip_epsilon_high: float | None = None,
    level: str = "token",
    with_stats: bool = True,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's clipped surrogate loss per token (Schulman et al. 2017, arXiv:1707.06347 eq. 7).

        ρ_t = exp(importance_ratio_log(logprobs, old_logprobs, mask, level))
        loss_t = −min(ρ_t·A_t, clip(ρ_t, 1 − ε_low, 1 + ε_high)·A_t)

    The min makes the objective pessimistic: once the ratio has moved past `1 + ε_high` on a
    positive advantage (or below `1 − ε_low` on a negative one) the clipped, constant term is
    chosen and the token's gradient is 0; on the other side the unclipped term keeps its
    gradient. `ε_high > ε_low` is DAPO's "clip-higher" (Yu et al. 2025, arXiv:2503.14476 §3.1),
    which leaves more room to raise low-probability tokens. With `level="sequence"` this is
    GSPO's sequence-level clipping (arXiv:2507.18071 eq. 5). GRPO uses it with group-relative
    sequence advantages broadcast over the tokens (arXiv:2402.03300 eq. 3).

    Args:
        logprobs: `(B, T)` current-policy log-probs (nats), differentiable.
        old_logprobs: `(B, T)` sampling-policy log-probs, a constant.
        advantages: `(B,)` per-completion (broadcast over `T`) or `(B, T)` per-token advantages,
            treated as constants.
        mask: `(B, T)` 0/1 completion mask.
        clip_epsilon: ε_low, in [0, 1).
        clip_epsilon_high: ε_high ≥ 0; None means ε_low (symmetric PPO clipping).
        level: "token" or "sequence", see `importance_ratio_log`.
        with_stats: compute `stats`; False returns `{}` and saves a few small ops per call (for
            loops of thousands of tiny minibatches that log only the last).

    Returns:
        `(per_token_loss, stats)`: `(B, T)` fp32 losses, 0 where `mask == 0` (reduce them with
        `aggregate`), and Python floats over the masked-in tokens: `clip_fraction` (share whose
        clipped term was chosen and differs, i.e. with zero gradient), `ratio_mean`, `ratio_max`,
        `approx_kl` (mean of `(ρ − 1) − log ρ`, the k3 estimate of KL(π_old ‖ π), for PPO's early
        stop). All 0.0 when no token is masked in.

    Raises:
        UserError (a ValueError): ε outside its range, unknown `level`.
        ValueError: shapes differ.
    """
    eps_low = clip_epsilon
    eps_high = clip_epsilon if clip_epsilon_high is None else clip_epsilon_high
    if not 0.0 <= eps_low < 1.0:
        raise UserError(f"clipped_policy_loss: clip_epsilon must be in [0, 1), got {clip_epsilon}")
    if not eps_high >= 0.0:
        raise UserError(f"clipped_policy_loss: clip_epsilon_high must be >= 0, got {clip_epsilon_high}")
    log_ratio = importance_ratio_log(logprobs, old_logprobs, mask, level)
    adv = _broadcast_advantages("clipped_policy_loss", advantages, log_ratio)
    keep = mask != 0
    ratio = torch.exp(log_ratio)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv
    loss = -torch.minimum(unclipped, clipped)
    loss = torch.where(keep, loss, torch.zeros_like(loss))
    if not with_stats:
        return loss, {}
    with torch.no_grad():
        return loss, _ratio_stats(keep, clipped.detach() < unclipped.detach(), ratio, log_ratio)


def cispo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_epsilon: float = 1.0,
    clip_epsilon_high: float = 3.0,
    with_stats: bool = True,
) -> tuple[torch.Tensor, dict[str, float]]:
    """CISPO's loss per token: REINFORCE with a clipped, stop-gradient importance weight
    (MiniMax-M1, Chen et al. 2025, arXiv:2506.13585 eq. 4).

        ρ_t = exp(logprobs_t − old_logprobs_t)
        w_t = sg(clip(ρ_t, 1 − ε_low, 1 + ε_high))
        loss_t = −w_t · A_t · logprobs_t

    Unlike PPO's surrogate (`clipped_policy_loss`), no token ever loses its gradient: the clip
    only bounds the weight on `∇ log π`, so the rare tokens that PPO clips away after the first
    update (often the "wait" / "recheck" forks of a reasoning trace) keep contributing. With
    `ε_low ≥ 1` the weight has no lower bound (the paper's setting); the defaults cap it at
    `1 + 3 = 4`, ScaleRL's value (Khatri et al. 2025, arXiv:2510.13786). On-policy (ρ = 1) the
    gradient equals PPO's and GRPO's.

    Args:
        logprobs: `(B, T)` current-policy log-probs (nats), differentiable.
        old_logprobs: `(B, T)` sampling-policy log-probs, a constant.
        advantages: `(B,)` per-completion or `(B, T)` per-token advantages, constants.
        mask: `(B, T)` 0/1 completion mask.
        clip_epsilon: ε_low > 0 (≥ 1: no lower bound).
        clip_epsilon_high: ε_high ≥ 0.
        with_stats: compute `stats` (False returns `{}`).

    Returns:
        `(per_token_loss, stats)`: `(B, T)` fp32 losses, 0 where `mask == 0` (reduce them with
        `aggregate`), and Python floats over the masked-in tokens: `clip_fraction` (share whose
        weight was clipped), `ratio_mean`, `ratio_max`, `approx_kl` (as `clipped_policy_loss`).

    Raises:
        UserError (a ValueError): ε outside its range. ValueError: shapes differ.
    """
    if not clip_epsilon > 0.0:
        raise UserError(f"cispo_policy_loss: clip_epsilon must be > 0, got {clip_epsilon}")
    if not clip_epsilon_high >= 0.0:
        raise UserError(f"cispo_policy_loss: clip_epsilon_high must be >= 0, got {clip_epsilon_high}")
    log_ratio = importance_ratio_log(logprobs, old_logprobs, mask, "token")
    dtype = log_ratio.dtype
    adv = _broadcast_advantages("cispo_policy_loss", advantages, log_ratio)
    keep = mask != 0
    ratio = torch.exp(log_ratio.detach())
    weight = ratio.clamp(min=max(1.0 - clip_epsilon, 0.0), max=1.0 + clip_epsilon_high)
    loss = -(weight * adv) * logprobs.to(dtype)
    loss = torch.where(keep, loss, torch.zeros_like(loss))
    if not with_stats:
        return loss, {}
    with torch.no_grad():
        return loss, _ratio_stats(keep, weight != ratio, ratio, log_ratio)


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, mode: str = "token") -> tuple[torch.Tensor, int]:
    """Reduce per-token losses to a sum and the number of units it covers.

    - `token`: (Σ of the masked-in entries, number of masked-in tokens). Dividing the step's
      summed losses by its summed counts gives the token mean over the whole optimizer step,
      DAPO's token-level normalisation (arXiv:2503.14476 §3.3), where every token weighs the
      same, however long its completion.
    - `sequence`: (Σ over rows with ≥ 1 token of the row's masked mean, number of such rows),
      giving the sequence mean: GRPO's original `1/|o_i|` per-completion normalisation
      (arXiv:2402.03300 eq. 3), where every completion weighs the same.

    Args:
        per_token: `(B, T)` losses, differentiable.
        mask: `(B, T)` 0/1.
        mode: one of `AGGREGATIONS`.

    Returns:
        `(loss_sum, num_units)`: a 0-dim fp32 tensor (gradients flow) and a Python int.

    Raises:
        UserError (a ValueError): unknown `mode`. ValueError: shapes differ or are not 2-D.
    """
    if mode not in AGGREGATIONS:
        raise UserError(f"aggregate: unknown mode {mode!r}; known: {', '.join(AGGREGATIONS)}")
    _check_same("aggregate: per_token and mask", per_token, mask)
    x = per_token.to(_compute_dtype(per_token))
    keep = mask != 0
    xz = torch.where(keep, x, torch.zeros_like(x))
    if mode == "token":
        return xz.sum(), int(keep.sum())
    counts = keep.to(x.dtype).sum(dim=1)
    row_means = xz.sum(dim=1) / counts.clamp(min=1.0)  # rows without tokens contribute 0
    return row_means.sum(), int((counts > 0).sum())


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range_value: float | None = 0.2,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped value-function loss per token (PPO2 value clipping, as in OpenAI baselines and
    TRL's PPOTrainer).

        V_clip = V_old + clip(V − V_old, −c, c)
        loss_t = ½ · max((V − R)², (V_clip − R)²)

    The max is pessimistic: a value that moved more than `c` away from `V_old` gets no credit
    for moving towards the return `R` beyond that. `c ≤ 0` or None disables clipping
    (`½(V − R)²`).

    Args:
        values: `(B, T)` current critic values, differentiable.
        old_values: `(B, T)` critic values when the rollout was made, a constant.
        returns: `(B, T)` regression targets (e.g. from `gae`), a constant.
        mask: `(B, T)` 0/1.
        clip_range_value: `c`, in reward units.

    Returns:
        `(per_token, stats)`: `(B, T)` fp32 losses (0 where `mask == 0`) and
        `{"value_clip_fraction": share of masked-in tokens whose clipped term was chosen and
        differs}` (0.0 when no token is masked in or clipping is disabled).

    Raises:
        ValueError: shapes differ or are not 2-D.
    """
    _check_same("clipped_value_loss: values, old_values, returns and mask", values, old_values, returns, mask)
    dtype = _compute_dtype(values, old_values, returns)
    v, v_old, ret = values.to(dtype), old_values.to(dtype), returns.to(dtype)
    keep = mask != 0
    unclipped = (v - ret) ** 2
    if clip_range_value is None or clip_range_value <= 0:
        loss = 0.5 * unclipped
        frac = 0.0
    else:
        v_clip = v_old + torch.clamp(v - v_old, -clip_range_value, clip_range_value)
        clipped = (v_clip - ret) ** 2
        loss = 0.5 * torch.maximum(unclipped, clipped)
        with torch.no_grad():
            (frac,) = _masked_stats(keep, (clipped > unclipped).to(dtype))
    loss = torch.where(keep, loss, torch.zeros_like(loss))
    return loss, {"value_clip_fraction": frac}


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy `H = −Σ_v p_v log p_v` (nats) of `softmax(logits)` over the last dim.

    Computed in fp32 (fp64 for fp64 logits) a chunk of rows at a time with `log_softmax`, so no
    fp32 copy of the whole `(…, V)` tensor exists at once under `torch.no_grad()` (the usual
    case: entropy is logged). Entries of −inf (masked vocabulary) contribute 0, not NaN.
    Differentiable; with gradients enabled autograd keeps each chunk's softmax.

    Args:
        logits: `(…, V)` scores, any float dtype.

    Returns:
        `(…)` fp32 entropies, between 0 and `log V`.
    """
    dtype = _compute_dtype(logits)
    lead, v = logits.shape[:-1], logits.shape[-1]
    flat = logits.reshape(-1, v)
    rows = max(1, _ENTROPY_CHUNK_ELEMENTS // max(v, 1))
    tiny = torch.finfo(dtype).min
    parts = []
    for chunk in flat.split(rows, dim=0):
        logp = F.log_softmax(chunk.to(dtype), dim=-1).clamp(min=tiny)  # −inf → finite: 0·(−inf) would be NaN
        parts.append(-(logp.exp() * logp).sum(dim=-1))
    if not parts:
        return flat.new_zeros(lead, dtype=dtype)
    return torch.cat(parts).reshape(lead)
