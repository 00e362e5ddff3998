"""Evaluate a model on a data file: generate replies with the fast engine and score them
(BLEU, ROUGE, accuracy, win rates), and score the data itself (bits per byte, perplexity).

Records (JSON lines; `load_eval_examples`):

* chat records in any format `minigpt sft` reads (`messages`, Alpaca `instruction`/`input`/
  `output`, ShareGPT): the conversation up to its last assistant message is the prompt, that
  message the reference;
* `{"prompt": ..., "reference" | "completion" | "response": ...}`;
* `{"question": ..., "answer": ...}` (GSM8K): the solution is the reference and the text after
  its `####` the answer;
* `{"prompt": ..., "answer": ...}` (minigpt's arithmetic prompts): the answer alone;
* `{"text": ...}`: plain text, for bits per byte and perplexity only.

Bits per byte and perplexity score the reference reply given its prompt (the assistant tokens
of the rendered conversation, its closing `<|im_end|>` included) or, for `text` records, the
whole text in windows of the model's context.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from minigpt.errors import UserError
from minigpt.evaluation.metrics import (
    Estimate,
    bits_per_byte_estimate,
    mean_estimate,
    perplexity_estimate,
    rouge,
    bleu,
)

_NUMBER_RE = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?(?:/\d+)?")


@dataclass
class EvalExample:
    """One evaluation example.

    Attributes:
        messages: the prompt conversation (system/user/assistant turns, ending with a user
            turn); empty for a `text` record.
        reference: the reference reply ("" if the record has none).
        answer: the reference answer for `accuracy` (None if the record has none).
        text: plain text to score for bits per byte / perplexity (`text` records).
        where: "FILE:LINE", for messages.
    """

    messages: list[dict]
    reference: str = ""
    answer: str | None = None
    text: str | None = None
    where: str = ""

    @property
    def prompt(self) -> str:
        """The last user message (what a model without a chat template is prompted with)."""
        users = [m["content"] for m in self.messages if m["role"] == "user"]
        return users[-1] if users else ""


def load_eval_examples(path: str | Path, limit: int | None = None) -> list[EvalExample]:
    """Read evaluation records from a JSONL file (see the module doc for the formats).

    Raises:
        UserError: a missing file, a line that is not a JSON object, or a record of no known
            format, naming the file and line.
    """
    from minigpt.rewards.functions import gsm8k_final_answer
    from minigpt.tokenizer.chat import SkipRecord, normalize_messages

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    out: list[EvalExample] = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                rec = json.loads(line)
            except ValueError as e:
                raise UserError(f"{where}: not valid JSON ({e})") from None
            if not isinstance(rec, dict):
                raise UserError(f"{where}: a record must be a JSON object, got {type(rec).__name__}")
            if isinstance(rec.get("text"), str) and not any(k in rec for k in ("prompt", "messages", "instruction", "question")):
                out.append(EvalExample([], text=rec["text"], where=where))
            elif isinstance(rec.get("question"), str):
                answer = rec.get("answer")
                solution = "" if answer is None else str(answer)
                out.append(EvalExample([{"role": "user", "content": rec["question"]}], reference=solution,
                                       answer=gsm8k_final_answer(solution) if answer is not None else None, where=where))
            elif isinstance(rec.get("prompt"), str):
                ref = next((rec[k] for k in ("reference", "completion", "response") if isinstance(rec.get(k), str)), "")
                answer = rec.get("answer")
                out.append(EvalExample([{"role": "user", "content": rec["prompt"]}], reference=ref,
                                       answer=None if answer is None else gsm8k_final_answer(str(answer)), where=where))
            else:
                try:
                    messages = normalize_messages(rec, where=where)
                except SkipRecord:
                    messages = []
                if not messages or messages[-1]["role"] != "assistant":
                    raise UserError(f"{where}: the conversation must end with the assistant reply to compare with")
                answer = rec.get("answer")
                out.append(EvalExample(messages[:-1], reference=messages[-1]["content"],
                                       answer=None if answer is None else str(answer), where=where))
            if limit is not None and len(out) >= limit:
                break
    if not out:
        raise UserError(f"{path}: no records")
    return out


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------


@dataclass
class Generations:
    """Replies of one model: `texts` (the raw reply, reasoning tags kept) and `answers`
    (thinking removed: what BLEU/ROUGE and win rates compare), and their token ids."""

    texts: list[str]
    answers: list[str]
    token_ids: list[list[int]]
    prompt_ids: list[list[int]]


def prompt_ids(tokenizer, example: EvalExample, chat: bool) -> list[int]:
    """The token ids a model is prompted with: the chat-rendered conversation plus the
    generation prompt, or (chat False) the last user message as plain text."""
    from minigpt.tokenizer.chat import render_prompt

    if chat:
        return render_prompt(tokenizer, example.messages, where=example.where)
    return list(tokenizer(example.prompt, add_special_tokens=False)["input_ids"])


@torch.no_grad()
def generate_replies(
    model: torch.nn.Module,
    tokenizer,
    examples: Sequence[EvalExample],
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    chat: bool = True,
    batch_size: int = 32,
    seed: int = 0,
    dtype: torch.dtype | None = None,
) -> Generations:
    """One reply per example from the fast engine, in left-padded batches of `batch_size`
    prompts of similar length (sorted by length, so padding stays small).

    Batch i is sampled with seed `seed + i`, so a run is reproducible; temperature 0 is
    greedy. A prompt longer than the context leaves for `max_new_tokens` keeps its last
    tokens. Replies stop at `<|im_end|>` or the end-of-text token.

    Raises:
        UserError: bad sampling settings, or no chat template when `chat` is True.
    """
    from minigpt.inference.chat import ReplyDecoder, split_reasoning
    from minigpt.inference.engine import GenerationEngine
    from minigpt.tokenizer.chat import chat_eos_ids

    eos = chat_eos_ids(tokenizer) if chat else [tokenizer.eos_token_id]
    engine = GenerationEngine(model, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id, dtype=dtype)
    limit = int(model.config.max_position_embeddings)
    new = min(max_new_tokens, limit - 1)
    prompts = [prompt_ids(tokenizer, e, chat)[-(limit - new):] for e in examples]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    ids: list[list[int]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    try:
        for b, start in enumerate(range(0, len(order), batch_size)):
            rows = order[start : start + batch_size]
            out = engine.generate([prompts[i] for i in rows], max_new_tokens=new, temperature=temperature, top_k=top_k,
                                  top_p=top_p, repetition_penalty=repetition_penalty, seed=seed + b)
            for r, i in enumerate(rows):
                kept = out.completion_ids[r][out.completion_mask[r].bool()].tolist()
                ids[i] = kept[:-1] if kept and kept[-1] in eos else kept
    finally:
        model.train(was_training)
    texts, answers = [], []
    for row in ids:
        decoder = ReplyDecoder(tokenizer)
        text = "".join(decoder.push(t) for t in row) + decoder.flush()
        texts.append(text)
        answers.append(split_reasoning(text)[1])
    return Generations(texts, answers, ids, prompts)


# --------------------------------------------------------------------------------------------
# Scoring the data: bits per byte and perplexity
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def reference_nll(model: torch.nn.Module, tokenizer, examples: Sequence[EvalExample], chat: bool = True,
                  batch_size: int = 8) -> tuple[list[float], list[int], list[int]]:
    """Per-example summed negative log-likelihood (nats), scored tokens and their UTF-8 bytes.

    A `text` example is scored whole, in windows of the model's context that overlap by one
    token (the last token of a window is the first of the next, as context only), so every
    token but the text's first is predicted exactly once. Any other example scores its reference reply given
    its prompt: the assistant tokens of `prompt + reference` rendered with the chat template
    (chat True), or the reference's tokens after the prompt's (chat False).

    Raises:
        UserError: an example with neither text nor a reference.
    """
    from minigpt.tokenizer import token_byte_lengths
    from minigpt.tokenizer.chat import render_conversation

    limit = int(model.config.max_position_embeddings)
    byte_len = torch.as_tensor(token_byte_lengths(tokenizer), dtype=torch.long)
    pieces: list[tuple[int, list[int], list[int]]] = []  # (example, ids, mask over targets)
    for i, e in enumerate(examples):
        if e.text is not None:
            ids = list(tokenizer(e.text, add_special_tokens=False)["input_ids"])
            if len(ids) < 2:
                raise UserError(f"{e.where}: the text has fewer than 2 tokens; nothing to predict")
            for s in range(0, len(ids) - 1, limit - 1):
                window = ids[s : s + limit]
                pieces.append((i, window, [0] + [1] * (len(window) - 1)))
            continue
        if not e.reference:
            raise UserError(f"{e.where}: no reference reply and no text to score (bpb/ppl)")
        if chat:
            ids, mask = render_conversation(tokenizer, e.messages + [{"role": "assistant", "content": e.reference}],
                                            where=e.where)
        else:
            p = list(tokenizer(e.prompt, add_special_tokens=False)["input_ids"])
            r = list(tokenizer(e.reference, add_special_tokens=False)["input_ids"])
            ids, mask = p + r, [0] * len(p) + [1] * len(r)
        ids, mask = ids[-limit:], mask[-limit:]
        pieces.append((i, ids, mask))
    nll = [0.0] * len(examples)
    tokens = [0] * len(examples)
    nbytes = [0] * len(examples)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        pieces.sort(key=lambda p: len(p[1]))
        for s in range(0, len(pieces), batch_size):
            chunk = pieces[s : s + batch_size]
            width = max(len(p[1]) for p in chunk)
            ids = torch.zeros(len(chunk), width, dtype=torch.long)
            att = torch.zeros(len(chunk), width, dtype=torch.long)
            keep = torch.zeros(len(chunk), width, dtype=torch.bool)
            for r, (_, x, m) in enumerate(chunk):
                ids[r, : len(x)] = torch.tensor(x)
                att[r, : len(x)] = 1
                keep[r, : len(x)] = torch.tensor(m, dtype=torch.bool)
            logits = model(input_ids=ids.to(device), attention_mask=att.to(device)).logits.float()  # (B, T, V)
            targets = ids[:, 1:]
            lp = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1).to(device),
                                 reduction="none").view(len(chunk), -1).cpu()  # (B, T-1) nats
            scored = keep[:, 1:] & att[:, 1:].bool()
            for r, (i, _, _) in enumerate(chunk):
                nll[i] += float(lp[r][scored[r]].sum())
                tokens[i] += int(scored[r].sum())
                nbytes[i] += int(byte_len[targets[r][scored[r]]].sum())
    finally:
        model.train(was_training)
    return nll, tokens, nbytes


# --------------------------------------------------------------------------------------------
# Accuracy and win rates
# --------------------------------------------------------------------------------------------


def final_answer(text: str) -> str | None:
    """The answer a reply gives: its last `<answer>…</answer>` when it has one, else its last
    number (for models not trained on the reasoning format); None when neither."""
    from minigpt.rewards.answers import extract_answer

    tagged = extract_answer(text)
    if tagged is not None:
        return tagged
    numbers = _NUMBER_RE.findall(text)
    return numbers[-1] if numbers else None


def answer_correct(texts: Sequence[str], answers: Sequence[str | None]) -> list[float]:
    """1.0 per reply whose `final_answer` equals the reference by the project's one answer
    checker (`minigpt.rewards.answers.answers_equal`: exact numbers, `"42" == "42.0" == "$42"`),
    else 0.0.

    Raises:
        UserError: an example without a reference answer.
    """
    from minigpt.rewards.answers import answers_equal

    out = []
    for text, want in zip(texts, answers):
        if want is None:
            raise UserError("accuracy needs an `answer` in every record")
        got = final_answer(text)
        out.append(1.0 if got is not None and answers_equal(got, want) else 0.0)
    return out


def reward_model_preferences(reward_model: torch.nn.Module, tokenizer, prompts: Sequence[Sequence[int]],
                             replies: Sequence[Sequence[int]], baseline: Sequence[Sequence[int]]) -> list[float]:
    """Per prompt: 1 when the reward model scores `replies[i]` above `baseline[i]`, ½ on a tie,
    0 below (Stiennon et al. 2020's head-to-head win rate). Each reply is scored alone, so the
    order of the two cannot matter."""
    from minigpt.rewards.functions import RewardModelScorer

    score = RewardModelScorer(reward_model, tokenizer, max_length=int(reward_model.config.max_position_embeddings))
    n = len(prompts)
    a = score([""] * n, [""] * n, prompt_ids=list(prompts), completion_ids=list(replies))
    b = score([""] * n, [""] * n, prompt_ids=list(prompts), completion_ids=list(baseline))
    return [1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b)]


JUDGE_PROMPT = (
    "Which reply answers the instruction better?\n\n"
    "Instruction:\n{instruction}\n\nReply A:\n{a}\n\nReply B:\n{b}\n\n"
    "Answer with the letter of the better reply, A or B."
)
"""The pairwise question put to a judge model (in the spirit of MT-Bench's pairwise prompt,
Zheng et al. 2023, with its verdict read from the next-token probabilities of "A" and "B")."""


@torch.no_grad()
def judge_preferences(judge: torch.nn.Module, tokenizer, instructions: Sequence[str], replies: Sequence[str],
                      baseline: Sequence[str], batch_size: int = 8) -> list[float]:
    """Per instruction: how often a judge model prefers `replies[i]` over `baseline[i]`, asked in
    both orders to cancel position bias (Zheng et al. 2023, "Judging LLM-as-a-Judge", §3.4: a
    pair whose verdict flips with the order counts as a tie).

    Each order renders `JUDGE_PROMPT` as a user turn with the chat template and compares the
    judge's next-token log-probabilities of "A" and "B" after the generation prompt. The score
    is the mean of the two verdicts: 1 (preferred both times), ½ (once), 0 (never).

    Raises:
        UserError: the judge's tokenizer cannot spell "A" or "B" as one token.
    """
    from minigpt.tokenizer.chat import render_prompt_literal

    letters = []
    for letter in ("A", "B"):
        ids = tokenizer(letter, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise UserError(f"the judge's tokenizer spells {letter!r} as {len(ids)} tokens; one is needed")
        letters.append(ids[0])
    limit = int(judge.config.max_position_embeddings)
    device = next(judge.parameters()).device
    prompts: list[list[int]] = []
    for q, ours, theirs in zip(instructions, replies, baseline):
        for a, b in ((ours, theirs), (theirs, ours)):
            text = JUDGE_PROMPT.format(instruction=q, a=a, b=b)
            prompts.append(render_prompt_literal(tokenizer, [{"role": "user", "content": text}])[-limit:])
    margins: list[float] = []  # log p(A) - log p(B)
    was_training = judge.training
    judge.eval()
    try:
        for s in range(0, len(prompts), batch_size):
            chunk = prompts[s : s + batch_size]
            width = max(map(len, chunk))
            pad = tokenizer.pad_token_id or 0
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], device=device)  # left-padded
            att = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
            logits = judge(input_ids=ids, attention_mask=att).logits[:, -1].float().log_softmax(-1)  # (B, V)
            margins += (logits[:, letters[0]] - logits[:, letters[1]]).tolist()
    finally:
        judge.train(was_training)
    out = []
    for k in range(0, len(margins), 2):
        first = 1.0 if margins[k] > 0 else 0.0  # ours was A
        second = 1.0 if margins[k + 1] < 0 else 0.0  # ours was B
        out.append((first + second) / 2)
    return out


# --------------------------------------------------------------------------------------------
# The whole evaluation
# --------------------------------------------------------------------------------------------


def evaluate_model(
    model: torch.nn.Module,
    tokenizer,
    examples: Sequence[EvalExample],
    metrics: Sequence[str],
    generation: dict[str, Any] | None = None,
    chat: bool = True,
    reference_model: torch.nn.Module | None = None,
    reward_model: torch.nn.Module | None = None,
    judge_model: torch.nn.Module | None = None,
    judge_tokenizer=None,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[dict[str, Estimate], Generations | None]:
    """Every asked metric of `model` on `examples`, each with its bootstrap interval.

    Args:
        metrics: any of `bpb`, `ppl`, `bleu`, `rouge`, `accuracy`, `win_rate`.
        generation: keyword arguments of `generate_replies` (max_new_tokens, temperature, ...).
        reference_model: for `win_rate`: its replies are the baseline (else the data's
            references are).
        reward_model / judge_model: for `win_rate`: the reward model (report key `win_rate`) or
            the judge (key `judge_win_rate`); at least one is needed. The judge's tokenizer is
            `judge_tokenizer` (default: `tokenizer`).
        resamples / level / seed: of the bootstrap.

    Returns `(report, generations)`: report keys `bpb`, `ppl`, `bleu`, `rouge1`, `rouge2`,
    `rougeL`, `accuracy`, `win_rate`, `judge_win_rate` as asked; generations None when no metric
    needed replies.

    Raises:
        UserError: an unknown metric, or what a metric needs is missing (references, answers,
            a reward or judge model).
    """
    from minigpt.evaluation.metrics import METRICS

    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise UserError(f"unknown metric(s) {unknown}; choose from {', '.join(METRICS)}")
    kw = {"resamples": resamples, "level": level, "seed": seed}
    report: dict[str, Estimate] = {}
    if "bpb" in metrics or "ppl" in metrics:
        nll, tokens, nbytes = reference_nll(model, tokenizer, examples, chat=chat)
        if "bpb" in metrics:
            report["bpb"] = bits_per_byte_estimate(nll, nbytes, **kw)
        if "ppl" in metrics:
            report["ppl"] = perplexity_estimate(nll, tokens, **kw)
    needs_replies = {"bleu", "rouge", "accuracy", "win_rate"} & set(metrics)
    if not needs_replies:
        return report, None
    asked = [e for e in examples if e.text is None]
    if not asked:
        raise UserError(f"{', '.join(sorted(needs_replies))} need prompts; the data holds only `text` records")
    gen = generate_replies(model, tokenizer, asked, chat=chat, seed=seed, **(generation or {}))
    references = [e.reference for e in asked]
    if {"bleu", "rouge"} & set(metrics):
        missing = [e.where for e in asked if not e.reference]
        if missing:
            raise UserError(f"{missing[0]}: BLEU/ROUGE need a reference reply in every record")
        if "bleu" in metrics:
            report["bleu"] = bleu(gen.answers, references, **kw)
        if "rouge" in metrics:
            report.update(rouge(gen.answers, references, **kw))
    if "accuracy" in metrics:
        report["accuracy"] = mean_estimate(answer_correct(gen.texts, [e.answer for e in asked]), **kw)
    if "win_rate" in metrics:
        if reward_model is None and judge_model is None:
            raise UserError("win_rate needs --reward_model or --judge_model")
        if reference_model is not None:
            base_answers = generate_replies(reference_model, tokenizer, asked, chat=chat, seed=seed,
                                            **(generation or {})).answers
        else:
            if any(not r for r in references):
                raise UserError("win_rate without --reference_model compares with the data's references: every record needs one")
            base_answers = references
        if reward_model is not None:
            # Both sides are scored as answers (thinking removed), tokenized alike.
            ours = [list(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in gen.answers]
            theirs = [list(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in base_answers]
            report["win_rate"] = mean_estimate(
                reward_model_preferences(reward_model, tokenizer, gen.prompt_ids, ours, theirs), **kw)
        if judge_model is not None:
            instructions = [e.prompt for e in asked]
            report["judge_win_rate"] = mean_estimate(
                judge_preferences(judge_model, judge_tokenizer or tokenizer, instructions, gen.answers, base_answers), **kw)
    return report, gen


def format_report(report: dict[str, Estimate]) -> str:
    """A plain-text table: metric, value, interval, examples."""
    rows = [("metric", "value", "95% interval" if not report else f"{round(next(iter(report.values())).level * 100)}% interval", "n")]
    for k, e in report.items():
        digits = 2 if k in ("bleu", "ppl") else 4
        value = f"{e.value:.{digits}f}" if math.isfinite(e.value) else str(e.value)
        rows.append((k, value, f"[{e.low:.{digits}f}, {e.high:.{digits}f}]", str(e.n)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


__all__ = [
    "EvalExample",
    "Generations",
    "JUDGE_PROMPT",
    "answer_correct",
    "evaluate_model",
    "final_answer",
    "format_report",
    "generate_replies",
    "judge_preferences",
    "load_eval_examples",
    "reference_nll",
    "reward_model_preferences",
]
