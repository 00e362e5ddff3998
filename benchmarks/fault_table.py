"""Real-process fault table: kill, interrupt, starve and race `minigpt pretrain`, `sft` and `grpo`,
then check that `--resume` ends with exactly the weights of an uninterrupted run.

    python benchmarks/fault_table.py [--kills 20] [--signals 6] [--commands pretrain,sft,grpo]

For each command, a tiny run (fixed steps, fp32, CPU, a checkpoint every 4 steps) is first run
uninterrupted; its weights are the reference. Then, each in a fresh run directory:

- SIGKILL at random moments, four in a row on one run directory (the run, then each `--resume`
  is killed again), then a last `--resume` runs to the end. Most moments are drawn uniformly
  between the moment the process takes its run-directory lock and the reference's final save
  (data preparation, training, checkpoint writes); one in four waits for a checkpoint's
  temporary folder to appear and kills at once, so some land while a checkpoint is being
  written.
- SIGINT and SIGTERM at random moments (same draw, two in a row). The command should save a
  checkpoint and exit 130 / 143 (or, outside the training loop, stop with nothing to save),
  printing the command that resumes it.
- A full disk: `--out` on a small tmpfs (needs root for `mount`; skipped otherwise), sized so
  that the device fills at different moments. The command should end in one clear line (exit
  2, no traceback) that keeps the last checkpoint; the tmpfs is then enlarged and `--resume`
  runs to the end.
- `--out` on a read-only mount (root only): one clear line, exit 2.
- Two processes on one `--out`: while the first holds the lock (it is paused with SIGSTOP to
  make the overlap certain), a second one started as it was, with `--resume` and with
  `--overwrite` must each be refused naming the holder's PID; the first then finishes.

"Exact" compares `model_fingerprint` (the configuration and every weight tensor, bit for bit) of
the final model with the reference's. The table gives, per scenario, how each case ended.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TINY = [
    "--model.preset", "tiny", "--model.vocab_size", "300", "--model.hidden_size", "32", "--model.intermediate_size", "64",
    "--model.num_hidden_layers", "2", "--model.num_attention_heads", "4", "--model.num_key_value_heads", "2",
]
TRAIN = ["--train.progress", "false", "--train.precision", "fp32", "--train.device", "cpu", "--train.save_interval", "4", "--train.eval_interval", "0"]
WORDS = "the quick brown fox jumps over lazy dog and cat sat on mat while bird sang red blue green".split()
COLOURS = ["red", "blue", "green", "black", "white", "pink", "grey", "brown"]


def write_data(work: Path, seed: int = 0) -> dict[str, Path]:
    """The corpus, chat file and prompt file the runs train on (generated, no downloads)."""
    rng = random.Random(seed)
    corpus = work / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(40)) for _ in range(400)), encoding="utf-8")
    chat = work / "chat.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Say {w}."}, {"role": "assistant", "content": f"{w} {w}."}]} for w in WORDS * 4]
    chat.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    prompts = work / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Name the colour {c}.", "answer": c}) + "\n" for c in COLOURS * 3), encoding="utf-8")
    return {"corpus": corpus, "chat": chat, "prompts": prompts}


def command_argv(name: str, data: dict[str, Path], base: Path, cache: Path) -> list[str]:
    """The argv (without --out) of each command under test."""
    if name == "pretrain":
        return ["pretrain", "--data", str(data["corpus"]), "--cache_dir", str(cache), *TINY, "--block_size", "32",
                "--train.max_steps", "40", "--train.batch_size", "4", *TRAIN]
    if name == "sft":
        return ["sft", "--model", str(base), "--data", str(data["chat"]), "--max_length", "32", "--val_fraction", "0",
                "--train.max_steps", "40", "--train.batch_size", "4", *TRAIN]
    if name == "grpo":
        return ["grpo", "--model", str(base), "--data", str(data["prompts"]), "--sampling.max_new_tokens", "6", "--max_prompt_length", "64",
                "--group_size", "4", "--reward", "answer,length:0.1", "--val_fraction", "0",
                "--train.max_steps", "24", "--train.batch_size", "4", "--train.lr", "1e-3", *TRAIN]
    raise ValueError(name)


def minigpt_cmd(argv: list[str]) -> list[str]:
    return [sys.executable, "-c", "import sys; from minigpt.cli import main; sys.exit(main())", *argv]


def start(argv: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(minigpt_cmd(argv), stdout=subprocess.DEVNULL, stderr=log.open("w"), env=env, start_new_session=True)


def run(argv: list[str], log: Path, timeout: float = 900) -> int:
    p = start(argv, log)
    return p.wait(timeout=timeout)


def fingerprint(out: Path) -> str | None:
    from minigpt.errors import UserError
    from minigpt.model.checks import model_fingerprint

    try:
        return model_fingerprint(out)
    except UserError:
        return None


def wait_for(pred, proc: subprocess.Popen, timeout: float = 120, poll: float = 0.002) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(poll)
    return False


def lock_taken(out: Path, pid: int) -> bool:
    try:
        return (out / ".minigpt.lock").read_text().strip() == str(pid)
    except OSError:
        return False


def checkpoint_being_written(out: Path) -> bool:
    root = out / "checkpoints"
    try:
        return any(p.name.startswith(".tmp-") for p in root.iterdir())
    except OSError:
        return False


def last_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:160] if lines else ""


def state_after(out: Path, since: float) -> str:
    """Where the process started at `since` was stopped: in a checkpoint write, in or after its
    final save, or between (files left by earlier processes of the same run do not count)."""
    if checkpoint_being_written(out):
        return "while writing a checkpoint"
    final = out / "model.safetensors"
    if (out / ".final-tmp").exists() or (final.is_file() and final.stat().st_mtime >= since):
        return "during or after the final save"
    run_json = out / "run.json"
    if not (run_json.is_file() and run_json.stat().st_mtime >= since):  # the Trainer writes it as it starts
        return "during data preparation"
    if (out / "checkpoints").is_dir():
        return "training, between checkpoints"
    if (out / "run.json").is_file():
        return "training, before the first checkpoint"
    return "during data preparation"


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, collections.Counter, int, int]] = []

    def add(self, scenario: str, command: str, outcomes: collections.Counter, exact: int, resumed: int) -> None:
        self.rows.append((scenario, command, outcomes, exact, resumed))
        print(f"  {scenario} / {command}: {dict(outcomes)}; exact {exact}/{resumed}", flush=True)

    def render(self) -> str:
        head = "| scenario | command | cases | how they ended | resumed run equals the uninterrupted one |\n|---|---|---|---|---|\n"
        body = ""
        for scenario, command, outcomes, exact, resumed in self.rows:
            how = "; ".join(f"{n} × {k}" for k, n in outcomes.most_common())
            cases = sum(n for k, n in outcomes.items() if not k.startswith("final --resume"))
            body += f"| {scenario} | {command} | {cases} | {how} | {exact} / {resumed} |\n"
        total = sum(n for _, _, o, _, _ in self.rows for k, n in o.items() if not k.startswith("final --resume"))
        return head + body + f"\n{total} cases in all (final resumes not counted).\n"


def resume_and_compare(argv: list[str], out: Path, ref: str, log: Path) -> tuple[bool, str]:
    code = run(argv + ["--out", str(out), "--resume"], log)
    if code != 0:
        return False, f"resume failed (exit {code}: {last_line(log)})"
    got = fingerprint(out)
    return got == ref, "exact" if got == ref else "resumed, but the weights differ"


def interrupt_chains(name, argv, ref, ref_seconds, work, moments, per_chain, signals, rng, table, scenario):
    """Stop the run at `moments` random moments in all, `per_chain` in a row on one run
    directory: each `--resume` is itself stopped again, until the chain has its count; the last
    `--resume` then runs to the end and its weights are compared with the reference.

    `signals` is cycled through (SIGKILL alone, or SIGINT and SIGTERM). With SIGKILL, one moment
    in four waits for a checkpoint's temporary folder to appear and kills at once."""
    outcomes, exact, chains, done = collections.Counter(), 0, 0, 0
    while done < moments:
        out = work / f"{scenario}-{name}-{chains}"
        for k in range(min(per_chain, moments - done)):
            sig = signals[done % len(signals)]
            log = work / f"{scenario}-{name}-{chains}-{k}.log"
            since = time.time()
            p = start(argv + ["--out", str(out)] + (["--resume"] if k else []), log)
            if not wait_for(lambda: lock_taken(out, p.pid), p):
                p.wait()
                outcomes[f"ended before taking the lock: exit {p.returncode}: {last_line(log)}"] += 1
                done += 1
                continue
            if sig == signal.SIGKILL and done % 4 == 3:
                wait_for(lambda: checkpoint_being_written(out), p, timeout=ref_seconds * 3, poll=0.0005)
            else:
                time.sleep(rng.uniform(0, ref_seconds))
            done += 1
            if p.poll() is not None:
                outcomes["the run finished before the moment came"] += 1
                continue
            if sig == signal.SIGKILL:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                outcomes[f"SIGKILL {state_after(out, since)}"] += 1
                continue
            where = state_after(out, since)
            os.kill(p.pid, sig)
            code = p.wait()
            text = log.read_text(errors="replace")
            if "Traceback" in text:
                how = "a TRACEBACK: " + last_line(log)
            elif code == 0 and "as the run finishes" in text:
                how = "the run completed its final save first"
            elif code == 0:
                how = "the run had completed (the signal came as the process exited)"
            elif code == -signal.SIGTERM and (out / "model.safetensors").is_file():
                # minigpt's handler is only removed once its command has returned
                how = "the command had returned; killed by the default handler as the process exited"
            elif "resume with: " in text:
                how = "checkpoint saved, resume command printed"
            elif "continue with: " in text:
                how = "outside the training loop, nothing to save, resume command printed"
            else:
                how = "no message: " + last_line(log)
            outcomes[f"{sig.name} {where} → exit {code}, {how}"] += 1
        ok, how = resume_and_compare(argv, out, ref, work / f"{scenario}-{name}-{chains}-final.log")
        exact += ok
        chains += 1
        outcomes[f"final --resume: {how}"] += 1
        shutil.rmtree(out, ignore_errors=True)
    table.add(f"{scenario} ({moments} moments, {per_chain} per run directory)", name, outcomes, exact, chains)


def mount_tmpfs(path: Path, kib: int, remount: bool = False) -> bool:
    opts = f"{'remount,' if remount else ''}size={kib}k"
    args = ["mount", "-o", opts, str(path)] if remount else ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)]
    return subprocess.run(args, capture_output=True).returncode == 0


def disk_trials(name, argv, ref, ref_size_kib, work, table):
    outcomes, exact, cases = collections.Counter(), 0, 0
    mnt = work / f"mnt-{name}"
    mnt.mkdir(exist_ok=True)
    if not mount_tmpfs(mnt, 64):
        print(f"  full disk / {name}: skipped (mounting a tmpfs needs root)", flush=True)
        return
    subprocess.run(["umount", str(mnt)], capture_output=True)
    for frac in (0.02, 0.3, 0.6, 0.9):
        kib = max(16, int(ref_size_kib * frac))
        assert mount_tmpfs(mnt, kib)
        out, log = mnt / "run", work / f"disk-{name}-{kib}.log"
        try:
            code = run(argv + ["--out", str(out)], log)
            text = log.read_text(errors="replace")
            if code == 0:
                what = "the run fitted"
            else:
                clear = code == 2 and "Traceback" not in text and "no space left" in text.lower()
                when = "while writing a checkpoint" if "while writing checkpoint" in text else "before training (data preparation)" if not (out / "run.json").is_file() else "in training"
                what = f"full {when}: exit {code}, {'one clear line + the resume command' if clear else 'NOT CLEAR: ' + last_line(log)}"
            mount_tmpfs(mnt, ref_size_kib * 4, remount=True)
            ok, how = resume_and_compare(argv, out, ref, work / f"disk-{name}-{kib}.resume.log")
            exact += ok
            cases += 1
            outcomes[f"{what}; resume {how}"] += 1
        finally:
            subprocess.run(["umount", str(mnt)], capture_output=True)
    table.add(f"full disk (tmpfs of 2–90 % of the run's {ref_size_kib} KiB)", name, outcomes, exact, cases)


def readonly_trial(name, argv, work, table):
    """`--out` inside a read-only mount: one clear line, exit 2, before any data preparation."""
    mnt = work / f"ro-{name}"
    mnt.mkdir(exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(mnt)], capture_output=True).returncode:
        print(f"  read-only --out / {name}: skipped (mounting a tmpfs needs root)", flush=True)
        return
    try:
        log = work / f"ro-{name}.log"
        code = run(argv + ["--out", str(mnt / "run")], log)
        text = log.read_text(errors="replace")
        clear = code == 2 and "Traceback" not in text and "Read-only file system" in text and len(text.strip().splitlines()) == 1
        outcome = f"exit {code}, {'one clear line' if clear else 'NOT CLEAR: ' + last_line(log)}"
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
    table.add("--out on a read-only mount", name, collections.Counter({outcome: 1}), 0, 0)


def race_trial(name, argv, ref, work, table):
    outcomes = collections.Counter()
    out, log = work / f"race-{name}", work / f"race-{name}.log"
    first = start(argv + ["--out", str(out)], log)
    if not wait_for(lambda: lock_taken(out, first.pid), first):
        table.add("two processes on one --out", name, collections.Counter({"first ended before taking the lock": 1}), 0, 1)
        return
    os.killpg(first.pid, signal.SIGSTOP)  # hold it inside its run, lock taken
    try:
        for extra in ([], ["--resume"], ["--overwrite"]):
            blog = work / f"race-{name}-second{'-'.join(extra)}.log"
            code = run(argv + ["--out", str(out), *extra], blog)
            text = blog.read_text(errors="replace")
            refused = code == 2 and f"PID {first.pid}" in text and "Traceback" not in text
            outcomes[f"second run {' '.join(extra) or '(same argv)'}: {'refused, naming the PID' if refused else 'NOT REFUSED: exit ' + str(code) + ' ' + last_line(blog)}"] += 1
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    code = first.wait()
    ok = code == 0 and fingerprint(out) == ref
    outcomes[f"first run: exit {code}, {'weights exact' if ok else 'WEIGHTS DIFFER'}"] += 1
    table.add("two processes on one --out", name, outcomes, int(ok), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20, help="SIGKILL moments per command")
    ap.add_argument("--signals", type=int, default=4, help="SIGINT/SIGTERM moments per command (alternating)")
    ap.add_argument("--commands", default="pretrain,sft,grpo")
    ap.add_argument("--scenarios", default="kill,signal,disk,race,readonly", help="which of kill, signal, disk, race, readonly")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None, help="working folder (default: a temporary one, removed at the end)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    scenarios = set(args.scenarios.split(","))
    work = Path(args.work or tempfile.mkdtemp(prefix="minigpt-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    data = write_data(work)
    cache = work / "cache"
    base = work / "base"
    t0 = time.time()
    if run(command_argv("pretrain", data, base, cache) + ["--out", str(base)], work / "base.log") != 0:
        sys.exit(f"the base model did not train: {last_line(work / 'base.log')}")
    table = Table()
    for name in args.commands.split(","):
        argv = command_argv(name, data, base, cache)
        ref_out = work / f"ref-{name}"
        if "readonly" in scenarios:
            readonly_trial(name, argv, work, table)
        if not scenarios & {"kill", "signal", "disk", "race"}:
            continue
        p = start(argv + ["--out", str(ref_out)], work / f"ref-{name}.log")
        wait_for(lambda: lock_taken(ref_out, p.pid), p)
        # Moments are drawn between the lock and the final save (the process then only exits).
        t = time.time()
        wait_for(lambda: (ref_out / "model.safetensors").is_file(), p, timeout=900)
        ref_seconds = (time.time() - t) * 1.05
        if p.wait() != 0:
            sys.exit(f"the reference {name} run failed: {last_line(work / f'ref-{name}.log')}")
        ref = fingerprint(ref_out)
        size_kib = sum(p.stat().st_size for p in ref_out.rglob("*") if p.is_file()) // 1024
        print(f"{name}: reference run {ref_seconds:.1f} s from its lock to its final save, {size_kib} KiB, fingerprint {ref[:12]}", flush=True)
        if "kill" in scenarios:
            interrupt_chains(name, argv, ref, ref_seconds, work, args.kills, 4, [signal.SIGKILL], rng, table, "SIGKILL")
        if "signal" in scenarios:
            interrupt_chains(name, argv, ref, ref_seconds, work, args.signals, 2, [signal.SIGINT, signal.SIGTERM], rng, table, "SIGINT-SIGTERM")
        if "disk" in scenarios:
            disk_trials(name, argv, ref, size_kib, work, table)
        if "race" in scenarios:
            race_trial(name, argv, ref, work, table)
    print()
    print(table.render())
    print(f"wall time {time.time() - t0:.0f} s; python {sys.version.split()[0]}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
