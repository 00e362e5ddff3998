"""Fine-tuning options of mixture-of-experts models: freeze the router, train chosen experts.

Freezing the router keeps the token→expert assignment learnt in pretraining, so fine-tuning on a
narrow dataset cannot collapse the routing onto a few experts; training a few experts only
updates a fraction of the feed-forward weights (ESFT, Wang et al. 2024, arXiv:2407.01906,
picks the experts a task routes to most and tunes those alone).
"""

from __future__ import annotations


from torch import nn

from minigpt.model.options import MoeOptions
from minigpt.errors import UserError


def sparse_moe_blocks(model: nn.Module) -> list[nn.Module]:
    """Every `MiniGPTSparseMoeBlock` inside `model` (also through PEFT / DDP wrappers)."""
    from minigpt.model.modeling import MiniGPTSparseMoeBlock

    return [m for m in model.modules() if isinstance(m, MiniGPTSparseMoeBlock)]


def apply_moe_options(model: nn.Module, options: MoeOptions) -> int:
    """Set `requires_grad` as `options` ask; call it after any LoRA injection.

    Returns:
        The number of parameters (elements) left trainable.

    Raises:
        UserError: the model has no mixture-of-experts layer, an expert index is out of range,
            or nothing would be left to train.
    """
    if not options.enabled:
        return sum(p.numel() for p in model.parameters() if p.requires_grad)
    blocks = sparse_moe_blocks(model)
    if not blocks:
        raise UserError("--moe.* options need a mixture-of-experts model (num_local_experts > 0); this model is dense")
    if options.train_experts is not None:
        num = blocks[0].num_experts
        chosen = sorted(set(options.train_experts))
        bad = [e for e in chosen if not 0 <= e < num]
        if bad or not chosen:
            raise UserError(f"--moe.train_experts: expert indices must be in 0..{num - 1}, got {options.train_experts}")
        keep = {id(p) for block in blocks for e in chosen for p in block.experts[e].parameters() if p.requires_grad}
        for p in model.parameters():
            if id(p) not in keep:
                p.requires_grad_(False)
    if options.freeze_router:
        for block in blocks:
            block.gate.requires_grad_(False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if trainable == 0:
        raise UserError("the --moe.* options leave no parameter to train")
    return trainable
