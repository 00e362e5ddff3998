"""GRPO step time: minigpt's training loop vs TRL's `GRPOTrainer` (issue 5 §9).

Target: one GRPO step (16 prompts x group 4 x 64 new tokens, `small` preset) takes <= 0.5x the
time of a TRL `GRPOTrainer` step on the same model and settings, measured in the same run.

One model (the `--preset`, random init with a fixed seed, or `--model DIR`) is saved once with
its tokenizer (trained on TinyStories text from ../shared/data when present, else on generated
sentences); each side then runs in a fresh subprocess that loads those same initial weights and
the same prompts, one side after another (never concurrently), with
`torch.set_num_threads(<all cores>)`:

  minigpt   `minigpt.train.loop.Trainer` + `minigpt.objectives.grpo.GRPOObjective`, wired as
            `minigpt grpo` (`minigpt.recipes.grpo`) wires them: prompts through `PromptDataset`
            / `collate_prompts`, the reward through `minigpt.rewards.functions.CombinedReward`,
            sampling on the rollout engine in bf16, training forward/backward under bf16
            autocast, fused AdamW. `train.batch_size` = `--prompts`, `group_size`,
            `max_new_tokens`, temperature 1.0, one micro-batch per rollout.
  TRL       `trl.GRPOTrainer` as it comes: `per_device_train_batch_size` = prompts x group
            (completions), `num_generations` = group, `max_completion_length`, sampling with
            `model.generate` (no vLLM), `bf16=True`, `use_cpu=True`. Sampling runs under bf16
            autocast there too (accelerate wraps the model's forward; checked with a forward
            hook on a tiny run), and TRL's training forward also computes each position's
            entropy for its metrics, as it always does.
  (--llama) the TRL run again on the same weights exported as a `transformers`
            LlamaForCausalLM (`minigpt.model.export`): shows whether TRL's time depends on
            running MiniGPT rather than its usual model classes.

Both sides: GRPO with beta 0 (no reference model is built or run on either side), one
optimisation pass per batch of samples (num_iterations 1, so the importance ratio is exactly 1
and neither side recomputes the sampling policy's log-probs), normalised group advantages
(mean / std of the group), clip epsilon 0.2, token-mean loss over the step (TRL's default
`loss_type="dapo"`, minigpt's default `aggregation="token"`), temperature 1.0, top-p 1.0, top-k
off, the same lr (constant), AdamW betas (0.9, 0.99), no weight decay, grad clip 1.0, no
warmup, no evaluation, no checkpoints, metrics logged every step (as `minigpt grpo` does), the
same reward function `vowel_share` (the share of a completion's characters that are vowels:
cheap, deterministic, never the bottleneck). A step's time is the wall time from one step end
to the next (the first from the start of training), so it includes drawing the prompts,
sampling, scoring and the update on both sides; the table shows the median over the steps
after `--warmup` warm-up steps, and the median time of the rollout part of a step (minigpt:
`GRPOObjective.make_batches`; TRL: `GRPOTrainer._generate_and_score_completions`: sampling,
decoding, rewards, advantages). Each side runs in its own process so that nothing carries over
between them (minigpt's loop changes glibc malloc settings, see `minigpt.train.allocator`;
thread pools; memory). Run it on a quiet machine.

Prompts are conversational on both sides: one user message "Continue the story:\\n\\n<text>",
the text cut from the tokenized corpus so that the prompt rendered through the chat template
(generation prompt `<|im_start|>assistant\\n` included) is about `--prompt_len` tokens.
minigpt renders it with `render_prompt` (equal by construction to `apply_chat_template(...,
add_generation_prompt=True)`, which is what TRL does), so both sides feed the model the same
prompt ids; the table shows the prompt tokens per step of each side to confirm it. Every
step sees fresh prompts (`--prompts` x (warm-up + timed steps) of them).

EOS: both sides stop a row at `<|im_end|>` or `<|endoftext|>` (minigpt: `chat_eos_ids`, as
`minigpt grpo`; TRL: the tokenizer's EOS plus the model's `generation_config.eos_token_id`,
which this benchmark sets to the same two ids). A randomly initialised model samples one of
them with probability about 2 / vocab per token, so a few rows per step end early, at random,
on each side. Rows ending early change no compute on either side (the batch is decoded until
its last row stops, and the training forward is padded to the longest row), so this is
accepted; the table shows the completion tokens per step of each side.

TRL settings that differ from TRL's defaults, and why:
  - `gradient_checkpointing=False`: TRL turns it on by default, but MiniGPT does not support
    it (`supports_gradient_checkpointing = False`), and the minigpt side does not
    checkpoint either, so both sides do the same compute.
  - `num_generations`, `per_device_train_batch_size`, `max_completion_length`: the benchmark's
    settings; `beta=0.0` is TRL's default already (so `ref_model` stays None: TRL 1.16 would
    otherwise build the reference with `create_model_from_path`, which fails on MiniGPT for
    lack of `config.auto_map`, see benchmarks/bench_dpo.py).
  - `disable_dropout=True`: the minigpt side sets dropout to 0 as `minigpt grpo` does (the
    random init has dropout 0 anyway).
  - `adam_beta2=0.99`, `weight_decay=0.0`, `lr_scheduler_type="constant"`, `logging_steps=1`:
    the minigpt side's values (GRPO_TRAIN_DEFAULTS). Irrelevant to speed.
TRL workaround: none needed; nothing in TRL is patched. Instrumentation only: a subclass of each
side's rollout method records its time and the prompt / completion token counts of its output;
neither changes what is computed.

    python benchmarks/bench_grpo.py                                      # small preset, 16 x 4 x 64
    python benchmarks/bench_grpo.py --llama                              # + TRL on the Llama export
    python benchmarks/bench_grpo.py --preset tiny --steps 2 --warmup 1 --prompts 4 --new_tokens 16   # quick check
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

from _harness import compare_sides, side_parser, story_documents, write_report  # benchmarks/_harness.py (scripts run from benchmarks/)

SIDES = ("minigpt", "trl")
LLAMA = "trl_llama"
LABELS = {
    "minigpt": "minigpt (Trainer + GRPOObjective, rollout engine)",
    "trl": "TRL GRPOTrainer (model.generate)",
    LLAMA: "(extra) TRL GRPOTrainer on the weights as transformers Llama",
}
PROMPT_PREFIX = "Continue the story:\n\n"
VOWELS = frozenset("aeiouAEIOU")


def vowel_share(prompts, completions, **kwargs) -> list[float]:
    """The reward of both sides: vowels / characters of each completion (0.0 when empty).
    A completion is a string (minigpt, TRL non-conversational) or a message list (TRL
    conversational: the last message's content)."""
    out = []
    for c in completions:
        text = c if isinstance(c, str) else c[-1]["content"]
        out.append(sum(ch in VOWELS for ch in text) / len(text) if text else 0.0)
    return out


# ----------------------------------------------------------------------------------- set-up
def build_prompts(tok, docs: list[str], n: int, prompt_len: int) -> list[str]:
    """`n` user messages whose rendered prompt (template and generation prompt included) is
    about `prompt_len` tokens: consecutive windows of the tokenized documents."""
    from minigpt.tokenizer import render_prompt

    probe = "word"
    overhead = len(render_prompt(tok, [{"role": "user", "content": PROMPT_PREFIX + probe}])) - len(tok(probe, add_special_tokens=False)["input_ids"])
    content = max(1, prompt_len - overhead)
    stream: list[int] = []
    sep = tok("\n\n", add_special_tokens=False)["input_ids"]
    for ids in tok(docs, add_special_tokens=False)["input_ids"]:
        stream += ids + sep
        if len(stream) >= n * content + 1000:
            break
    out = []
    for i in range(n):
        ids = [stream[(i * content + j) % len(stream)] for j in range(content)]
        out.append(PROMPT_PREFIX + (tok.decode(ids).strip() or "."))
    return out


def prepare(args, work: Path) -> dict:
    """Save the initial model + tokenizer to work/init and the prompts to work/prompts.jsonl."""
    import torch

    from minigpt.model import MiniGPTConfig, MiniGPTForCausalLM, count_parameters
    from minigpt.tokenizer import load_tokenizer, render_prompt, train_tokenizer

    init = work / "init"
    docs, source = story_documents(args.seed)
    if args.model:
        from minigpt.model.loading import load_base_model

        net, tok = load_base_model(args.model)
    else:
        cfg = MiniGPTConfig.from_preset(args.preset)
        t = time.perf_counter()
        tok = train_tokenizer(docs, vocab_size=cfg.vocab_size, out_dir=work / "tokenizer")
        print(f"tokenizer: {len(tok)} tokens trained on {source} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        torch.manual_seed(args.seed)
        net = MiniGPTForCausalLM(cfg)
    if args.prompt_len + args.new_tokens > net.config.max_position_embeddings:
        raise SystemExit(f"--prompt_len + --new_tokens exceeds the model's context ({net.config.max_position_embeddings})")
    net.save_pretrained(init)
    tok.save_pretrained(init)
    tok = load_tokenizer(init)
    n = args.prompts * (args.steps + args.warmup)  # fresh prompts every step, one pass on each side
    prompts = build_prompts(tok, docs, n, args.prompt_len)
    lengths = [len(render_prompt(tok, [{"role": "user", "content": p}])) for p in prompts]
    with open(work / "prompts.jsonl", "w", encoding="utf-8") as f:
        for p in prompts:
            f.write(json.dumps({"prompt": p}, ensure_ascii=False) + "\n")
    return {
        "params": count_parameters(net),
        "text": source,
        "prompts": n,
        "prompt_tokens": {"min": min(lengths), "mean": statistics.mean(lengths), "max": max(lengths)},
        "config": {k: getattr(net.config, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size", "vocab_size")},
    }


# ----------------------------------------------------------------------------------- workers
class _Rollouts:
    """Per rollout: seconds, real prompt tokens, real completion tokens, rows, padded width."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.seconds, self.prompt_tokens, self.completion_tokens, self.rows, self.widths = [], [], [], [], []

    def add(self, seconds: float, prompt_mask, completion_mask):
        self.seconds.append(seconds)
        self.prompt_tokens.append(int(prompt_mask.sum()))
        self.completion_tokens.append(int(completion_mask.sum()))
        self.rows.append(int(completion_mask.shape[0]))
        self.widths.append(int(prompt_mask.shape[1] + completion_mask.shape[1]))


def _summary(times: list[float], warmup: int, r: _Rollouts, max_tokens: int, extra: dict) -> dict:
    timed = times[warmup:] or times
    rollout = r.seconds[warmup:] or r.seconds
    full = [n * max_tokens for n in r.rows]
    return {
        "step_s": statistics.median(timed),
        "rollout_s": statistics.median(rollout) if rollout else float("nan"),
        "step_times_s": times,
        "rollout_times_s": r.seconds,
        "steps": len(times),
        "prompt_tokens_per_step": statistics.mean(r.prompt_tokens) if r.prompt_tokens else float("nan"),
        "completion_tokens_per_step": statistics.mean(r.completion_tokens) if r.completion_tokens else float("nan"),
        "completion_tokens_if_no_eos": statistics.mean(full) if full else float("nan"),
        "rows_per_step": statistics.mean(r.rows) if r.rows else float("nan"),
        "padded_width": statistics.mean(r.widths) if r.widths else float("nan"),
        **extra,
    }


def worker_minigpt(args, work: Path) -> dict:
    import torch

    from minigpt.data.prompts import PromptDataset, collate_prompts
    from minigpt.objectives.grpo import GRPOObjective
    from minigpt.model.loading import load_base_model
    from minigpt.tokenizer.chat import chat_eos_ids
    from minigpt.inference.options import SamplingOptions
    from minigpt.objectives.config import GRPOConfig
    from minigpt.rewards.functions import CombinedReward
    from minigpt.train.callbacks import Callback
    from minigpt.train.config import TrainConfig
    from minigpt.train.loop import Trainer

    t = time.perf_counter()
    net, tok = load_base_model(work / "init")
    net.config.dropout = 0.0  # as `minigpt grpo`: the first pass's ratio is exactly 1
    ds = PromptDataset(str(work / "prompts.jsonl"), tok)
    config = GRPOConfig(group_size=args.group, beta=0.0, num_iterations=1)
    sampling = SamplingOptions(max_new_tokens=args.new_tokens, temperature=1.0, top_p=1.0, top_k=0)
    rollouts = _Rollouts()

    class TimedGRPOObjective(GRPOObjective):
        """GRPOObjective unchanged, except that each rollout's time and token counts are recorded."""

        def make_batches(self, model, batch):
            t_roll = time.perf_counter()
            out = super().make_batches(model, batch)
            comp = torch.cat([mb["completion_mask"] for mb in out])  # one pass (num_iterations 1)
            attn = torch.cat([mb["attention_mask"] for mb in out])
            rollouts.add(time.perf_counter() - t_roll, attn[:, : attn.shape[1] - comp.shape[1]], comp)
            return out

    eos = chat_eos_ids(tok)
    objective = TimedGRPOObjective(
        config, sampling, CombinedReward([("vowel_share", vowel_share, 1.0)]), tok, None, torch.bfloat16, eos, tok.pad_token_id, grad_accum=1
    )

    class StepTimer(Callback):
        def __init__(self):
            self.times: list[float] = []
            self.last = 0.0

        def on_train_start(self, trainer):
            rollouts.reset()
            self.last = time.perf_counter()

        def on_step_end(self, trainer, metrics):
            now = time.perf_counter()
            self.times.append(now - self.last)
            self.last = now

    timer = StepTimer()
    cfg = TrainConfig(
        max_steps=args.warmup + args.steps, batch_size=args.prompts, grad_accum=1, lr=args.lr, min_lr_ratio=1.0,
        warmup_steps=0, weight_decay=0.0, beta2=0.99, grad_clip=1.0, precision="bf16", device="cpu", seed=args.seed,
        eval_interval=0, eval_batches=0, save_interval=0, log_interval=1, progress=False, tensorboard=False,
    )
    trainer = Trainer(net, objective, ds, cfg, work / "run_minigpt", collate_fn=collate_prompts, callbacks=[timer], save_with_model=tok)
    setup_s = time.perf_counter() - t
    trainer.fit(overwrite=True)
    return _summary(timer.times, args.warmup, rollouts, args.new_tokens, {
        "setup_s": setup_s,
        "mean_loss": statistics.mean(h["loss"] for h in trainer.history),
        "mean_reward": statistics.mean(h["mean_reward"] for h in trainer.history if "mean_reward" in h),
        "model_class": type(net).__name__,
        "eos_ids": eos,
    })


def worker_trl(args, work: Path, init_name: str = "init") -> dict:
    import datasets
    import trl
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    import minigpt  # noqa: F401  (registers MiniGPT with AutoModelForCausalLM)
    from minigpt.tokenizer.chat import chat_eos_ids
    from minigpt.tokenizer import load_tokenizer

    datasets.disable_progress_bars()
    t = time.perf_counter()
    init = str(work / init_name)
    model = AutoModelForCausalLM.from_pretrained(init)
    tok = load_tokenizer(work / "init")
    eos = chat_eos_ids(tok)
    model.generation_config.eos_token_id = eos  # the same stop ids as the minigpt side
    rows = [json.loads(line) for line in open(work / "prompts.jsonl", encoding="utf-8")]
    train = datasets.Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}]} for r in rows])
    config = GRPOConfig(
        output_dir=str(work / f"run_trl_{init_name}"),
        per_device_train_batch_size=args.prompts * args.group, gradient_accumulation_steps=1,
        num_generations=args.group, max_completion_length=args.new_tokens, beta=0.0, num_iterations=1,
        temperature=1.0, top_p=1.0, top_k=0, bf16=True, use_cpu=True, gradient_checkpointing=False,
        disable_dropout=True, learning_rate=args.lr, weight_decay=0.0, adam_beta2=0.99, max_grad_norm=1.0,
        lr_scheduler_type="constant", warmup_steps=0, max_steps=args.warmup + args.steps, save_strategy="no",
        eval_strategy="no", logging_steps=1, report_to="none", disable_tqdm=True, dataloader_num_workers=0,
        seed=args.seed, log_completions=False,
    )
    rollouts = _Rollouts()

    class TimedGRPOTrainer(GRPOTrainer):
        """GRPOTrainer unchanged, except that each rollout's time and token counts are recorded."""

        def _generate_and_score_completions(self, inputs):
            t_roll = time.perf_counter()
            out = super()._generate_and_score_completions(inputs)
            rollouts.add(time.perf_counter() - t_roll, out["prompt_mask"], out["completion_mask"])
            return out

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []
            self.last = 0.0

        def on_train_begin(self, a, state, control, **kw):
            rollouts.reset()
            self.last = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            now = time.perf_counter()
            self.times.append(now - self.last)
            self.last = now

    timer = StepTimer()
    trainer = TimedGRPOTrainer(model=model, reward_funcs=vowel_share, args=config, train_dataset=train, processing_class=tok, callbacks=[timer])
    setup_s = time.perf_counter() - t
    out = trainer.train()
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    return _summary(timer.times, args.warmup, rollouts, args.new_tokens, {
        "setup_s": setup_s,
        "mean_loss": out.metrics.get("train_loss"),
        "mean_reward": statistics.mean(rewards) if rewards else None,
        "model_class": type(model).__name__,
        "train_runtime_s": out.metrics.get("train_runtime"),
        "optim": str(config.optim),
        "trl_version": trl.__version__,
        "reference_model": trainer.ref_model is not None,
        "eos_ids": list(trainer.eos_token_ids),
    })


def worker(kind: str, args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    if kind == "minigpt":
        r = worker_minigpt(args, work)
    else:
        r = worker_trl(args, work, init_name="llama" if kind == LLAMA else "init")
    r["threads"] = torch.get_num_threads()
    return r


# ----------------------------------------------------------------------------------- report
def table(rows: dict) -> str:
    ref = rows["trl"]["step_s"]
    lines = [
        "| side | step time (s) | ratio vs TRL | rollout part (s) | rest of step (s) | prompt tokens/step | "
        "completion tokens/step (of max) | padded width | set-up (s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for kind in [k for k in (*SIDES, LLAMA) if k in rows]:
        r = rows[kind]
        lines.append(
            f"| {LABELS[kind]} | {r['step_s']:.3f} | {r['step_s'] / ref:.2f}x | {r['rollout_s']:.3f} | "
            f"{r['step_s'] - r['rollout_s']:.3f} | {r['prompt_tokens_per_step']:.0f} | "
            f"{r['completion_tokens_per_step']:.0f} ({r['completion_tokens_if_no_eos']:.0f}) | {r['padded_width']:.0f} | {r['setup_s']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = side_parser(__doc__, (*SIDES, LLAMA), out="runs/bench_grpo.json", steps=5, lr=1e-6)
    p.add_argument("--prompts", type=int, default=16, help="prompts per step")
    p.add_argument("--group", type=int, default=4, help="completions per prompt (group_size / num_generations)")
    p.add_argument("--new_tokens", type=int, default=64, help="max new tokens per completion")
    p.add_argument("--prompt_len", type=int, default=64, help="tokens of a rendered prompt (about)")
    a = p.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker, a)))
        return
    keys = ("prompts", "group", "new_tokens", "prompt_len", "steps", "warmup", "lr", "seed", "threads")
    info, rows = compare_sides(__file__, a, prepare, SIDES, LLAMA, keys)  # one after another, each in a fresh process

    what = a.model or f"preset {a.preset} (random init, seed {a.seed})"
    header = (
        f"GRPO (beta 0, num_iterations 1) step time on {what}: {info['params'] / 1e6:.1f} M params; "
        f"{a.prompts} prompts x group {a.group} x {a.new_tokens} new tokens, prompts {info['prompt_tokens']['mean']:.0f} tokens "
        f"(chat template), bf16 on CPU, {rows['minigpt']['threads']} threads; median of {a.steps} steps after {a.warmup} warm-up; "
        f"text: {info['text']}"
    )
    ratio = rows["minigpt"]["step_s"] / rows["trl"]["step_s"]
    verdict = f"target minigpt <= 0.50x TRL: {ratio:.2f}x ({'met' if ratio <= 0.5 else 'NOT met'})"
    rewards = "rewards (mean over steps): " + ", ".join(f"{k} {rows[k]['mean_reward']:.3f}" for k in rows if rows[k].get("mean_reward") is not None)
    write_report(a, header, table(rows), verdict, info, rows, {"ratio_vs_trl": ratio}, notes=[rewards])


if __name__ == "__main__":
    main()
