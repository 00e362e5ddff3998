"""Pretraining recipe: text files -> tokenizer -> packed token blocks -> the training loop."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any


from minigpt.errors import UserError
from minigpt.model.options import ModelConfig
from minigpt.recipes.common import apply_shorthands, check_options, refuse_existing_run
from minigpt.train.config import TrainConfig


def pretrain(
    data: str | list[str] | None = None,
    out: str = "runs/pretrain",
    model: ModelConfig = ModelConfig(),
    tokenizer: str | None = None,
    block_size: int = 256,
    packing: str = "stream",
    text_field: str = "text",
    val_fraction: float = 0.05,
    cache_dir: str | None = None,
    tokenizer_max_chars: int | None = 20_000_000,
    train: TrainConfig = TrainConfig(),
    resume: bool = False,
    overwrite: bool = False,
    epochs: float | None = None,
    batch_size: int | None = None,
    save_dir: str | None = None,
    ewc_lambda: float = 0.0,
    kl_to_base: float = 0.0,
) -> dict[str, Any]:
    """Pretrain a causal language model on raw text.

    Args:
        data: text sources: .txt, .jsonl, .parquet (or .gz of these), directories of them, or a
            Hugging Face dataset name in the local cache. Empty: the embedded CPython docs.
        out: run directory; ends up holding the model, tokenizer, checkpoints and metrics.
        model: architecture (a preset plus overrides).
        tokenizer: an existing tokenizer directory; default: train one on `data`.
        block_size: tokens per training sequence (documents are packed with EOS separators).
        packing: how training blocks are cut: `stream` (consecutive blocks, straight across
            documents) or `documents` (every block starts at a document start, after its EOS;
            for corpora of documents shorter than a block or two). Validation is always cut as
            `stream`.
        text_field: JSONL / parquet / dataset field holding the text.
        val_fraction: share of the token stream held out for validation (taken from the end).
        cache_dir: where tokenized corpora are cached (default ~/.cache/minigpt/tokens).
        tokenizer_max_chars: characters used to train a new tokenizer.
        train: optimisation settings.
        resume: continue from the newest checkpoint in `out`.
        overwrite: discard a run already in `out`.
        epochs: shorthand for `--train.epochs` (the course's spelling).
        batch_size: shorthand for `--train.batch_size`.
        save_dir: shorthand for `--out`.
        ewc_lambda: continued pretraining of `--model.init_from` with elastic weight
            consolidation towards it (the Fisher saved beside it, `ewc_fisher.safetensors`,
            e.g. by `sft --save_fisher true`); 0 = off. Replay needs no option here: list the
            earlier corpus in `--data` too.
        kl_to_base: weight of the per-token KL(p_θ ‖ p_init) to the `--model.init_from` model.

    Returns the final training and validation metrics (`val_loss`, `val_bpb`, …).
    """
    from minigpt.data.prepare import prepare_corpus
    from minigpt.model import MiniGPTForCausalLM, count_active_parameters, count_parameters
    from minigpt.model.loading import build_model
    from minigpt.objectives.lm import CausalLMObjective
    from minigpt.tokenizer import token_byte_lengths
    from minigpt.train.loop import Trainer, seed_everything

    from minigpt.train.distributed import init_distributed, pick_device

    from minigpt.data.pretrain import PACKINGS

    train = apply_shorthands(train, epochs, batch_size)
    check_options(packing=(packing, packing in PACKINGS, " or ".join(PACKINGS)),
                  ewc_lambda=(ewc_lambda, ewc_lambda >= 0, "≥ 0 (0 = no EWC)"),
                  kl_to_base=(kl_to_base, kl_to_base >= 0, "≥ 0 (0 = no KL penalty)"))
    data = [data] if isinstance(data, str) else list(data or [])
    out_dir = Path(save_dir or out)
    if resume and tokenizer is None and (out_dir / "tokenizer" / "tokenizer.json").is_file():
        tokenizer = str(out_dir / "tokenizer")  # resume with the tokenizer the run was trained with
    if model.init_from and tokenizer is None:  # continue a saved model with its own tokenizer
        source = Path(model.init_from)
        found = next((d for d in (source, source / "tokenizer") if (d / "tokenizer.json").is_file()), None)
        if found is None:
            raise UserError(f"--model.init_from {source} holds no tokenizer (tokenizer.json); pass --tokenizer DIR "
                            "with the tokenizer that model was trained with")
        tokenizer = str(found)
    rank, _, _ = init_distributed(pick_device(train.device))
    if rank == 0:
        refuse_existing_run(out_dir, resume, overwrite, inputs={"data": data, "tokenizer": tokenizer})  # before minutes on a tokenizer
        out_dir.mkdir(parents=True, exist_ok=True)
    tok, train_ds, val_ds = prepare_corpus(
        data, tokenizer, model.vocab_size or 6400, text_field, out_dir, tokenizer_max_chars, val_fraction, block_size, cache_dir, rank,
        packing=packing,
    )
    seed_everything(train.seed)
    net = build_model(model, MiniGPTForCausalLM, tok, tokenizer or out_dir / "tokenizer", block_size)
    net.generation_config.eos_token_id = tok.eos_token_id
    net.generation_config.pad_token_id = tok.pad_token_id
    say = print if rank == 0 else (lambda *a, **k: None)  # one voice under torchrun
    say(
        f"model: {count_parameters(net) / 1e6:.2f} M parameters ({model.preset}"
        + (f"; mixture of {net.config.num_local_experts} experts, top-{net.config.num_experts_per_tok}: "
           f"{count_active_parameters(net) / 1e6:.2f} M active per token" if net.config.is_moe else "")
        + f"); data: {len(train_ds)} train / "
        f"{len(val_ds) if val_ds else 0} val blocks of {block_size} tokens"
    )
    objective = CausalLMObjective(token_byte_lengths(tok))
    if ewc_lambda > 0 or kl_to_base > 0:
        import copy

        from minigpt.objectives.continual import FISHER_FILE, ContinualObjective, load_fisher

        if not model.init_from:
            raise UserError("--ewc_lambda and --kl_to_base continue a saved model: give --model.init_from")
        fisher = load_fisher(model.init_from) if ewc_lambda > 0 else None
        if ewc_lambda > 0 and fisher is None:
            raise UserError(f"--ewc_lambda: {model.init_from} has no {FISHER_FILE} (write one with `minigpt sft ... --save_fisher true`)")
        reference = copy.deepcopy(net).eval().requires_grad_(False) if kl_to_base > 0 else None
        objective = ContinualObjective(objective, net, fisher=fisher, ewc_lambda=ewc_lambda, reference=reference, kl_coef=kl_to_base)
    run_info = {
        "stage": "pretrain",
        "data": data,
        "model": dataclasses.asdict(model),
        "block_size": block_size,
        "packing": packing,
        "text_field": text_field,
        "val_fraction": val_fraction,
        "train": dataclasses.asdict(train),
        "continual": {"ewc_lambda": ewc_lambda, "kl_to_base": kl_to_base},
    }
    trainer = Trainer(
        net,
        objective,
        train_ds,
        train,
        out_dir,
        val_dataset=val_ds,
        save_with_model=tok,
        run_info=run_info,
    )
    t0 = time.time()
    metrics = trainer.fit(resume=resume, overwrite=overwrite)
    metrics["train_seconds"] = time.time() - t0
    metrics["steps"] = trainer.step
    if "val_bpb" in metrics:
        say(f"done: {trainer.step} steps in {metrics['train_seconds']:.0f} s; val loss {metrics['val_loss']:.4f} nats/token, val {metrics['val_bpb']:.4f} bits per byte")
    say(f"model saved to {out_dir} (AutoModelForCausalLM.from_pretrained works after `import minigpt`)")
    return metrics
