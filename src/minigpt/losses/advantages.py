"""Advantage estimators for online RL: group-relative advantages (GRPO, Dr. GRPO, RLOO, rank),
whitening, and Generalised Advantage Estimation (PPO).

Every function here is pure: tensors in, tensors out, no trainer state. Inputs are cast to fp32
(fp64 stays fp64, so `torch.autograd.gradcheck` can run). Masks are 0/1 in any dtype; a position
counts as "masked in" (a real completion token) where `mask != 0`.

Shapes: `B` rows (completions), `T` completion positions. For the group estimators the rows are
grouped consecutively: rows `[g·G, (g+1)·G)` are the `G = group_size` samples of prompt `g`.
"""

from __future__ import annotations

import torch

from minigpt.losses.names import ADVANTAGE_TYPES
from minigpt.errors import UserError



def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """fp32, or fp64 when the input already is."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _f32(x: torch.Tensor) -> torch.Tensor:
    return x.to(_compute_dtype(x))


def _grouped(rewards: torch.Tensor, group_size: int, fn: str) -> torch.Tensor:
    """`(B,)` rewards → `(B / G, G)` fp32, after checking the shape and the group size."""
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise UserError(f"{fn}: group_size must be an integer >= 1, got {group_size!r}")
    if rewards.dim() != 1:
        raise ValueError(f"{fn}: rewards must be 1-D (B,), got shape {tuple(rewards.shape)}")
    if rewards.shape[0] % group_size != 0:
        raise UserError(
            f"{fn}: the batch of {rewards.shape[0]} rewards is not a whole number of groups of "
            f"group_size={group_size}"
        )
    return _f32(rewards).reshape(-1, group_size)


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    """0-based ranks along the last dim, ties sharing the average of the ranks they span.

    For element `i`: `#{j : x_j < x_i} + (#{j : x_j = x_i} − 1) / 2`. Quadratic in `G`, which is
    a handful of samples per prompt.
    """
    less = (x[..., None, :] < x[..., :, None]).sum(-1)  # [.., i] = #{j : x_j < x_i}
    equal = (x[..., None, :] == x[..., :, None]).sum(-1)  # includes j = i
    return less.to(x.dtype) + (equal.to(x.dtype) - 1.0) / 2.0


@torch.no_grad()
def group_advantages(
    rewards: torch.Tensor,
    group_size: int,
    advantage_type: str = "normalized",
    scale_rewards: bool = True,
    eps: float = 1e-4,
) -> torch.Tensor:
    """Per-completion advantages relative to the other samples of the same prompt.

    With `r` the `G` rewards of one group, `mean_g` their mean and `std_g` their unbiased
    (Bessel-corrected, `1/(G−1)`) standard deviation:

    - `normalized` (GRPO, Shao et al. 2024, DeepSeekMath, arXiv:2402.03300 §4.1.2):
      `A_i = (r_i − mean_g) / (std_g + eps)`. With `scale_rewards=False` the division is dropped,
      `A_i = r_i − mean_g` (Dr. GRPO, Liu et al. 2025, arXiv:2503.20783 §3.2: the std scaling
      over-weights prompts that are nearly always or never solved). A group of one gets 0.
    - `rloo` (RLOO, Ahmadian et al. 2024, arXiv:2402.14740 eq. 5): the leave-one-out
      baseline `A_i = r_i − mean_{j≠i} r_j = G/(G−1) · (r_i − mean_g)`. Needs `G ≥ 2`.
    - `relative` (the group baseline of Shao et al. 2024 §4.1.2 without the std division):
      `A_i = r_i − mean_g`. Rewards [1, 0, 0, 0] give [0.75, −0.25, −0.25, −0.25]. The same
      as `normalized` with `scale_rewards=False`. A group of one gets 0.
    - `rank`: the 0-based rank of `r_i` in its group (ties get the average of the ranks they
      span) mapped linearly onto [−1, 1]: `A_i = 2·rank_i/(G−1) − 1` (0 when `G = 1`). Invariant
      to any increasing transform of the rewards; zero mean in every group by construction.

    `scale_rewards` only affects `normalized`.

    Args:
        rewards: `(B,)` scalar rewards, one per completion, `B` a multiple of `group_size`.
        group_size: `G`, the number of completions sampled per prompt (consecutive rows).
        advantage_type: one of `ADVANTAGE_TYPES`.
        scale_rewards: divide by `std_g + eps` (`normalized` only).
        eps: added to `std_g` so that a group with equal rewards gets 0, not NaN.

    Returns:
        `(B,)` fp32 advantages (fp64 for fp64 rewards), detached, in reward units (unitless for
        `normalized` with scaling and for `rank`).

    Raises:
        UserError (a ValueError): unknown `advantage_type`, `group_size < 1`, `B` not a multiple
            of `group_size`, `rloo` with `group_size == 1`.
        ValueError: `rewards` not 1-D.
    """
    if advantage_type not in ADVANTAGE_TYPES:
        raise UserError(
            f"group_advantages: unknown advantage_type {advantage_type!r}; known: {', '.join(ADVANTAGE_TYPES)}"
        )
    r = _grouped(rewards, group_size, "group_advantages")
    g = group_size
    if advantage_type in ("normalized", "relative"):
        centred = r - r.mean(dim=1, keepdim=True)
        if advantage_type == "relative" or not scale_rewards:
            return centred.reshape(-1)
        if g == 1:
            return torch.zeros_like(centred).reshape(-1)  # unbiased std undefined; no signal anyway
        std = r.std(dim=1, keepdim=True, correction=1)
        return (centred / (std + eps)).reshape(-1)
    if advantage_type == "rloo":
        if g == 1:
            raise UserError("group_advantages: advantage_type 'rloo' (leave-one-out) needs group_size >= 2, got 1")
        loo_mean = (r.sum(dim=1, keepdim=True) - r) / (g - 1)
        return (r - loo_mean).reshape(-1)
    # rank
    if g == 1:
        return torch.zeros_like(r).reshape(-1)
    return (2.0 * _average_ranks(r) / (g - 1) - 1.0).reshape(-1)


@torch.no_grad()
def group_stats(rewards: torch.Tensor, group_size: int) -> dict[str, float]:
    """Summary statistics of grouped rewards, for logging.

    Args:
        rewards: `(B,)` rewards, `B` a multiple of `group_size`, rows grouped consecutively.
        group_size: `G`.

    Returns:
        dict of Python floats:
        `mean_reward` (mean of all `B` rewards), `group_variance` (mean over groups of the
        unbiased within-group variance; 0 when `G = 1`; a small value means little learning
        signal for group-relative advantages), `frac_zero_std` (share of groups whose rewards are
        all equal, i.e. whose normalized advantages are all 0).

    Raises:
        UserError: `group_size < 1` or `B` not a multiple of it. ValueError: `rewards` not 1-D.
    """
    r = _grouped(rewards, group_size, "group_stats")
    if r.numel() == 0:
        return {"mean_reward": 0.0, "group_variance": 0.0, "frac_zero_std": 0.0}
    if group_size > 1:
        variance = r.var(dim=1, correction=1).mean()
    else:
        variance = r.new_zeros(())
    zero_std = (r.amax(dim=1) == r.amin(dim=1)).to(r.dtype).mean()
    mean_reward, group_variance, frac_zero_std = torch.stack([r.mean(), variance, zero_std]).tolist()
    return {"mean_reward": mean_reward, "group_variance": group_variance, "frac_zero_std": frac_zero_std}


def whiten(
    values: torch.Tensor,
    mask: torch.Tensor | None = None,
    shift_mean: bool = True,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Standardise `values` to mean 0, variance 1 over the masked-in entries.

    `(x − μ) / sqrt(σ² + eps)`, plus `μ` back again when `shift_mean=False` (only the scale is
    normalised; used for rewards, whose sign matters). `μ` and `σ²` are taken over the entries
    with `mask != 0` (all entries when `mask` is None); `σ²` is the unbiased (`1/(n−1)`)
    variance when there is more than one entry, else 0. As in PPO implementations (e.g. TRL's
    `masked_whiten`), applied to GAE advantages over a whole batch.

    Args:
        values: `(B, T)` or `(B,)` floats. Gradients flow through (μ and σ included).
        mask: same shape, 0/1, or None.
        shift_mean: subtract the mean (True) or keep it (False).
        eps: added to the variance.

    Returns:
        Same shape, fp32 (fp64 for fp64 input); 0 at the masked-out entries when `mask` is given
        (all 0 when no entry is masked in).

    Raises:
        ValueError: `mask` of another shape.
    """
    x = _f32(values)
    if mask is None:
        keep = torch.ones_like(x, dtype=torch.bool)
    else:
        if mask.shape != values.shape:
            raise ValueError(f"whiten: mask shape {tuple(mask.shape)} != values shape {tuple(values.shape)}")
        keep = mask != 0
    w = keep.to(x.dtype)
    xz = torch.where(keep, x, torch.zeros_like(x))  # masked-out entries cannot leak (even NaN/inf)
    n = w.sum()
    mean = xz.sum() / n.clamp(min=1.0)
    sq = torch.where(keep, (x - mean) ** 2, torch.zeros_like(x)).sum()
    var = torch.where(n > 1, sq / (n - 1).clamp(min=1.0), torch.zeros_like(sq))
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    if mask is None:
        return out
    return torch.where(keep, out, torch.zeros_like(out))


@torch.no_grad()
def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor | None,
    gamma: float,
    lam: float,
    dones: torch.Tensor | None = None,
    last_values: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised Advantage Estimation (Schulman et al. 2016, arXiv:1506.02438 eq. 16).

    Backwards over `t`, with `m` the mask:

        δ_t = r_t + γ·V_{t+1}·m_{t+1} − V_t
        A_t = δ_t + γ·λ·m_{t+1}·A_{t+1}
        returns_t = A_t + V_t            (the TD(λ) return, the critic's regression target)

    Two layouts:
    - Token sequences (RLHF; `dones` None): each row's completion ends at its last masked-in
      position (terminal: the value and the advantage beyond it count as 0), so a
      sequence-level reward is placed on that position by the caller.
    - Environment rollouts (classic RL; `dones` given, `mask` None): row b is environment b's
      last T steps, which may span several episodes. `dones[b, t] = 1` when the episode ended at
      step t, so step t does not bootstrap from step t+1 (the next episode's first state), and
      `m_{t+1}` above becomes `1 − done_t`. After the last step, `V_T = last_values[b]` (the
      value of the state the rollout stopped in; 0 if omitted).

    `λ = 1` gives Monte-Carlo advantages `Σ γ^k r_{t+k} − V_t`; `λ = 0` the one-step TD error.

    Args:
        rewards: `(B, T)` per-step rewards (RLHF: −β·KL per token plus the score on the last
            token), in reward units.
        values: `(B, T)` critic values `V_t` at the same positions.
        mask: `(B, T)` 0/1, right-padded per row (ones then zeros); None: every step counts.
        gamma: discount γ in [0, 1].
        lam: GAE λ in [0, 1].
        dones: `(B, T)` 0/1 episode ends (environment rollouts), or None.
        last_values: `(B,)` bootstrap values after the last step (with `dones`), or None.

    Returns:
        `(advantages, returns)`, each `(B, T)` fp32 (fp64 for fp64 input), detached, 0 where
        `mask == 0`. Values at masked-out positions are ignored (even NaN).

    Raises:
        UserError: γ or λ outside [0, 1].
        ValueError: shapes differ or are not 2-D, or a mask row is not ones-then-zeros.
    """
    if not 0.0 <= gamma <= 1.0:
        raise UserError(f"gae: gamma must be in [0, 1], got {gamma}")
    if not 0.0 <= lam <= 1.0:
        raise UserError(f"gae: lam must be in [0, 1], got {lam}")
    if mask is None:
        mask = torch.ones_like(rewards, dtype=torch.bool)
    if rewards.dim() != 2 or values.shape != rewards.shape or mask.shape != rewards.shape:
        raise ValueError(
            f"gae needs rewards, values and mask of the same (B, T) shape; got {tuple(rewards.shape)}, "
            f"{tuple(values.shape)} and {tuple(mask.shape)}"
        )
    if dones is not None and dones.shape != rewards.shape:
        raise ValueError(f"gae: dones shape {tuple(dones.shape)} != rewards shape {tuple(rewards.shape)}")
    if last_values is not None and (dones is None or last_values.shape != rewards.shape[:1]):
        raise ValueError("gae: last_values needs dones, and one value per row")
    keep = mask != 0
    if rewards.shape[1] > 1 and bool((keep[:, 1:] & ~keep[:, :-1]).any()):
        raise ValueError("gae: mask must be right-padded per row (ones then zeros)")
    dtype = torch.promote_types(_compute_dtype(rewards), _compute_dtype(values))
    zero = torch.zeros((), dtype=dtype, device=rewards.device)
    r = torch.where(keep, rewards.to(dtype), zero)
    v = torch.where(keep, values.to(dtype), zero)  # V beyond the end is 0: terminal
    m = keep.to(dtype)
    b, t_len = r.shape
    # nonterminal[:, t]: whether step t bootstraps from step t + 1.
    if dones is None:
        nonterminal = torch.cat([m[:, 1:], m.new_zeros(b, 1)], dim=1)
        next_value = r.new_zeros(b)
    else:
        nonterminal = 1 - (dones != 0).to(dtype)
        next_value = r.new_zeros(b) if last_values is None else last_values.detach().to(dtype)
    advantages = torch.zeros_like(r)
    next_adv = r.new_zeros(b)
    for t in reversed(range(t_len)):
        c = nonterminal[:, t]
        delta = r[:, t] + gamma * next_value * c - v[:, t]
        adv = delta + gamma * lam * c * next_adv
        advantages[:, t] = adv
        next_value, next_adv = v[:, t], adv
    advantages = advantages * m
    returns = (advantages + v) * m
    return advantages, returns


def discounted_returns(rewards: torch.Tensor, dones: torch.Tensor, gamma: float) -> torch.Tensor:
    """Monte-Carlo returns `G_t = Σ_k γ^k r_{t+k}` within each episode (REINFORCE, Williams
    1992): `gae` with `V = 0`, `λ = 1`, and no bootstrap after the last step.

    Args:
        rewards: `(B, T)` rewards of consecutive steps per row.
        dones: `(B, T)` 1 at each episode's last step.
        gamma: discount γ in [0, 1].

    Returns:
        `(B, T)` fp32 returns (fp64 for fp64 input).
    """
    returns, _ = gae(rewards, torch.zeros_like(rewards), None, gamma, 1.0, dones=dones)
    return returns
