"""Values that would make an option a no-op, nonsense, or a crash later: one line, exit 2,
before any work."""

from __future__ import annotations

import pytest

from minigpt.cli import main

BIG = str(2**70)


def one_line(argv, capsys, *needles) -> None:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("argv,needles", [
    (["pretrain", "--train.lr", "0"], ["train.lr", "> 0"]),
    (["pretrain", "--train.seed", BIG], ["train.seed"]),
    (["pretrain", "--ewc_lambda", "-1"], ["--ewc_lambda", "≥ 0"]),
    (["pretrain", "--kl_to_base", "-0.5"], ["--kl_to_base"]),
    (["sft", "--model", "m", "--data", "d.jsonl", "--ewc_lambda", "-1"], ["--ewc_lambda"]),
    (["sft", "--model", "m", "--data", "d.jsonl", "--kl_to_base", "-1"], ["--kl_to_base"]),
    (["sft", "--model", "m", "--data", "d.jsonl", "--replay_data", "old.jsonl", "--replay_ratio", "1.5"], ["--replay_ratio"]),
    (["sft", "--model", "m", "--data", "d.jsonl", "--ewc_data", "old.jsonl"], ["--ewc_data", "--ewc_lambda"]),
    (["sft", "--model", "m", "--data", "d.jsonl", "--fisher_rows", "0"], ["--fisher_rows"]),
    (["generate", "--model", "m", "--prompt", "hi", "--seed", BIG], ["--seed", "2**64 - 1"]),
    (["chat", "--model", "m", "--prompt", "hi", "--seed", BIG], ["--seed"]),
    (["eval", "--predictions", "p.jsonl", "--seed", BIG], ["--seed"]),
    (["serve", "--model", "m", "--seed", BIG], ["--seed"]),
    (["gym", "--algo", "ppo", "--env", "CartPole-v1", "--seed", "-1"], ["--seed"]),
    (["quickstart", "--seed", BIG], ["--seed"]),
])
def test_nonsense_values_are_one_line_before_any_work(argv, needles, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative inputs that do not exist: the value is refused first
    one_line(argv, capsys, *needles)
    assert list(tmp_path.iterdir()) == []  # nothing was written


def test_eval_predictions_that_are_not_utf8_text_name_the_file_and_line(tmp_path, capsys):
    good = '{"prediction": "a", "reference": "a"}\n'
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(good.encode() + '{"prediction": "café", "reference": "x"}\n'.encode("latin-1"))
    one_line(["eval", "--predictions", latin1, "--metrics", "bleu"], capsys, f"{latin1}:2", "not UTF-8")
    binary = tmp_path / "model.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    one_line(["eval", "--predictions", binary, "--metrics", "bleu"], capsys, f"{binary}:1")
