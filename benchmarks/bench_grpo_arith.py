"""GRPO vs GSPO on a verifiable task the project generates (issue 5 §6, first bullet).

Task: multi-digit arithmetic worked in `<think>` column steps (`minigpt.data.synthetic`), the
task the quickstart's SFT stage teaches. Start model: an SFT model that learned it: by default
the quickstart's `runs/quickstart/sft` given `--extra-sft-seconds` (240) more SFT on 20,000 fresh
arithmetic conversations (the held-out problems excluded), so that RL starts from a model that
gets a fair share of problems right; `--extra-sft-seconds 0` starts from `--sft` as it is. Held-out: the quickstart's 200 held-out problems
(`runs/quickstart/data/arithmetic_heldout.jsonl`, hash-disjoint from the SFT problems); RL
prompts are fresh problems of the same generator that exclude the held-out ones.

For each seed, two runs of equal steps from the same start: GRPO (token-level ratio, token-mean
loss) and GSPO (sequence-level ratio and clipping, sequence-mean loss). Everything else is
shared: reward = the answer check (1 if the last `<answer>` equals the reference), group size,
prompts per step, temperature, learning rate, β (KL to the start model). The table gives greedy
held-out accuracy of the start model and after each run, mean ± standard deviation over seeds
(the seed changes the RL prompt order and the sampling), and the per-seed figures.

    python benchmarks/bench_grpo_arith.py                      # 3 seeds × (GRPO, GSPO), ~15 min
    python benchmarks/bench_grpo_arith.py --steps 100 --seeds 1 2 3 --out /work/runs/grpo_arith

Run it on a quiet machine (2 CPU cores: concurrent jobs slow every run several-fold).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from minigpt.train.config import TrainConfig


def make_prompts(heldout_file: Path, n: int, seed: int, ops: str, out: Path) -> Path:
    from minigpt.data.synthetic import make_arithmetic_prompts

    held = [json.loads(line) for line in heldout_file.read_text().splitlines() if line.strip()]
    prompts = make_arithmetic_prompts(n, seed=seed, ops=ops, exclude=held)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    return out


def extra_sft(model: str, heldout_file: Path, out: Path, seconds: float) -> None:
    """SFT `model` on 20,000 fresh arithmetic conversations (held-out problems excluded) for
    `seconds` into `out/sft`."""
    from minigpt.data.synthetic import arithmetic_conversations
    from minigpt.recipes.sft import sft

    held = [json.loads(line) for line in heldout_file.read_text().splitlines() if line.strip()]
    convs = arithmetic_conversations(20000, seed=11, exclude={p["prompt"] for p in held})
    data = out / "arith_sft.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps(c) + "\n" for c in convs))
    sft(
        model=model, data=str(data), out=str(out / "sft"), max_length=256, overwrite=True,
        train=TrainConfig(max_steps=0, max_time=seconds, batch_size=16, lr=5e-4, warmup_steps=20, eval_interval=0, save_interval=0, keep_last=1, progress=False, tensorboard=False),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sft", default="runs/quickstart/sft", help="start model (an SFT model that learned the task)")
    ap.add_argument("--heldout", default="runs/quickstart/data/arithmetic_heldout.jsonl", help="held-out problems (>= 200)")
    ap.add_argument("--out", default="runs/grpo_arith")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--prompts", type=int, default=16, help="prompts per step")
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--ops", default="+-*", help="operations of the RL prompts")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--extra-sft-seconds", type=float, default=240.0, help="arithmetic-only SFT of --sft before RL (0 = none)")
    ap.add_argument("--eval-samples", type=int, default=4, help="sampled completions per held-out problem (mean@k at the training temperature)")
    args = ap.parse_args()

    from minigpt.recipes.grpo import grpo

    out = Path(args.out)
    heldout = Path(args.heldout)
    start = args.sft
    if args.extra_sft_seconds > 0:
        start = str(out / "sft")
        if not (out / "sft" / "config.json").is_file():
            extra_sft(args.sft, heldout, out, args.extra_sft_seconds)
    prompts = make_prompts(heldout, 4000, 7, args.ops, out / "rl_prompts.jsonl")
    results: dict = {"settings": vars(args), "runs": []}
    start_acc = None
    for seed in args.seeds:
        for algo in ("grpo", "gspo"):
            t0 = time.time()
            m = grpo(
                model=start, data=str(prompts), eval_data=str(heldout), out=str(out / f"{algo}_s{seed}"), reward="answer",
                algorithm=algo, group_size=args.group, beta=args.beta, temperature=args.temperature,
                max_new_tokens=args.max_new_tokens, max_val=None, eval_samples=args.eval_samples,
                train=TrainConfig(
                    max_steps=args.steps, batch_size=args.prompts, lr=args.lr, min_lr_ratio=1.0, warmup_steps=0, weight_decay=0.0,
                    beta2=0.99, eval_interval=0, save_interval=args.steps, log_interval=1, seed=seed, progress=False, tensorboard=False,
                ),
                overwrite=True,
            )
            start_acc = m["val_reward/answer_before"]
            start_sampled = m.get("val_sampled_reward/answer_before", float("nan"))
            results["runs"].append({
                "algorithm": algo, "seed": seed, "before": start_acc, "after": m["val_reward/answer"],
                "sampled_before": start_sampled, "sampled_after": m.get("val_sampled_reward/answer", float("nan")),
                "seconds": time.time() - t0,
            })
            print(
                f"{algo} seed {seed}: held-out greedy accuracy {start_acc:.3f} -> {m['val_reward/answer']:.3f}; "
                f"sampled mean@{args.eval_samples} {start_sampled:.3f} -> {m.get('val_sampled_reward/answer', float('nan')):.3f} ({time.time() - t0:.0f} s)",
                flush=True,
            )
    n_held = sum(1 for line in heldout.read_text().splitlines() if line.strip())
    print(f"\nheld-out: {n_held} problems, greedy; {args.steps} steps × {args.prompts} prompts × group {args.group}, lr {args.lr}, beta {args.beta}, T {args.temperature}\n")
    print(f"| model | greedy accuracy (mean ± sd over seeds) | per seed | sampled mean@{args.eval_samples}, T {args.temperature} | per seed |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| SFT (start) | {start_acc:.3f} | | {start_sampled:.3f} | |")
    for algo in ("grpo", "gspo"):
        rows = [r for r in results["runs"] if r["algorithm"] == algo]
        cells = []
        for key in ("after", "sampled_after"):
            vals = [r[key] for r in rows]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells += [f"{statistics.mean(vals):.3f} ± {sd:.3f}", ", ".join(f"{v:.3f}" for v in vals)]
        print(f"| after {algo.upper()} | " + " | ".join(cells) + " |")
    (out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
