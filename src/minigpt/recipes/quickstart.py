"""`minigpt quickstart`: the whole path on embedded data that needs no download.

CPython's own documentation (pydoc topics plus the standard library's docstrings, read from
source with `ast`) plus arithmetic worked as text -> a byte-level BPE tokenizer (digits split) ->
a pretrained `tiny` model -> supervised fine-tuning on conversations generated from that
documentation plus arithmetic problems worked in `<think>` steps -> a short second SFT stage
that makes the bare answer the default, as in hybrid-thinking chat models -> a short GRPO stage
rewarded by the answer check, which learns when working pays -> a scripted chat. Every stage
runs a fixed number of steps, so the figures depend on the seed, not on the machine's speed; the
counts are sized for about 10 minutes on 2 CPU cores.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from minigpt.model.options import ModelConfig
from minigpt.objectives.config import GRPOConfig
from minigpt.recipes.pretrain import pretrain
from minigpt.train.config import TrainConfig

SAMPLE_PROMPTS = ["Return the", "The with statement", "class Queue"]
CHAT_SCRIPT = [
    "What does `json.dumps` do?",
    "Explain the `with` statement.",
    "What is 47 + 38?",
    "What is 312 - 57?",
]


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def _bare(conversations: list[dict]) -> int:
    """How many conversations are answered without working (an empty think block)."""
    return sum("<think></think>" in c["messages"][-1]["content"] for c in conversations)


def _fixed(steps: int, cap_minutes: float, batch_size: int, lr: float, device: str, seed: int, **settings) -> TrainConfig:
    """A stage's `TrainConfig`: a fixed step count, so the result does not depend on the
    machine's speed, with `cap_minutes` of wall clock only as a safety cap (the loop warns if it
    bites), keeping one checkpoint."""
    return TrainConfig(
        max_steps=steps, max_time=cap_minutes * 60 if cap_minutes else None, batch_size=batch_size, lr=lr,
        keep_last=1, device=device, seed=seed, **settings,
    )


def arithmetic_accuracy(model, tok, problems: list[dict], max_new_tokens: int = 64, dtype: str = "auto") -> float:
    """Share of `{"prompt", "answer"}` problems whose greedy reply has the right `<answer>`.

    The prompts are rendered as one user turn through the chat template and decoded in one
    left-padded batch on the fast engine, stopping at `<|im_end|>`.
    """
    from minigpt.rewards.answers import check_answer
    from minigpt.inference.loading import ENGINE_DTYPES
    from minigpt.inference import GenerationEngine
    from minigpt.tokenizer.chat import chat_eos_ids
    from minigpt.tokenizer import render_prompt

    from minigpt.train.distributed import pick_precision

    dtype = pick_precision("auto", model.device) if dtype == "auto" else dtype
    engine = GenerationEngine(model, eos_token_id=chat_eos_ids(tok), pad_token_id=tok.pad_token_id, dtype=ENGINE_DTYPES[dtype])
    prompts = [render_prompt(tok, [{"role": "user", "content": p["prompt"]}]) for p in problems]
    correct = 0
    for s in range(0, len(prompts), 64):
        out = engine.generate(prompts[s : s + 64], max_new_tokens=max_new_tokens, temperature=0.0)
        for row, mask, prob in zip(out.completion_ids, out.completion_mask, problems[s : s + 64]):
            text = tok.decode(row[mask.bool()].tolist(), skip_special_tokens=False)
            correct += bool(check_answer(text, prob["answer"]))
    return correct / max(len(problems), 1)


def quickstart(
    out: str = "runs/quickstart",
    preset: str = "tiny",
    pretrain_steps: int = 300,
    sft_steps: int = 1000,
    hybrid_steps: int = 100,
    grpo_steps: int = 60,
    cap_minutes: float = 30.0,
    vocab_size: int = 2048,
    block_size: int = 256,
    batch_size: int = 8,
    lr: float = 3e-3,
    pretrain_optimizer: str = "muon",
    pretrain_schedule: str = "wsd",
    pretrain_packing: str = "stream",
    sft_lr: float = 2e-3,
    hybrid_lr: float = 5e-4,
    grpo_lr: float = 5e-5,
    grpo_prompts: int = 8,
    group_size: int = 8,
    num_pretrain_arithmetic: int = 12000,
    num_docs_conversations: int = 1000,
    num_arithmetic: int = 16000,
    arithmetic_digits: int = 2,
    direct_share: float = 0.5,
    num_hybrid_arithmetic: int = 4000,
    num_hybrid_docs: int = 250,
    hybrid_direct_share: float = 0.75,
    reasoning_tag_weight: float = 1.0,
    num_heldout: int = 200,
    num_docs_heldout: int = 100,
    device: str = "auto",
    seed: int = 1337,
) -> dict:
    """Tokenizer -> pretraining (docs + worked arithmetic) -> SFT (docs Q&A + arithmetic with
    `<think>`) -> hybrid SFT (bare answers by default) -> GRPO on the arithmetic task (reward:
    the answer check) -> scripted chat -> a report card (OUT/report.md and OUT/report.html, as
    `minigpt report OUT` writes them; the headline figures also go to OUT/quickstart.json).

    The GRPO stage starts from a hybrid-thinking model, as Qwen3 is one: it can answer bare
    (`<think></think><answer>N</answer>`) or work the steps first, and the short second SFT
    stage makes the bare answer its default (the first SFT stage teaches the working; bare
    answers in that stage's data beyond about half spoil the working itself, measured on a
    2-core CPU). Greedy decoding then mostly answers bare, and samples sometimes work the
    steps; rewarded only for the right answer, GRPO learns that working pays, as DeepSeek-R1's
    RL stage learned to think longer (DeepSeek-AI, 2025, arXiv:2501.12948). The reply length
    before and after GRPO shows the switch.

    Args:
        out: run directory (replaced if it exists): `pretrain/` (base model), `data/` (the
            pretraining corpus and the generated SFT sets as JSONL), `sft/` (first SFT
            stage), `hybrid/` (second SFT stage), `grpo/` (the final chat model).
        preset: model size (tiny fits the 10-minute CPU budget).
        pretrain_steps: optimizer steps of pretraining (`batch_size` blocks of `block_size`
            tokens each).
        sft_steps: optimizer steps of SFT (`batch_size` packed blocks each).
        hybrid_steps: optimizer steps of the second SFT stage (0 skips it; GRPO then starts
            from `sft/`).
        grpo_steps: optimizer steps of GRPO (`grpo_prompts` problems × `group_size` samples
            each; 0 skips the stage).
        cap_minutes: wall-clock safety cap per stage; it stops a stage early (with a warning)
            only on a machine far slower than the 2-core CPUs the step counts were sized for.
            0 disables it.
        vocab_size: tokenizer vocabulary (2048 suits the 1 M-parameter `tiny`: at 6400 the
            tied embedding is half the model and the LM head half the compute).
        block_size: tokens per pretraining sequence and per packed SFT block.
        batch_size: sequences per step, pretraining and SFT (at a fixed token budget, 8 blocks
            per step learned the arithmetic faster than 16 on this model).
        lr: peak pretraining learning rate.
        pretrain_optimizer: `muon` (Muon on the block matrices, AdamW on the rest;
            `--train.optimizer` of `minigpt pretrain`) or `adamw`. Measured on a 2-core CPU
            (seed 1337): with AdamW and a cosine schedule the base model ends at 2.279 bits
            per byte and the chat model at 42.5 % arithmetic after GRPO; with Muon + WSD at
            1.921 and 71.5 %.
        pretrain_schedule: `wsd` (warmup-stable-decay) or `cosine`, as `--train.schedule`.
        pretrain_packing: `stream` or `documents` (every pretraining block starts at a
            document start), as `minigpt pretrain --packing`.
        sft_lr: peak SFT learning rate.
        hybrid_lr: peak learning rate of the second SFT stage.
        grpo_lr: GRPO learning rate (constant).
        grpo_prompts: arithmetic prompts per GRPO step.
        group_size: completions sampled per prompt (GRPO's G).
        num_pretrain_arithmetic: arithmetic problems worked as plain text (no chat template)
            and shuffled into the documentation for pretraining (0: documentation only).
        num_docs_conversations: documentation Q&A conversations generated for SFT.
        num_arithmetic: arithmetic conversations (with `<think>` steps) generated for SFT.
        arithmetic_digits: operands have 1 to this many digits (SFT, RL and held-out problems).
        direct_share: share of the first SFT stage's arithmetic answers given without
            working (`<think></think><answer>N</answer>`, a non-thinking reply). Measured on a
            2-core CPU at these step counts: the more bare answers, the worse the worked ones
            get (forced to work the steps, held-out accuracy was 35.5 % at 0.5 but 6.5 % at
            0.6 and 11.5 % at 0.7).
        num_hybrid_arithmetic: arithmetic conversations of the second SFT stage (fresh
            problems, never held-out ones).
        num_hybrid_docs: documentation conversations mixed into the second SFT stage (taken
            from the first stage's), so the chat keeps its documentation answers.
        hybrid_direct_share: share of the second stage's arithmetic answered bare ("step by
            step" questions are always worked).
        reasoning_tag_weight: SFT loss weight of the four reasoning tags.
        num_heldout: held-out arithmetic problems for the accuracy figure.
        num_docs_heldout: held-out documentation questions (documents no SFT conversation
            asks about) for the documentation Q&A figures: ROUGE-L of the greedy reply against
            the reference answer and the share of replies that describe the asked name
            (`minigpt.evaluation.docs_qa`); the replies go to OUT/docs_qa_replies.jsonl. 0 skips
            them.
        device: auto, cpu, cuda or mps.
        seed: random seed.

    Returns the first SFT stage's metrics plus `pretrain_val_bpb`, `sft_accuracy` (held-out
    greedy accuracy after the first SFT stage; None when the hybrid stage is skipped),
    `arithmetic_accuracy` (the model GRPO starts from), `grpo_accuracy` (after GRPO),
    `reply_tokens` (mean held-out greedy reply length before and after GRPO), `docs_rouge_l`
    and `docs_name_match` (held-out documentation Q&A of the final model; None when skipped)
    and `wall_seconds`.
    """
    from minigpt.data.corpus import python_docs_corpus
    from minigpt.data.arithmetic import arithmetic_conversations, arithmetic_worksheets, make_arithmetic_prompts
    from minigpt.data.docs_qa import docs_conversations
    from minigpt.inference.loading import load_model_and_tokenizer
    from minigpt.recipes.generate import sample_texts
    from minigpt.recipes.sft import sft

    from minigpt.train.distributed import pick_device, pick_precision

    from minigpt.errors import UserError, check_seed

    check_seed(seed)
    if seed < 0 or seed > 2**63 - 4:
        raise UserError(f"--seed: must be in [0, 2**63 - 4] (stages use seed + 1 .. seed + 3), got {seed}")
    t0 = time.time()
    root = Path(out)
    precision = pick_precision("auto", pick_device(device))
    print(
        f"quickstart: seed {seed}; fixed steps: pretraining {pretrain_steps} × {batch_size} blocks of {block_size} tokens, "
        f"SFT {sft_steps} × {batch_size} packed blocks, hybrid SFT {hybrid_steps} × {batch_size}, GRPO {grpo_steps} × {grpo_prompts} problems × {group_size} samples; "
        f"precision {precision} (auto); reproduce with: minigpt quickstart --seed {seed} --pretrain_steps {pretrain_steps} "
        f"--sft_steps {sft_steps} --hybrid_steps {hybrid_steps} --grpo_steps {grpo_steps}"
        f" --pretrain_optimizer {pretrain_optimizer} --pretrain_schedule {pretrain_schedule} --pretrain_packing {pretrain_packing}"
    )
    docs = python_docs_corpus()
    chars = sum(len(d) for d in docs)
    digits = (1, arithmetic_digits)
    heldout = make_arithmetic_prompts(num_heldout, seed=seed + 1, digits=digits)
    # Worked problems as plain text, shuffled into the documentation (never a held-out problem).
    sheets = arithmetic_worksheets(num_pretrain_arithmetic, seed=seed + 3, digits=digits, exclude=heldout) if num_pretrain_arithmetic else []
    corpus = [{"text": t} for t in docs + sheets]
    random.Random(seed).shuffle(corpus)
    _write_jsonl(root / "data" / "pretrain_corpus.jsonl", corpus)
    print(
        f"[1/7] corpus: {len(docs)} documents, {chars / 1e6:.2f} M characters of CPython documentation + "
        f"{num_pretrain_arithmetic} arithmetic problems worked as text ({sum(map(len, sheets)) / 1e6:.2f} M characters)"
    )
    print("[2/7] tokenizer + pretraining")
    pre = pretrain(
        data=str(root / "data" / "pretrain_corpus.jsonl"),
        out=str(root / "pretrain"),
        model=ModelConfig(preset=preset, vocab_size=vocab_size),
        block_size=block_size,
        packing=pretrain_packing,
        train=_fixed(pretrain_steps, cap_minutes, batch_size, lr, device, seed, optimizer=pretrain_optimizer, schedule=pretrain_schedule, warmup_steps=50, weight_decay=0.1, eval_interval=pretrain_steps, eval_batches=20, save_interval=500),
        overwrite=True,
    )
    net, tok = load_model_and_tokenizer(root / "pretrain", device=device)
    for prompt, text in zip(SAMPLE_PROMPTS, sample_texts(net, tok, SAMPLE_PROMPTS, max_new_tokens=40, temperature=0.8, top_k=50, seed=seed)):
        print(f"--- {prompt!r}\n{prompt}{text}")

    print("[3/7] SFT data: documentation Q&A + arithmetic worked in <think> steps")
    conversations = docs_conversations(num_docs_conversations, seed=seed, docs=docs)
    arithmetic = arithmetic_conversations(
        num_arithmetic, seed=seed, digits=digits, exclude={p["prompt"] for p in heldout}, direct=direct_share
    )
    _write_jsonl(root / "data" / "docs_conversations.jsonl", conversations)
    _write_jsonl(root / "data" / "arithmetic_reasoning.jsonl", arithmetic)
    _write_jsonl(root / "data" / "arithmetic_heldout.jsonl", heldout)
    bare = _bare(arithmetic)
    print(
        f"      {len(conversations)} documentation conversations, {len(arithmetic)} arithmetic ones "
        f"({bare} answered without working) -> {root / 'data'}"
    )

    print(f"[4/7] supervised fine-tuning (loss on assistant tokens; reasoning tags weighted ×{reasoning_tag_weight:g})")

    def sft_stage(start: str, files: list[str], name: str, steps: int, stage_lr: float, warmup: int) -> dict:
        """One SFT stage from `start` on `root/data/<files>` into `root/<name>`."""
        return sft(
            model=str(root / start),
            data=[str(root / "data" / f) for f in files],
            out=str(root / name),
            max_length=block_size,
            val_fraction=0.02,
            max_val=100,
            reasoning_tag_weight=reasoning_tag_weight,
            train=_fixed(steps, cap_minutes, batch_size, stage_lr, device, seed, warmup_steps=warmup, weight_decay=0.0, eval_interval=0, eval_batches=0, save_interval=0),
            overwrite=True,
        )

    metrics = sft_stage("pretrain", ["docs_conversations.jsonl", "arithmetic_reasoning.jsonl"], "sft", sft_steps, sft_lr, 20)

    final = root / "sft"
    sft_accuracy = accuracy = grpo_accuracy = reply_tokens = None
    if hybrid_steps > 0:
        sft_model, sft_tok = load_model_and_tokenizer(final, device=device)
        sft_accuracy = arithmetic_accuracy(sft_model, sft_tok, heldout, max_new_tokens=96)
        del sft_model
        hybrid = arithmetic_conversations(
            num_hybrid_arithmetic, seed=seed + 4, digits=digits, exclude={p["prompt"] for p in heldout}, direct=hybrid_direct_share
        )
        hybrid_bare = _bare(hybrid)
        _write_jsonl(root / "data" / "hybrid_arithmetic.jsonl", hybrid)
        _write_jsonl(root / "data" / "hybrid_docs_conversations.jsonl", conversations[:num_hybrid_docs])
        print(
            f"[5/7] hybrid SFT: {len(hybrid)} arithmetic conversations ({hybrid_bare} answered bare) + "
            f"{min(num_hybrid_docs, len(conversations))} documentation ones, so the bare answer becomes the default "
            f"(held-out accuracy after the first SFT stage, greedy: {sft_accuracy:.1%})"
        )
        sft_stage("sft", ["hybrid_docs_conversations.jsonl", "hybrid_arithmetic.jsonl"], "hybrid", hybrid_steps, hybrid_lr, 10)
        final = root / "hybrid"
    if grpo_steps > 0:
        print(f"[6/7] GRPO on arithmetic: {group_size} samples per problem, reward 1 for the right <answer>")
        from minigpt.inference.options import SamplingOptions
        from minigpt.recipes.grpo import grpo

        # Fresh problems of the training split (the held-out ones excluded): RL prompts may
        # repeat SFT problems, never held-out ones.
        rl_prompts = make_arithmetic_prompts(3000, seed=seed + 2, digits=digits, split="train", exclude=heldout)
        _write_jsonl(root / "data" / "arithmetic_rl_prompts.jsonl", rl_prompts)
        rl = grpo(
            model=str(final),
            data=str(root / "data" / "arithmetic_rl_prompts.jsonl"),
            eval_data=str(root / "data" / "arithmetic_heldout.jsonl"),
            out=str(root / "grpo"),
            reward="answer",
            grpo=GRPOConfig(group_size=group_size),
            sampling=SamplingOptions(max_new_tokens=96, temperature=0.7),
            max_val=None,
            train=_fixed(
                grpo_steps, cap_minutes, grpo_prompts, grpo_lr, device, seed, min_lr_ratio=1.0, warmup_steps=0, weight_decay=0.0,
                beta2=0.99, eval_interval=0, save_interval=0, log_interval=1,
            ),
            overwrite=True,
        )
        accuracy, grpo_accuracy = rl["val_reward/answer_before"], rl["val_reward/answer"]
        reply_tokens = (rl["val_completion_length_before"], rl["val_completion_length"])
        final = root / "grpo"

    print("[7/7] chat (scripted; try it yourself with the command at the end)")

    chat_model, chat_tok = load_model_and_tokenizer(final, device=device)
    if accuracy is None:
        accuracy = arithmetic_accuracy(chat_model, chat_tok, heldout, max_new_tokens=96)
    from minigpt.evaluation.report import chat_samples

    docs_scores = None
    if num_docs_heldout:
        from minigpt.data.docs_qa import docs_questions
        from minigpt.evaluation.docs_qa import docs_qa_scores

        every = docs_questions(None, seed=seed, docs=docs)
        docs_heldout = every[num_docs_conversations : num_docs_conversations + num_docs_heldout]
        _write_jsonl(root / "data" / "docs_heldout.jsonl", docs_heldout)
        docs_scores = docs_qa_scores(chat_model, chat_tok, docs_heldout, every, max_new_tokens=128)
        _write_jsonl(root / "docs_qa_replies.jsonl", [{**q, "reply": r} for q, r in zip(docs_heldout, docs_scores.replies)])
        print(f"      documentation Q&A, {docs_scores.n} held-out questions (greedy): ROUGE-L {docs_scores.rouge_l:.3f}, "
              f"replies that describe the asked name {docs_scores.name_match:.1%}")
    transcript = chat_samples(chat_model, chat_tok, CHAT_SCRIPT, max_new_tokens=96)
    for sample in transcript:
        print(f"user: {sample.prompt}")
        if sample.thinking:
            print(f"  [thinking] {sample.thinking}")
        print(f"assistant: {sample.reply}\n")
    metrics["pretrain_val_bpb"] = pre.get("val_bpb", float("nan"))
    metrics["sft_accuracy"] = sft_accuracy
    metrics["arithmetic_accuracy"] = accuracy
    metrics["grpo_accuracy"] = grpo_accuracy
    metrics["reply_tokens"] = reply_tokens
    metrics["docs_rouge_l"] = docs_scores.rouge_l if docs_scores else None
    metrics["docs_name_match"] = docs_scores.name_match if docs_scores else None
    metrics["wall_seconds"] = time.time() - t0
    stages = f"{accuracy:.1%} after SFT" if sft_accuracy is None else (
        f"{sft_accuracy:.1%} after the first SFT stage, {accuracy:.1%} after the hybrid stage"
    )
    rl_part = "" if grpo_accuracy is None else (
        f" -> {grpo_accuracy:.1%} after GRPO ({100 * (grpo_accuracy - accuracy):+.1f} points; "
        f"mean reply {reply_tokens[0]:.0f} -> {reply_tokens[1]:.0f} tokens)"
    )
    print(
        f"quickstart finished in {metrics['wall_seconds']:.0f} s: pretraining val {metrics['pretrain_val_bpb']:.3f} bits per byte; "
        f"SFT held-out assistant-token loss {metrics.get('val_loss_before', float('nan')):.3f} -> {metrics.get('val_loss', float('nan')):.3f} nats; "
        f"held-out arithmetic accuracy (greedy, {num_heldout} problems) {stages}{rl_part}"
        + ("" if docs_scores is None else
           f"; documentation Q&A ({docs_scores.n} held-out questions): ROUGE-L {docs_scores.rouge_l:.3f}, name match {docs_scores.name_match:.1%}")
    )
    from minigpt.evaluation.report import write_report
    from minigpt.train.checkpoint import atomic_write_text

    atomic_write_text(root / "quickstart.json", json.dumps(metrics, indent=2, default=str) + "\n")
    report_md, report_html, _ = write_report(root, samples={final.name: transcript}, num_samples=len(CHAT_SCRIPT))
    print(f"report card: {report_md} ({report_html.name} beside it: open it in a browser)")
    print(f"next: minigpt chat --model {final}")
    return metrics
