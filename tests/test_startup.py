"""`minigpt --help`, `minigpt CMD --help` and option errors are answered without importing torch
or transformers (the 9-second part of a start); `import minigpt` is cheap too, and still makes
transformers' Auto classes load a MiniGPT directory."""

from __future__ import annotations

import json
import subprocess
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
    assert len(seen) == 23
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
