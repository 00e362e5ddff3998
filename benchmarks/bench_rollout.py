"""Rollout speed: `minigpt.inference.rollout.RolloutEngine.sample` against `transformers`
`model.generate`, sampled tokens per second with their log-probabilities (issue 5 §1).

Target: the engine in bf16 makes >= 3x the tokens per second of fp32 `generate` at batch 16 x
128 new tokens (prompt 32 tokens) on the same weights, both returning what an RL rollout needs:
the sampled tokens and the log-probability of each under the policy.

One model, the `--preset` (default `small`) randomly initialised with a fixed seed (speed does
not depend on the weights' values), serves both sides in one process. Prompts are `--batch`
rows of `--prompt-len` random ids (the special ids 0..7 excluded), all of the same length, so
no row is padded. Both sides sample (temperature `--temperature`, default 1.0) with top-k off
and with each top-p of `--top-p` (default 1.0, i.e. the full distribution, and 0.9), and stop
only at `--new-tokens`: the model's config has no EOS id (`eos_token_id=None`), so every row
makes exactly `--new-tokens` tokens on both sides.

  generate   `model.generate(..., do_sample=True, top_k=0, top_p=P, temperature=T,
             output_logits=True, return_dict_in_generate=True)` under `torch.inference_mode`,
             then `log_softmax(stack(logits) / T)` gathered at the sampled tokens, which is the
             quantity the engine returns (the raw, tempered policy before top-p). `top_k=0` is
             a deviation from `generate`'s default (50): without it `generate` would sample
             from another distribution than the engine (and TRL's GRPO passes `top_k=0` too).
             The bf16 column runs it under `torch.autocast(dtype=bfloat16)` on the fp32 model.
  engine     `RolloutEngine(model, dtype=None | torch.bfloat16).sample(prompts, group_size=1,
             max_new_tokens, temperature, top_p=P, seed=...)` -> `Rollout` with
             `completion_ids` and `logprobs` (`log_softmax(logits / T)` of each sampled token).

Each figure is the best of `--repeats` timed runs after one untimed warm-up run; the four
cells of a top-p row are run round-robin within each repeat, so a busy machine penalises them
alike. Both sides run in the same process (they share the weights; neither changes the
allocator or thread settings). Ratios: `engine bf16 / generate fp32` is the target's; the
same-dtype ratios show the engine's gain alone. The table also gives each side's mean sampled
log-prob: equal distributions give equal means (for a random model about -log V at top-p
1.0), a check that both sides sample and score the same thing.

    python benchmarks/bench_rollout.py                               # small preset, 16 x 128, top-p 1.0 and 0.9
    python benchmarks/bench_rollout.py --preset tiny --new-tokens 16 --repeats 1   # quick check
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from minigpt.model import MiniGPTConfig, MiniGPTForCausalLM, count_parameters
from minigpt.inference.rollout import RolloutEngine

FIRST_ORDINARY_ID = 8  # ids 0..7 are the tokenizer's special tokens
CELLS = ("generate fp32", "generate bf16", "engine fp32", "engine bf16")


def make_generate(model, prompts: torch.Tensor, new_tokens: int, temperature: float, top_p: float, bf16: bool, seed: int):
    """A callable: `generate` sampling, then the sampled tokens' log-probs. Returns
    `(tokens (B, N), logprobs (B, N) float32)`."""
    mask = torch.ones_like(prompts)
    device = prompts.device

    def run():
        torch.manual_seed(seed)
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model.generate(
                prompts,
                attention_mask=mask,
                max_new_tokens=new_tokens,
                do_sample=True,
                temperature=temperature,
                top_k=0,
                top_p=top_p,
                pad_token_id=model.config.pad_token_id,
                output_logits=True,
                return_dict_in_generate=True,
            )
            tokens = out.sequences[:, prompts.shape[1]:]  # (B, N)
            logits = torch.stack(out.logits, dim=1).float()  # (B, N, V) raw logits of each step
            logprobs = (logits / temperature).log_softmax(-1).gather(-1, tokens[..., None]).squeeze(-1)
        return tokens, logprobs

    return run


def make_engine(model, prompts: torch.Tensor, new_tokens: int, temperature: float, top_p: float, bf16: bool, seed: int):
    """A callable: `RolloutEngine.sample` of one completion per prompt. Returns
    `(tokens (B, N), logprobs (B, N) float32)`."""
    engine = RolloutEngine(model, dtype=torch.bfloat16 if bf16 else None)
    rows = prompts.tolist()

    def run():
        r = engine.sample(rows, group_size=1, max_new_tokens=new_tokens, temperature=temperature, top_p=top_p, seed=seed)
        return r.completion_ids, r.logprobs

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small", help="model preset (tiny, small, base), random init")
    p.add_argument("--batch", type=int, default=16, help="rows sampled together")
    p.add_argument("--prompt-len", type=int, default=32, help="prompt tokens per row")
    p.add_argument("--new-tokens", type=int, default=128, help="sampled tokens per row (no EOS stop)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, nargs="+", default=[1.0, 0.9], help="one table row per value")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per cell; the best counts")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="runs/bench_rollout.json", help="JSON of the results ('' = none)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.temperature <= 0:
        raise SystemExit("--temperature must be > 0 (the benchmark samples)")

    torch.manual_seed(a.seed)
    config = MiniGPTConfig.from_preset(a.preset, eos_token_id=None)  # no EOS: every row runs to --new-tokens
    if a.prompt_len + a.new_tokens > config.max_position_embeddings:
        raise SystemExit(f"--prompt-len + --new-tokens exceeds the model's context ({config.max_position_embeddings})")
    model = MiniGPTForCausalLM(config).eval().to(a.device)
    gen = torch.Generator().manual_seed(a.seed + 1)
    prompts = torch.randint(FIRST_ORDINARY_ID, config.vocab_size, (a.batch, a.prompt_len), generator=gen).to(a.device)
    tokens = a.batch * a.new_tokens
    header = (
        f"rollout sampling on preset {a.preset} (random init, seed {a.seed}): {count_parameters(model) / 1e6:.1f} M params; "
        f"batch {a.batch} x {a.new_tokens} new tokens, prompt {a.prompt_len}, temperature {a.temperature}, top-k off, "
        f"no EOS stop; tokens + log-probs on both sides; {torch.get_num_threads()} threads, {a.device}; "
        f"best of {a.repeats} interleaved"
    )
    print(header, flush=True)

    rows = []
    for top_p in a.top_p:
        runs = {}
        for name in CELLS:
            make = make_generate if name.startswith("generate") else make_engine
            runs[name] = make(model, prompts, a.new_tokens, a.temperature, top_p, name.endswith("bf16"), a.seed)
        best = {name: float("inf") for name in CELLS}
        mean_lp = {}
        for name in CELLS:  # warm-up: allocator, autocast casts, kernels
            toks, lps = runs[name]()
            if tuple(toks.shape) != (a.batch, a.new_tokens) or tuple(lps.shape) != (a.batch, a.new_tokens):
                raise SystemExit(f"{name}: got tokens {tuple(toks.shape)}, log-probs {tuple(lps.shape)}, expected ({a.batch}, {a.new_tokens})")
            if not bool(torch.isfinite(lps).all()) or bool((lps > 1e-4).any()):
                raise SystemExit(f"{name}: log-probs not finite or > 0")
            mean_lp[name] = float(lps.mean())
        for _ in range(a.repeats):
            for name in CELLS:
                t = time.perf_counter()
                runs[name]()
                best[name] = min(best[name], time.perf_counter() - t)
        tps = {name: tokens / best[name] for name in CELLS}
        rows.append({
            "top_p": top_p,
            "tokens_per_s": tps,
            "seconds": best,
            "mean_logprob": mean_lp,
            "engine_bf16_vs_generate_fp32": tps["engine bf16"] / tps["generate fp32"],
            "engine_fp32_vs_generate_fp32": tps["engine fp32"] / tps["generate fp32"],
            "engine_bf16_vs_generate_bf16": tps["engine bf16"] / tps["generate bf16"],
        })
        print(f"top_p {top_p}: " + ", ".join(f"{n} {tps[n]:.0f} tok/s" for n in CELLS), flush=True)

    lines = [
        "| top-p | generate fp32 tok/s | generate bf16 tok/s | engine fp32 tok/s | engine bf16 tok/s | "
        "engine bf16 / generate fp32 | engine fp32 / generate fp32 | engine bf16 / generate bf16 | "
        "mean log-prob generate / engine (fp32) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        t = r["tokens_per_s"]
        lines.append(
            f"| {r['top_p']} | {t['generate fp32']:.0f} | {t['generate bf16']:.0f} | {t['engine fp32']:.0f} | "
            f"{t['engine bf16']:.0f} | {r['engine_bf16_vs_generate_fp32']:.2f}x | {r['engine_fp32_vs_generate_fp32']:.2f}x | "
            f"{r['engine_bf16_vs_generate_bf16']:.2f}x | {r['mean_logprob']['generate fp32']:.3f} / {r['mean_logprob']['engine fp32']:.3f} |"
        )
    md = "\n".join(lines)
    worst = min(r["engine_bf16_vs_generate_fp32"] for r in rows)
    verdict = f"target engine bf16 >= 3.00x generate fp32: lowest {worst:.2f}x over top-p {a.top_p} ({'met' if worst >= 3.0 else 'NOT met'})"
    print()
    print(md)
    print()
    print(verdict)
    if a.out:
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({
            "header": header, "table": md, "verdict": verdict, "settings": vars(a),
            "params": count_parameters(model), "threads": torch.get_num_threads(), "rows": rows,
            "median_ratio_bf16_vs_fp32": statistics.median(r["engine_bf16_vs_generate_fp32"] for r in rows),
        }, indent=2))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
