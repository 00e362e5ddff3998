"""The README's command blocks run as written: each `minigpt` command of README.md, in README
order, in a folder holding tiny files of the names the README uses, with options appended that
shrink the work (2 optimizer steps, a 2-layer model of width 32, short sequences, 4 new tokens).
Appended options override the written ones, so every option the README writes is still parsed
and used. The README's alternative `pretrain` lines share one `--out`: the later ones get
`--overwrite`. About 15 s on 2 cores.

Left out, each run elsewhere: `quickstart` (tests/recipes/test_quickstart.py), `pipeline`
(tests/recipes/test_pipeline.py runs configs/pipeline/rlhf.json), `serve` (a server: tests/inference/test_server.py),
and `pretrain --data roneneldan/TinyStories` (a Hugging Face dataset that is not in this machine's
cache)."""

from __future__ import annotations

import gzip
import io
import json
import random
import shlex
import shutil
from pathlib import Path

from test_readme import ROOT, readme_commands

TRAIN = ["--train.max_steps", "2", "--train.eval_interval", "0", "--train.progress", "false", "--train.tensorboard", "false",
         "--train.batch_size", "2", "--train.device", "cpu", "--train.precision", "fp32"]
SHAPE = ["--model.vocab_size", "300", "--block_size", "32", "--model.max_position_embeddings", "96", "--model.hidden_size", "32",
         "--model.intermediate_size", "64", "--model.num_hidden_layers", "2", "--model.num_attention_heads", "2",
         "--model.num_key_value_heads", "1"]
#: Options appended per command (the work shrunk; nothing the README writes is removed).
SHRINK = {
    "pretrain": TRAIN + SHAPE,
    "sft": TRAIN + ["--max_length", "64"],
    "distill": TRAIN + ["--max_length", "64"],
    "reward": TRAIN + ["--max_length", "64"],
    "dpo": TRAIN + ["--max_length", "64"],
    "grpo": TRAIN + ["--sampling.max_new_tokens", "4", "--grpo.group_size", "2", "--max_prompt_length", "32"],
    "ppo": TRAIN + ["--sampling.max_new_tokens", "4", "--max_prompt_length", "32"],
    "eval": ["--sampling.max_new_tokens", "4", "--resamples", "20"],
    "chat": ["--sampling.max_new_tokens", "4"],
    "merge": [],
    "report": ["--samples", "1", "--max_new_tokens", "4", "--no_peak"],
    "score": [],
}
SKIP = ("minigpt quickstart", "minigpt pipeline", "minigpt serve", "roneneldan/TinyStories")

WORDS = "the a cat dog sat ran on mat park sun big small red blue happy and then with to in".split()


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 10))).capitalize() + "."


def write_jsonl(path: Path, rows: list[dict], gz: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")


def make_workspace(root: Path) -> None:
    """Tiny files under the names README.md uses, and its configs/."""
    rng = random.Random(0)
    shutil.copytree(ROOT / "configs", root / "configs")
    docs = [" ".join(sentence(rng) for _ in range(15)) for _ in range(60)]
    (root / "my_corpus.txt").write_text("\n<|endoftext|>\n".join(docs), encoding="utf-8")
    (root / "input.txt").write_text("\n\n".join(docs[:30]), encoding="utf-8")  # tinyshakespeare's file name
    write_jsonl(root / "notes.jsonl", [{"body": d} for d in docs])
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": docs[:30]}), root / "shard.parquet")
    write_jsonl(root / "more.jsonl.gz", [{"text": d} for d in docs[30:]], gz=True)
    qa = [(f"What is {a} + {b}?", str(a + b)) for a in range(1, 9) for b in range(1, 5)]
    write_jsonl(root / "alpaca_en.jsonl.gz", [{"instruction": q, "input": "", "output": r} for q, r in qa], gz=True)
    chats = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": r}]} for q, r in qa]
    write_jsonl(root / "chats.jsonl", chats)
    hh = [{"chosen": f"\n\nHuman: {q}\n\nAssistant: {r}", "rejected": f"\n\nHuman: {q}\n\nAssistant: no idea"} for q, r in qa]
    write_jsonl(root / "hh-rlhf" / "helpful-base" / "test.jsonl.gz", hh, gz=True)
    write_jsonl(root / "hh-rlhf" / "helpful-base" / "train.jsonl.gz", hh, gz=True)
    write_jsonl(root / "pairs.jsonl", [{"prompt": q, "chosen": r, "rejected": "no idea"} for q, r in qa])
    write_jsonl(root / "prompts.jsonl", [{"prompt": q, "answer": r} for q, r in qa])
    write_jsonl(root / "gsm8k" / "train.jsonl", [{"question": q, "answer": f"{q} = {r}\n#### {r}"} for q, r in qa])
    write_jsonl(root / "heldout.jsonl", [{"prompt": q, "reference": r} for q, r in qa[:6]])


def test_every_readme_command_runs_as_written(tmp_path, monkeypatch, capsys):
    from minigpt.cli import main

    make_workspace(tmp_path)
    monkeypatch.chdir(tmp_path)
    ran = []
    for line in readme_commands():
        if any(skip in line for skip in SKIP):
            continue
        argv = shlex.split(line)[1:]
        if argv[0] == "distill" and not Path("runs/tiny").exists():
            shutil.copytree("runs/mine", "runs/tiny")  # the README's student: a small model with the same tokenizer
        if argv[0] == "pretrain" and "--out" in argv and Path(argv[argv.index("--out") + 1]).exists():
            argv.append("--overwrite")  # the README's pretrain lines are alternatives writing one --out
        if argv[0] == "chat":
            monkeypatch.setattr("sys.stdin", io.StringIO("What is 12 + 30?\n"))
        code = main(argv + SHRINK.get(argv[0], []))
        captured = capsys.readouterr()
        assert code == 0, f"README command failed ({code}): {line}\n{captured.err[-2000:]}"
        ran.append(line)
    assert len(ran) >= 18, ran
    assert Path("runs/lora-merged/config.json").is_file() and Path("report.json").is_file() and Path("gens.jsonl").is_file()
