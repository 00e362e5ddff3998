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


def _token_weights(z: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """`(N,)` fp32 weights of the routed tokens of router logits `z (N, E)`: 1 for real tokens,
    0 for padding (from a `(B, T)` mask with B·T = N; any other mask counts every token)."""
    if attention_mask is None or attention_mask.ndim != 2 or attention_mask.numel() != z.shape[0]:
        return torch.ones(z.shape[0], dtype=torch.float32, device=z.device)
    return attention_mask.reshape(-1).to(device=z.device, dtype=torch.float32)


def _assignments(z: torch.Tensor, top_k: int, weights: torch.Tensor) -> torch.Tensor:
    """`(E,)` weighted count of tokens whose top-K experts (by router logit) include each expert."""
    chosen = z.detach().topk(top_k, dim=-1).indices  # (N, K)
    counts = torch.zeros(z.shape[-1], dtype=torch.float32, device=z.device)
    return counts.scatter_add_(0, chosen.reshape(-1), weights.repeat_interleave(top_k))


def expert_load(router_logits: Sequence[torch.Tensor], top_k: int, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Share of the token→expert assignments each expert received, per layer.

    Args:
        router_logits: L tensors `(N, E)`, one per MoE layer.
        top_k: experts per token (K).
        attention_mask: optional `(B, T)` with B·T = N, 1 for real tokens; padding is not counted.

    Returns:
        `(L, E)` float32, each row summing to 1 (1/E everywhere = perfectly even); no gradient.
    """
    rows = [_assignments(z, top_k, _token_weights(z, attention_mask)) for z in router_logits]
    return torch.stack([r / r.sum().clamp(min=1e-9) for r in rows])


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
    assigned = prob = total = 0.0
    for z in router_logits:
        w = _token_weights(z, attention_mask)  # (N,)
        assigned = assigned + _assignments(z, top_k, w)  # f: counts only, no gradient
        prob = prob + (torch.softmax(z.float(), dim=-1) * w[:, None]).sum(0)  # P carries the gradient
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

    Raises:
        ValueError: no router logits.
    """
    if not router_logits:
        raise ValueError("router_z_loss needs the router logits of at least one layer")
    num = den = 0.0
    for z in router_logits:
        w = _token_weights(z, attention_mask)
        num = num + (torch.logsumexp(z.float(), dim=-1).pow(2) * w).sum()
        den = den + w.sum()
    return num / den.clamp(min=1.0)
