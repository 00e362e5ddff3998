"""The first hour of a new user, probed: bad input, mistyped options, outputs over inputs,
unwritable places, odd values, for every command family, each in a fresh process.

    python benchmarks/probe_first_hour.py [--only NAME]

Each case runs `minigpt ...` in a scratch folder holding a tiny chat model, a reward model and
small data files, and is judged on what a user sees: the exit status, whether stderr holds a
traceback, how many lines it prints, whether any input file changed (bytes compared before and
after), and whether it ended within its time limit (a hang). The table lists every case; the
last line counts data loss, tracebacks, hangs and unexpected exits.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

TEXTS = ["hello world, the cat sat on the mat.", "a dog ran in the park; 1 + 2 = 3"] * 10
BIG = str(2**70)


def make_files(root: Path) -> None:
    import torch

    from minigpt.model import MiniGPTForCausalLM
    from minigpt.model.reward_model import MiniGPTRewardModel
    from tiny_models import save_tiny_chat_model

    save_tiny_chat_model(root / "model", TEXTS)
    torch.manual_seed(0)
    MiniGPTRewardModel(MiniGPTForCausalLM.from_pretrained(root / "model").config).save_pretrained(root / "rm")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (root / "model" / name).is_file():
            shutil.copy2(root / "model" / name, root / "rm" / name)
    (root / "texts.txt").write_text("\n".join(TEXTS) + "\n")
    (root / "chats.jsonl").write_text("".join(json.dumps({"messages": [{"role": "user", "content": t}, {"role": "assistant", "content": t}]}) + "\n" for t in TEXTS))
    (root / "preds.jsonl").write_text("".join(json.dumps({"prediction": t, "reference": t}) + "\n" for t in TEXTS[:4]))
    (root / "pairs.jsonl").write_text("".join(json.dumps({"prompt": "hi", "chosen": t, "rejected": "no"}) + "\n" for t in TEXTS[:4]))
    (root / "binary.bin").write_bytes(bytes(range(256)) * 8)
    (root / "Modelfile").write_text("FROM llama3\n")
    (root / "mine.gguf").write_bytes(b"my weights")


#: (name, argv, expected exit status) — 0 where the command should work.
CASES = [
    ("help", ["--help"], 0),
    ("help sft", ["sft", "--help"], 0),
    ("typo option", ["generate", "--model", "model", "--promt", "hi"], 2),
    ("typo command", ["pretian", "--data", "texts.txt"], 2),
    ("bad float", ["generate", "--model", "model", "--prompt", "x", "--sampling.temperature", "hot"], 2),
    ("bad json option", ["pretrain", "--model.rope_scaling", "{oops"], 2),
    ("bool bare dotted", ["sft", "--model", "model", "--data", "chats.jsonl", "--train.fsdp", "--lora.rank", "-1"], 2),
    ("save_fisher true", ["sft", "--model", "model", "--data", "chats.jsonl", "--save_fisher", "true", "--ewc_lambda", "-1"], 2),
    ("lr 0", ["sft", "--model", "model", "--data", "chats.jsonl", "--train.lr", "0"], 2),
    ("seed 2**70 generate", ["generate", "--model", "model", "--prompt", "x", "--seed", BIG], 2),
    ("seed 2**70 chat", ["chat", "--model", "model", "--prompt", "x", "--seed", BIG], 2),
    ("threads 0", ["generate", "--model", "model", "--prompt", "x", "--threads", "0"], 2),
    ("eval out = data", ["eval", "--model", "model", "--data", "chats.jsonl", "--metrics", "bleu", "--out", "chats.jsonl"], 2),
    ("eval gens = data", ["eval", "--model", "model", "--data", "chats.jsonl", "--metrics", "bleu", "--save_generations", "chats.jsonl"], 2),
    ("eval out = predictions", ["eval", "--predictions", "preds.jsonl", "--metrics", "bleu", "--out", "preds.jsonl"], 2),
    ("eval out dir", ["eval", "--predictions", "preds.jsonl", "--metrics", "bleu", "--out", "model"], 2),
    ("eval binary predictions", ["eval", "--predictions", "binary.bin", "--metrics", "bleu"], 2),
    ("eval ok", ["eval", "--predictions", "preds.jsonl", "--metrics", "bleu,rouge", "--out", "report.json"], 0),
    ("embed out dir", ["embed", "--model", "model", "--data", "texts.txt", "--out", "model"], 2),
    ("embed out = data", ["embed", "--model", "model", "--data", "texts.txt", "--out", "texts.txt"], 2),
    ("score out = data", ["score", "--model", "rm", "--data", "pairs.jsonl", "--out", "pairs.jsonl"], 2),
    ("export gguf over file", ["export", "--model", "model", "--to", "gguf", "--out", "mine.gguf"], 2),
    ("export gguf into user dir", ["export", "--model", "model", "--to", "gguf", "--out", "."], 2),
    ("export reward model", ["export", "--model", "rm", "--to", "gguf", "--out", "rm.gguf"], 2),
    ("export rm to mistral", ["export", "--model", "rm", "--to", "mistral", "--out", "rm-mistral"], 2),
    ("export ok", ["export", "--model", "model", "--to", "gguf", "--out", "exported"], 0),
    ("merge unwritable", ["merge", "--model", "model", "--adapter", "model", "--out", "/proc/x"], 2),
    ("tokenizer unwritable", ["tokenizer", "--data", "texts.txt", "--vocab_size", "300", "--out", "/proc/tok"], 2),
    ("gym unknown env", ["gym", "--algo", "ppo", "--env", "CartPol-v1", "--out", "g1"], 2),
    ("gym missing extra", ["gym", "--algo", "ppo", "--env", "Hopper-v5", "--out", "g2"], 2),
    ("gym resume nothing", ["gym", "--algo", "qlearning", "--env", "FrozenLake-v1", "--out", "g3", "--resume"], 2),
    ("gym seed -1", ["gym", "--algo", "ppo", "--env", "CartPole-v1", "--seed", "-1", "--out", "g4"], 2),
    ("gym ok", ["gym", "--algo", "qlearning", "--env", "FrozenLake-v1", "--total_steps", "2000", "--out", "g5",
                "--tensorboard", "false"], 0),
    ("pretrain init_from no tokenizer", ["pretrain", "--data", "texts.txt", "--model.init_from", "rm-nothing", "--out", "p1"], 2),
    ("pipeline missing config", ["pipeline"], 2),
    ("serve seed 2**70", ["serve", "--model", "model", "--seed", BIG], 2),
    ("serve tiny body limit", ["serve", "--model", "model", "--max_request_bytes", "10"], 2),
]


def digest(folder: Path) -> dict[str, str]:
    """sha256 of every input file (the scratch folder's files before the case ran)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=None, help="run the cases whose name contains this")
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="minigpt-probe-"))
    make_files(base / "inputs")
    rows, counts = [], {"data loss": 0, "traceback": 0, "hang": 0, "unexpected exit": 0}
    for name, argv, expected in CASES:
        if args.only and args.only not in name:
            continue
        work = base / name.replace(" ", "_").replace("*", "")
        shutil.copytree(base / "inputs", work)
        before = digest(work)
        start = time.perf_counter()
        try:
            r = subprocess.run([sys.executable, "-m", "minigpt.cli", *argv], cwd=work, capture_output=True, text=True,
                               timeout=args.timeout, stdin=subprocess.DEVNULL)
            code, err, hung = r.returncode, r.stderr, False
        except subprocess.TimeoutExpired:
            code, err, hung = None, "", True
        seconds = time.perf_counter() - start
        after = digest(work)
        lost = sorted(k for k, v in before.items() if after.get(k) != v)
        traceback = "Traceback" in err
        lines = len([line for line in err.splitlines() if line.strip() and "Warning" not in line and not line.startswith("  ")])
        counts["data loss"] += bool(lost)
        counts["traceback"] += traceback
        counts["hang"] += hung
        counts["unexpected exit"] += (not hung and code != expected)
        first = next((line for line in err.splitlines() if "error" in line), "")[:110]
        rows.append(f"| {name} | {code} (want {expected}) | {seconds:.1f} s | {lines} | {'yes' if traceback else 'no'} | "
                    f"{', '.join(lost) or 'none'} | {first} |")
    print("| case | exit | time | stderr lines | traceback | inputs changed | first error line |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\n{len(rows)} cases: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
