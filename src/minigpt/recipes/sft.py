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
from minigpt.objectives.config import SFT_TRAIN_DEFAULTS
from minigpt.train.config import TrainConfig

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

            from minigpt.data.sft import load_sft_data

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

    from minigpt.data.sft import load_sft_data, reply_budget
    from minigpt.model import count_parameters
    from minigpt.model.loading import load_base_model
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
