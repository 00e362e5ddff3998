"""Shared pieces of the speed benchmarks that compare minigpt with a reference library side by
side (bench_dpo.py, bench_grpo.py): the text both sides train on, the common options, running
each side in a fresh subprocess, one after another, so that nothing (thread pools, allocator
settings, memory) carries over between them, and writing the report."""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def matmul_peak(dtype_name: str = "bfloat16", n: int = 2048) -> float:
    """Measured dense matmul FLOP/s of this machine in `dtype_name`
    (`minigpt.train.hardware.matmul_peak`, which `minigpt report` uses for MFU too)."""
    import torch

    from minigpt.train.hardware import matmul_peak as measure

    return measure(getattr(torch, dtype_name), n=n)


def peak_memory_bytes() -> int:
    """This process's memory high-water mark: CUDA `max_memory_allocated` when a GPU is in use,
    else the peak resident set (`ru_maxrss`, KiB on Linux, returned in bytes), which also counts
    the Python/torch runtime."""
    import resource

    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def story_documents(seed: int, min_chars: int = 2_000_000) -> tuple[list[str], str]:
    """`(documents, source)`: TinyStories stories when ../shared/data has them, else generated
    sentences from a small vocabulary, at least `min_chars` characters of them."""
    path = DATA / "tinystories" / "tinystories_first2MiB.txt"
    if path.is_file():
        docs = [s.strip() for s in path.read_text(encoding="utf-8").split("<|endoftext|>") if s.strip()]
        return docs, str(path)
    rng = random.Random(seed)
    words = (
        "the a little girl boy dog cat sun tree house garden friend mom dad ball park happy sad big small red blue "
        "ran jumped looked found played said saw wanted liked went came smiled laughed and but so then with to in on"
    ).split()
    docs, total = [], 0
    while total < min_chars:
        sents = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 14))).capitalize() + "." for _ in range(rng.randint(5, 15))]
        docs.append(" ".join(sents))
        total += len(docs[-1])
    return docs, "generated"


def run_sides(script: str, kinds, work: Path, args, keys) -> dict[str, dict]:
    """Run `script --worker KIND --work WORK --<key> <value>…` for each side in turn and collect
    the JSON each worker prints on its last stdout line (plus `wall_s`, the side's wall time).

    Raises:
        SystemExit: a worker failed (its output tails go to stderr).
    """
    rows = {}
    for kind in kinds:
        cmd = [sys.executable, script, "--worker", kind, "--work", str(work)]
        for k in keys:
            cmd += [f"--{k}", str(getattr(args, k))]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
            raise SystemExit(f"{kind} worker failed (exit {proc.returncode})")
        rows[kind] = json.loads(proc.stdout.strip().splitlines()[-1])
        rows[kind]["wall_s"] = time.perf_counter() - t
        print(f"{kind}: median step {rows[kind]['step_s']:.3f} s ({rows[kind]['wall_s']:.0f} s in all)", file=sys.stderr)
    return rows


def side_parser(doc: str, workers, out: str, steps: int, lr: float) -> argparse.ArgumentParser:
    """The options every side-by-side benchmark has: model, timing, threads, output, the
    optional Llama-export side, and the hidden `--worker KIND --work DIR` a side runs under.
    The script adds its own (batch shape, algorithm settings) to the returned parser."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--preset", default="small", help="model preset when --model is not given")
    p.add_argument("--model", default=None, help="a saved model directory (with its tokenizer) instead of a random init")
    p.add_argument("--steps", type=int, default=steps, help="timed steps (after the warm-up steps)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps")
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    p.add_argument("--out", default=out)
    p.add_argument("--llama", action="store_true", help="also time TRL on the same weights exported as a transformers Llama")
    p.add_argument("--worker", choices=tuple(workers), help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    return p


def compare_sides(script: str, args, prepare, sides, llama: str, keys) -> tuple[dict, dict[str, dict]]:
    """`(info, rows)`: `prepare(args, work)` in a temporary directory (its `init/` is the shared
    start model), the `llama` side added on `--llama` (that model exported to a transformers
    Llama in `llama/`), then each side in a fresh process (`run_sides`, passing `keys`)."""
    with tempfile.TemporaryDirectory(prefix=f"{Path(script).stem}_") as tmp:
        work = Path(tmp)
        info = prepare(args, work)
        if args.llama:
            from minigpt.model.export import export_to_llama

            export_to_llama(work / "init", work / "llama")
            sides = (*sides, llama)
        return info, run_sides(script, sides, work, args, keys)


def write_report(args, header: str, table: str, verdict: str, info: dict, rows: dict, extra: dict, notes=()) -> None:
    """Print the header, table, verdict and `notes` lines, and write them with the settings, the
    model info, every side's row and `extra` (the ratios) as JSON to `args.out`."""
    print(header)
    print()
    print(table)
    print()
    print(verdict)
    for line in notes:
        print(line)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "header": header,
        "table": table,
        "verdict": verdict,
        **extra,
        "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "work")},
        "model": info,
        "sides": rows,
    }, indent=2))
    print(f"wrote {out}")
