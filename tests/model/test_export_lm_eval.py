"""lm-evaluation-harness runs our models: the `lm_eval` command on a `minigpt export --to llama`
directory, and `lm_eval.simple_evaluate` on a MiniGPT directory itself (after `import minigpt`,
which registers the model with transformers' Auto classes), both on a local task (a YAML over a
small JSONL file: no hub dataset can be fetched). The harness's per-choice log-likelihoods
must equal the ones computed here from the model directly."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tiny_models import save_tiny_chat_model

lm_eval = pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed: pip install -e '.[harness]'")

DOCS = [
    {"question": "The cat sat on the", "choices": ["mat", "moon", "sea"], "label": 0},
    {"question": "One plus one is", "choices": ["two", "five"], "label": 0},
    {"question": "Hello", "choices": ["world", "there", "cat"], "label": 1},
    {"question": "The dog ran in the", "choices": ["park", "cup"], "label": 0},
    {"question": "A red", "choices": ["apple", "sky", "song"], "label": 0},
]

TASK = """task: minigpt_local_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_eval")
    texts = [d["question"] + " " + c for d in DOCS for c in d["choices"]] * 10
    tok, model = save_tiny_chat_model(root / "model", texts)
    data = root / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "minigpt_local_mc.yaml").write_text(TASK.format(data=data))
    return root, tok, model.eval(), tasks


def our_loglikelihoods(model, tok) -> list[list[float]]:
    """log p(" " + choice | question), summed over the choice's tokens, as the harness defines
    a multiple-choice continuation (the target delimiter is one space)."""
    out = []
    for d in DOCS:
        ctx = tok(d["question"], add_special_tokens=False)["input_ids"]
        row = []
        for c in d["choices"]:
            whole = tok(d["question"] + " " + c, add_special_tokens=False)["input_ids"]
            cont = whole[len(ctx):]
            ids = torch.tensor([ctx + cont])
            with torch.no_grad():
                lp = model(ids).logits[0, :-1].log_softmax(-1)
            row.append(float(sum(lp[len(ctx) - 1 + i, t] for i, t in enumerate(cont))))
        out.append(row)
    return out


def loglikelihood(resp) -> float:
    """The log-likelihood inside one harness response: `[[ll, is_greedy]]` in a samples file,
    `((ll, is_greedy),)` from the Python API."""
    while isinstance(resp, (list, tuple)):
        resp = resp[0]
    return float(resp)


def harness_loglikelihoods(samples: list[dict]) -> list[list[float]]:
    return [[loglikelihood(r) for r in s["resps"]] for s in sorted(samples, key=lambda s: s["doc_id"])]


def test_the_lm_eval_command_on_an_exported_model(setup, tmp_path):
    from minigpt.model.export import export_to_llama

    root, tok, model, tasks = setup
    llama = export_to_llama(root / "model", tmp_path / "llama")
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={llama},dtype=float32",
           "--tasks", "minigpt_local_mc", "--include_path", str(tasks), "--device", "cpu", "--batch_size", "2",
           "--output_path", str(tmp_path / "out"), "--log_samples"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    [results] = list((tmp_path / "out").rglob("results_*.json"))
    [samples] = list((tmp_path / "out").rglob("samples_minigpt_local_mc_*.jsonl"))
    ours = our_loglikelihoods(model, tok)
    theirs = harness_loglikelihoods([json.loads(line) for line in samples.read_text().splitlines()])
    assert [len(r) for r in theirs] == [len(d["choices"]) for d in DOCS]
    for a, b in zip(ours, theirs):
        assert a == pytest.approx(b, abs=1e-3)
    acc = sum(max(range(len(r)), key=r.__getitem__) == d["label"] for r, d in zip(ours, DOCS)) / len(DOCS)
    assert json.loads(results.read_text())["results"]["minigpt_local_mc"]["acc,none"] == pytest.approx(acc)


def test_simple_evaluate_on_a_minigpt_directory(setup):
    import minigpt  # noqa: F401 — registers MiniGPT with transformers' Auto classes
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    root, tok, model, tasks = setup
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    out = simple_evaluate(model="hf", model_args=f"pretrained={root / 'model'},dtype=float32",
                          tasks=["minigpt_local_mc"], task_manager=TaskManager(include_path=str(tasks)),
                          device="cpu", batch_size=2, log_samples=True)
    theirs = harness_loglikelihoods(out["samples"]["minigpt_local_mc"])
    assert [len(r) for r in theirs] == [len(d["choices"]) for d in DOCS]
    for a, b in zip(our_loglikelihoods(model, tok), theirs):
        assert a == pytest.approx(b, abs=1e-3)
