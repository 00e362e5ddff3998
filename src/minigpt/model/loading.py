"""The one checked loader for model, reward-model and adapter directories.

Every command that loads a saved model goes through `load_model_dir`: the directory is checked
first (`check_model_dir`: config, complete safetensors, no pickles), an adapter directory is
loaded on its recorded base (`minigpt.model.lora`), and the tokenizer is checked against the
model (`check_tokenizer_fits`), so a bad directory is one clear line wherever it is named.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from minigpt.errors import UserError
from minigpt.model.checks import check_model_dir, check_tokenizer_fits

if TYPE_CHECKING:
    from minigpt.model.options import ModelConfig

__all__ = [
    "SAVED_MODEL_OVERRIDES", "apply_overrides_to_saved", "build_model", "check_same_tokenizer", "is_reward_model_dir",
    "load_base_model", "load_model_dir", "load_reward_model",
]


def load_model_dir(
    path: str | Path,
    model_class: Any = None,
    option: str = "--model",
    tokenizer: bool | str | Path = True,
    adapters: bool = False,
    allow_base_mismatch: bool = False,
) -> tuple[Any, Any]:
    """`(model, tokenizer)` from a saved directory, checked before anything is read.

    Args:
        path: a model directory (`config.json` + safetensors), or with `adapters` a LoRA/DoRA
            adapter directory (`adapter_config.json`, no `config.json`), whose base is the one
            it records (`adapter_base_path`) and must match its fingerprint unless
            `allow_base_mismatch`.
        model_class: the class whose `from_pretrained` loads it (`MiniGPTForCausalLM`,
            `MiniGPTRewardModel`); None: `transformers.AutoModelForCausalLM`, so an exported
            Llama directory loads too.
        option: the option that named the directory, for messages.
        tokenizer: True loads the tokenizer saved beside the model (for an adapter: its own if
            it has one, else its base's); a path loads that one instead; False loads none.
        adapters: accept an adapter directory (else it is refused with a hint to merge it).
        allow_base_mismatch: load an adapter on a base whose fingerprint differs.

    Returns:
        The model (in training mode, on the CPU, as `from_pretrained` leaves it) and the
        tokenizer (None when `tokenizer` is False).

    Raises:
        UserError: a missing or damaged directory (naming the file), an adapter where a model is
            needed, an adapter whose base is missing or not its own, no tokenizer, or a tokenizer
            that is not the model's.
    """
    path = Path(path)  # importing this module imported minigpt.model, which registers MiniGPT with the Auto classes
    adapter = (path / "adapter_config.json").is_file() and not (path / "config.json").is_file()
    if adapter and not adapters:
        raise UserError(f"{option} {path} holds an adapter, not a model: merge it first with `minigpt merge`")
    if not path.is_dir():
        raise UserError(f"{option} {path}: no such directory")
    base = path
    if adapter:
        from minigpt.model.lora import adapter_base_path

        check_model_dir(path, option)
        base = adapter_base_path(path)
    elif not (path / "config.json").is_file():
        raise UserError(f"{option} {path} is not a model directory (no config.json)")

    tok, tok_src = None, None
    if tokenizer is not False:
        from minigpt.tokenizer import load_tokenizer

        if tokenizer is True:
            tok_src = path if (path / "tokenizer.json").is_file() or not adapter else base
        else:
            tok_src = Path(tokenizer)
        tok = load_tokenizer(tok_src)

    if model_class is None:
        from transformers import AutoModelForCausalLM

        model_class = AutoModelForCausalLM
    where = "the adapter's base" if adapter else option
    model = model_class.from_pretrained(str(check_model_dir(base, where, adapter_ok=False)))
    if adapter:
        from transformers import GenerationConfig

        from minigpt.model.lora import load_adapter

        load_adapter(model, path, check_base=not allow_base_mismatch)
        if (path / "generation_config.json").is_file():
            model.generation_config = GenerationConfig.from_pretrained(path)
    if tok is not None:
        check_tokenizer_fits(tok, model.config, tok_src, base)
    return model, tok


def is_reward_model_dir(path: str | Path) -> bool:
    """True when `path/config.json` describes a `MiniGPTRewardModel`."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        config = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return "MiniGPTRewardModel" in (config.get("architectures") or [])


def load_reward_model(model_dir: str | Path, device: str = "cpu"):
    """`(MiniGPTRewardModel, tokenizer)` from a directory written by `minigpt reward` (or by
    `save_pretrained` plus the tokenizer), in eval mode on `device`.

    Raises:
        UserError: not a reward-model directory (naming what it is instead), no tokenizer, or a
            tokenizer larger than the model's vocabulary.
    """
    from minigpt.model.reward_model import MiniGPTRewardModel
    from minigpt.train.distributed import pick_device

    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise UserError(f"{path} is not a model directory (no config.json)")
    if not is_reward_model_dir(path):
        raise UserError(f"{path} holds a language model, not a reward model; train one with `minigpt reward --model {path}`")
    from minigpt.model.loading import load_model_dir

    model, tok = load_model_dir(path, MiniGPTRewardModel, "--reward_model")
    return model.to(pick_device(device)).eval(), tok


def check_same_tokenizer(a_dir: str | Path, b_dir: str | Path, role: str = "a reward model") -> None:
    """A reward model can only score text tokenized the way it was trained: refuse two
    directories whose tokenizers differ (vocabulary, i.e. the token -> id map, or chat template).

    Use before scoring a policy's samples with a reward model (RLHF, win rates), or before
    comparing a policy with a reference model (`role` names the second one in the message).

    Raises:
        UserError: naming both directories and what differs (or a directory without tokenizer).
    """
    from minigpt.tokenizer import load_tokenizer

    ta, tb = load_tokenizer(a_dir), load_tokenizer(b_dir)
    va, vb = ta.get_vocab(), tb.get_vocab()
    if va != vb:
        only_a = sorted(set(va) - set(vb))[:3]
        moved = [t for t in va if t in vb and va[t] != vb[t]][:3]
        raise UserError(
            f"{a_dir} and {b_dir} use different tokenizers ({len(va)} vs {len(vb)} tokens; e.g. only in the first: "
            f"{only_a}, different ids: {moved}); {role} must share the policy's tokenizer"
        )
    if getattr(ta, "chat_template", None) != getattr(tb, "chat_template", None):
        raise UserError(
            f"{a_dir} and {b_dir} use different chat templates; {role} must see prompts rendered as the policy's are"
        )


#: `--model.*` fields that may change a saved model (`--model.init_from`): context, RoPE and
#: the attention window. Anything else would change its shapes or modules.
SAVED_MODEL_OVERRIDES = ("max_position_embeddings", "rope_scaling", "rope_theta", "sliding_window")


def apply_overrides_to_saved(net, model: "ModelConfig") -> None:
    """Apply the `--model.*` fields given along with `--model.init_from` to the loaded `net`:
    a longer context with scaled RoPE (`minigpt.model.modeling.set_rope_scaling`; the context
    extension recipe), a sliding window.

    Raises:
        UserError: a field that would change the saved model's shapes (hidden_size, experts …)."""
    from minigpt.model.modeling import set_rope_scaling

    given = {k: v for k, v in dataclasses.asdict(model).items() if v is not None and k not in ("preset", "init_from", "vocab_size")}
    shaped = sorted(set(given) - set(SAVED_MODEL_OVERRIDES))
    if shaped:
        raise UserError(
            f"--model.{shaped[0]} cannot change a saved model (--model.init_from); only "
            + ", ".join(f"--model.{k}" for k in SAVED_MODEL_OVERRIDES) + " can"
        )
    if "rope_theta" in given:
        net.config.rope_parameters = {**net.config.rope_parameters, "rope_theta": float(given["rope_theta"])}
    if "rope_scaling" in given or "max_position_embeddings" in given or "rope_theta" in given:
        set_rope_scaling(net, given.get("rope_scaling"), given.get("max_position_embeddings"))
    if "sliding_window" in given:
        net.config.sliding_window = int(given["sliding_window"]) or None


def build_model(model: "ModelConfig", model_class, tok, tokenizer_dir: str | Path, block_size: int):
    """A new `model_class` of `model`'s shape for `tok`, or the one saved at `model.init_from`
    (checked against `tok`).

    Raises:
        UserError: the tokenizer does not fit the saved model, or `block_size` exceeds the
            model's context.
    """
    if model.init_from:
        from minigpt.model.checks import check_tokenizer_fits
        from minigpt.model.loading import load_model_dir

        net, _ = load_model_dir(model.init_from, model_class, "--model.init_from", tokenizer=False)
        check_tokenizer_fits(tok, net.config, tokenizer_dir, model.init_from)
        apply_overrides_to_saved(net, model)
    else:
        special = {"eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id}
        net = model_class(model.build_config(len(tok), special))
    if block_size > net.config.max_position_embeddings:
        raise UserError(f"block_size {block_size} exceeds the model's context (max_position_embeddings={net.config.max_position_embeddings})")
    return net


def load_base_model(model_dir: str | Path):
    """`(MiniGPTForCausalLM, tokenizer)` from a saved model directory, for further training.

    The model is loaded from the directory's absolute path, so adapters trained on it record
    where their base lives (`base_model_name_or_path`).

    Raises:
        UserError: not a model directory, no tokenizer beside it, or a tokenizer larger than the
            model's vocabulary.
    """
    from minigpt.model.modeling import MiniGPTForCausalLM

    net, tok = load_model_dir(Path(model_dir).resolve(), MiniGPTForCausalLM)
    return net, tok
