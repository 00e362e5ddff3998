"""Preference alignment on real data, measured (issue 4 §4). Not part of the test suite: it
needs ../shared/data/hh-rlhf and an SFT model, and takes about an hour on 2 CPU cores.

Only the test splits of HH-RLHF exist here. helpful-base/test.jsonl.gz (2,354 records) is split
by the recipes' own deterministic split (`split_preference`, seed = --seed, 10 % held out):
the same held-out records for every stage, so the reward model never sees the pairs the
policies are judged on.

Stages (each skipped when its run directory already holds a finished model):
  rm        reward model from the SFT model        -> held-out pairwise accuracy before / after
  dpo       DPO (sigmoid) from the SFT model      -> held-out implicit-reward accuracy
  simpo     SimPO                                 -> same
  orpo      ORPO                                  -> same
  winrate   replies of each aligned policy and of the SFT model to N held-out prompts (same
            sampling settings and seeds), scored by the reward model: win rate = share of
            prompts where the policy's reply scores higher (ties count half)

    python benchmarks/bench_preference.py --sft /work/runs/sft_bench/full_en --out /work/runs/pref_bench
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HH = DATA / "hh-rlhf" / "helpful-base" / "test.jsonl.gz"


def _train(steps: int, lr: float, batch: int, seed: int):
    from minigpt.train.config import TrainConfig

    return TrainConfig(
        max_steps=steps, batch_size=batch, lr=lr, warmup_steps=max(1, steps // 10), weight_decay=0.0, min_lr_ratio=0.1,
        eval_interval=0, eval_batches=0, save_interval=0, keep_last=1, progress=True, seed=seed,
    )


def _done(path: Path) -> bool:
    return (path / "metrics.jsonl").is_file() and (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def run(args) -> dict:
    from minigpt.objectives.config import DPOConfig
    from minigpt.recipes.dpo import dpo
    from minigpt.recipes.reward import reward

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}

    def record(name, metrics, seconds):
        results[name] = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        results[name]["wall_seconds"] = seconds
        results_file.write_text(json.dumps(results, indent=2))

    common = dict(model=args.sft, data=[str(HH)], max_length=args.max_length, val_fraction=0.1, max_val=500, overwrite=True)
    stages = {
        "rm": (reward, dict(train=_train(args.rm_steps, args.rm_lr, args.batch, args.seed), head_hidden_size=256)),
        "dpo": (dpo, dict(dpo=DPOConfig(loss_type="sigmoid", beta=0.1), train=_train(args.steps, args.lr, args.batch, args.seed))),
        "simpo": (dpo, dict(dpo=DPOConfig(loss_type="simpo", beta=2.0, simpo_gamma=0.5), train=_train(args.steps, args.lr, args.batch, args.seed))),
        "orpo": (dpo, dict(dpo=DPOConfig(loss_type="orpo", beta=0.1), train=_train(args.steps, args.lr, args.batch, args.seed))),
    }
    for name in args.stages:
        if name not in stages:
            continue
        fn, kw = stages[name]
        path = out / name
        if _done(path) and name in results:
            print(f"[{name}] already done: {path}")
            continue
        print(f"[{name}] training ...", flush=True)
        t0 = time.time()
        m = fn(out=str(path), **common, **kw)
        record(name, m, time.time() - t0)
    if "winrate" in args.stages:
        results["winrate"] = win_rates(args, out)
        results_file.write_text(json.dumps(results, indent=2))
    return results


def win_rates(args, out: Path) -> dict:
    """Reward-model win rate of each aligned policy's replies over the SFT model's replies on
    held-out prompts (same prompts, sampling settings and seed for every model;
    `minigpt.evaluation.policy`)."""
    from minigpt.data.preference import PreferenceDataset, split_preference
    from minigpt.inference.loading import load_model_and_tokenizer
    from minigpt.model.loading import load_reward_model
    from minigpt.evaluation.policy import sample_replies, win_rate

    rm, rm_tok = load_reward_model(out / "rm")
    _, sft_tok = load_model_and_tokenizer(args.sft)
    if rm_tok.get_vocab() != sft_tok.get_vocab():
        raise SystemExit("the reward model's tokenizer differs from the policy's")
    ds = PreferenceDataset(str(HH), sft_tok, max_length=args.max_length)
    _, val = split_preference(ds.examples, 0.1, seed=args.seed, max_val=500)
    prompts = [list(ex.prompt_ids) for ex in val[: args.prompts]]

    def replies(model_dir) -> list[list[int]]:
        model, _ = load_model_and_tokenizer(str(model_dir))
        return sample_replies(model, sft_tok, prompts, args.max_new_tokens, seed=args.seed)

    t0 = time.time()
    base = replies(args.sft)
    table = {"prompts": len(prompts)}
    for name in ("dpo", "simpo", "orpo"):
        if not _done(out / name):
            continue
        w = win_rate(rm, sft_tok, prompts, replies(out / name), base)
        table["sft_mean_reward"] = w["baseline_mean_reward"]
        table[name] = {"win_rate": w["win_rate"], "mean_reward": w["mean_reward"], "mean_reply_tokens": w["mean_reply_tokens"]}
        print(f"[winrate] {name}: {table[name]}", flush=True)
    table["seconds"] = time.time() - t0
    return table


def report(results: dict) -> None:
    print("\n| run | held-out metric before → after | train wall (s) |\n| --- | --- | --- |")
    rm = results.get("rm")
    if rm:
        print(f"| reward model | pairwise accuracy {rm.get('val_accuracy_before', float('nan')):.3f} → **{rm.get('val_accuracy', float('nan')):.3f}** | {rm['wall_seconds']:.0f} |")
    for name in ("dpo", "simpo", "orpo"):
        r = results.get(name)
        if r:
            print(f"| {name} | implicit-reward accuracy {r.get('val_accuracy_before', float('nan')):.3f} → **{r.get('val_accuracy', float('nan')):.3f}** (margin {r.get('val_reward_margin', float('nan')):.3f}) | {r['wall_seconds']:.0f} |")
    wr = results.get("winrate")
    if wr:
        print(f"\nReward-model win rate over the SFT model's replies on {wr['prompts']} held-out prompts (SFT mean reward {wr['sft_mean_reward']:.3f}):")
        print("| policy | win rate | mean reward | mean reply tokens |\n| --- | --- | --- | --- |")
        for name in ("dpo", "simpo", "orpo"):
            if name in wr:
                r = wr[name]
                print(f"| {name} | **{r['win_rate']:.3f}** | {r['mean_reward']:.3f} | {r['mean_reply_tokens']:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sft", required=True, help="the SFT model directory (policy start and reward-model backbone)")
    ap.add_argument("--out", default="runs/pref_bench")
    ap.add_argument("--stages", nargs="+", default=["rm", "dpo", "simpo", "orpo", "winrate"])
    ap.add_argument("--max_length", type=int, default=256)
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--rm_steps", type=int, default=120)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--rm_lr", type=float, default=5e-5)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--prompts", type=int, default=100)
    ap.add_argument("--max_new_tokens", type=int, default=64)
    args = ap.parse_args()
    if not HH.is_file():
        raise SystemExit(f"{HH} not found")
    report(run(args))


if __name__ == "__main__":
    main()
