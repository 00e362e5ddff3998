"""The MiniGPT model: config, decoder and registration with `transformers`' Auto classes.

The names below are imported on first use (`minigpt._lazy`), so the package itself is cheap."""

from minigpt._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["PRESETS", "MiniGPTConfig"], "minigpt.model.configuration"),
    **dict.fromkeys(["apply_lora", "apply_prefix_tuning", "load_adapter", "merge_lora"], "minigpt.model.lora"),
    "LoraOptions": "minigpt.model.options",
    **dict.fromkeys(["MiniGPT", "MiniGPTForCausalLM", "MiniGPTModel", "MiniGPTPreTrainedModel"], "minigpt.model.modeling"),
    **dict.fromkeys(["MiniGPTRewardModel", "ScoreHead", "pool_hidden"], "minigpt.model.reward_model"),
}
# Imported on first use; each class registers itself with transformers' Auto classes when its
# module is imported (`import minigpt` arranges that as soon as transformers is imported).
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


def count_parameters(model, trainable_only: bool = False) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def count_active_parameters(model) -> int:
    """Parameters one token passes through: every parameter, except that of each
    mixture-of-experts layer only K of its E experts count (tied weights counted once)."""
    from minigpt.model.moe import sparse_moe_blocks

    total = count_parameters(model)
    for block in sparse_moe_blocks(model):
        per_expert = count_parameters(block.experts[0])
        total -= (block.num_experts - block.top_k) * per_expert
    return total


__all__ = ["count_active_parameters", "LoraOptions", "apply_lora", "apply_prefix_tuning", "load_adapter", "merge_lora", "PRESETS", "MiniGPTConfig", "MiniGPT", "MiniGPTForCausalLM", "MiniGPTModel", "MiniGPTPreTrainedModel", "MiniGPTRewardModel", "ScoreHead", "pool_hidden", "count_parameters"]
