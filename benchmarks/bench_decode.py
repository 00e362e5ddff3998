"""Decoding speed: `GenerationEngine` against `model.generate`, tokens per second.

Both run greedy decoding of the same prompts with EOS stopping disabled, so every row produces
exactly `--new-tokens` tokens, on a randomly initialised preset (speed does not depend on the
weights' values). Each measurement is the best of `--repeats` runs, engine and `generate`
interleaved, so a busy machine penalises both alike. In bf16, `generate` runs under
`torch.autocast` on the fp32 model, as the engine does; `ratio` compares the two in the same
dtype and `vs fp32 generate` compares with plain fp32 `generate` at the same batch size.

    python benchmarks/bench_decode.py                       # small preset, batch 1 and 16, fp32
    python benchmarks/bench_decode.py --dtypes fp32 bf16 --batch-sizes 1 4 16
"""

from __future__ import annotations

import argparse
import time

import torch

from minigpt.inference import GenerationEngine
from minigpt.model import MiniGPTConfig, MiniGPTForCausalLM

# int8 = the engine's weight-only int8 mode (bf16 activations); its `generate` column is bf16.
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.int8}


def _best_seconds(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", help="model preset (tiny, small, base)")
    parser.add_argument("--prompt-len", type=int, default=32, help="prompt tokens per row")
    parser.add_argument("--new-tokens", type=int, default=128, help="generated tokens per row")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16", "int8"], choices=sorted(DTYPES))
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per cell; the best counts")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    config = MiniGPTConfig.from_preset(args.preset, eos_token_id=None)
    model = MiniGPTForCausalLM(config).eval().to(args.device)
    print(
        f"preset={args.preset} params={sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
        f"prompt={args.prompt_len} new={args.new_tokens} threads={torch.get_num_threads()} device={args.device}"
    )
    header = (
        f"{'dtype':>5} {'batch':>5} {'generate tok/s':>15} {'engine tok/s':>13} {'ratio':>6} "
        f"{'vs fp32 generate':>17} {'engine ms/step':>15}"
    )
    print(header)
    print("-" * len(header))
    fp32_generate_tps: dict[int, float] = {}  # batch -> tokens/s of fp32 `generate`
    for dtype_name in sorted(args.dtypes, key=lambda n: n != "fp32"):
        dtype = DTYPES[dtype_name]
        engine = GenerationEngine(model, dtype=None if dtype == torch.float32 else dtype)
        gen_dtype = torch.bfloat16 if dtype == torch.int8 else dtype
        for batch in args.batch_sizes:
            prompts = torch.randint(2, config.vocab_size, (batch, args.prompt_len), device=args.device)
            mask = torch.ones_like(prompts)

            def run_generate() -> None:
                with torch.inference_mode(), torch.autocast(
                    torch.device(args.device).type, dtype=gen_dtype, enabled=gen_dtype != torch.float32
                ):
                    out = model.generate(
                        prompts,
                        attention_mask=mask,
                        max_new_tokens=args.new_tokens,
                        min_new_tokens=args.new_tokens,
                        do_sample=False,
                        pad_token_id=config.pad_token_id,
                    )
                assert out.shape[1] == args.prompt_len + args.new_tokens

            def run_engine() -> None:
                out = engine.generate(prompts, args.new_tokens, do_sample=False, stop_on_eos=False)
                assert out.completion_ids.shape[1] == args.new_tokens

            run_generate(), run_engine()  # warm-up: allocator, autocast weight casts, kernels
            gen_s, eng_s = float("inf"), float("inf")
            for _ in range(args.repeats):
                gen_s = min(gen_s, _best_seconds(run_generate, 1))
                eng_s = min(eng_s, _best_seconds(run_engine, 1))
            tokens = batch * args.new_tokens
            if dtype == torch.float32:
                fp32_generate_tps[batch] = tokens / gen_s
            if batch in fp32_generate_tps:
                vs_fp32 = f"{tokens / eng_s / fp32_generate_tps[batch]:>16.1f}x"
            else:
                vs_fp32 = f"{'-':>17}"
            print(
                f"{dtype_name:>5} {batch:>5} {tokens / gen_s:>15.1f} {tokens / eng_s:>13.1f} "
                f"{gen_s / eng_s:>5.1f}x {vs_fp32} {eng_s / args.new_tokens * 1e3:>15.2f}"
            )


if __name__ == "__main__":
    main()
