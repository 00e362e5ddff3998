"""Perplexity by position beyond the trained context: no scaling, PI, dynamic NTK, YaRN, and the
context-extension recipe (issue 18 §2).

1. `minigpt pretrain` a `tiny` model on TinyStories at a context of `--context` tokens.
2. The context-extension recipe: `minigpt pretrain --model.init_from A
   --model.max_position_embeddings 4C --model.rope_scaling '{"rope_type": "yarn", "factor": 4}'
   --block_size 4C` for `--extend-steps` more steps.
3. Held-out sequences of 4C tokens (the validation tail of the text, never trained on) are
   scored token by token by: A with plain RoPE, A with linear scaling (position interpolation,
   factor 4), A with dynamic NTK, A with YaRN (factor 4), all without further training, and
   the extended model B.

Printed: mean loss (nats/token) over positions [0, C), [C, 2C), [2C, 4C) per variant; written:
a plot of the loss against position (`--plot`, PNG).

    python benchmarks/bench_long_context.py --context 128 --steps 800 --extend-steps 100 \
        --plot benchmarks/results/long_context.png
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinystories" / "tinystories_first2MiB.txt"


def pretrain(out: Path, data: str, cache: Path, context: int, steps: int, lr: float, extra: list[str]) -> float:
    from minigpt.cli import main

    t0 = time.time()
    code = main([
        "pretrain", "--data", data, "--out", str(out), "--cache_dir", str(cache), "--model.preset", "tiny", "--block_size", str(context),
        "--train.max_steps", str(steps), "--train.batch_size", str(max(1, 2048 // context)), "--train.lr", str(lr),
        "--train.warmup_steps", "20", "--train.eval_interval", "0", "--train.eval_batches", "10", "--train.save_interval", "0",
        "--train.progress", "false", "--train.tensorboard", "false", "--train.precision", "fp32", *extra,
    ])
    if code:
        raise SystemExit(code)
    return time.time() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--context", type=int, default=128, help="trained context C")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--extend-steps", type=int, default=100)
    p.add_argument("--sequences", type=int, default=32, help="held-out sequences of 4C tokens")
    p.add_argument("--plot", default=None)
    a = p.parse_args()

    import numpy as np
    import torch

    import minigpt  # noqa: F401
    from minigpt.model.modeling import set_rope_scaling
    from minigpt.inference.loading import load_model_and_tokenizer

    c = a.context
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        seconds_a = pretrain(tmp / "A", a.data, tmp / "cache", c, a.steps, 2e-3, ["--model.max_position_embeddings", str(c)])
        seconds_b = pretrain(
            tmp / "B", a.data, tmp / "cache", 4 * c, a.extend_steps, 5e-4,
            ["--model.init_from", str(tmp / "A"), "--tokenizer", str(tmp / "A" / "tokenizer"),
             "--model.max_position_embeddings", str(4 * c), "--model.rope_scaling", '{"rope_type": "yarn", "factor": 4}'],
        )
        model_a, tok = load_model_and_tokenizer(tmp / "A")
        model_b, _ = load_model_and_tokenizer(tmp / "B")
        # Held-out: the text's last 5 % (the validation tail pretraining never trains on).
        text = Path(a.data).read_text(encoding="utf-8")
        tail = text[int(len(text) * 0.95):].replace("<|endoftext|>", tok.eos_token)
        ids = tok(tail)["input_ids"]
        n = min(a.sequences, len(ids) // (4 * c))
        seqs = torch.tensor(ids[: n * 4 * c]).view(n, 4 * c)

        @torch.no_grad()
        def losses(model) -> np.ndarray:
            model.eval()
            out = []
            for i in range(0, n, 8):
                x = seqs[i : i + 8]
                logits = model(x, use_cache=False).logits[:, :-1].float()
                out.append(torch.nn.functional.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none"))
            return torch.cat(out).mean(0).numpy()  # (4C - 1,) loss of predicting token t+1 at position t

        curves = {"A, plain RoPE": losses(model_a)}
        for name, rope in (("A + PI (linear ×4)", {"rope_type": "linear", "factor": 4.0}),
                           ("A + dynamic NTK", {"rope_type": "dynamic", "factor": 4.0}),
                           ("A + YaRN ×4", {"rope_type": "yarn", "factor": 4.0})):
            m, _ = load_model_and_tokenizer(tmp / "A")
            set_rope_scaling(m, rope, 4 * c)
            curves[name] = losses(m)
        curves[f"B: A + {a.extend_steps} steps at 4C, YaRN"] = losses(model_b)

    print(f"\ntrained context C = {c} tokens; A: {a.steps} steps ({seconds_a:.0f} s), B: +{a.extend_steps} steps at {4 * c} ({seconds_b:.0f} s); "
          f"{n} held-out sequences of {4 * c} tokens")
    print(f"{'model':<36}{'[0,C)':>9}{'[C,2C)':>9}{'[2C,4C)':>9}   mean loss, nats/token")
    for name, curve in curves.items():
        print(f"{name:<36}{curve[:c].mean():>9.3f}{curve[c:2 * c].mean():>9.3f}{curve[2 * c:].mean():>9.3f}")
    if a.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 4.5))
        width = max(1, c // 16)
        for name, curve in curves.items():
            k = len(curve) // width
            smooth = curve[: k * width].reshape(k, width).mean(1)
            ax.plot(np.arange(k) * width + width / 2, smooth, label=name)
        for x in (c, 2 * c):
            ax.axvline(x, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("position (tokens)")
        ax.set_ylabel("loss (nats/token)")
        ax.set_title(f"Loss by position, tiny model trained at {c} tokens (TinyStories held-out)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        Path(a.plot).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(a.plot, dpi=110)
        print(f"plot: {a.plot}")
    print(json.dumps({k: [float(v[:c].mean()), float(v[c:2 * c].mean()), float(v[2 * c:].mean())] for k, v in curves.items()}))


if __name__ == "__main__":
    main()
