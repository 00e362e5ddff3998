"""PPO-RLHF on real preference data, measured (issue 5 §6). Not part of the test suite: it needs
../shared/data/hh-rlhf, an SFT model and a reward model (issue 4), and takes about 12 minutes
on 2 CPU cores with the defaults.

What it measures: does PPO against the issue-4 reward model move the SFT policy towards replies
that reward model prefers, on prompts it never trained on, and at what KL cost?

Data. Only the TEST split of HH-RLHF helpful-base exists here (the train file is a Git-LFS
object missing from every snapshot, see ../shared/data/README.md). The reward model was trained
on `split_preference(PreferenceDataset(helpful-base/test, tok, max_length 256).examples, 0.1,
seed 1337)`: 2,105 train / 234 held-out pairs. This script rebuilds exactly that split:

  * PPO samples on the prompts of the reward model's 2,105 TRAIN records (the prompts a reward
    model is normally deployed on; `PromptDataset` extracts the HH prompt), those of more than
    --max-prompt-length tokens skipped (never cut);
  * the win rate is measured on the prompts of the 234 HELD-OUT records, which neither the
    reward model nor PPO has seen.

Stages (each skipped when its output is already there):
  ppo      `minigpt.recipes.ppo.ppo(...)` for --steps optimizer updates from the SFT model; the
           critic starts as a copy of the reward model (the recipe's default, as TRL). One
           rollout = --batch prompts × 1 completion, then --ppo-epochs shuffled passes in
           micro-batches of --mini-batch completions, one update each: with the defaults
           (16 prompts, mini-batch 8, 4 epochs) a rollout makes 8 updates, so 400 steps = 50
           rollouts = 800 sampled completions (0.83 of a pass over the 963 usable prompts).
  winrate  replies of the PPO policy and of the SFT model to the held-out prompts (same
           prompts, same per-batch seeds, T 0.7, top-p 0.9, --max-new-tokens new tokens, as
           benchmarks/bench_preference.py), each scored by the reward model as
           prompt + reply + <|im_end|>; win rate = share of prompts where the PPO reply scores
           higher, ties count half. Also the mean reward and mean reply length of each.

Settings and why they differ from `minigpt ppo`'s defaults or the issue's first sketch:
  * 400 steps of 16-prompt rollouts instead of 60 steps of 8: 60 updates (15 rollouts, 120
    completions) take under 2 minutes and barely move the policy; 400 fill the ~25-minute
    budget with room to spare (see Runtime).
  * temperature 0.7 for the PPO rollouts (TRL PPOConfig's default; the recipe's is 1.0): a
    26 M-parameter model sampled at T 1 writes mostly noise, which the reward model scores
    near-uniformly, so the signal is weak. Log-probs are taken at the same temperature.
  * max_prompt_length 128: 1,142 of the 2,105 training prompts are longer and are skipped
    (never cut), leaving 963.
  * no held-out greedy evaluation inside the recipe (val_fraction 0): the held-out measure is
    the win rate on the reward model's own held-out prompts.
  * otherwise the recipe's defaults: lr 1e-5 constant (critic too), kl_coef 0.1 fixed (k1
    estimator), clip 0.2, vf_coef 0.1, value clip 0.2, γ 0.99, λ 0.95, whitened advantages, bf16.

Runtime on 2 CPU cores, from 4- and 16-step runs of this script with the same models while
another job shared the cores: one 16-prompt rollout with its 8 updates ≈ 11.5 s, so 400 steps
≈ 10 min; the win rate (2 × 234 replies of 64 tokens, plus scoring) ≈ 1.5 min; setup ≈ 15 s:
about 12 minutes in all (2–3× that when the cores are heavily shared).

    python benchmarks/bench_ppo_hh.py --sft /work/runs/sft_bench/full_en --rm /work/runs/pref_bench/rm \\
        --out /work/runs/ppo_hh_bench

Prints the reward / KL curve every --every steps, then the win-rate table; writes
OUT/results.json (OUT/ppo holds the policy, its critic in OUT/ppo/value_model, metrics.jsonl).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HH = DATA / "hh-rlhf" / "helpful-base" / "test.jsonl.gz"

CURVE_KEYS = ("mean_reward", "mean_kl", "rlhf_reward", "kl_coef", "value_loss", "entropy", "approx_kl", "clip_fraction", "completion_length")


def _done(path: Path) -> bool:
    return (path / "metrics.jsonl").is_file() and (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def hh_split(tok, max_length: int, seed: int):
    """The reward model's split of HH helpful-base/test: `(train_records, val_examples)`.

    `train_records` are the raw HH records (`{"chosen", "rejected"}` dicts) of the training
    side, for `PromptDataset`; `val_examples` the held-out `PreferencePair`s (their
    `prompt_ids` are the rendered, left-truncated prompts the reward model was evaluated on)."""
    from minigpt.data.loaders import iter_records
    from minigpt.data.preference import PreferenceDataset, split_preference

    ds = PreferenceDataset(str(HH), tok, max_length=max_length)
    train, val = split_preference(ds.examples, 0.1, seed=seed, max_val=500)
    train_where = {ex.where for ex in train}
    records = [rec for where, rec in iter_records(str(HH)) if where in train_where]
    return records, val


def run_ppo(args, out: Path, records) -> dict:
    from minigpt.inference.options import SamplingOptions
    from minigpt.objectives.config import RLHFConfig
    from minigpt.recipes.ppo import ppo
    from minigpt.train.config import TrainConfig

    train = TrainConfig(
        max_steps=args.steps, batch_size=args.batch, lr=args.lr, min_lr_ratio=1.0, warmup_steps=0, weight_decay=0.0,
        eval_interval=0, eval_batches=0, save_interval=0, keep_last=1, log_interval=1, progress=True, seed=args.seed,
        precision=args.precision,
    )
    return ppo(
        model=args.sft, data=records, out=str(out), reward_model=args.rm, reward="model",
        ppo=RLHFConfig(ppo_epochs=args.ppo_epochs, kl_coef=args.kl_coef, value_learning_rate=args.value_lr, mini_batch_size=args.mini_batch),
        sampling=SamplingOptions(max_new_tokens=args.max_new_tokens, temperature=args.temperature), max_prompt_length=args.max_prompt_length,
        val_fraction=0.0, train=train, overwrite=True,
    )


def curve(metrics_file: Path, every: int) -> list[dict]:
    """Rows of OUT/ppo/metrics.jsonl at step 1, every `every` steps, and the last step."""
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "train/mean_reward" in r]
    if not rows:
        return []
    last = rows[-1]["step"]
    keep = [r for r in rows if r["step"] == 1 or r["step"] % every == 0 or r["step"] == last]
    return [{"step": r["step"], **{k: r.get(f"train/{k}") for k in CURVE_KEYS}} for r in keep]


def win_rate(args, policy_dir: Path, val_examples) -> dict:
    """Reward-model win rate of the PPO policy's replies over the SFT model's on the held-out
    prompts (same prompts, sampling settings and per-batch seeds for both;
    `minigpt.evaluation.policy`)."""
    from minigpt.inference.loading import load_model_and_tokenizer
    from minigpt.model.loading import load_reward_model
    from minigpt.evaluation.policy import sample_replies, win_rate as rm_win_rate

    rm, _ = load_reward_model(args.rm)
    _, tok = load_model_and_tokenizer(args.sft)
    examples = val_examples[: args.prompts] if args.prompts > 0 else val_examples
    prompts = [list(ex.prompt_ids) for ex in examples]
    dtype = torch.bfloat16 if args.precision == "bf16" else None

    def replies(model_dir) -> list[list[int]]:
        model, _ = load_model_and_tokenizer(str(model_dir))
        return sample_replies(model, tok, prompts, args.max_new_tokens, seed=args.seed, dtype=dtype)

    t0 = time.time()
    w = rm_win_rate(rm, tok, prompts, replies(policy_dir), replies(args.sft))
    return {
        "prompts": len(prompts),
        "win_rate": w["win_rate"],
        "sft_mean_reward": w["baseline_mean_reward"],
        "ppo_mean_reward": w["mean_reward"],
        "sft_mean_reply_tokens": w["baseline_mean_reply_tokens"],
        "ppo_mean_reply_tokens": w["mean_reply_tokens"],
        "seconds": time.time() - t0,
    }


def run(args) -> dict:
    from minigpt.inference.loading import load_model_and_tokenizer
    from minigpt.recipes.reward import check_same_tokenizer

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    check_same_tokenizer(args.sft, args.rm, role="the reward model")
    _, tok = load_model_and_tokenizer(args.sft)
    records, val = hh_split(tok, args.max_length, args.seed)
    print(f"HH helpful-base/test: {len(records)} reward-model train records (PPO prompts), {len(val)} held-out (win rate)", flush=True)
    policy_dir = out / "ppo"
    if "ppo" in args.stages:
        if _done(policy_dir) and "ppo" in results:
            print(f"[ppo] already done: {policy_dir}")
        else:
            t0 = time.time()
            m = run_ppo(args, policy_dir, records)
            results["ppo"] = {k: v for k, v in m.items() if isinstance(v, (int, float))}
            results["ppo"]["wall_seconds"] = time.time() - t0
            results["settings"] = {k: v for k, v in vars(args).items()}
            results_file.write_text(json.dumps(results, indent=2))
    if (policy_dir / "metrics.jsonl").is_file():
        results["curve"] = curve(policy_dir / "metrics.jsonl", args.every)
    if "winrate" in args.stages:
        if not _done(policy_dir):
            raise SystemExit(f"no PPO policy in {policy_dir}; run the ppo stage first")
        print(f"[winrate] sampling {args.max_new_tokens} tokens per held-out prompt from the SFT and PPO models ...", flush=True)
        results["winrate"] = win_rate(args, policy_dir, val)
    results_file.write_text(json.dumps(results, indent=2))
    return results


def report(results: dict) -> None:
    rows = results.get("curve") or []
    if rows:
        print("\nPPO training curve (per step; rollout figures repeat over the updates of one rollout):")
        print("| step | " + " | ".join(CURVE_KEYS) + " |")
        print("| --- " * (len(CURVE_KEYS) + 1) + "|")
        for r in rows:
            cells = ["-" if r[k] is None else f"{r[k]:.4f}" for k in CURVE_KEYS]
            print(f"| {r['step']} | " + " | ".join(cells) + " |")
    p = results.get("ppo")
    if p:
        print(f"\nPPO: {p.get('steps')} updates in {p.get('train_seconds', float('nan')):.0f} s of training ({p['wall_seconds']:.0f} s wall with setup); "
              f"{p.get('train_seconds', float('nan')) / max(p.get('steps') or 1, 1):.1f} s per update")
    w = results.get("winrate")
    if w:
        print(f"\nReward-model win rate of PPO replies over SFT replies on {w['prompts']} held-out HH prompts "
              f"(T 0.7, top-p 0.9, same seeds; ties half) — {w['seconds']:.0f} s:")
        print("| policy | win rate vs SFT | mean RM reward | mean reply tokens |\n| --- | --- | --- | --- |")
        print(f"| sft | 0.500 | {w['sft_mean_reward']:.3f} | {w['sft_mean_reply_tokens']:.1f} |")
        print(f"| ppo | **{w['win_rate']:.3f}** | {w['ppo_mean_reward']:.3f} | {w['ppo_mean_reply_tokens']:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sft", default="/work/runs/sft_bench/full_en", help="the SFT model: PPO's start and KL reference")
    ap.add_argument("--rm", default="/work/runs/pref_bench/rm", help="the reward model (issue 4), same tokenizer")
    ap.add_argument("--out", default="runs/ppo_hh_bench")
    ap.add_argument("--stages", nargs="+", default=["ppo", "winrate"], choices=["ppo", "winrate"])
    ap.add_argument("--steps", type=int, default=400, help="PPO optimizer updates")
    ap.add_argument("--batch", type=int, default=16, help="prompts per rollout")
    ap.add_argument("--ppo-epochs", type=int, default=4)
    ap.add_argument("--mini-batch", type=int, default=8, help="completions per update (0 = the whole rollout)")
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--value-lr", type=float, default=None, help="critic learning rate (default: --lr)")
    ap.add_argument("--kl-coef", type=float, default=0.1)
    ap.add_argument("--temperature", type=float, default=0.7, help="rollout sampling temperature")
    ap.add_argument("--max-prompt-length", type=int, default=128)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=256, help="the reward model's max_length (rebuilds its split)")
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--prompts", type=int, default=0, help="held-out prompts for the win rate (0 = all 234)")
    ap.add_argument("--every", type=int, default=16, help="print the curve every this many steps (16 = every 2nd rollout with the defaults)")
    args = ap.parse_args()
    if not HH.is_file():
        raise SystemExit(f"{HH} not found")
    report(run(args))


if __name__ == "__main__":
    main()
