"""Preference optimisation recipe: `minigpt dpo --model SFT_DIR --data pairs.jsonl --loss …`.

One recipe for the whole DPO family (sigmoid = DPO, cDPO through `--label_smoothing`, ipo,
hinge, reference-free, simpo, orpo) and for KTO on unpaired data. The reference policy is the
starting model: its log-probs are computed once per dataset before training (`--precompute_ref`,
the default), or live at every step from a frozen copy, or, with `--lora.rank`, from the
trained model with its adapters disabled (no second copy of the weights).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from minigpt.errors import UserError
from minigpt.model.options import LoraOptions
from minigpt.objectives.config import DPO_TRAIN_DEFAULTS, DPOConfig
from minigpt.recipes.common import apply_shorthands, fit_from_start, load_preference_data, check_options, refuse_existing_run
from minigpt.train.config import TrainConfig


def dpo(
    model: str,
    data: str | list[str] | None = None,
    out: str = "runs/dpo",
    dpo: DPOConfig = DPOConfig(),
    reference: str | None = None,
    precompute_ref: bool = True,
    max_length: int = 512,
    max_prompt_length: int | None = None,
    val_fraction: float = 0.1,
    max_val: int | None = 500,
    lora: LoraOptions = LoraOptions(),
    train: TrainConfig = DPO_TRAIN_DEFAULTS,
    resume: bool = False,
    overwrite: bool = False,
    epochs: float | None = None,
    batch_size: int | None = None,
    save_dir: str | None = None,
) -> dict[str, Any]:
    """Align a chat model to preferences: DPO and its variants (IPO, hinge, cDPO,
    reference-free, SimPO, ORPO) on pairs, or KTO on unpaired examples.

    Args:
        model: the starting model directory (usually an SFT model; also the default reference).
        data: JSONL / JSON / parquet preference files: `{"prompt", "chosen", "rejected"}` with
            strings or message lists, HH-RLHF `{"chosen", "rejected"}` transcripts, or for kto
            `{"prompt", "completion", "label"}` (paired records work too).
        out: run directory (model or adapter, tokenizer, checkpoints, metrics).
        dpo: the loss and its knobs (`--dpo.loss_type simpo --dpo.beta 2.5 ...`; see
            `minigpt.objectives.config.DPOConfig`): loss_type (sigmoid = DPO, ipo, hinge,
            simpo, orpo, kto), beta (default: 0.1, or 2.0 for simpo), label_smoothing,
            reference_free, simpo_gamma, desirable_weight / undesirable_weight (KTO). The
            learning rate is `--train.lr`.
        reference: a reference model directory other than `model` (same tokenizer).
        precompute_ref: compute the reference log-probs once before training instead of a
            second forward pass at every step.
        max_length: tokens per prompt + reply; prompts are cut from the left first (down to
            `max_prompt_length`), then replies on the right; both are counted.
        max_prompt_length: fewest prompt tokens kept when cutting (default max_length / 2).
        val_fraction: share of records held out (implicit-reward accuracy is reported on it).
        max_val: at most this many held-out records.
        lora: LoRA adapters (`--lora.rank 8 --lora.alpha 16 ...`; rank 0 = train every weight): see
            `minigpt.model.lora.LoraOptions`. With LoRA the reference is the model with its adapters
            disabled.
        train: optimisation settings.
        resume: continue from the newest checkpoint in `out`.
        overwrite: discard a run already in `out`.
        epochs: shorthand for `--train.epochs`.
        batch_size: shorthand for `--train.batch_size` (pairs per micro-batch).
        save_dir: shorthand for `--out`.

    Returns the final training and validation metrics (`val_accuracy` = held-out implicit-reward
    accuracy), plus `val_accuracy_before` for the starting model.
    """
    from functools import partial

    from minigpt.data.kto import collate_unpaired
    from minigpt.data.preference import collate_preference
    from minigpt.model import count_parameters
    from minigpt.objectives.preference import precompute_reference_logprobs, preference_objective
    from minigpt.model.loading import load_base_model
    from minigpt.tokenizer.chat import chat_eos_ids
    from minigpt.train.distributed import init_distributed, pick_device
    from minigpt.train.loop import Trainer, seed_everything

    if dpo.learning_rate is not None:
        raise UserError("--dpo.learning_rate is the Python API's spelling; on the command line the learning rate is --train.lr")
    dpo = dpo.resolved()
    train = apply_shorthands(train, epochs, batch_size)
    data = [data] if isinstance(data, str) else list(data or [])
    out_dir = Path(save_dir or out)
    rank, _, device = init_distributed(pick_device(train.device))
    say = print if rank == 0 else (lambda *a, **k: None)
    check_options(**{"lora.rank": (lora.rank, lora.rank >= 0, "≥ 0 (0 = train every weight)")})
    refuse_existing_run(out_dir, resume, overwrite, inputs={"model": model, "reference": reference, "data": data})
    if lora.rank <= 0 and lora.dora:
        raise UserError("--lora.dora needs --lora.rank > 0")
    seed_everything(train.seed)
    net, tok = load_base_model(model)
    if max_length > net.config.max_position_embeddings:
        raise UserError(f"max_length {max_length} exceeds the model's context (max_position_embeddings={net.config.max_position_embeddings})")
    unpaired = dpo.loss_type == "kto"
    train_ds, val_ds = load_preference_data(data, tok, max_length, max_prompt_length, val_fraction, max_val, train.seed, say, unpaired=unpaired)
    collate = partial(collate_unpaired if unpaired else collate_preference, pad_id=tok.pad_token_id)
    net.generation_config.eos_token_id = chat_eos_ids(tok)[0]
    net.generation_config.pad_token_id = tok.pad_token_id
    objective = preference_objective(dpo)
    ref_net = None
    if objective.needs_reference and (reference is not None or (lora.rank <= 0 and not precompute_ref)):
        from minigpt.model.loading import check_same_tokenizer

        ref_dir = reference or model
        check_same_tokenizer(model, ref_dir, role="the reference model")
        ref_net, _ = load_base_model(ref_dir)
        objective.set_reference(ref_net.to(device))
    if lora.rank > 0:
        from minigpt.model.lora import apply_lora

        apply_lora(net, rank=lora.rank, alpha=lora.alpha, dropout=lora.dropout, target_modules=lora.targets, use_dora=lora.dora, verbose=rank == 0)
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    say(
        f"model: {count_parameters(net) / 1e6:.2f} M parameters, {trainable / 1e6:.3f} M trainable; loss {dpo.loss_type}, beta {dpo.beta}; "
        + ("reference: none (reference-free loss)" if not objective.needs_reference else
           f"reference: {'precomputed once' if precompute_ref else 'live'} from "
           + ("the model with adapters disabled" if lora.rank > 0 and ref_net is None else str(Path(reference or model))))
    )
    run_info = {
        "stage": "dpo",
        "model": str(Path(model).resolve()),
        "data": data,
        "dpo": dataclasses.asdict(dpo),
        "reference": None if reference is None else str(Path(reference).resolve()),
        "max_length": max_length,
        "max_prompt_length": max_prompt_length,
        "val_fraction": val_fraction,
        "max_val": max_val,
        "lora": dataclasses.asdict(lora),
        "train": dataclasses.asdict(train),
    }
    trainer = Trainer(net, objective, train_ds, train, out_dir, val_dataset=val_ds, collate_fn=collate, save_with_model=tok, run_info=run_info)
    if objective.needs_reference and precompute_ref:
        t0 = time.time()
        for ds in (train_ds, val_ds):
            if ds is not None:
                precompute_reference_logprobs(objective, trainer.model, ds, collate, train.batch_size, trainer.device, trainer.autocast, progress=train.progress and rank == 0)
        say(f"reference log-probs of {len(train_ds) + (len(val_ds) if val_ds else 0)} records precomputed in {time.time() - t0:.0f} s")
    metrics = fit_from_start(
        trainer, resume, overwrite, say,
        lambda m: f"loss {m['val_loss']:.4f}" + (f", implicit-reward accuracy {m['val_accuracy']:.3f}, margin {m['val_reward_margin']:.3f}" if "val_accuracy" in m else ""),
    )
    say(f"{'adapter' if lora.rank > 0 else 'model'} saved to {out_dir}; chat with it: minigpt chat --model {out_dir}")
    return metrics
