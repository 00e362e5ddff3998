"""The MiniGPT model: config, decoder and registration with `transformers`' Auto classes."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

from minigpt.model.configuration import PRESETS, MiniGPTConfig
from minigpt.model.lora import LoraOptions, apply_lora, apply_prefix_tuning, load_adapter, merge_lora
from minigpt.model.modeling import MiniGPT, MiniGPTForCausalLM, MiniGPTModel, MiniGPTPreTrainedModel
from minigpt.model.reward import MiniGPTRewardModel, ScoreHead, pool_hidden

# After `import minigpt`, AutoConfig / AutoModelForCausalLM.from_pretrained(run_dir) work.
AutoConfig.register(MiniGPTConfig.model_type, MiniGPTConfig, exist_ok=True)
AutoModelForCausalLM.register(MiniGPTConfig, MiniGPTForCausalLM, exist_ok=True)
# ... AutoModel gives the bare decoder stack (what sentence-transformers' Transformer module runs).
AutoModel.register(MiniGPTConfig, MiniGPTModel, exist_ok=True)
# ... and AutoModelForSequenceClassification.from_pretrained(reward_model_dir) (num_labels = 1).
AutoModelForSequenceClassification.register(MiniGPTConfig, MiniGPTRewardModel, exist_ok=True)


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
