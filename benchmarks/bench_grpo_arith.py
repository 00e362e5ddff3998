"""GRPO vs GSPO on a verifiable task the project generates (issue 5 §6, first bullet).

Task: the quickstart's arithmetic (`minigpt quickstart`): integer +, -, × with 1-2 digit operands,
answered as `<think>column steps</think><answer>N</answer>`. The quickstart's second (hybrid) SFT
stage answers three in four problems without working (`<think></think><answer>N</answer>`), so
its model has two behaviours and, decoding greedily, mostly answers without thinking. Start
model, held-out problems and RL prompts are the quickstart's: `RUN/hybrid` (`RUN/sft` for a run
made with `--hybrid_steps 0`), `RUN/data/arithmetic_heldout.jsonl`
(200 problems, hash-disjoint from the SFT problems) and `RUN/data/arithmetic_rl_prompts.jsonl`
(fresh problems, the held-out ones excluded). Run the quickstart first.

For each seed, two runs of equal steps from the same start: GRPO (token-level ratio, token-mean
loss) and GSPO (sequence-level ratio and clipping, sequence-mean loss). Everything else is
shared: reward = the answer check (1 if the last `<answer>` equals the reference), group size,
prompts per step, temperature, learning rate, β. The seed changes the RL prompt order and the
sampling. The table gives, for the start model and after each run (mean ± standard deviation
over seeds, and per seed): greedy held-out accuracy, sampled mean@k at the training temperature,
and the mean greedy reply length in tokens (bare answers are about 11 tokens, worked ones 30+).

    minigpt quickstart                                  # once: runs/quickstart
    python benchmarks/bench_grpo_arith.py               # 3 seeds × (GRPO, GSPO), ~15 min on 2 cores
    python benchmarks/bench_grpo_arith.py --steps 300 --seeds 1 2 3 --out /work/runs/grpo_arith
    python benchmarks/bench_grpo_arith.py --algorithms grpo cispo --seeds 1 2 --num-iterations 4   # CISPO against GRPO, off-policy

Run it on a quiet machine (2 CPU cores: concurrent jobs slow every run several-fold).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from minigpt.inference.options import SamplingOptions
from minigpt.train.config import TrainConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/quickstart", help="a quickstart run directory (sft/ and data/)")
    ap.add_argument("--out", default="runs/grpo_arith")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--steps", type=int, default=60, help="optimizer steps per run (the quickstart's)")
    ap.add_argument("--prompts", type=int, default=8, help="prompts per step")
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--lr", type=float, default=5e-5, help="constant learning rate (the quickstart's)")
    ap.add_argument("--beta", type=float, default=0.0)
    ap.add_argument("--num-iterations", type=int, default=1,
                    help="optimisation passes per rollout batch (`--grpo.num_iterations`); with 1 every pass is on-policy, "
                         "where CISPO's gradient equals GRPO's")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--algorithms", nargs="+", default=["grpo", "gspo"], choices=["grpo", "gspo", "cispo"],
                    help="the algorithms compared (`--grpo.algorithm`), each from the same start for every seed")
    ap.add_argument("--eval-samples", type=int, default=4, help="sampled completions per held-out problem (mean@k at the training temperature)")
    args = ap.parse_args()

    from minigpt.objectives.config import GRPOConfig
    from minigpt.recipes.grpo import grpo

    out = Path(args.out)
    run = Path(args.run)
    start = run / "hybrid" if (run / "hybrid" / "config.json").is_file() else run / "sft"
    heldout, prompts = run / "data" / "arithmetic_heldout.jsonl", run / "data" / "arithmetic_rl_prompts.jsonl"
    for path in (start / "config.json", heldout, prompts):
        if not path.is_file():
            raise SystemExit(f"{path} is missing: run `minigpt quickstart --out {run}` first")
    results: dict = {"settings": vars(args), "runs": []}
    start_acc = None
    for seed in args.seeds:
        for algo in args.algorithms:
            t0 = time.time()
            m = grpo(
                model=str(start), data=str(prompts), eval_data=str(heldout), out=str(out / f"{algo}_s{seed}"), reward="answer",
                grpo=GRPOConfig(algorithm=algo, group_size=args.group, beta=args.beta, num_iterations=args.num_iterations),
                sampling=SamplingOptions(max_new_tokens=args.max_new_tokens, temperature=args.temperature), max_val=None, eval_samples=args.eval_samples,
                train=TrainConfig(
                    max_steps=args.steps, batch_size=args.prompts, lr=args.lr, min_lr_ratio=1.0, warmup_steps=0, weight_decay=0.0,
                    beta2=0.99, eval_interval=0, save_interval=args.steps, log_interval=1, seed=seed, progress=False, tensorboard=False,
                ),
                overwrite=True,
            )
            start_acc = m["val_reward/answer_before"]
            start_sampled = m.get("val_sampled_reward/answer_before", float("nan"))
            start_len = m["val_completion_length_before"]
            results["runs"].append({
                "algorithm": algo, "seed": seed, "before": start_acc, "after": m["val_reward/answer"],
                "sampled_before": start_sampled, "sampled_after": m.get("val_sampled_reward/answer", float("nan")),
                "length_before": start_len, "length_after": m["val_completion_length"], "seconds": time.time() - t0,
            })
            print(
                f"{algo} seed {seed}: held-out greedy accuracy {start_acc:.3f} -> {m['val_reward/answer']:.3f}; "
                f"sampled mean@{args.eval_samples} {start_sampled:.3f} -> {m.get('val_sampled_reward/answer', float('nan')):.3f}; "
                f"greedy reply {start_len:.1f} -> {m['val_completion_length']:.1f} tokens ({time.time() - t0:.0f} s)",
                flush=True,
            )
    n_held = sum(1 for line in heldout.read_text().splitlines() if line.strip())
    print(f"\nheld-out: {n_held} problems, greedy; {args.steps} steps × {args.prompts} prompts × group {args.group}, lr {args.lr}, beta {args.beta}, T {args.temperature}\n")
    print(
        f"| model | greedy accuracy (mean ± sd over seeds) | per seed | sampled mean@{args.eval_samples}, T {args.temperature} | per seed "
        "| greedy reply tokens | per seed |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(f"| SFT (start) | {start_acc:.3f} | | {start_sampled:.3f} | | {start_len:.1f} | |")
    for algo in args.algorithms:
        rows = [r for r in results["runs"] if r["algorithm"] == algo]
        cells = []
        for key, digits in (("after", 3), ("sampled_after", 3), ("length_after", 1)):
            vals = [r[key] for r in rows]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells += [f"{statistics.mean(vals):.{digits}f} ± {sd:.{digits}f}", ", ".join(f"{v:.{digits}f}" for v in vals)]
        print(f"| after {algo.upper()} | " + " | ".join(cells) + " |")
    (out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
