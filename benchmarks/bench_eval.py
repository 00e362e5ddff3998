"""`minigpt eval` on real data (issue 17 §5): BLEU/ROUGE on 500 held-out Alpaca EN and ZH
instructions, GSM8K and arithmetic accuracy, reward-model and judge win rates, each with a 95 %
bootstrap interval. Not part of the test suite: it needs ../shared/data and trains its models
(about 15 minutes on 2 CPU cores with the defaults).

Models (each stage skipped when its directory already holds a finished model):
  quickstart  `minigpt quickstart`'s chat model (pass --quickstart RUN; its arithmetic is the
              task it was trained for)
  base        a `tiny` model (1.6 M parameters, vocabulary 6,400) pretrained --pretrain-steps
              steps on TinyStories + Tang poems + the training part of Alpaca EN/ZH
  sft_en      full SFT of base on Alpaca EN minus the last 1,000 records (--sft-steps steps)
  sft_zh      the same on Alpaca ZH
  reward      a reward model from sft_en on the first 2,000 HH-RLHF helpful test pairs
Held out: the last 500 Alpaca records (EN, and their ZH translations), never trained on.

Evaluations (greedy, at most --max-new-tokens tokens, batch 32):
  sft_en on Alpaca EN held-out: bleu, rouge, bpb; win_rate (the reward model) and
         judge_win_rate (sft_en itself as the judge, both orders) of its replies against the
         Alpaca references
  sft_zh on Alpaca ZH held-out: bleu (sacrebleu's zh tokenizer), rouge (by characters), bpb
  sft_en on GSM8K test (first --n-gsm8k problems): accuracy
  quickstart on its own 200 held-out arithmetic problems and on GSM8K: accuracy

    python benchmarks/bench_eval.py --quickstart runs/quickstart --out runs/eval_bench
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HELD_OUT = 500


def _alpaca(lang: str) -> list[dict]:
    path = DATA / "alpaca" / ("alpaca_en.jsonl.gz" if lang == "en" else "alpaca_zh.jsonl")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def prepare(out: Path) -> dict[str, Path]:
    """The data files: SFT training splits, held-out sets, the pretraining text, HH pairs."""
    d = out / "data"
    files = {k: d / f"{k}.jsonl" for k in ("en_train", "zh_train", "en_heldout", "zh_heldout", "gsm8k", "hh_pairs")}
    files["text"] = d / "pretrain.txt"
    if all(p.is_file() for p in files.values()):
        return files
    from minigpt.tokenizer.chat import control_token_in

    en, zh = _alpaca("en"), _alpaca("zh")
    # Records whose text holds a control token (e.g. Alpaca EN 23,699 asks about "<answer>")
    # are dropped from both languages alike: `minigpt sft` refuses them, and EN/ZH stay parallel.
    clean = [i for i in range(len(en)) if not any(control_token_in(str(r.get(k, "")), "user")
                                                  for r in (en[i], zh[i]) for k in ("instruction", "input", "output"))]
    print(f"dropped {len(en) - len(clean)} Alpaca records holding control tokens", flush=True)
    en, zh = [en[i] for i in clean], [zh[i] for i in clean]
    keep = len(en) - 1000  # the last 1,000 are never trained on; the last 500 are evaluated
    _write_jsonl(files["en_train"], en[:keep])
    _write_jsonl(files["zh_train"], zh[:keep])
    _write_jsonl(files["en_heldout"], en[-HELD_OUT:])
    _write_jsonl(files["zh_heldout"], zh[-HELD_OUT:])
    gsm = [json.loads(x) for x in (DATA / "gsm8k" / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    _write_jsonl(files["gsm8k"], gsm)
    with gzip.open(DATA / "hh-rlhf" / "helpful-base" / "test.jsonl.gz", "rt", encoding="utf-8") as f:
        pairs = [json.loads(x) for _, x in zip(range(2000), f)]
    _write_jsonl(files["hh_pairs"], pairs)
    stories = (DATA / "tinystories" / "tinystories_first2MiB.txt").read_text(encoding="utf-8")
    poems = []
    with open(DATA / "chinese-poetry" / "tang.jsonl", encoding="utf-8") as f:
        for line, _ in zip(f, range(12_000)):
            rec = json.loads(line)
            poems.append("\n".join(rec.get("paragraphs", [])))
    answers = [r["output"] for r in en[:keep][:8000]] + [r["output"] for r in zh[:keep][:8000]]
    files["text"].write_text("\n\n".join([stories] + poems + answers), encoding="utf-8")
    return files


def _done(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def train_models(out: Path, files: dict[str, Path], args) -> dict[str, float]:
    from minigpt.model.options import ModelConfig
    from minigpt.recipes.pretrain import pretrain
    from minigpt.recipes.reward import reward
    from minigpt.recipes.sft import sft
    from minigpt.train.config import TrainConfig

    seconds: dict[str, float] = {}

    def cfg(steps: int, lr: float) -> TrainConfig:
        return TrainConfig(max_steps=steps, batch_size=8, lr=lr, warmup_steps=max(1, steps // 10), weight_decay=0.0,
                           eval_interval=0, eval_batches=0, save_interval=0, keep_last=1, progress=False, seed=1337)

    stages = [
        ("base", lambda: pretrain(data=[str(files["text"])], out=str(out / "base"), model=ModelConfig(preset="tiny"),
                                  block_size=512, train=cfg(args.pretrain_steps, 3e-3), overwrite=True)),
        ("sft_en", lambda: sft(model=str(out / "base"), data=[str(files["en_train"])], out=str(out / "sft_en"),
                               max_length=512, val_fraction=0.01, max_val=100, train=cfg(args.sft_steps, 1e-3),
                               overwrite=True)),
        ("sft_zh", lambda: sft(model=str(out / "base"), data=[str(files["zh_train"])], out=str(out / "sft_zh"),
                               max_length=512, val_fraction=0.01, max_val=100, train=cfg(args.sft_steps, 1e-3),
                               overwrite=True)),
        ("reward", lambda: reward(model=str(out / "sft_en"), data=str(files["hh_pairs"]), out=str(out / "reward"),
                                  max_length=384, head_hidden_size=128, train=cfg(args.reward_steps, 2e-4),
                                  overwrite=True)),
    ]
    for name, run in stages:
        if _done(out / name):
            continue
        t = time.time()
        run()
        seconds[name] = time.time() - t
        print(f"[{name}] trained in {seconds[name]:.0f} s", flush=True)
    return seconds


def evaluate_all(out: Path, files: dict[str, Path], args) -> list[tuple[str, str, dict]]:
    import dataclasses

    from minigpt.data.arithmetic import make_arithmetic_prompts
    from minigpt.recipes.eval import EVAL_SAMPLING, evaluate

    sampling = dataclasses.replace(EVAL_SAMPLING, max_new_tokens=args.max_new_tokens)
    common = dict(sampling=sampling, resamples=1000, seed=0, batch_size=32)
    runs = [
        ("sft_en", "Alpaca EN held-out 500", dict(model=str(out / "sft_en"), data=str(files["en_heldout"]),
                                                 metrics="bleu,rouge,bpb,win_rate", reward_model=str(out / "reward"))),
        ("sft_en", "Alpaca EN held-out 500, judge", dict(model=str(out / "sft_en"), data=str(files["en_heldout"]),
                                                        metrics="win_rate", judge_model=str(out / "sft_en"))),
        ("sft_zh", "Alpaca ZH held-out 500", dict(model=str(out / "sft_zh"), data=str(files["zh_heldout"]),
                                                 metrics="bleu,rouge,bpb")),
        ("sft_en", f"GSM8K test first {args.n_gsm8k}", dict(model=str(out / "sft_en"), data=str(files["gsm8k"]),
                                                             metrics="accuracy", limit=args.n_gsm8k)),
    ]
    if args.quickstart:
        qs = _quickstart_model(Path(args.quickstart))
        # The quickstart's own held-out problems (its defaults: seed 1337 + 1, operands of 1-2 digits).
        arith = _write_jsonl(out / "data" / "arithmetic.jsonl", make_arithmetic_prompts(200, seed=1338, digits=(1, 2)))
        runs += [
            ("quickstart", "arithmetic held-out 200", dict(model=str(qs), data=str(arith), metrics="accuracy")),
            ("quickstart", f"GSM8K test first {args.n_gsm8k}", dict(model=str(qs), data=str(files["gsm8k"]),
                                                                    metrics="accuracy", limit=args.n_gsm8k)),
        ]
    results = []
    for model, what, kw in runs:
        t = time.time()
        name = f"{model}__{what.replace(' ', '_')}"
        report = evaluate(out=str(out / "reports" / f"{name}.json"),
                          save_generations=str(out / "reports" / f"{name}.generations.jsonl"), **common, **kw)
        report["seconds"] = time.time() - t
        results.append((model, what, report))
    return results


def _quickstart_model(run: Path) -> Path:
    """The final chat model of a quickstart run directory (the last stage that holds a model)."""
    for name in ("grpo", "chat", "sft_hybrid", "hybrid", "sft"):
        if (run / name / "config.json").is_file():
            return run / name
    candidates = sorted(p.parent for p in run.glob("*/config.json"))
    if not candidates:
        raise SystemExit(f"{run} holds no model")
    return candidates[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/eval_bench"))
    ap.add_argument("--quickstart", default=None, help="a `minigpt quickstart` run directory")
    ap.add_argument("--pretrain-steps", type=int, default=600)
    ap.add_argument("--sft-steps", type=int, default=300)
    ap.add_argument("--reward-steps", type=int, default=150)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--n-gsm8k", type=int, default=500)
    args = ap.parse_args()
    import torch

    from _harness import matmul_peak

    files = prepare(args.out)
    trained = train_models(args.out, files, args)
    results = evaluate_all(args.out, files, args)
    bf16, fp32 = matmul_peak("bfloat16", n=1024), matmul_peak("float32", n=1024)  # bf16 may be emulated
    print(f"\nhost: bf16 matmul {bf16 / 1e12:.4f} TFLOP/s, fp32 {fp32 / 1e12:.4f} TFLOP/s; "
          f"torch threads {torch.get_num_threads()}; training seconds {json.dumps({k: round(v) for k, v in trained.items()})}")
    print("| model | data | metric | value | 95% interval | n | eval s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for model, what, report in results:
        for key in report["intervals"]:
            iv = report["intervals"][key]
            digits = 2 if key in ("bleu", "ppl") else 3
            print(f"| {model} | {what} | {key} | {report[key]:.{digits}f} | [{iv['low']:.{digits}f}, {iv['high']:.{digits}f}] "
                  f"| {report['n'][key]} | {report['seconds']:.0f} |")
    (args.out / "results.json").write_text(json.dumps([{"model": m, "data": w, **r} for m, w, r in results], indent=2,
                                                      ensure_ascii=False))


if __name__ == "__main__":
    main()
