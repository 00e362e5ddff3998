"""SFT on real data, measured (issue 3 §8). Not part of the test suite: it takes ~30 minutes on
2 CPU cores and needs ../shared/data (Alpaca EN/ZH, TinyStories, Tang poems).

Stages (each skipped when its run directory already holds a finished model, so the script can
be re-run after an interruption):
  base      the pretrained `small` model (pass --base; see the command printed if missing)
  full_en   full SFT on Alpaca EN                 -> held-out assistant-token loss before/after
  lora_en   LoRA r=8 SFT on Alpaca EN, same steps  -> vs full
  full_zh   full SFT on Alpaca ZH
  tiny      a `tiny` model pretrained with the base's tokenizer on the same text
  distill   tiny student distilled from full_en    -> vs the same student SFT'd without a teacher
  chat      five EN and five ZH transcripts from full_en / full_zh, as they come out

    python benchmarks/bench_sft.py --base /work/runs/base_small --out /work/runs/sft_bench
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from minigpt.objectives.config import DistillConfig
from minigpt.model.options import LoraOptions
from minigpt.recipes.distill import distill
from minigpt.model.options import ModelConfig
from minigpt.recipes.pretrain import pretrain
from minigpt.recipes.sft import sft
from minigpt.train.config import TrainConfig

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
EN_PROMPTS = [
    "Give three tips for staying healthy.",
    "What is the capital of France?",
    "Write a short story about a cat who finds a friend.",
    "Explain why the sky is blue.",
    "List three fruits that are red.",
]
ZH_PROMPTS = [
    "给出保持健康的三个建议。",
    "中国的首都是哪里？",
    "写一首关于春天的短诗。",
    "解释一下为什么要多喝水。",
    "列出三种常见的水果。",
]


def _train(steps: int, lr: float, batch: int, seed: int = 1337) -> TrainConfig:
    return TrainConfig(
        max_steps=steps, batch_size=batch, lr=lr, warmup_steps=max(1, steps // 10), weight_decay=0.0,
        eval_interval=0, eval_batches=0, save_interval=0, keep_last=1, progress=False, seed=seed,
    )


def _done(path: Path) -> bool:
    return (path / "metrics.jsonl").is_file() and ((path / "model.safetensors").is_file() or (path / "adapter_model.safetensors").is_file())


def _last_eval(path: Path) -> dict:
    rows = [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "val_loss" in r][-1]


def run(args) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}

    def record(name, metrics, seconds):
        results[name] = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        results[name]["wall_seconds"] = seconds
        results_file.write_text(json.dumps(results, indent=2))

    en, zh = str(DATA / "alpaca" / "alpaca_en.jsonl.gz"), str(DATA / "alpaca" / "alpaca_zh.jsonl")
    common = dict(max_length=512, packing=True, val_fraction=0.01, max_val=200, overwrite=True)
    stages = [
        ("full_en", dict(model=args.base, data=[en], train=_train(args.steps, args.lr, args.batch))),
        ("lora_en", dict(model=args.base, data=[en], lora=LoraOptions(rank=8, alpha=16.0), train=_train(args.steps, args.lora_lr, args.batch))),
        ("full_zh", dict(model=args.base, data=[zh], train=_train(args.steps, args.lr, args.batch))),
    ]
    for name, kw in stages:
        if name in results and _done(out / name):
            continue
        t0 = time.time()
        m = sft(out=str(out / name), **common, **kw)
        record(name, m, time.time() - t0)

    tiny = out / "tiny_base"
    if "tiny_base" not in results:
        t0 = time.time()
        m = pretrain(
            data=[str(DATA / "tinystories" / "tinystories_first2MiB.txt"), args.zh_text],
            out=str(tiny), tokenizer=str(Path(args.base) / "tokenizer"), model=ModelConfig(preset="tiny"),
            block_size=512, train=TrainConfig(max_steps=args.tiny_steps, batch_size=8, lr=3e-3, warmup_steps=40,
                                              eval_interval=0, save_interval=0, keep_last=1, progress=False),
            overwrite=True,
        )
        record("tiny_base", m, time.time() - t0)
    if "tiny_sft" not in results:
        t0 = time.time()
        m = sft(out=str(out / "tiny_sft"), model=str(tiny), data=[en], train=_train(args.steps, 1e-3, args.batch), **common)
        record("tiny_sft", m, time.time() - t0)
    if "tiny_distill" not in results:
        t0 = time.time()
        m = distill(teacher=str(out / "full_en"), student=str(tiny), data=[en], out=str(out / "tiny_distill"),
                    distill=DistillConfig(temperature=2.0, alpha=0.5), train=_train(args.steps, 1e-3, args.batch), **common)
        record("tiny_distill", m, time.time() - t0)

    if not args.no_chat:
        from minigpt.inference.chat import ChatSession
        from minigpt.inference.loading import load_model_and_tokenizer
        import torch

        transcripts = []
        for name, prompts in (("full_en", EN_PROMPTS), ("full_zh", ZH_PROMPTS)):
            net, tok = load_model_and_tokenizer(out / name, device="cpu")
            session = ChatSession(net, tok, max_new_tokens=120, temperature=0.7, top_k=50, top_p=0.9,
                                  repetition_penalty=1.1, dtype=torch.bfloat16, seed=0)
            for p in prompts:
                session.reset()
                transcripts.append({"model": name, "user": p, "assistant": session.reply(p).text})
        (out / "transcripts.json").write_text(json.dumps(transcripts, ensure_ascii=False, indent=2))
        results["transcripts"] = transcripts
        results_file.write_text(json.dumps(results, indent=2, ensure_ascii=False))
    return results


def report(results: dict) -> None:
    print("| run | steps | held-out loss before (nats/token) | after | wall s |")
    print("| --- | --- | --- | --- | --- |")
    for name in ("full_en", "lora_en", "full_zh", "tiny_sft"):
        r = results.get(name)
        if r:
            print(f"| {name} | {r.get('steps')} | {r.get('val_loss_before', float('nan')):.3f} | {r.get('val_loss', float('nan')):.3f} | {r['wall_seconds']:.0f} |")
    d = results.get("tiny_distill")
    if d:
        print(f"| tiny_distill (teacher full_en) | {d.get('steps')} | - | CE {d.get('val_ce', float('nan')):.3f} (KL {d.get('val_kl', float('nan')):.3f}) | {d['wall_seconds']:.0f} |")
    for t in results.get("transcripts", []):
        print(f"\n[{t['model']}] user: {t['user']}\nassistant: {t['assistant']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True, help="pretrained small model dir")
    ap.add_argument("--out", default="runs/sft_bench")
    ap.add_argument("--zh_text", default="runs/tang_2MB.txt", help="the Chinese text the base was pretrained on")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--lora_lr", type=float, default=2e-3)
    ap.add_argument("--tiny_steps", type=int, default=400)
    ap.add_argument("--no_chat", action="store_true")
    args = ap.parse_args()
    if not (Path(args.base) / "config.json").is_file():
        raise SystemExit(
            f"{args.base} has no model. Pretrain one first, e.g.:\n  minigpt pretrain --data '[{DATA}/tinystories/tinystories_first2MiB.txt,TANG.txt]' "
            f"--out {args.base} --model.preset small --block_size 512 --train.max_steps 400 --train.batch_size 8 --train.lr 1e-3"
        )
    report(run(args))


if __name__ == "__main__":
    main()
