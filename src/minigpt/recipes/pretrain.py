"""Pretraining recipe: text files -> tokenizer -> packed token blocks -> the training loop."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from minigpt.errors import UserError
from minigpt.recipes.common import apply_shorthands, check_options, refuse_existing_run
from minigpt.train.config import TrainConfig


@dataclass
class ModelConfig:
    """Which model to build: a named preset, with any field overridden."""

    preset: str = "tiny"
    """tiny (≈1.6 M parameters), small (≈26 M) or base (≈106 M)."""
    vocab_size: int | None = None
    """Vocabulary size; also the size of a tokenizer trained for this run (default 6400)."""
    hidden_size: int | None = None
    """Width of the residual stream."""
    intermediate_size: int | None = None
    """Width of the SwiGLU hidden layer."""
    num_hidden_layers: int | None = None
    """Decoder blocks."""
    num_attention_heads: int | None = None
    """Query heads."""
    num_key_value_heads: int | None = None
    """Key/value heads (grouped-query attention)."""
    max_position_embeddings: int | None = None
    """Context length in tokens."""
    rope_theta: float | None = None
    """RoPE base frequency."""
    rope_scaling: dict | None = None
    """RoPE scaling for a longer context, as transformers defines it, e.g.
    '{"rope_type": "yarn", "factor": 4}' (also linear, dynamic, llama3, longrope). With
    init_from it extends the saved model's context (original_max_position_embeddings defaults
    to its trained context, factor to the new context over it)."""
    sliding_window: int | None = None
    """Attend to the last W positions only (Mistral-style sliding-window attention)."""
    dropout: float | None = None
    """Dropout probability."""
    tie_word_embeddings: bool | None = None
    """Share the input embedding with the LM head."""
    num_local_experts: int | None = None
    """Mixture of experts: E SwiGLU experts of intermediate_size each per block (0 = dense)."""
    num_experts_per_tok: int | None = None
    """Mixture of experts: experts per token, K (default 2)."""
    router_aux_loss_coef: float | None = None
    """Mixture of experts: weight of the load-balancing loss (default 0.01)."""
    router_z_loss_coef: float | None = None
    """Mixture of experts: weight of the router z-loss (default 0)."""
    init_from: str | None = None
    """Start from this saved model directory instead of a fresh initialisation."""

    def __post_init__(self) -> None:
        """Refuse sizes and rates that cannot build a model, naming the field.

        Raises:
            UserError: a non-positive size, a vocabulary smaller than the byte alphabet plus
                the special tokens, or a dropout outside [0, 1).
        """
        for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                      "num_key_value_heads", "max_position_embeddings", "num_experts_per_tok"):
            value = getattr(self, field, None)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise UserError(f"model.{field}: must be an integer ≥ 1, got {value!r}")
        from minigpt.tokenizer.special import SPECIAL_TOKENS

        minimum = 256 + len(SPECIAL_TOKENS)
        if self.vocab_size is not None and self.vocab_size < minimum:
            raise UserError(
                f"model.vocab_size: must be ≥ {minimum} (256 byte tokens + {len(SPECIAL_TOKENS)} special tokens), got {self.vocab_size}"
            )
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise UserError(f"model.dropout: must be in [0, 1), got {self.dropout!r}")
        if self.rope_theta is not None and not self.rope_theta > 0:
            raise UserError(f"model.rope_theta: must be > 0, got {self.rope_theta!r}")
        if self.sliding_window is not None and (isinstance(self.sliding_window, bool) or self.sliding_window < 1):
            raise UserError(f"model.sliding_window: must be an integer ≥ 1, got {self.sliding_window!r}")
        if self.rope_scaling is not None:
            from minigpt.model.modeling import ROPE_SCALING_TYPES

            kind = self.rope_scaling.get("rope_type", self.rope_scaling.get("type"))
            if kind not in ROPE_SCALING_TYPES:
                raise UserError(f"model.rope_scaling: rope_type must be one of {', '.join(ROPE_SCALING_TYPES)}, got {kind!r}")
        if self.num_local_experts is not None and (isinstance(self.num_local_experts, bool) or self.num_local_experts < 0):
            raise UserError(f"model.num_local_experts: must be an integer ≥ 0 (0 = dense), got {self.num_local_experts!r}")
        if self.num_local_experts and (self.num_experts_per_tok or 2) > self.num_local_experts:
            raise UserError(
                f"model.num_experts_per_tok: must be ≤ model.num_local_experts ({self.num_local_experts}), got {self.num_experts_per_tok or 2}"
            )
        for field in ("router_aux_loss_coef", "router_z_loss_coef"):
            value = getattr(self, field)
            if value is not None and not value >= 0:
                raise UserError(f"model.{field}: must be ≥ 0, got {value!r}")

    def build_config(self, vocab_size: int, special_ids: dict[str, int | None]):
        """The `MiniGPTConfig` this describes, for a tokenizer of `vocab_size` ids."""
        from minigpt.model import MiniGPTConfig

        overrides = {k: v for k, v in dataclasses.asdict(self).items() if v is not None and k not in ("preset", "init_from")}
        overrides["vocab_size"] = vocab_size
        overrides.update({k: v for k, v in special_ids.items()})
        return MiniGPTConfig.from_preset(self.preset, **overrides)


def default_cache_dir() -> Path:
    """Where tokenized corpora are cached: $MINIGPT_CACHE or ~/.cache/minigpt."""
    import os

    return Path(os.environ.get("MINIGPT_CACHE", Path.home() / ".cache" / "minigpt"))


def prepare_tokenizer(
    sources: list[str],
    tokenizer: str | None,
    vocab_size: int,
    text_field: str,
    out: Path,
    max_chars: int | None,
    holdout_fraction: float = 0.0,
    mask_token: bool = False,
):
    """Load `tokenizer`, or train a byte-level BPE of `vocab_size` on the start of `sources`
    (with `<|mask|>` at id 8 when `mask_token`, for an encoder).

    It reads at most `max_chars` characters and never the last `holdout_fraction` of the text
    (with a 2 % margin): the validation split is cut from the end of the token stream, and a
    tokenizer that had seen it would make the validation bits per byte look better than they are.
    """
    from minigpt.tokenizer import load_tokenizer, train_tokenizer

    if tokenizer:
        return load_tokenizer(tokenizer)
    budget = max_chars
    if holdout_fraction > 0:
        # Count characters, stopping once the training part alone would exceed max_chars.
        stop = None if max_chars is None else max_chars / (1 - holdout_fraction)
        total = 0
        for doc in iter_corpus(sources, text_field):
            total += len(doc)
            if stop is not None and total > stop:
                break
        else:
            keep = int(total * (1 - holdout_fraction) * 0.98)
            budget = keep if budget is None else min(budget, keep)
    seen = [0]

    def texts():
        remaining = budget
        for doc in iter_corpus(sources, text_field):
            seen[0] += 1
            if remaining is not None:
                if remaining <= 0:
                    return
                doc = doc[:remaining]
                remaining -= len(doc)
            yield doc

    t0 = time.time()
    try:
        tok = train_tokenizer(texts(), vocab_size=vocab_size, out_dir=out / "tokenizer", mask_token=mask_token)
    except UserError:
        if seen[0] == 0:
            raise UserError(f"empty corpus: no text in {', '.join(sources)}") from None
        raise
    print(f"trained a {len(tok)}-token byte-level BPE tokenizer in {time.time() - t0:.1f} s -> {out / 'tokenizer'}")
    return tok


def resolve_sources(data: list[str]) -> list[str]:
    """`data`, or (when empty) the embedded CPython docs written once as a shuffled JSONL file,
    shuffled so the held-out tail is a random sample of documents, not the last modules."""
    if data:
        return list(data)
    import sys

    from minigpt.data.corpus import write_python_docs_corpus

    corpus_file = default_cache_dir() / f"python{sys.version_info[0]}.{sys.version_info[1]}_docs_shuffled.jsonl"
    if not corpus_file.exists():
        write_python_docs_corpus(corpus_file, shuffle_seed=0)
    return [str(corpus_file)]


def iter_corpus(sources: list[str], text_field: str):
    """Documents of every source, in order."""
    from minigpt.data.loaders import iter_documents

    for src in sources:
        yield from iter_documents(src, text_field=text_field)


def load_pretrain_data(sources: list[str], tokenizer, block_size: int, text_field: str, val_fraction: float, cache_dir: str | None):
    """Tokenize (cached) and split into packed blocks: returns `(train_dataset, val_dataset)`,
    the latter None when `val_fraction` is 0."""
    from minigpt.data.pretrain import PackedDataset, build_token_file, split_train_val

    cache = Path(cache_dir) if cache_dir else default_cache_dir() / "tokens"
    tf = build_token_file(sources, tokenizer, cache_dir=cache, text_field=text_field)
    train_tokens, val_tokens = split_train_val(tf, val_fraction=val_fraction, block_size=block_size)
    train = PackedDataset(train_tokens, block_size)
    val = PackedDataset(val_tokens, block_size) if val_fraction > 0 else None
    return train, val


def prepare_corpus(
    data: list[str],
    tokenizer: str | None,
    vocab_size: int,
    text_field: str,
    out_dir: Path,
    tokenizer_max_chars: int | None,
    val_fraction: float,
    block_size: int,
    cache_dir: str | None,
    rank: int,
    mask_token: bool = False,
):
    """`(tokenizer, train_blocks, val_blocks)` for a pretraining-style run on `data`
    (`resolve_sources`, `prepare_tokenizer`, then `load_pretrain_data`). Under torchrun rank 0
    writes the default corpus, trains the tokenizer and fills the token cache first; the other
    ranks then read them."""
    from minigpt.tokenizer import load_tokenizer
    from minigpt.train.distributed import barrier

    if rank == 0:
        sources = resolve_sources(data)
        tok = prepare_tokenizer(sources, tokenizer, vocab_size, text_field, out_dir, tokenizer_max_chars, val_fraction, mask_token=mask_token)
        train_ds, val_ds = load_pretrain_data(sources, tok, block_size, text_field, val_fraction, cache_dir)
    barrier()
    if rank != 0:
        sources = resolve_sources(data)
        tok = load_tokenizer(tokenizer or out_dir / "tokenizer")
        train_ds, val_ds = load_pretrain_data(sources, tok, block_size, text_field, val_fraction, cache_dir)
    return tok, train_ds, val_ds


#: `--model.*` fields that may change a saved model (`--model.init_from`): context, RoPE and
#: the attention window. Anything else would change its shapes or modules.
SAVED_MODEL_OVERRIDES = ("max_position_embeddings", "rope_scaling", "rope_theta", "sliding_window")


def apply_overrides_to_saved(net, model: ModelConfig) -> None:
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


def build_model(model: ModelConfig, model_class, tok, tokenizer_dir: str | Path, block_size: int):
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


def pretrain(
    data: str | list[str] | None = None,
    out: str = "runs/pretrain",
    model: ModelConfig = ModelConfig(),
    tokenizer: str | None = None,
    block_size: int = 256,
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
    from minigpt.model import MiniGPTForCausalLM, count_active_parameters, count_parameters
    from minigpt.objectives.lm import CausalLMObjective
    from minigpt.tokenizer import token_byte_lengths
    from minigpt.train.loop import Trainer, seed_everything

    from minigpt.train.distributed import init_distributed, pick_device

    train = apply_shorthands(train, epochs, batch_size)
    check_options(ewc_lambda=(ewc_lambda, ewc_lambda >= 0, "≥ 0 (0 = no EWC)"),
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
        data, tokenizer, model.vocab_size or 6400, text_field, out_dir, tokenizer_max_chars, val_fraction, block_size, cache_dir, rank
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
