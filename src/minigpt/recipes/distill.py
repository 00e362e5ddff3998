"""Distillation recipe: a frozen teacher's token distributions train a (smaller) student on chat
data, through the same loop and data path as SFT."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from minigpt.errors import UserError
from minigpt.recipes.common import refuse_existing_run
from minigpt.model.options import ModelConfig
from minigpt.objectives.config import SFT_TRAIN_DEFAULTS, DistillConfig
from minigpt.train.config import TrainConfig


def check_same_vocabulary(teacher_tok, student_tok, teacher_model, student_model, teacher_dir: str, student_dir: str) -> None:
    """Distillation compares distributions id by id, so both sides must mean the same thing by
    every id.

    Raises:
        UserError: naming both directories when the vocabularies (token -> id maps) or the
            models' `vocab_size` differ.
    """
    tv, sv = teacher_tok.get_vocab(), student_tok.get_vocab()
    if tv != sv:
        only_t = sorted(set(tv) - set(sv))[:3]
        moved = [t for t in tv if t in sv and tv[t] != sv[t]][:3]
        raise UserError(
            f"teacher {teacher_dir} and student {student_dir} use different tokenizers "
            f"({len(tv)} vs {len(sv)} tokens; e.g. only in the teacher: {only_t}, different ids: {moved}); "
            "distillation needs the same tokenizer on both sides"
        )
    if teacher_model.config.vocab_size != student_model.config.vocab_size:
        raise UserError(
            f"teacher {teacher_dir} has vocab_size {teacher_model.config.vocab_size} but student {student_dir} has "
            f"{student_model.config.vocab_size}; distillation needs equal output vocabularies"
        )


def distill(
    teacher: str,
    data: str | list[str] | None = None,
    out: str = "runs/distill",
    student: str | None = None,
    student_config: ModelConfig = ModelConfig(preset="tiny"),
    distill: DistillConfig = DistillConfig(),
    format: str | None = None,
    max_length: int = 512,
    packing: bool = True,
    val_fraction: float = 0.02,
    max_val: int | None = 500,
    train: TrainConfig = SFT_TRAIN_DEFAULTS,
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train a student on `τ²·KL(p_teacher^τ ‖ p_student^τ) + α·CE` per assistant token (Hinton 2015).

    Args:
        teacher: the teacher model directory (its tokenizer is used for the data).
        data: conversation files, as for `minigpt sft`.
        out: run directory for the student.
        student: start from this saved model directory (must share the teacher's tokenizer);
            default: a fresh model built from `student_config`.
        student_config: architecture of a fresh student (its vocabulary is the teacher's).
        distill: τ and α (`--distill.temperature 2 --distill.alpha 0.5`; see
            `minigpt.objectives.config.DistillConfig`): τ softens both distributions, α weighs
            the hard-label cross-entropy term.
        format: force the record format (messages, alpaca, sharegpt).
        max_length: tokens per conversation (and packed block length).
        packing: pack conversations into blocks (see `minigpt sft --help`).
        val_fraction: share of conversations held out for validation.
        max_val: at most this many held-out conversations.
        train: optimisation settings.
        resume: continue from the newest checkpoint in `out`.
        overwrite: discard a run already in `out`.

    Returns the final metrics (`val_loss` is the distillation loss per token; `val_ce` the
    student's plain cross-entropy on held-out assistant tokens, `val_kl` the KL to the teacher).

    Raises:
        UserError: teacher and student tokenizers or vocabulary sizes differ; bad data.
    """
    from minigpt.data.sft import load_sft_data
    from minigpt.model import MiniGPTForCausalLM, count_parameters
    from minigpt.model.loading import load_base_model
    from minigpt.objectives.distill import DistillationObjective
    from minigpt.train.distributed import init_distributed, pick_device
    from minigpt.train.loop import Trainer, seed_everything
    from minigpt.tokenizer.chat import chat_eos_ids

    data = [data] if isinstance(data, str) else list(data or [])
    out_dir = Path(out)
    rank, _, device = init_distributed(pick_device(train.device))
    say = print if rank == 0 else (lambda *a, **k: None)
    refuse_existing_run(out_dir, resume, overwrite, inputs={"teacher": teacher, "student": student, "data": data})
    seed_everything(train.seed)
    teacher_net, tok = load_base_model(teacher)
    if student:
        student_net, student_tok = load_base_model(student)
        check_same_vocabulary(tok, student_tok, teacher_net, student_net, teacher, student)
    else:
        special = {"eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id}
        student_net = MiniGPTForCausalLM(student_config.build_config(teacher_net.config.vocab_size, special))
    if max_length > min(student_net.config.max_position_embeddings, teacher_net.config.max_position_embeddings):
        raise UserError(f"max_length {max_length} exceeds the teacher's or the student's context")
    train_ds, val_ds, collate = load_sft_data(data, tok, max_length, format, val_fraction, max_val, packing, train.seed, say)
    student_net.generation_config.eos_token_id = chat_eos_ids(tok)[0]
    student_net.generation_config.pad_token_id = tok.pad_token_id
    objective = DistillationObjective(teacher_net.to(device), distill)
    say(
        f"teacher {count_parameters(teacher_net) / 1e6:.2f} M -> student {count_parameters(student_net) / 1e6:.2f} M parameters; "
        f"τ={distill.temperature}, α={distill.alpha}"
    )
    run_info = {
        "stage": "distill",
        "teacher": str(Path(teacher).resolve()),
        "student": str(Path(student).resolve()) if student else dataclasses.asdict(student_config),
        "data": data,
        "distill": dataclasses.asdict(distill),
        "max_length": max_length,
        "packing": packing,
        "train": dataclasses.asdict(train),
    }
    trainer = Trainer(student_net, objective, train_ds, train, out_dir, val_dataset=val_ds, collate_fn=collate, save_with_model=tok, run_info=run_info)
    t0 = time.time()
    metrics = trainer.fit(resume=resume, overwrite=overwrite)
    metrics["train_seconds"] = time.time() - t0
    metrics["steps"] = trainer.step
    if "val_ce" in metrics:
        say(f"done: {trainer.step} steps; student held-out CE {metrics['val_ce']:.4f} nats/token, KL to teacher {metrics['val_kl']:.4f}")
    say(f"student saved to {out_dir}")
    return metrics
