"""DPO step time: minigpt's training loop vs TRL's `DPOTrainer` (issue 4 §6).

Target: with precomputed reference log-probs, a minigpt DPO step on the `small` preset takes
<= 0.7x the time of TRL's `DPOTrainer` step on the same model, batch and sequence length,
measured in the same run.

One model (random init with a fixed seed, or `--model DIR`) is saved once; each side then runs in
a fresh subprocess that loads those same initial weights and the same preference records, one
side after another (never concurrently), with `torch.set_num_threads(<all cores>)`:

  minigpt           `minigpt.train.loop.Trainer` + `PreferenceObjective("sigmoid", beta)`, data
                    through `PreferenceDataset` / `collate_preference`, reference log-probs
                    precomputed once with `precompute_reference_logprobs` (as `minigpt dpo` does
                    by default); bf16 autocast, fused AdamW.
  TRL live ref      `trl.DPOTrainer` as it comes: a frozen reference model (a second load of the
                    initial weights) forwarded at every step.
  TRL precomputed   `trl.DPOTrainer` with `precompute_ref_log_probs=True`.
  (--llama)         the TRL precomputed run again on the same weights exported as a
                    `transformers` LlamaForCausalLM (`minigpt.model.export`): shows whether TRL's
                    time depends on running MiniGPT rather than its usual model classes.

Both sides: batch `--batch` pairs (2x rows), grad_accum 1, max_length `--seq_len`, bf16 on CPU,
the same lr, no weight decay, grad clip 1.0, fused AdamW with betas (0.9, 0.95), no warmup,
no evaluation, no checkpoints, logging every 10 steps. A step's time is the wall time from one
step end to the next (the first from the start of training), so it includes fetching and
collating the batch on both sides; the table shows the median over the steps after
`--warmup` warm-up steps. The set-up (tokenizing the records, and the reference pass where there
is one) is timed separately and is not part of a step. Each side runs in its own process so that
nothing carries over between them (minigpt's loop changes glibc malloc settings, see
`minigpt.train.allocator`; thread pools; memory). Run it on a quiet machine: when other processes
compete for the cores, runs with all cores slow down several-fold at random (`--threads 1` gives
steadier numbers there).

Records are conversational preference pairs of controlled length: one user message of about
`seq_len / 2` tokens (template included) and two different assistant replies that fill the rest
to just under `seq_len`, so neither side truncates anything. The text is cut from TinyStories
(../shared/data) when present, else generated. The tokenizer is trained on the same text
unless `--model` brings its own.

TRL workaround (nothing in TRL is patched): with `ref_model=None`, TRL 1.16 builds the live
reference with `trl.trainer.utils.create_model_from_path`, which reads `config.auto_map` for any
architecture that is not a `transformers` class; MiniGPTConfig (registered with AutoConfig in
process, not remote code) has no such attribute, so it raises AttributeError. The TRL live side
therefore passes `ref_model=AutoModelForCausalLM.from_pretrained(<initial dir>, dtype=<policy
dtype>)`, the same model TRL would have loaded. With `precompute_ref_log_probs=True` TRL needs no
reference model (it uses the policy before training), so that side passes none.

TRL settings that differ from TRL's defaults, and why:
  - `gradient_checkpointing=False`: TRL turns it on by default, but MiniGPT does not support
    it (`supports_gradient_checkpointing = False`, TRL would raise), and the minigpt side does
    not checkpoint either, so both sides do the same compute.
  - `adam_beta2=0.95`, `weight_decay=0.0`: the minigpt side's values; `lr_scheduler_type=
    "constant"` (minigpt: cosine from step 0). Irrelevant to speed.
Instrumentation only: TRL's own `DataCollatorForPreference` (same arguments as DPOTrainer would
give it) is passed wrapped to count the tokens of each batch, and a subclass records how long
`DPOTrainer._precompute_ref_logps` takes; neither changes what TRL computes.
TRL tokenizes a conversational reply with the whole template turn, so its replies carry one
more token than minigpt's (the "\\n" the template writes after `<|im_end|>`); the table shows
the tokens per step of each side.

    python benchmarks/bench_dpo.py                                     # small preset, seq 512, batch 8
    python benchmarks/bench_dpo.py --model runs/sft_small --steps 10
    python benchmarks/bench_dpo.py --preset tiny --seq_len 128 --steps 4   # quick check
    python benchmarks/bench_dpo.py --llama                              # + TRL on the Llama export
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

from _harness import compare_sides, side_parser, story_documents, write_report  # benchmarks/_harness.py (scripts run from benchmarks/)

SIDES = ("minigpt", "trl_live", "trl_precomputed")
LLAMA = "trl_llama_precomputed"
LABELS = {
    "minigpt": "minigpt (precomputed ref)",
    "trl_live": "TRL DPOTrainer (live ref model)",
    "trl_precomputed": "TRL DPOTrainer (precompute_ref_log_probs)",
    LLAMA: "(extra) TRL DPOTrainer on the weights as transformers Llama (precompute_ref_log_probs)",
}
PROMPT_PREFIX = "Continue the story:\n\n"


# ----------------------------------------------------------------------------------- set-up
def build_records(tok, docs: list[str], n: int, seq_len: int) -> list[dict]:
    """`n` records {"prompt": [user msg], "chosen": str, "rejected": str}: the rendered prompt
    is about seq_len // 2 tokens, each reply (with its closing <|im_end|> and TRL's trailing
    "\\n") just under the rest, cut from consecutive windows of the tokenized documents."""
    from minigpt.tokenizer import render_prompt

    probe = "word"
    overhead = len(render_prompt(tok, [{"role": "user", "content": PROMPT_PREFIX + probe}])) - len(tok(probe, add_special_tokens=False)["input_ids"])
    prompt_tokens = seq_len // 2
    content = max(1, prompt_tokens - overhead - 2)  # slack: re-encoding a decoded window can move a boundary
    reply = max(1, seq_len - prompt_tokens - 6)  # + <|im_end|>, TRL's "\n", slack
    need = n * (content + 2 * reply)
    stream: list[int] = []
    sep = tok("\n\n", add_special_tokens=False)["input_ids"]
    for ids in tok(docs[: max(1, len(docs))], add_special_tokens=False)["input_ids"]:
        stream += ids + sep
        if len(stream) >= need + 3 * seq_len:
            break
    records, pos = [], 0

    def window(k: int) -> str:
        nonlocal pos
        ids = [stream[(pos + j) % len(stream)] for j in range(k)]
        pos += k
        return tok.decode(ids).strip() or "."

    for _ in range(n):
        prompt = window(content)
        chosen, rejected = window(reply), window(reply)
        records.append({"prompt": [{"role": "user", "content": PROMPT_PREFIX + prompt}], "chosen": chosen, "rejected": rejected})
    return records


def prepare(args, work: Path) -> dict:
    """Save the initial model + tokenizer to work/init and the records to work/records.jsonl."""
    import torch

    from minigpt.model import MiniGPTConfig, MiniGPTForCausalLM, count_parameters
    from minigpt.tokenizer import load_tokenizer, train_tokenizer

    init = work / "init"
    n_chars = max(args.batch * (args.steps + args.warmup) * args.seq_len * 8, 400_000)
    if args.model:
        from minigpt.model.loading import load_base_model

        net, tok = load_base_model(args.model)
        docs, source = story_documents(args.seed, n_chars)
    else:
        cfg = MiniGPTConfig.from_preset(args.preset)
        docs, source = story_documents(args.seed, n_chars)
        t = time.perf_counter()
        tok = train_tokenizer(docs, vocab_size=cfg.vocab_size, out_dir=work / "tokenizer")
        print(f"tokenizer: {len(tok)} tokens trained on {source} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        torch.manual_seed(args.seed)
        net = MiniGPTForCausalLM(cfg)
    if args.seq_len > net.config.max_position_embeddings:
        raise SystemExit(f"--seq_len {args.seq_len} exceeds the model's context ({net.config.max_position_embeddings})")
    net.save_pretrained(init)
    tok.save_pretrained(init)
    tok = load_tokenizer(init)
    n = args.batch * (args.steps + args.warmup)  # every step sees fresh pairs, one pass on each side
    records = build_records(tok, docs, n, args.seq_len)
    with open(work / "records.jsonl", "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return {
        "params": count_parameters(net),
        "text": source,
        "records": n,
        "config": {k: getattr(net.config, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size", "vocab_size")},
    }


# ----------------------------------------------------------------------------------- workers
class _Counts:
    """Wraps a collate function; counts real (attention_mask) and padded tokens per batch."""

    def __init__(self, collate):
        self.collate, self.real, self.padded = collate, [], []

    def __call__(self, items):
        batch = self.collate(items)
        self.real.append(int(batch["attention_mask"].sum()))
        self.padded.append(int(batch["input_ids"].numel()))
        return batch

    def reset(self):
        self.real, self.padded = [], []


def _summary(times: list[float], warmup: int, counts: _Counts, extra: dict) -> dict:
    timed = times[warmup:] or times
    return {
        "step_s": statistics.median(timed),
        "step_times_s": times,
        "steps": len(times),
        "real_tokens_per_step": statistics.mean(counts.real) if counts.real else float("nan"),
        "padded_tokens_per_step": statistics.mean(counts.padded) if counts.padded else float("nan"),
        **extra,
    }


def worker_minigpt(args, work: Path) -> dict:
    from functools import partial

    from minigpt.data.preference import PreferenceDataset, collate_preference
    from minigpt.objectives.preference import PreferenceObjective, precompute_reference_logprobs
    from minigpt.model.loading import load_base_model
    from minigpt.train.callbacks import Callback
    from minigpt.train.config import TrainConfig
    from minigpt.train.loop import Trainer

    net, tok = load_base_model(work / "init")
    t = time.perf_counter()
    ds = PreferenceDataset(str(work / "records.jsonl"), tok, max_length=args.seq_len)
    collate = partial(collate_preference, pad_id=tok.pad_token_id)
    counted = _Counts(collate)
    objective = PreferenceObjective("sigmoid", beta=args.beta)

    class StepTimer(Callback):
        def __init__(self):
            self.times: list[float] = []
            self.last = 0.0

        def on_train_start(self, trainer):
            counted.reset()
            self.last = time.perf_counter()

        def on_step_end(self, trainer, metrics):
            now = time.perf_counter()
            self.times.append(now - self.last)
            self.last = now

    timer = StepTimer()
    cfg = TrainConfig(
        max_steps=args.warmup + args.steps, batch_size=args.batch, grad_accum=1, lr=args.lr, warmup_steps=0,
        weight_decay=0.0, beta2=0.95, grad_clip=1.0, precision="bf16", device="cpu", seed=args.seed,
        eval_interval=0, eval_batches=0, save_interval=0, log_interval=10, progress=False, tensorboard=False,
    )
    trainer = Trainer(net, objective, ds, cfg, work / "run_minigpt", collate_fn=counted, callbacks=[timer], save_with_model=tok)
    t_ref = time.perf_counter()
    precompute_reference_logprobs(objective, trainer.model, ds, collate, args.batch, trainer.device, trainer.autocast)
    precompute_s = time.perf_counter() - t_ref
    setup_s = time.perf_counter() - t
    trainer.fit(overwrite=True)
    return _summary(timer.times, args.warmup, counted, {
        "setup_s": setup_s,
        "precompute_s": precompute_s,
        "mean_loss": statistics.mean(h["loss"] for h in trainer.history),
        "model_class": type(net).__name__,
        "dataset": ds.summary(),
        "truncated": ds.stats["prompt_truncated"] + ds.stats["response_truncated"],
    })


def worker_trl(args, work: Path, precompute: bool, init_name: str = "init") -> dict:
    import datasets
    import trl
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    import minigpt  # noqa: F401  (registers MiniGPT with AutoModelForCausalLM)
    from minigpt.tokenizer import load_tokenizer

    datasets.disable_progress_bars()
    init = str(work / init_name)
    model = AutoModelForCausalLM.from_pretrained(init)
    tok = load_tokenizer(init)
    rows = [json.loads(line) for line in open(work / "records.jsonl", encoding="utf-8")]
    train = datasets.Dataset.from_list([
        {"prompt": r["prompt"], "chosen": [{"role": "assistant", "content": r["chosen"]}], "rejected": [{"role": "assistant", "content": r["rejected"]}]}
        for r in rows
    ])
    config = DPOConfig(
        output_dir=str(work / f"run_trl_{init_name}_{'pre' if precompute else 'live'}"),
        per_device_train_batch_size=args.batch, gradient_accumulation_steps=1, max_length=args.seq_len,
        bf16=True, use_cpu=True, report_to="none", learning_rate=args.lr, max_steps=args.warmup + args.steps,
        beta=args.beta, loss_type=["sigmoid"], precompute_ref_log_probs=precompute,
        gradient_checkpointing=False, weight_decay=0.0, adam_beta2=0.95, max_grad_norm=1.0,
        lr_scheduler_type="constant", warmup_steps=0, save_strategy="no", eval_strategy="no", logging_steps=10,
        disable_tqdm=True, dataloader_num_workers=0, seed=args.seed,
    )
    # The collator DPOTrainer would build itself, wrapped only to count the tokens of each batch.
    counted = _Counts(DataCollatorForPreference(pad_token_id=tok.pad_token_id, max_length=args.seq_len, truncation_mode=config.truncation_mode))

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []
            self.last = 0.0

        def on_train_begin(self, a, state, control, **kw):
            counted.reset()
            self.last = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            now = time.perf_counter()
            self.times.append(now - self.last)
            self.last = now

    class TimedDPOTrainer(DPOTrainer):
        """DPOTrainer unchanged, except that the time of its reference pass is recorded."""

        def _precompute_ref_logps(self, *a, **kw):
            t_ref = time.perf_counter()
            out = super()._precompute_ref_logps(*a, **kw)
            self._bench_precompute_s = getattr(self, "_bench_precompute_s", 0.0) + time.perf_counter() - t_ref
            return out

    timer = StepTimer()
    t = time.perf_counter()
    # Live reference: what DPOTrainer builds itself when `ref_model` is None (a fresh load of the
    # policy's directory in the policy's dtype) - done here because TRL 1.16's loader fails on an
    # architecture registered in-process (see the module docstring).
    ref = AutoModelForCausalLM.from_pretrained(init, dtype=model.dtype) if not precompute else None
    trainer = TimedDPOTrainer(model=model, ref_model=ref, args=config, train_dataset=train, processing_class=tok, data_collator=counted, callbacks=[timer])
    setup_s = time.perf_counter() - t  # tokenization (+ the reference pass when precomputing)
    ref_pass = getattr(trainer, "_bench_precompute_s", None)
    out = trainer.train()
    return _summary(timer.times, args.warmup, counted, {
        "setup_s": setup_s,
        "precompute_s": ref_pass,
        "mean_loss": out.metrics.get("train_loss"),
        "model_class": type(model).__name__,
        "train_runtime_s": out.metrics.get("train_runtime"),
        "optim": str(config.optim),
        "trl_version": trl.__version__,
        "live_reference": trainer.ref_model is not None,
    })


def worker(kind: str, args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    if kind == "minigpt":
        r = worker_minigpt(args, work)
    elif kind == LLAMA:
        r = worker_trl(args, work, precompute=True, init_name="llama")
    else:
        r = worker_trl(args, work, precompute=kind == "trl_precomputed")
    r["threads"] = torch.get_num_threads()
    return r


# ----------------------------------------------------------------------------------- report
def table(rows: dict) -> str:
    live, pre = rows["trl_live"]["step_s"], rows["trl_precomputed"]["step_s"]
    lines = [
        "| side | step time (s) | ratio vs TRL live ref | ratio vs TRL precomputed | real tokens/step | padded tokens/step | set-up: tokenize + ref pass (s) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for kind in [k for k in (*SIDES, LLAMA) if k in rows]:
        r = rows[kind]
        lines.append(
            f"| {LABELS[kind]} | {r['step_s']:.3f} | {r['step_s'] / live:.2f}x | {r['step_s'] / pre:.2f}x | "
            f"{r['real_tokens_per_step']:.0f} | {r['padded_tokens_per_step']:.0f} | {r['setup_s']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = side_parser(__doc__, (*SIDES, LLAMA), out="runs/bench_dpo.json", steps=10, lr=1e-5)
    p.add_argument("--seq_len", type=int, default=512, help="tokens of prompt + reply (max_length on both sides)")
    p.add_argument("--batch", type=int, default=8, help="preference pairs per step")
    p.add_argument("--beta", type=float, default=0.1)
    a = p.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker, a)))
        return
    keys = ("seq_len", "batch", "steps", "warmup", "lr", "beta", "seed", "threads")
    info, rows = compare_sides(__file__, a, prepare, SIDES, LLAMA, keys)  # one after another, each in a fresh process

    what = a.model or f"preset {a.preset} (random init, seed {a.seed})"
    header = (
        f"DPO (sigmoid, beta {a.beta}) step time on {what}: {info['params'] / 1e6:.1f} M params; "
        f"batch {a.batch} pairs, max_length {a.seq_len}, bf16 autocast on CPU, {rows['minigpt']['threads']} threads; "
        f"median of {a.steps} steps after {a.warmup} warm-up; text: {info['text']}"
    )
    pre_ratio = rows["minigpt"]["step_s"] / rows["trl_precomputed"]["step_s"]
    live_ratio = rows["minigpt"]["step_s"] / rows["trl_live"]["step_s"]
    verdict = (
        f"target minigpt <= 0.70x TRL: {pre_ratio:.2f}x vs TRL precomputed ({'met' if pre_ratio <= 0.7 else 'NOT met'}), "
        f"{live_ratio:.2f}x vs TRL live ref ({'met' if live_ratio <= 0.7 else 'NOT met'})"
    )
    write_report(
        a, header, table(rows), verdict, info, rows,
        {"ratio_vs_trl_precomputed": pre_ratio, "ratio_vs_trl_live": live_ratio},
        notes=[f"minigpt data: {rows['minigpt']['dataset']}"],
    )


if __name__ == "__main__":
    main()
