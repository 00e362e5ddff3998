"""GGUF export checked against llama.cpp (through llama-cpp-python) on a trained chat model.

For each of `--n` chat prompts (arithmetic questions of the quickstart's kind, then Alpaca EN
instructions when ../shared/data has them), rendered with the chat template:
  * tokenization: llama.cpp's token ids of the rendered prompt equal ours;
  * greedy replies: llama.cpp's greedy tokens (up to `--max-tokens`, stopping at <|im_end|>)
    equal our engine's, for the fp32 export and for the fp16 export;
and the decoding speed of both (tokens/s at batch 1, `--threads` threads each).

Needs llama-cpp-python (`pip install llama-cpp-python`, which compiles llama.cpp: ~20 min on 2
cores).

    python benchmarks/bench_gguf.py --model runs/quickstart/grpo
"""

from __future__ import annotations

import argparse
import gzip
import json
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def questions(n: int) -> list[str]:
    from minigpt.data.arithmetic import make_arithmetic_prompts

    out = [r["prompt"] for r in make_arithmetic_prompts(n // 2, seed=3)]
    path = DATA / "alpaca" / "alpaca_en.jsonl.gz"
    if path.is_file():
        with gzip.open(path, "rt", encoding="utf-8") as f:
            rows = [json.loads(line) for i, line in zip(range(51_000 + n), f) if i >= 51_000]
        out += [r["instruction"] for r in rows]
    return out[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import llama_cpp
    import torch

    from minigpt.inference import GenerationEngine
    from minigpt.inference.loading import load_model_and_tokenizer
    from minigpt.model.gguf_export import export_to_gguf
    from minigpt.tokenizer.chat import chat_eos_ids, render_prompt

    torch.set_num_threads(args.threads)
    model, tok = load_model_and_tokenizer(args.model, device="cpu")
    eos = chat_eos_ids(tok)
    engine = GenerationEngine(model, eos_token_id=eos, pad_token_id=tok.pad_token_id)
    prompts = [render_prompt(tok, [{"role": "user", "content": q}]) for q in questions(args.n)]
    texts = [tok.decode(p, skip_special_tokens=False) for p in prompts]
    ours, t = [], time.perf_counter()
    for p in prompts:
        out = engine.generate([p], max_new_tokens=args.max_tokens, temperature=0)
        ids = out.completion_ids[0][out.completion_mask[0].bool()].tolist()
        ours.append(ids[:-1] if ids and ids[-1] in eos else ids)
    ours_s = time.perf_counter() - t
    tmp = Path(tempfile.mkdtemp())
    rows = []
    for dtype in ("float32", "float16"):
        path = export_to_gguf(args.model, tmp / dtype / "model.gguf", dtype=dtype)
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=model.config.max_position_embeddings, n_threads=args.threads,
                              verbose=False)
        same_tok = sum(llm.tokenize(text.encode(), add_bos=False, special=True) == p for text, p in zip(texts, prompts))
        same, theirs_tokens, t = 0, 0, time.perf_counter()
        for p, want in zip(prompts, ours):
            got: list[int] = []
            for token in llm.generate(p, temp=0.0, top_k=1, top_p=1.0, repeat_penalty=1.0, reset=True):
                if token in eos or len(got) == args.max_tokens:
                    break
                got.append(token)
            theirs_tokens += len(got)
            same += got == want
        rows.append((dtype, path.stat().st_size, same_tok, same, theirs_tokens / (time.perf_counter() - t)))
    ours_tps = sum(map(len, ours)) / ours_s
    print(f"model {args.model}; {len(prompts)} chat prompts; greedy, at most {args.max_tokens} tokens; "
          f"{args.threads} threads; ours (fp32 engine): {ours_tps:.0f} tokens/s")
    print("| export | file MB | same prompt tokens | same greedy reply | llama.cpp tokens/s (ratio to ours) |")
    print("|---|---|---|---|---|")
    for dtype, size, same_tok, same, tps in rows:
        print(f"| {dtype} | {size / 2**20:.1f} | {same_tok}/{len(prompts)} | {same}/{len(prompts)} | {tps:.0f} "
              f"({tps / ours_tps:.1f}x ours) |")


if __name__ == "__main__":
    main()
