"""GSM8K with SFT then GRPO, measured (issue 5 §6). Not part of the test suite: it needs
../shared/data/gsm8k and a trained chat model, and takes about 20–25 minutes on 2 CPU cores
with the defaults.

What it measures: greedy exact-answer accuracy on the first --n-test GSM8K test problems
  start  the starting chat model (default /work/runs/sft_bench/full_en: 25.8 M parameters,
         pretrained on ~2 MiB of text, SFT on Alpaca; the largest model trained here),
  sft    after supervised fine-tuning on GSM8K train in the reasoning format,
  grpo   after GRPO from the SFT model with the answer reward,
plus the format rate (share of completions that are exactly `<think>…</think><answer>…</answer>`)
and the mean completion length. A model of this size has essentially no arithmetic ability:
near-zero accuracy is the expected outcome and is reported as measured. The format rate is the
figure that SFT is expected to move.

Stages (each skipped when its output is already there):
  data   GSM8K train (7,473 problems) -> OUT/gsm8k_sft.jsonl, one `{"messages": [user question,
         assistant reply]}` record each; the reply is
         `<think>{solution without its "#### N" line, calculator annotations <<…>> removed}</think><answer>{N}</answer>`
         (N without thousands separators).
  sft    `minigpt.recipes.sft.sft(...)` for a wall-clock budget (--sft-time, default 480 s: the
         step count is fitted to it from the first steps' speed; or a fixed --sft-steps): lr 2e-4
         (the recipe default), batch 8 packed blocks of 512 tokens, 2 % (at most 100)
         conversations held out for the assistant-token loss.
  grpo   `minigpt.recipes.grpo.grpo(...)` from OUT/sft for --grpo-steps on GSM8K train prompts
         (the question as the user turn; the reference solution as the `answer` column): reward
         `answer,format:0.1`, group 8, --grpo-batch prompts per step, temperature 0.7,
         --grpo-max-new-tokens new tokens, β 0 (no reference model), lr --grpo-lr, bf16; no
         held-out evaluation inside the recipe (this script evaluates on the test set).
  eval   `minigpt.recipes.grpo.evaluate_policy` (greedy, --max-new-tokens, bf16 engine) with
         the reward `answer,format` on the first --n-test problems of GSM8K test, for each
         model that exists.

Deviations from the recipes' defaults and why: GRPO lr 5e-6 (default 1e-6, tuned for larger
models: a 26 M model moves little at 1e-6 in a few dozen steps); temperature 0.7 (default 1.0:
T 1 samples of so small a model are mostly noise, so no group ever finds an answer); 192 new
tokens during GRPO (90 % of the SFT replies fit in 192 tokens; 256 at evaluation covers 96 %).

Runtime on 2 CPU cores (estimated: tiny runs of this script with the same model, at
throughputs measured while another job shared the cores — SFT of this model ≈ 2,500 tokens/s,
sampling ≈ 30–50 ms per decode step at 16–64 rows): SFT 8 min (the budget) + 1 min of held-out
loss and saving; GRPO ≈ 10–14 s per step (32 completions of up to 192 tokens, then one
forward/backward over them) × 40 ≈ 7–9 min; each evaluation of 200 problems (4 batches of 64,
up to 256 greedy tokens) ≈ 0.5–1.5 min; loading ≈ 1 min: about 20–25 minutes in all. When the
cores are heavily shared everything runs 3–5× slower (measured here).

    python benchmarks/bench_gsm8k.py --model /work/runs/sft_bench/full_en --out /work/runs/gsm8k_bench

Prints one table (stage, accuracy, format rate, mean completion tokens, training wall time,
evaluation wall time) and writes OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"
TRAIN, TEST = DATA / "train.jsonl", DATA / "test.jsonl"

_CALC = re.compile(r"<<[^>]*>>")


def reasoning_reply(solution: str) -> str:
    """A GSM8K solution ("steps …\\n#### 1,234") as a reasoning-format reply:
    `<think>steps …</think><answer>1234</answer>` (calculator annotations `<<48/2=24>>` dropped)."""
    body, sep, final = solution.rpartition("####")
    if not sep:
        raise ValueError(f"not a GSM8K solution (no '####'): {solution[:60]!r}")
    return f"<think>{_CALC.sub('', body).strip()}</think><answer>{final.strip().replace(',', '')}</answer>"


def write_sft_data(path: Path) -> int:
    """GSM8K train -> `{"messages": [...]}` JSONL at `path`; returns the record count."""
    n = 0
    with open(TRAIN, encoding="utf-8") as src, open(path, "w", encoding="utf-8") as dst:
        for line in src:
            if not line.strip():
                continue
            rec = json.loads(line)
            messages = [{"role": "user", "content": rec["question"]}, {"role": "assistant", "content": reasoning_reply(rec["answer"])}]
            dst.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
            n += 1
    return n


def _done(path: Path) -> bool:
    return (path / "metrics.jsonl").is_file() and (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def evaluate(model_dir: str, n_test: int, max_new_tokens: int, precision: str) -> dict:
    """Greedy answer accuracy, format rate and mean length on the first `n_test` test problems."""
    from minigpt.data.prompts import PromptDataset
    from minigpt.evaluation.policy import evaluate_policy
    from minigpt.model.loading import load_base_model
    from minigpt.rewards.functions import make_reward

    model, tok = load_base_model(model_dir)
    records = []
    with open(TEST, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                records.append(json.loads(line))
            if len(records) >= n_test:
                break
    ds = PromptDataset(records, tok)
    t0 = time.time()
    ev = evaluate_policy(model.eval(), tok, ds, make_reward("answer,format"), max_new_tokens, precision)
    return {
        "problems": len(ds),
        "accuracy": ev["reward/answer"],
        "format_rate": ev["reward/format"],
        "mean_length": ev["completion_length"],
        "eval_seconds": time.time() - t0,
    }


def run(args) -> dict:
    from minigpt.inference.options import SamplingOptions
    from minigpt.objectives.config import GRPO_TRAIN_DEFAULTS, GRPOConfig
    from minigpt.recipes.grpo import grpo
    from minigpt.objectives.config import SFT_TRAIN_DEFAULTS
    from minigpt.recipes.sft import sft
    import dataclasses

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    results["settings"] = dict(vars(args))

    def save():
        results_file.write_text(json.dumps(results, indent=2))

    def eval_stage(name: str, model_dir: str) -> None:
        key = f"eval_{name}"
        if key in results and results[key].get("problems") == args.n_test and results[key].get("max_new_tokens") == args.max_new_tokens:
            print(f"[eval {name}] already done")
            return
        print(f"[eval {name}] greedy on {args.n_test} GSM8K test problems, {args.max_new_tokens} new tokens ...", flush=True)
        results[key] = {**evaluate(model_dir, args.n_test, args.max_new_tokens, args.precision), "max_new_tokens": args.max_new_tokens}
        print(f"[eval {name}] {results[key]}", flush=True)
        save()

    if "start" in args.stages:
        eval_stage("start", args.model)

    data_file = out / "gsm8k_sft.jsonl"
    sft_dir, grpo_dir = out / "sft", out / "grpo"
    if "sft" in args.stages:
        if _done(sft_dir) and "sft" in results:
            print(f"[sft] already done: {sft_dir}")
        else:
            for stale in ("eval_sft", "grpo", "eval_grpo"):  # measured on an older SFT model
                results.pop(stale, None)
            n = write_sft_data(data_file)
            print(f"[sft] {n} GSM8K train problems -> {data_file}; training for {args.sft_steps or 'a budget of'} "
                  f"{'steps' if args.sft_steps else f'{args.sft_time:.0f} s'} ...", flush=True)
            train = dataclasses.replace(
                SFT_TRAIN_DEFAULTS, max_steps=args.sft_steps, max_time=args.sft_time, batch_size=args.sft_batch, lr=args.sft_lr,
                eval_interval=0, save_interval=0, keep_last=1, log_interval=10, seed=args.seed, precision=args.precision,
            )
            t0 = time.time()
            m = sft(model=args.model, data=str(data_file), out=str(sft_dir), max_length=512, val_fraction=0.02, max_val=100, train=train, overwrite=True)
            results["sft"] = {k: v for k, v in m.items() if isinstance(v, (int, float))}
            results["sft"]["wall_seconds"] = time.time() - t0
            save()
        eval_stage("sft", str(sft_dir))

    if "grpo" in args.stages:
        if not _done(sft_dir):
            raise SystemExit(f"no SFT model in {sft_dir}; run the sft stage first")
        if _done(grpo_dir) and "grpo" in results:
            print(f"[grpo] already done: {grpo_dir}")
        else:
            results.pop("eval_grpo", None)
            print(f"[grpo] {args.grpo_steps} steps × {args.grpo_batch} prompts × group 8 ...", flush=True)
            train = dataclasses.replace(
                GRPO_TRAIN_DEFAULTS, max_steps=args.grpo_steps, batch_size=args.grpo_batch, lr=args.grpo_lr,
                eval_interval=0, save_interval=0, keep_last=1, log_interval=1, seed=args.seed, precision=args.precision,
            )
            t0 = time.time()
            m = grpo(
                model=str(sft_dir), data=str(TRAIN), out=str(grpo_dir), reward="answer,format:0.1", grpo=GRPOConfig(group_size=8),
                sampling=SamplingOptions(max_new_tokens=args.grpo_max_new_tokens, temperature=0.7), val_fraction=0.0, train=train, overwrite=True,
            )
            results["grpo"] = {k: v for k, v in m.items() if isinstance(v, (int, float))}
            results["grpo"]["wall_seconds"] = time.time() - t0
            save()
        eval_stage("grpo", str(grpo_dir))
    save()
    return results


def report(results: dict) -> None:
    n = results.get("settings", {}).get("n_test")
    print(f"\nGSM8K test, first {n} problems, greedy (accuracy = exact final answer; format = <think>…</think><answer>…</answer>):")
    print("| stage | accuracy | format rate | mean completion tokens | train wall (s) | eval wall (s) |\n| --- | --- | --- | --- | --- | --- |")
    for name, train_key in (("start", None), ("sft", "sft"), ("grpo", "grpo")):
        ev = results.get(f"eval_{name}")
        if not ev:
            continue
        tr = results.get(train_key, {}) if train_key else {}
        wall = f"{tr['wall_seconds']:.0f}" if "wall_seconds" in tr else "-"
        print(f"| {name} | {ev['accuracy']:.3f} ({round(ev['accuracy'] * ev['problems'])}/{ev['problems']}) | {ev['format_rate']:.3f} | "
              f"{ev['mean_length']:.1f} | {wall} | {ev['eval_seconds']:.0f} |")
    s, g = results.get("sft"), results.get("grpo")
    if s:
        print(f"\nSFT: {s.get('steps', '?')} steps; held-out assistant-token loss {s.get('val_loss_before', float('nan')):.3f} -> {s.get('val_loss', float('nan')):.3f}")
    if g:
        keys = ("mean_reward", "reward/answer", "reward/format", "frac_zero_std", "completion_length")
        print(f"GRPO: {g.get('steps', '?')} steps in {g.get('train_seconds', float('nan')):.0f} s; last step: "
              + ", ".join(f"{k} {g[k]:.3f}" for k in keys if k in g))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="/work/runs/sft_bench/full_en", help="the starting chat model")
    ap.add_argument("--out", default="runs/gsm8k_bench")
    ap.add_argument("--stages", nargs="+", default=["start", "sft", "grpo"], choices=["start", "sft", "grpo"])
    ap.add_argument("--n-test", type=int, default=200, help="GSM8K test problems evaluated (the first N)")
    ap.add_argument("--max-new-tokens", type=int, default=256, help="evaluation completion limit")
    ap.add_argument("--sft-steps", type=int, default=0, help="SFT steps (0 = as many as fit --sft-time)")
    ap.add_argument("--sft-time", type=float, default=480.0, help="SFT wall-clock budget in seconds")
    ap.add_argument("--sft-batch", type=int, default=8)
    ap.add_argument("--sft-lr", type=float, default=2e-4)
    ap.add_argument("--grpo-steps", type=int, default=40)
    ap.add_argument("--grpo-batch", type=int, default=4, help="prompts per GRPO step (× group 8 completions)")
    ap.add_argument("--grpo-lr", type=float, default=5e-6)
    ap.add_argument("--grpo-max-new-tokens", type=int, default=192)
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--seed", type=int, default=1337)
    args = ap.parse_args()
    if not TRAIN.is_file() or not TEST.is_file():
        raise SystemExit(f"GSM8K not found under {DATA}")
    if args.sft_steps <= 0 and not args.sft_time:
        raise SystemExit("give --sft-steps or --sft-time")
    report(run(args))


if __name__ == "__main__":
    main()
