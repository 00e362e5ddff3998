"""Supervised fine-tuning recipe: chat records -> rendered (ids, loss mask) -> the training loop.

Full SFT trains every weight; `--lora.rank N` injects PEFT LoRA (or DoRA) adapters and trains
only those, saving the adapter alone. Reasoning data (`<think>…</think><answer>…</answer>`) needs
nothing special: the four tags are single tokens whose loss weight is raised
(`--reasoning_tag_weight`, default ×10, so the few tag tokens are learnt early).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from minigpt.errors import UserError
from minigpt.model.options import AdapterOptions
from minigpt.model.options import LoraOptions
from minigpt.model.options import MoeOptions
from minigpt.recipes.common import apply_shorthands, fit_from_start, check_options, refuse_existing_run
from minigpt.train.config import TrainConfig

SFT_TRAIN_DEFAULTS = TrainConfig(
    max_steps=1000,
    batch_size=8,
    lr=2e-4,
    min_lr_ratio=0.1,
    warmup_steps=20,
    weight_decay=0.0,
    eval_interval=200,
    eval_batches=0,
    save_interval=500,
)


def load_base_model(model_dir: str | Path):
    """`(MiniGPTForCausalLM, tokenizer)` from a saved model directory, for further training.

    The model is loaded from the directory's absolute path, so adapters trained on it record
    where their base lives (`base_model_name_or_path`).

    Raises:
        UserError: not a model directory, no tokenizer beside it, or a tokenizer larger than the
            model's vocabulary.
    """
    from minigpt.model import MiniGPTForCausalLM
    from minigpt.model.loading import load_model_dir

    net, tok = load_model_dir(Path(model_dir).resolve(), MiniGPTForCausalLM)
    return net, tok


def reply_budget(reply_tokens: list[int], context: int, quantile: float = 0.99) -> int:
    """The model's default reply length, saved as `generation_config.max_new_tokens` (what `chat`
    and `generate` use when not told otherwise): the `quantile` of `reply_tokens` (the trained
    tokens of each training conversation: its assistant replies and their end-of-turn tokens),
    times 1.25, rounded up to a multiple of 16, between 16 and `context`. A model trained on
    short answers thereby stops waiting for long ones: a reply that never emits `<|im_end|>`
    costs this many tokens, not 256."""
    import math

    counts = sorted(reply_tokens) or [256]
    k = counts[min(len(counts) - 1, math.ceil(quantile * len(counts)) - 1)]
    return int(min(max(16, math.ceil(1.25 * k / 16) * 16), context))


def load_sft_data(
    data: list[str],
    tok,
    max_length: int,
    format: str | None,
    val_fraction: float,
    max_val: int | None,
    packing: bool,
    seed: int,
    say=print,
    replay_data: list[str] | None = None,
    replay_ratio: float = 0.2,
):
    """Render every record of `data` and split whole conversations into train / validation.

    Returns `(train_dataset, val_dataset | None, collate_fn)`; with `packing`, conversations are
    packed into blocks of `max_length` tokens (position ids restart per conversation and attention
    never crosses one), else each item is one conversation and batches are padded to their
    longest item. Skipped records are counted and reported through `say`. With `replay_data`,
    conversations of that earlier task are added to the training part so that they make up
    exactly `replay_ratio` of it (`minigpt.data.sft.replay_examples`); validation stays the new
    task's alone.

    Raises:
        UserError: no data, a malformed record (naming file:line and field), or no usable
            conversation at all.
    """
    from functools import partial

    from minigpt.data.sft import (
        PackedSFTDataset,
        PaddedSFTDataset,
        SFTDataset,
        collate_packed,
        collate_padded,
        split_examples,
    )

    if not data:
        raise UserError("--data is required: JSONL files of conversations (messages / Alpaca / ShareGPT records)")
    examples = []
    for source in data:
        ds = SFTDataset(source, tok, max_length=max_length, format=format)
        say(f"{source}: {ds.summary()}")
        examples.extend(ds.examples)
    train_ex, val_ex = split_examples(examples, val_fraction, seed=seed, max_val=max_val)
    if replay_data:
        from minigpt.data.sft import replay_examples

        old = []
        for source in replay_data:
            ds = SFTDataset(source, tok, max_length=max_length, format=format)
            say(f"replay {source}: {ds.summary()}")
            old.extend(ds.examples)
        replayed = replay_examples(old, len(train_ex), replay_ratio, seed=seed)
        say(f"replay: {len(replayed)} earlier conversations mixed into {len(train_ex)} new ones "
            f"({len(replayed) / max(len(replayed) + len(train_ex), 1):.3f} of the training set)")
        train_ex = train_ex + replayed
    reply_tokens = [int(sum(mask)) for _, mask in train_ex]
    if packing:
        train_ds = PackedSFTDataset(train_ex, max_length, seed=seed)
        val_ds = PackedSFTDataset(val_ex, max_length, seed=seed) if val_ex else None
        collate = collate_packed
    else:
        train_ds = PaddedSFTDataset(train_ex)
        val_ds = PaddedSFTDataset(val_ex) if val_ex else None
        collate = partial(collate_padded, pad_id=tok.pad_token_id)
    say(
        f"SFT data: {len(train_ex)} train / {len(val_ex)} held-out conversations"
        + (f" packed into {len(train_ds)} blocks of {max_length} tokens" if packing else "")
    )
    train_ds.reply_tokens = reply_tokens  # trained tokens per conversation, for `reply_budget`
    return train_ds, val_ds, collate


def _continual_objective(objective, net, model_dir, ewc_lambda, ewc_data, fisher_rows, kl_to_base, tok, max_length, format, packing, train, rank, say):
    """Wrap `objective` in a `ContinualObjective` with EWC (Fisher beside the model, else
    estimated on `ewc_data` and saved there) and/or KL to the starting model."""
    import copy

    from minigpt.model.lora import adapters_disabled, has_adapters
    from minigpt.objectives.continual import ContinualObjective, estimate_fisher, load_fisher, save_fisher

    fisher = None
    if ewc_lambda > 0:
        fisher = load_fisher(model_dir)
        if fisher is not None:
            say(f"EWC: Fisher information read from {Path(model_dir) / 'ewc_fisher.safetensors'}")
        elif not ewc_data:
            raise UserError(
                f"--ewc_lambda needs the previous task's Fisher information: {model_dir} has no ewc_fisher.safetensors "
                "(train the previous stage with --save_fisher true) and no --ewc_data was given to estimate it from"
            )
        else:
            from torch.utils.data import DataLoader

            old_ds, _, collate = load_sft_data(ewc_data, tok, max_length, format, 0.0, 0, packing, train.seed, say)
            fisher = estimate_fisher(net, objective, DataLoader(old_ds, batch_size=train.batch_size, shuffle=False, collate_fn=collate), fisher_rows)
            if rank == 0:
                try:
                    path = save_fisher(model_dir, fisher, {"data": ",".join(ewc_data), "rows": str(fisher_rows)})
                    say(f"EWC: Fisher estimated on {fisher_rows} sequences of {', '.join(ewc_data)}, saved to {path}")
                except OSError as e:
                    say(f"EWC: Fisher estimated on {', '.join(ewc_data)} (not saved beside the model: {e})")
    reference, context = None, None
    if kl_to_base > 0:
        if has_adapters(net):
            reference, context = net, (lambda: adapters_disabled(net))  # the base is the model with adapters off
        else:
            reference = copy.deepcopy(net).eval().requires_grad_(False)
    return ContinualObjective(objective, net, fisher=fisher, ewc_lambda=ewc_lambda, reference=reference, kl_coef=kl_to_base, kl_context=context)


def sft(
    model: str,
    data: str | list[str] | None = None,
    out: str = "runs/sft",
    format: str | None = None,
    max_length: int = 512,
    packing: bool = True,
    val_fraction: float = 0.02,
    max_val: int | None = 500,
    reasoning_tag_weight: float = 10.0,
    lora: LoraOptions = LoraOptions(),
    moe: MoeOptions = MoeOptions(),
    adapter: AdapterOptions = AdapterOptions(),
    train: TrainConfig = SFT_TRAIN_DEFAULTS,
    resume: bool = False,
    overwrite: bool = False,
    epochs: float | None = None,
    batch_size: int | None = None,
    save_dir: str | None = None,
    ewc_lambda: float = 0.0,
    ewc_data: str | list[str] | None = None,
    fisher_rows: int = 64,
    save_fisher: bool = False,
    replay_data: str | list[str] | None = None,
    replay_ratio: float = 0.2,
    kl_to_base: float = 0.0,
) -> dict[str, Any]:
    """Fine-tune a pretrained model on conversations; loss only on the assistant replies.

    Args:
        model: the pretrained model directory (with its tokenizer).
        data: JSONL / JSON / parquet files of records in any supported format: `messages` or
            `conversations` (role/content), Alpaca (instruction/input/output, optional system
            and history), ShareGPT (from/value).
        out: run directory; ends up holding the model (or the adapter alone with LoRA), the
            tokenizer, checkpoints and metrics.
        format: force the record format (messages, alpaca, sharegpt); default: detect per record.
        max_length: tokens per conversation; longer ones are truncated (and dropped if no
            assistant token is left). Also the packed block length.
        packing: pack several conversations into each block with attention kept inside each
            one (no compute spent on padding); off: one conversation per row, padded batches.
        val_fraction: share of conversations held out for validation (assistant-token loss).
        max_val: at most this many held-out conversations.
        reasoning_tag_weight: loss weight of `<think>`, `</think>`, `<answer>`, `</answer>`.
        lora: LoRA adapters (`--lora.rank 8 --lora.alpha 16 ...`; rank 0 = full fine-tuning):
            rank, alpha, dropout, targets, dora, qlora (see `minigpt.model.lora.LoraOptions`).
            On a mixture-of-experts model the default targets include every expert's linears.
        moe: mixture-of-experts options (`--moe.freeze_router true`, `--moe.train_experts
            [0,3]`; see `minigpt.model.moe.MoeOptions`).
        adapter: an adapter method instead of LoRA (`--adapter.method houlsby|pfeiffer|ia3`,
            `--adapter.reduction_factor 16`; see `minigpt.model.adapters`); the run saves the
            adapter alone, as with LoRA.
        train: optimisation settings.
        resume: continue from the newest checkpoint in `out`.
        overwrite: discard a run already in `out`.
        epochs: shorthand for `--train.epochs`.
        batch_size: shorthand for `--train.batch_size`.
        save_dir: shorthand for `--out`.
        ewc_lambda: λ of elastic weight consolidation (Kirkpatrick et al. 2017) towards the
            starting model; 0 = off. The diagonal Fisher is read from `ewc_fisher.safetensors`
            beside the model, or estimated on `ewc_data` and saved there.
        ewc_data: the previous task's conversations, to estimate the Fisher from when the model
            directory has none.
        fisher_rows: sequences used to estimate a Fisher.
        save_fisher: at the end, estimate the Fisher of the trained model on this run's
            training data and save it beside the model, for a later stage's EWC.
        replay_data: conversations of an earlier task to mix into the training set (replay).
        replay_ratio: their share of the training conversations, exact per epoch.
        kl_to_base: weight of the per-token KL(p_θ ‖ p_start) to the starting model; 0 = off.

    Returns the final training and validation metrics, plus `val_loss_before` (the held-out
    assistant-token loss of the starting model).
    """
    from minigpt.tokenizer.chat import chat_eos_ids

    from minigpt.model import count_parameters
    from minigpt.objectives.sft import SFTObjective
    from minigpt.tokenizer import REASONING_TAGS
    from minigpt.train.distributed import init_distributed, pick_device
    from minigpt.train.loop import Trainer, seed_everything

    train = apply_shorthands(train, epochs, batch_size)
    data = [data] if isinstance(data, str) else list(data or [])
    out_dir = Path(save_dir or out)
    rank, _, _ = init_distributed(pick_device(train.device))
    say = print if rank == 0 else (lambda *a, **k: None)
    check_options(
        **{"lora.rank": (lora.rank, lora.rank >= 0, "≥ 0 (0 = full fine-tuning)")},
        reasoning_tag_weight=(reasoning_tag_weight, reasoning_tag_weight >= 0, "≥ 0"),
        ewc_lambda=(ewc_lambda, ewc_lambda >= 0, "≥ 0 (0 = no EWC)"),
        kl_to_base=(kl_to_base, kl_to_base >= 0, "≥ 0 (0 = no KL penalty)"),
        fisher_rows=(fisher_rows, fisher_rows >= 1, "an integer ≥ 1"),
        replay_ratio=(replay_ratio, 0 < replay_ratio < 1, "in (0, 1): the share of each epoch drawn from --replay_data"),
        ewc_data=(ewc_data, not ewc_data or ewc_lambda > 0, "given only with --ewc_lambda > 0 (without it the data is never read)"),
    )
    refuse_existing_run(out_dir, resume, overwrite, inputs={"model": model, "data": data})
    if lora.rank <= 0 and (lora.dora or lora.qlora):
        raise UserError("--lora.dora and --lora.qlora need --lora.rank > 0")
    seed_everything(train.seed)
    net, tok = load_base_model(model)
    if max_length > net.config.max_position_embeddings:
        raise UserError(f"max_length {max_length} exceeds the model's context (max_position_embeddings={net.config.max_position_embeddings})")
    replay_data = [replay_data] if isinstance(replay_data, str) else list(replay_data or [])
    ewc_data = [ewc_data] if isinstance(ewc_data, str) else list(ewc_data or [])
    train_ds, val_ds, collate = load_sft_data(
        data, tok, max_length, format, val_fraction, max_val, packing, train.seed, say, replay_data=replay_data, replay_ratio=replay_ratio
    )
    eos_ids = chat_eos_ids(tok)
    net.generation_config.eos_token_id = eos_ids[0]  # <|im_end|>: a chat model stops after its reply
    net.generation_config.pad_token_id = tok.pad_token_id
    net.generation_config.max_new_tokens = reply_budget(train_ds.reply_tokens, net.config.max_position_embeddings)
    if lora.rank > 0:
        from minigpt.model.lora import apply_lora

        apply_lora(
            net,
            rank=lora.rank,
            alpha=lora.alpha,
            dropout=lora.dropout,
            target_modules=lora.targets,
            use_dora=lora.dora,
            quantize=lora.qlora,
            verbose=rank == 0,
        )
    if adapter.enabled:
        from minigpt.model.adapters import BOTTLENECK_CONFIGS, apply_bottleneck_adapters, apply_ia3

        if lora.rank > 0:
            raise UserError(f"--adapter.method {adapter.method} and --lora.rank are two adapter methods; choose one")
        if adapter.method in BOTTLENECK_CONFIGS:
            apply_bottleneck_adapters(net, adapter.method, adapter.reduction_factor, adapter.non_linearity, verbose=rank == 0)
        elif adapter.method == "ia3":
            apply_ia3(net, verbose=rank == 0)
        else:
            raise UserError(f"--adapter.method: must be one of houlsby, pfeiffer, ia3, got {adapter.method!r}")
    if moe.enabled:
        from minigpt.model.moe import apply_moe_options

        apply_moe_options(net, moe)
    tag_ids = [tok.convert_tokens_to_ids(t) for t in REASONING_TAGS]
    objective = SFTObjective(tag_ids=tag_ids, tag_weight=reasoning_tag_weight)
    if ewc_lambda > 0 or kl_to_base > 0:
        objective = _continual_objective(
            objective, net, model, ewc_lambda, ewc_data, fisher_rows, kl_to_base, tok, max_length, format, packing, train, rank, say
        )
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    say(f"model: {count_parameters(net) / 1e6:.2f} M parameters, {trainable / 1e6:.3f} M trainable ({'LoRA' if lora.rank else adapter.method or 'full'} SFT"
        + (f", {net.config.num_local_experts} experts, top-{net.config.num_experts_per_tok}" if net.config.is_moe else "") + ")")
    run_info = {
        "stage": "sft",
        "model": str(Path(model).resolve()),
        "data": data,
        "format": format,
        "max_length": max_length,
        "packing": packing,
        "val_fraction": val_fraction,
        "max_val": max_val,
        "reasoning_tag_weight": reasoning_tag_weight,
        "lora": dataclasses.asdict(lora),
        "moe": dataclasses.asdict(moe),
        "adapter": dataclasses.asdict(adapter),
        "train": dataclasses.asdict(train),
        "continual": {"ewc_lambda": ewc_lambda, "ewc_data": ewc_data, "replay_data": replay_data,
                      "replay_ratio": replay_ratio if replay_data else 0.0, "kl_to_base": kl_to_base},
    }
    trainer = Trainer(net, objective, train_ds, train, out_dir, val_dataset=val_ds, collate_fn=collate, save_with_model=tok, run_info=run_info)
    metrics = fit_from_start(trainer, resume, overwrite, say, lambda m: f"assistant-token loss {m['val_loss']:.4f} nats/token")
    if save_fisher and rank == 0:
        from minigpt.objectives.continual import estimate_fisher, save_fisher as write_fisher
        from torch.utils.data import DataLoader

        base_objective = getattr(objective, "inner", objective)
        loader = DataLoader(train_ds, batch_size=train.batch_size, shuffle=False, collate_fn=collate)
        fisher = estimate_fisher(net, base_objective, loader, max_rows=fisher_rows)
        path = write_fisher(out_dir, fisher, {"data": ",".join(data), "rows": str(fisher_rows)})
        say(f"diagonal Fisher of the trained model ({fisher_rows} sequences) saved to {path}, for EWC in a later stage")
    what = "adapter" if lora.rank > 0 or adapter.enabled else "model"
    say(f"{what} saved to {out_dir}; chat with it: minigpt chat --model {out_dir}")
    return metrics
