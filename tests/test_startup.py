"""`minigpt --help`, `minigpt CMD --help` and option errors are answered without importing torch
or transformers (the 9-second part of a start); `import minigpt` is cheap too, and still makes
transformers' Auto classes load a MiniGPT directory."""

from __future__ import annotations

import json
import subprocess

import pytest
import sys
import textwrap

HEAVY = ("torch", "transformers", "peft", "datasets", "gymnasium", "tokenizers")


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)


def test_help_of_every_command_imports_neither_torch_nor_transformers():
    r = run_python(f"""
        import contextlib, io, json, sys
        from minigpt.cli import _commands, main
        seen = {{}}
        for argv in [["--help"]] + [[name, "--help"] for name in _commands()] + [["sft", "--promt", "x"]]:
            out = io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
                try:
                    main(argv)
                except SystemExit:
                    pass
            seen[" ".join(argv)] = (sorted(m for m in {HEAVY!r} if m in sys.modules), len(out.getvalue()))
        print(json.dumps(seen))
    """)
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(seen) == 24 and "report --help" in seen  # 22 commands, `minigpt --help` and a mistyped option
    for argv, (heavy, printed) in seen.items():
        assert heavy == [], f"`minigpt {argv}` imported {heavy}"
        if argv.endswith("--help"):
            assert printed > 200, f"`minigpt {argv}` printed no help"


def test_import_minigpt_is_cheap_and_still_registers_with_transformers(tmp_path):
    """Importing the package loads no torch; importing transformers afterwards (or before)
    registers MiniGPT with the Auto classes, so a saved directory loads with AutoModelForCausalLM."""
    from minigpt.model import MiniGPTConfig, MiniGPTForCausalLM

    MiniGPTForCausalLM(MiniGPTConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=2, num_key_value_heads=1)).save_pretrained(tmp_path)
    for first in ("import minigpt", "import transformers; import minigpt"):
        r = run_python(f"""
            import sys
            {first}
            cheap = "torch" not in sys.modules
            from transformers import AutoModelForCausalLM
            model = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r})
            print(cheap, type(model).__name__)
        """)
        assert r.returncode == 0, r.stderr
        cheap, name = r.stdout.split()
        assert name == "MiniGPTForCausalLM"
        if first == "import minigpt":
            assert cheap == "True"


def test_the_public_names_still_resolve():
    import minigpt
    import minigpt.gym
    import minigpt.inference
    import minigpt.model

    for module in (minigpt, minigpt.model, minigpt.inference, minigpt.gym):
        for name in module.__all__:
            assert getattr(module, name) is not None, (module.__name__, name)


# ------------------------------------------------------------------------------------------
# One spelling for booleans; one line for a mistyped option
# ------------------------------------------------------------------------------------------


def parse(command: str, *argv: str):
    from minigpt.cli import parser_for

    parser, full = parser_for([command, *argv])
    return parser.parse_args(full)[command]


def test_every_boolean_takes_a_bare_flag_or_a_value():
    base = ("--model", "m", "--data", "d.jsonl")
    for argv, packing, fsdp, fisher in [
        ((), True, False, False),  # the defaults
        (("--packing", "false", "--train.fsdp", "--save_fisher", "true"), False, True, True),
        (("--no_packing", "--train.fsdp", "false", "--save_fisher"), False, False, True),
        (("--packing=no", "--train.fsdp=true", "--save_fisher=false"), False, True, False),
        (("--packing", "--train.fsdp", "--out", "x"), True, True, False),
    ]:
        cfg = parse("sft", *base, *argv)
        assert (cfg.packing, cfg.train.fsdp, cfg.save_fisher) == (packing, fsdp, fisher), argv
    # An optional boolean (`bool | None`) given alone is true.
    assert parse("eval", "--predictions", "p.jsonl", "--chat").chat is True
    assert parse("eval", "--predictions", "p.jsonl", "--chat", "false").chat is False
    assert parse("eval", "--predictions", "p.jsonl").chat is None


def test_a_mistyped_option_is_one_line_with_the_closest_names(capsys):
    from minigpt.cli import main

    cases = [
        (["generate", "--model", "m", "--promt", "hi"], "unknown option --promt; did you mean --prompt?"),
        (["generat", "--model", "m"], "unknown command 'generat'; did you mean generate?"),
        (["pretrain", "--model.rope_scaling", "notjson"], "--model.rope_scaling: expected a JSON object"),
        (["pretrain", "--train.max_steps", "1.5"], "--train.max_steps: expected an integer, got 1.5"),
        (["sft", "--model", "m", "--data", "d", "--train.fsdp", "maybe"], "--train.fsdp"),
    ]
    for argv, wanted in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "usage" not in err, err
        assert wanted in err, err


def test_under_torchrun_only_rank_0_reports_a_parse_error(capsys, monkeypatch):
    from minigpt.cli import main

    monkeypatch.setenv("RANK", "1")
    assert main(["pretrain", "--bogus"]) == 2
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")
    assert main(["pretrain", "--bogus"]) == 2
    assert "unknown option --bogus" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------
# --threads
# ------------------------------------------------------------------------------------------


def test_auto_threads_follow_the_measured_rule(monkeypatch):
    """bench_threads.py on a 2-core host: batch-1 decoding of `small` ran 0.72× as fast on 2
    threads as on 1; training ran 1.7–2.0× faster on 2 idle cores, and 0.43× as fast on 2
    cores when one was busy. So: decoding 1 thread; training the cores left idle."""
    from minigpt.train import threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    for busy, want in ((0, 4), (1, 3), (4, 1), (9, 1)):
        monkeypatch.setattr(threads, "busy_cores", lambda busy=busy: busy)
        assert threads.pick_threads("pretrain")[0] == want, busy
    assert threads.pick_threads("generate")[0] == 1 and threads.pick_threads("serve")[0] == 1
    monkeypatch.setattr(threads, "busy_cores", lambda: 0)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert threads.pick_threads("sft")[0] == 2  # each of 2 ranks gets half
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.pick_threads("sft") == (3, "OMP_NUM_THREADS")  # the user's setting wins over auto
    assert threads.pick_threads("sft", "5") == (5, "--threads")


def test_busy_cores_sees_a_busy_neighbour():
    """/proc/stat over 0.2 s: idle here, then one core spinning in a child process."""
    import multiprocessing
    import time

    from minigpt.train.threads import busy_cores, usable_cores

    if usable_cores() < 2:
        pytest.skip("needs 2 cores")
    spinner = multiprocessing.Process(target=_spin, daemon=True)
    spinner.start()
    try:
        time.sleep(0.3)
        assert busy_cores() >= 1
    finally:
        spinner.terminate()


def _spin() -> None:
    while True:
        pass


def test_threads_option_on_the_command_line(capsys):
    from minigpt.cli import main, pop_threads

    assert pop_threads(["sft", "--threads", "2", "--model", "m"]) == (["sft", "--model", "m"], "2")
    assert pop_threads(["sft", "--threads=auto"]) == (["sft"], "auto")
    for bad in ("0", "two", "1.5"):
        assert main(["generate", "--model", "m", "--prompt", "x", "--threads", bad]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--threads: must be auto or an integer" in err, err


def test_a_setting_made_for_one_command_is_undone_after_it(monkeypatch):
    import os

    import torch

    from minigpt.train.threads import set_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    restore = set_threads(1)
    assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
    restore()
    assert torch.get_num_threads() == before and "OMP_NUM_THREADS" not in os.environ


IMPORT_ORDERS = [
    "import minigpt.model.modeling", "import minigpt.model.reward_model", "from minigpt.model import MiniGPTForCausalLM",
    "import minigpt; from transformers import AutoConfig", "import transformers; from transformers import AutoConfig; import minigpt",
]


def test_every_import_order_registers_every_class_without_a_warning():
    """Each order in a fresh interpreter; the interpreters run side by side (they spend their
    time importing torch and transformers), which keeps this test a fifth of five in a row."""
    procs = {}
    for first in IMPORT_ORDERS:
        code = textwrap.dedent(f"""
            import warnings
            warnings.simplefilter("error")
            {first}
            from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSequenceClassification
            from transformers.models.auto.configuration_auto import CONFIG_MAPPING
            names = [str(v) for auto in (AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSequenceClassification)
                     for v in auto._model_mapping._extra_content.values()]
            print("minigpt" in CONFIG_MAPPING, all(any(c in n for n in names) for c in ("MiniGPTForCausalLM", "MiniGPTForMaskedLM", "MiniGPTRewardModel")))
        """)
        procs[first] = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for first, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{first}: {err}"
        assert out.split() == ["True", "True"], f"{first}: {out}{err}"
