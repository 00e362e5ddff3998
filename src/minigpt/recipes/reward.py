"""Reward-model recipes: `minigpt reward` trains one on preference pairs through the one training
loop; `minigpt score` scores prompt/response records (or preference pairs) with a trained one.

A reward model starts from a (supervised fine-tuned) model directory: its decoder is copied and
a fresh MLP score head reads the pooled hidden state (`minigpt.model.reward_model`). Training
minimises the Bradley–Terry loss `−log σ(r_chosen − r_rejected − margin)` (Bradley & Terry 1952; Ouyang et al. 2022, eq. 1; the
margin as in Llama 2, Touvron et al. 2023) per pair;
evaluation reports `val_accuracy`, the held-out pairwise accuracy. OUT ends up a directory that
`MiniGPTRewardModel.from_pretrained(OUT)` (or `load_reward_model(OUT)`, with the tokenizer)
loads.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from minigpt.errors import UserError
from minigpt.recipes.common import apply_shorthands, fit_from_start, load_preference_data, refuse_existing_run
from minigpt.objectives.config import REWARD_TRAIN_DEFAULTS
from minigpt.train.config import TrainConfig



def reward(
    model: str,
    data: str | list[str] | None = None,
    out: str = "runs/reward",
    max_length: int = 512,
    max_prompt_length: int | None = None,
    val_fraction: float = 0.1,
    max_val: int | None = 500,
    head_hidden_size: int = 768,
    head_num_layers: int = 2,
    pooling: str = "last",
    freeze_backbone: bool = False,
    head_dropout: float = 0.0,
    margin: float = 0.0,
    center_rewards_coef: float = 0.0,
    train: TrainConfig = REWARD_TRAIN_DEFAULTS,
    resume: bool = False,
    overwrite: bool = False,
    epochs: float | None = None,
    batch_size: int | None = None,
    save_dir: str | None = None,
) -> dict[str, Any]:
    """Train a reward model on preference pairs with the Bradley–Terry loss.

    Args:
        model: the starting model directory (an SFT model, with its tokenizer); its decoder is
            copied and a new score head added. A reward-model directory continues training
            that model, head included (the head options are then ignored).
        data: JSONL / JSON / parquet files of `{"prompt", "chosen", "rejected"}` records
            (strings or message lists) or HH-RLHF `{"chosen", "rejected"}` transcripts.
        out: run directory; ends up holding the reward model, its tokenizer, checkpoints and
            metrics.
        max_length: tokens of prompt + reply; longer pairs lose prompt tokens from the left,
            then reply tokens from the right.
        max_prompt_length: the fewest prompt tokens left-truncation keeps (default half of
            max_length).
        val_fraction: share of pairs held out to measure pairwise accuracy.
        max_val: at most this many held-out pairs.
        head_hidden_size: width of the score head's hidden layers.
        head_num_layers: linear layers in the score head (1 = a single linear map).
        pooling: which hidden state the head reads: last (the last real token), mean or max.
        freeze_backbone: train only the score head; the decoder stays as in MODEL.
        head_dropout: dropout on the input of each head layer.
        margin: Bradley–Terry margin m in −log σ(r_chosen − r_rejected − m).
        center_rewards_coef: weight c of the reward-centring term c·(r_chosen + r_rejected)².
        train: optimisation settings (lr, steps, batch_size in pairs, …).
        resume: continue from the newest checkpoint in `out`.
        overwrite: discard a run already in `out`.
        epochs: shorthand for `--train.epochs`.
        batch_size: shorthand for `--train.batch_size` (pairs per micro-batch).
        save_dir: shorthand for `--out`.

    Returns the final training and validation metrics (`val_loss` is the mean Bradley–Terry
    loss per held-out pair, `val_accuracy` the share ranked correctly, `val_reward_margin` the
    mean r_chosen − r_rejected) plus `val_loss_before` / `val_accuracy_before` of the starting
    model.

    Raises:
        UserError: bad paths or data, bad head settings, max_length beyond the model's context,
            an OUT that already holds a run.
    """
    from minigpt.model.loading import is_reward_model_dir, load_reward_model

    from functools import partial

    from minigpt.data.preference import collate_preference
    from minigpt.model import count_parameters
    from minigpt.model.reward_model import MiniGPTRewardModel
    from minigpt.objectives.reward_model import RewardObjective
    from minigpt.model.loading import load_base_model
    from minigpt.model.reward_model import create_reward_model
    from minigpt.train.distributed import init_distributed, pick_device
    from minigpt.train.loop import Trainer, seed_everything

    train = apply_shorthands(train, epochs, batch_size)
    data = [data] if isinstance(data, str) else list(data or [])
    out_dir = Path(save_dir or out)
    rank, _, _ = init_distributed(pick_device(train.device))
    say = print if rank == 0 else (lambda *a, **k: None)
    refuse_existing_run(out_dir, resume, overwrite, inputs={"model": model, "data": data})
    if center_rewards_coef < 0:
        raise UserError(f"--center_rewards_coef must be >= 0, got {center_rewards_coef}")
    seed_everything(train.seed)
    if is_reward_model_dir(model):
        net, tok = load_reward_model(model)
        net.train()
        if freeze_backbone:
            net.freeze_backbone()
        say(f"continuing reward model {model} (head: {net.config.reward_head_num_layers} layers, {net.config.reward_pooling} pooling)")
    else:
        lm, tok = load_base_model(model)
        net = create_reward_model(
            lm,
            hidden_size=head_hidden_size,
            num_layers=head_num_layers,
            use_pooling=pooling,
            freeze_backbone=freeze_backbone,
            dropout=head_dropout,
        )
        del lm
    assert isinstance(net, MiniGPTRewardModel)
    if max_length > net.config.max_position_embeddings:
        raise UserError(f"max_length {max_length} exceeds the model's context (max_position_embeddings={net.config.max_position_embeddings})")
    train_ds, val_ds = load_preference_data(data, tok, max_length, max_prompt_length, val_fraction, max_val, train.seed, say)
    objective = RewardObjective(margin=margin, center_rewards_coef=center_rewards_coef)
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    say(
        f"reward model: {count_parameters(net) / 1e6:.2f} M parameters, {trainable / 1e6:.3f} M trainable "
        f"({'head only' if freeze_backbone else 'full'}); head {net.config.reward_head_num_layers} layers x "
        f"{net.config.reward_head_hidden_size}, {net.config.reward_pooling} pooling"
    )
    run_info = {
        "stage": "reward",
        "model": str(Path(model).resolve()),
        "data": data,
        "max_length": max_length,
        "max_prompt_length": max_prompt_length,
        "val_fraction": val_fraction,
        "max_val": max_val,
        "head": {  # as built (a reward-model MODEL keeps its own head)
            "hidden_size": net.config.reward_head_hidden_size,
            "num_layers": net.config.reward_head_num_layers,
            "pooling": net.config.reward_pooling,
            "dropout": net.config.reward_head_dropout,
        },
        "freeze_backbone": freeze_backbone,
        "margin": margin,
        "center_rewards_coef": center_rewards_coef,
        "train": dataclasses.asdict(train),
    }
    collate = partial(collate_preference, pad_id=tok.pad_token_id)
    trainer = Trainer(net, objective, train_ds, train, out_dir, val_dataset=val_ds, collate_fn=collate, save_with_model=tok, run_info=run_info)
    metrics = fit_from_start(
        trainer, resume, overwrite, say,
        lambda m: f"pairwise accuracy {m['val_accuracy']:.4f}, mean reward margin {m['val_reward_margin']:.4f} (Bradley–Terry loss {m['val_loss']:.4f})",
    )
    say(f"reward model saved to {out_dir}; score with it: minigpt score --model {out_dir} --data FILE")
    return metrics


# ----------------------------------------------------------------------------------- scoring


def _score_record(record: Any, where: str) -> tuple[list[dict], str]:
    """`(prompt messages, response)` of a `{"prompt", "response"}` record (`completion` is
    accepted for `response`). A string prompt is one user message; a list is used as
    role/content messages (checked when rendered).

    Raises:
        UserError: not an object, a field of the wrong type, a response holding a control token.
        SkipRecord: kind "missing_field" or "empty_response".
    """
    from minigpt.tokenizer import IM_END, IM_START, SkipRecord

    if not isinstance(record, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(record).__name__}")
    key = "response" if "response" in record else "completion"
    prompt, response = record.get("prompt"), record.get(key)
    if prompt is None:
        raise SkipRecord(f"{where}: missing field 'prompt'", kind="missing_field")
    if response is None:
        raise SkipRecord(f"{where}: missing field 'response'", kind="missing_field")
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list):
        messages = prompt
    else:
        raise UserError(f"{where}: field 'prompt' must be a string or a message list, got {type(prompt).__name__}")
    if not isinstance(response, str):
        raise UserError(f"{where}: field {key!r} must be a string, got {type(response).__name__}")
    for token in (IM_START, IM_END):
        if token in response:
            raise UserError(f"{where}: field {key!r} contains the control token {token!r}")
    if not response.strip():
        raise SkipRecord(f"{where}: field {key!r} is empty", kind="empty_response")
    return messages, response


def _fit(prompt: list[int], reply: list[int], max_length: int) -> tuple[list[int], bool]:
    """`prompt + reply` cut to `max_length` as the preference data is: the prompt loses tokens
    on the left (keeping at least half of max_length), then the reply on the right."""
    if len(prompt) + len(reply) <= max_length:
        return prompt + reply, False
    keep = min(len(prompt), max(max_length // 2, max_length - len(reply)))
    prompt = prompt[len(prompt) - keep :]
    return prompt + reply[: max_length - len(prompt)], True


def _peek_is_pairs(source: str) -> bool:
    """Whether the first record of `source` is a preference pair (has chosen or rejected)."""
    from minigpt.data.loaders import iter_records

    for _, record in iter_records(source):
        return isinstance(record, dict) and ("chosen" in record or "rejected" in record)
    return False


def score(
    model: str,
    data: str | list[str] | None = None,
    prompt: str | None = None,
    response: str | None = None,
    out: str | None = None,
    batch_size: int = 16,
    max_length: int | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Score responses with a trained reward model.

    Each record is rendered as the reward model was trained: the prompt through the chat
    template up to `<|im_start|>assistant\\n`, then the response and `<|im_end|>`.

    Args:
        model: a reward-model directory written by `minigpt reward`.
        data: JSONL / JSON / parquet files of `{"prompt", "response"}` records (prompt: a string
            or a message list; `completion` is accepted for `response`), or of preference pairs
            (`{"prompt", "chosen", "rejected"}` / HH-RLHF), detected from each file's first
            record; pairs also give the pairwise accuracy.
        prompt: score one prompt (a user message) ...
        response: ... with this response, instead of `data`.
        out: write the JSON lines to this file (default: print them).
        batch_size: sequences per forward pass.
        max_length: tokens per sequence (prompt cut from the left, then the response);
            default the model's context (max_position_embeddings).
        device: auto (CUDA, then MPS, then CPU), cpu, cuda, mps.

    Writes one JSON line per scored record: `{"where", "prompt", "response", "reward"}` for a
    response, `{"where", "chosen_reward", "rejected_reward", "correct"}` for a pair
    (correct = chosen scored strictly higher).

    Returns `num_scored`, `mean_reward` (over every scored response, both sides of pairs),
    `skipped` (counts per kind), `pairs` and `accuracy` when pairs were scored, and `records`
    (the lines written, as dicts).

    Raises:
        UserError: not a reward-model directory; neither `data` nor `prompt` + `response`;
            a malformed record (naming file:line); no usable record.
    """
    from minigpt.model.loading import load_reward_model

    import torch

    from minigpt.data.loaders import iter_records
    from minigpt.data.preference import PreferenceDataset, pad_rows
    from minigpt.tokenizer import IM_END, SkipRecord, render_prompt

    if (prompt is None) != (response is None):
        raise UserError("--prompt and --response go together")
    if prompt is None and not data:
        raise UserError("give --data FILE (prompt/response records or preference pairs), or --prompt and --response")
    if prompt is not None and data:
        raise UserError("give either --data or --prompt/--response, not both")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"--batch_size: must be an integer ≥ 1, got {batch_size!r}")
    if out is not None:
        from minigpt.errors import check_output_file

        check_output_file(out, "--out", {"model": model, "data": data})
    net, tok = load_reward_model(model, device=device)
    if max_length is None:
        max_length = net.config.max_position_embeddings
    if max_length < 2:
        raise UserError(f"--max_length must be >= 2, got {max_length}")
    if max_length > net.config.max_position_embeddings:
        raise UserError(f"max_length {max_length} exceeds the model's context (max_position_embeddings={net.config.max_position_embeddings})")

    # Every sequence to score: (ids, record index, slot) with slot "reward" / "chosen" / "rejected".
    records: list[dict[str, Any]] = []
    seqs: list[tuple[list[int], int, str]] = []
    skipped: dict[str, int] = {}
    truncated = 0

    def add_response(where: str, messages: list[dict], text: str, shown_prompt: Any) -> None:
        nonlocal truncated
        reply = list(tok(text + IM_END, add_special_tokens=False)["input_ids"])
        ids, cut = _fit(render_prompt(tok, messages, where), reply, max_length)
        truncated += int(cut)
        seqs.append((ids, len(records), "reward"))
        records.append({"where": where, "prompt": shown_prompt, "response": text})

    if prompt is not None:
        add_response("--prompt", [{"role": "user", "content": prompt}], response, prompt)
    for source in [data] if isinstance(data, str) else list(data or []):
        if _peek_is_pairs(source):
            ds = PreferenceDataset(source, tok, max_length=max_length)
            print(f"{source}: {ds.summary()}", file=sys.stderr)
            for kind in ("missing_field", "identical", "empty_response", "prompt_mismatch"):
                if ds.stats[f"skipped_{kind}"]:
                    skipped[kind] = skipped.get(kind, 0) + ds.stats[f"skipped_{kind}"]
            for ex in ds.examples:
                seqs.append((ex.prompt_ids + ex.chosen_ids, len(records), "chosen"))
                seqs.append((ex.prompt_ids + ex.rejected_ids, len(records), "rejected"))
                records.append({"where": ex.where})
            continue
        for where, record in iter_records(source):
            try:
                messages, text = _score_record(record, where)
            except SkipRecord as skip:
                skipped[skip.kind] = skipped.get(skip.kind, 0) + 1
                continue
            add_response(where, messages, text, record["prompt"])
    if not seqs:
        raise UserError(f"no usable record to score in {data} (skipped: {skipped or 'none'})")

    pad = tok.pad_token_id
    dev = net.device
    with torch.no_grad():
        for start in range(0, len(seqs), batch_size):
            chunk = seqs[start : start + batch_size]
            batch = pad_rows([torch.tensor(row) for row, _, _ in chunk], [1] * len(chunk), pad)
            rewards = net(input_ids=batch["input_ids"].to(dev), attention_mask=batch["attention_mask"].to(dev)).rewards.tolist()
            for (_, r, slot), value in zip(chunk, rewards):
                records[r]["reward" if slot == "reward" else f"{slot}_reward"] = value

    all_rewards, pairs, correct = [], 0, 0
    for rec in records:
        if "chosen_reward" in rec:
            rec["correct"] = rec["chosen_reward"] > rec["rejected_reward"]
            pairs += 1
            correct += rec["correct"]
            all_rewards += [rec["chosen_reward"], rec["rejected_reward"]]
        else:
            all_rewards.append(rec["reward"])
    lines = "".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(lines, encoding="utf-8")
    else:
        sys.stdout.write(lines)
    result: dict[str, Any] = {
        "num_scored": len(records),
        "mean_reward": sum(all_rewards) / len(all_rewards),
        "skipped": skipped,
        "records": records,
    }
    summary = f"scored {len(records)} record(s); mean reward {result['mean_reward']:.4f}"
    if pairs:
        result["pairs"] = pairs
        result["accuracy"] = correct / pairs
        summary += f"; pairwise accuracy {correct}/{pairs} = {result['accuracy']:.4f} (ties count as wrong)"
    if skipped:
        summary += "; skipped " + ", ".join(f"{n} {kind}" for kind, n in sorted(skipped.items()))
    if truncated:
        summary += f"; {truncated} truncated to {max_length} tokens"
    # The JSON lines own stdout when printed; the summary then goes to stderr so the output pipes cleanly.
    print(summary + (f"; written to {out}" if out else ""), file=sys.stdout if out else sys.stderr)
    return result
