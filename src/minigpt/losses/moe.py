"""Router losses of a mixture-of-experts feed-forward.

Notation: N = routed tokens, E = experts, K = experts per token, L = MoE layers. Router logits
`z (N, E)` give probabilities `p = softmax(z)`; each token goes to its K most probable experts.

- Load balancing (Switch Transformer, Fedus et al. 2021, arXiv:2101.03961, eqs. 4–6, with the
  top-K counting of Mixtral, Jiang et al. 2024, arXiv:2401.04088, as `transformers` computes it):

      aux = E · Σ_e f_e · P_e,   f_e = (assignments to e) / N,   P_e = mean_n p_{n,e}

  with counts and means taken over the real (unpadded) tokens of every layer together. Σ_e f_e
  = K, so the loss is K when routing is perfectly even and grows to K·E when one expert takes
  everything. Only P carries gradient (f comes from a top-K).
- Router z-loss (ST-MoE, Zoph et al. 2022, arXiv:2202.08906, eq. 5): `mean_n logsumexp(z_n)²`,
  which keeps the router's logits small and its softmax numerically stable.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _flat_mask(attention_mask: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor | None:
    """`(N,)` float weights of real tokens from a `(B, T)` padding mask, or None (all real)."""
    if attention_mask is None or attention_mask.ndim != 2 or attention_mask.numel() != n:
        return None
    return attention_mask.reshape(-1).to(device=device, dtype=torch.float32)


def expert_load(router_logits: Sequence[torch.Tensor], top_k: int, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Share of the token→expert assignments each expert received, per layer.

    Args:
        router_logits: L tensors `(N, E)`, one per MoE layer.
        top_k: experts per token (K).
        attention_mask: optional `(B, T)` with B·T = N, 1 for real tokens; padding is not counted.

    Returns:
        `(L, E)` float32, each row summing to 1 (1/E everywhere = perfectly even); no gradient.
    """
    rows = []
    for z in router_logits:
        z = z.detach()
        mask = _flat_mask(attention_mask, z.shape[0], z.device)
        chosen = z.topk(top_k, dim=-1).indices  # (N, K)
        weight = torch.ones_like(chosen, dtype=torch.float32) if mask is None else mask[:, None].expand_as(chosen)
        counts = torch.zeros(z.shape[-1], dtype=torch.float32, device=z.device).scatter_add_(0, chosen.reshape(-1), weight.reshape(-1))
        rows.append(counts / counts.sum().clamp(min=1e-9))
    return torch.stack(rows)


def load_balancing_loss(
    router_logits: Sequence[torch.Tensor], top_k: int, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Switch-Transformer load-balancing loss over all MoE layers (see the module docstring).

    Args:
        router_logits: L tensors `(N, E)` of router logits (any float dtype; computed in fp32).
        top_k: experts per token (K).
        attention_mask: optional `(B, T)`, B·T = N; padded tokens are left out of f and P.

    Returns:
        A scalar: K for perfectly even routing, up to K·E.

    Raises:
        ValueError: no router logits, or `top_k` outside 1..E.
    """
    if not router_logits:
        raise ValueError("load_balancing_loss needs the router logits of at least one layer")
    num_experts = router_logits[0].shape[-1]
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k must be in 1..{num_experts}, got {top_k}")
    device = router_logits[0].device
    assigned = torch.zeros(num_experts, dtype=torch.float32, device=device)
    prob = torch.zeros(num_experts, dtype=torch.float32, device=device)
    total = torch.zeros((), dtype=torch.float32, device=device)
    for z in router_logits:
        p = torch.softmax(z.float(), dim=-1)  # (N, E)
        chosen = p.topk(top_k, dim=-1).indices  # (N, K)
        mask = _flat_mask(attention_mask, z.shape[0], device)
        w = torch.ones(z.shape[0], dtype=torch.float32, device=device) if mask is None else mask
        assigned = assigned.scatter_add(0, chosen.reshape(-1), w.repeat_interleave(top_k))
        prob = prob + (p * w[:, None]).sum(0)
        total = total + w.sum()
    total = total.clamp(min=1.0)
    return num_experts * torch.sum((assigned / total) * (prob / total))


def router_z_loss(router_logits: Sequence[torch.Tensor], attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """ST-MoE router z-loss: the mean over real tokens (and layers) of `logsumexp(z)²`.

    Args:
        router_logits: L tensors `(N, E)`.
        attention_mask: optional `(B, T)`, B·T = N.

    Returns:
        A non-negative scalar (fp32).
    """
    if not router_logits:
        raise ValueError("router_z_loss needs the router logits of at least one layer")
    num = torch.zeros((), dtype=torch.float32, device=router_logits[0].device)
    den = torch.zeros_like(num)
    for z in router_logits:
        sq = torch.logsumexp(z.float(), dim=-1).pow(2)  # (N,)
        mask = _flat_mask(attention_mask, z.shape[0], z.device)
        num = num + (sq.sum() if mask is None else (sq * mask).sum())
        den = den + (sq.numel() if mask is None else mask.sum())
    return num / den.clamp(min=1.0)
