"""The report card (`minigpt report`): stage order, throughput and MFU worked by hand, final
figures, plots, samples from a real model, the pages, and what it refuses to overwrite."""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

import pytest

from minigpt.cli import main
from minigpt.errors import UserError
from minigpt.evaluation.report import (
    MARKER,
    StageRun,
    final_metrics,
    find_stages,
    load_stage,
    throughput,
    write_report,
)


def _stage(path: Path, run: dict, rows: list[dict], mtime: float | None = None) -> Path:
    path.mkdir(parents=True)
    (path / "run.json").write_text(json.dumps(run))
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if mtime is not None:
        os.utime(path / "run.json", (mtime, mtime))
    return path


def test_stages_are_ordered_by_the_model_each_starts_from_not_by_name_or_time(tmp_path):
    a = tmp_path / "zeta"  # trained first, but its name sorts last and its run.json is newest
    b = tmp_path / "alpha"
    _stage(a, {"stage": "pretrain"}, [], mtime=3_000)
    _stage(b, {"stage": "sft", "model": str(a)}, [], mtime=1_000)
    _stage(tmp_path / "other", {"stage": "dpo", "model": "/elsewhere"}, [], mtime=2_000)
    (tmp_path / "data").mkdir()  # no run.json: not a stage
    assert [s.name for s in find_stages(tmp_path)] == ["other", "zeta", "alpha"]
    assert [s.name for s in find_stages(a)] == ["zeta"]  # a run directory on its own


def test_no_run_and_bad_json_are_one_line_errors_naming_the_file(tmp_path):
    with pytest.raises(UserError, match="no run.json here or in its sub-folders"):
        find_stages(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "run.json").write_text('{"stage": "sft",\n "lr": }')
    with pytest.raises(UserError, match=r"bad/run.json:2: not valid JSON"):
        load_stage(bad)


def test_throughput_and_mfu_by_hand(tmp_path):
    """1,000 tokens in 4 s = 250 tokens/s. The saved model: vocab 64, hidden 16, 1 layer
    (intermediate 32, 2 heads of 8, 1 KV head), tied embeddings: its parameter count is read
    from the file and checked against torch; FLOPs/token = 6·N + 12·L·C·T with T = 32."""
    from minigpt.model import MiniGPTConfig, MiniGPTForCausalLM

    path = _stage(tmp_path / "pt", {"stage": "pretrain", "block_size": 32},
                  [{"step": 5, "time_s": 2.0, "train/loss": 3.0, "train/tokens": 500},
                   {"step": 10, "time_s": 4.0, "train/loss": 2.5, "train/tokens": 1000}, {"step": 10, "time_s": 4.5, "val_loss": 2.7}])
    model = MiniGPTForCausalLM(MiniGPTConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True))
    model.save_pretrained(path)
    n = sum(p.numel() for p in model.parameters())  # tied: the embedding counted once
    (path / "environment.json").write_text(json.dumps({"precision": "fp32"}))
    stage = load_stage(path)
    figures = throughput(stage, peaks={"fp32": 1e9})
    assert figures["steps"] == 10 and figures["tokens"] == 1000
    assert figures["seconds"] == 4.5  # the last row's clock, evaluation included
    assert figures["tokens_per_s"] == pytest.approx(1000 / 4.5)
    assert figures["parameters"] == n
    assert figures["mfu"] == pytest.approx((1000 / 4.5) * (6 * n + 12 * 1 * 16 * 32) / 1e9)
    assert "mfu" not in throughput(stage, peaks={"bf16": 1e9})  # no peak for the run's precision
    assert "mfu" not in throughput(stage)
    # Evaluations between steps took 1.5 of the 4.5 s: tokens/s counts the 3 s of training.
    rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    rows[-1]["eval_time_s"] = 1.5
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    figures = throughput(load_stage(path))
    assert figures["seconds"] == 4.5 and figures["tokens_per_s"] == pytest.approx(1000 / 3.0)


def test_final_figures_show_before_and_after_and_a_gym_evaluation(tmp_path):
    rows = [{"step": 60, "train/loss": -0.1, "train/mean_reward": 0.5},
            {"step": 60, "val_reward/answer_before": 0.325, "val_reward/answer": 0.425, "val_completion_length": 45.66}]
    stage = StageRun(tmp_path, "grpo", "grpo", {}, None, rows)
    figures = dict(final_metrics(stage))
    assert figures["held-out answer accuracy"] == "32.5% → 42.5%"
    assert figures["held-out reply length (tokens)"] == "45.7"
    assert figures["last mean reward"] == "0.500"
    gym = StageRun(tmp_path, "cartpole", "gym", {}, None, [], {"mean_return": 500.0, "std_return": 0.0, "episodes": [500.0] * 10,
                                                                "steps": 100_000, "seconds": 80.0})
    assert dict(final_metrics(gym))["evaluation return (deterministic)"] == "500.00 ± 0.00 over 10 episodes"
    assert throughput(gym) == {"steps": 100_000.0, "seconds": 80.0}


def test_report_of_a_real_sft_run_has_its_sections_plot_and_samples(tmp_path, capsys):
    """A tiny SFT run through the command line, then `minigpt report` on it: the page names the
    stage, its figures and its plot, the samples are the first prompts of its data, and the
    HTML page carries the plot inline."""
    from tiny_models import save_tiny_chat_model

    words = ("apple", "pear", "plum", "fig", "kiwi", "lime")
    base = tmp_path / "base"
    save_tiny_chat_model(base, [f"Say {w}. {w}." for w in words] * 5)
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Say {w}."},
                                                     {"role": "assistant", "content": f"{w}."}]}) + "\n"
                            for w in words * 4))
    run = tmp_path / "sft"
    assert main(["sft", "--model", str(base), "--data", str(data), "--out", str(run), "--max_length", "64",
                 "--train.max_steps", "4", "--train.batch_size", "2", "--train.log_interval", "1", "--train.device", "cpu",
                 "--train.precision", "fp32", "--train.progress", "false", "--train.tensorboard", "false"]) == 0
    env = json.loads((run / "environment.json").read_text())
    assert env["precision"] == "fp32" and env["torch_threads"] >= 1
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    tokens = [r["train/tokens"] for r in rows if "train/tokens" in r]
    assert len(tokens) == 4 and all(b > a for a, b in zip(tokens, tokens[1:]))
    assert all("time_s" in r for r in rows)

    capsys.readouterr()
    assert main(["report", str(run), "--samples", "2", "--max_new_tokens", "8", "--no_peak"]) == 0
    printed = capsys.readouterr().out
    assert "report: 2 greedy sample(s) of sft" in printed and "report of 1 stage(s) (sft)" in printed  # progress, then the result
    md = (run / "report.md").read_text()
    assert md.startswith(MARKER)
    for section in ("## Environment", "## Stages", "## sft (`minigpt sft`)", "| final figure | value |", "Samples (greedy):"):
        assert section in md, section
    assert md.count("> **prompt:** ") == 2
    assert "![sft curves](report_files/sft.png)" in md
    assert (run / "report_files" / "sft.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (run / "report.html").read_text()
    assert "<table>" in page and 'src="data:image/png;base64,iVBOR' in page and "report_files/" not in page
    assert "<strong>prompt:</strong> Say apple." in page and "<strong>prompt:</strong> Say pear." in page  # the data's first prompts


def test_model_text_is_shown_literally_not_as_markup(tmp_path):
    """A sample full of Markdown and HTML characters comes out of the HTML page as the same text."""
    from minigpt.evaluation.report import Sample

    run = _stage(tmp_path / "run", {"stage": "sft"}, [])
    text = "def f(*args, **kw): a_b [x](y) <b>bold</b> `code` # 1. + - ! > q"
    md, page, _ = write_report(run, num_samples=1, measure_peak=False, samples={"run": [Sample(text, text)]})
    body = page.read_text()
    assert body.count(html.escape(text, quote=False)) == 2  # prompt and reply, both literal
    assert "<b>bold</b>" not in body and "<em>" not in body.split("<body>")[1]


def test_report_never_replaces_a_file_it_did_not_write(tmp_path):
    run = _stage(tmp_path / "run", {"stage": "pretrain"}, [{"step": 1, "time_s": 1.0, "train/loss": 5.0, "train/tokens": 10}])
    mine = tmp_path / "notes.md"
    mine.write_text("my notes\n")
    with pytest.raises(UserError, match="is not a minigpt report"):
        write_report(run, mine, num_samples=0, measure_peak=False)
    assert mine.read_text() == "my notes\n"
    with pytest.raises(UserError, match="give a .md file name"):
        write_report(run, tmp_path / "out.txt", num_samples=0, measure_peak=False)
    md, page, card = write_report(run, tmp_path / "r.md", num_samples=0, measure_peak=False)
    first = md.read_text()
    md2, _, _ = write_report(run, tmp_path / "r.md", num_samples=0, measure_peak=False)  # its own page: replaced
    assert md2.read_text() == first and page.read_text().count(MARKER) == 1
    assert [s.name for s in card.stages] == ["run"]
