"""Shared pieces of the speed benchmarks that compare minigpt with a reference library side by
side (bench_dpo.py, bench_grpo.py): the text both sides train on, and running each side in a
fresh subprocess, one after another, so that nothing (thread pools, allocator settings,
memory) carries over between them."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


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
