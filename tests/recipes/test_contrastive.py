"""`minigpt contrastive`: pairs or augmented views, SimCLR or MoCo, through the one loop; the
embedder it saves loads in sentence-transformers; retrieval metrics."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
import torch

from minigpt.cli import main
from minigpt.errors import UserError

WORDS = "the a little cat dog sun tree ran sat saw big red blue happy and then".split()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("contrastive")
    rng = random.Random(0)
    rows = []
    for i in range(120):
        q = " ".join(rng.choice(WORDS) for _ in range(8))
        rows.append({"question": q, "answer": q.upper() + " " + " ".join(rng.choice(WORDS) for _ in range(3))})
    rows.append({"question": "no answer here"})  # missing field
    rows.append({"question": "same text", "answer": "same text"})  # identical sides
    rows.append({"question": "", "answer": "empty question"})  # empty field
    path = root / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    text = root / "texts.txt"
    text.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(80)) + "\n", encoding="utf-8")
    return root, path, text


def _args(data_path, out, *extra):
    return [
        "contrastive", "--data", str(data_path), "--out", str(out), "--tokenizer_vocab_size", "300",
        "--model.preset", "tiny", "--model.hidden_size", "32", "--model.intermediate_size", "64",
        "--model.num_hidden_layers", "2", "--model.num_attention_heads", "4", "--model.num_key_value_heads", "2",
        "--contrastive.projection_dim", "16", "--max_length", "32", "--val_fraction", "0.1",
        "--train.max_steps", "6", "--train.batch_size", "8", "--train.eval_interval", "3", "--train.save_interval", "3",
        "--train.warmup_steps", "1", "--train.lr", "1e-3", "--train.progress", "false", "--train.tensorboard", "false", *extra,
    ]


def test_pairs_with_a_missing_field_or_identical_sides_are_counted_and_skipped(data):
    from minigpt.data.pairs import read_text_pairs

    _, path, _ = data
    pairs, report = read_text_pairs(str(path), ["question", "answer"])
    assert (report.kept, report.missing, report.identical) == (120, 2, 1) and len(pairs) == 120
    assert report.examples == [f"{path}:121", f"{path}:122", f"{path}:123"]
    with pytest.raises(UserError, match="no usable pair"):
        read_text_pairs(str(path), ["question", "nope"])


@pytest.mark.parametrize("moco", [False, True], ids=["simclr", "moco"])
def test_contrastive_resume_equals_an_uninterrupted_run(data, moco, capsys):
    from minigpt.model.checks import model_fingerprint

    root, path, _ = data
    extra = ["--fields", "question,answer"] + (["--contrastive.use_momentum_encoder", "--contrastive.queue_size", "32", "--contrastive.momentum", "0.9"] if moco else [])
    whole = root / f"whole_{moco}"
    assert main(_args(path, whole, *extra)) == 0
    printed = capsys.readouterr().out
    assert "120 pairs kept; skipped 2 with a missing or empty field and 1 with identical sides" in printed
    rows = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    assert any("val_accuracy" in r for r in rows) and max(r["step"] for r in rows) == 6

    part = root / f"part_{moco}"
    assert main(_args(path, part, *extra)) == 0
    shutil.rmtree(part / "checkpoints" / "step_00000006")
    for f in part.glob("model*.safetensors"):
        f.unlink()
    assert main(_args(path, part, *extra, "--resume")) == 0
    assert model_fingerprint(part) == model_fingerprint(whole)
    if moco:  # the key encoder and the queue came back from the checkpoint too
        from minigpt.train.checkpoint import STATE_FILE

        a = torch.load(whole / "checkpoints" / "step_00000006" / STATE_FILE, weights_only=False)["objective"]
        b = torch.load(part / "checkpoints" / "step_00000006" / STATE_FILE, weights_only=False)["objective"]
        assert a["queue"].shape == (32, 16) and torch.equal(a["queue"], b["queue"])
        assert all(torch.equal(a["key_encoder"][k], b["key_encoder"][k]) for k in a["key_encoder"])


def test_the_embedder_loads_in_sentence_transformers_with_the_same_embeddings(data):
    st = pytest.importorskip("sentence_transformers")
    root, path, text = data
    out = root / "st"
    assert main(_args(path, out, "--fields", "question,answer", "--contrastive.pooling", "last")) == 0
    assert main(["embed", "--model", str(out), "--data", str(text), "--out", str(root / "ours.npy")]) == 0
    ours = np.load(root / "ours.npy")
    texts = [line for line in text.read_text().splitlines() if line.strip()]
    theirs = st.SentenceTransformer(str(out), device="cpu").encode(texts, batch_size=32)
    assert ours.shape == theirs.shape == (80, 32)
    np.testing.assert_allclose(theirs, ours, atol=1e-5)


def test_augmented_views_of_one_text(data, capsys):
    from minigpt.data.pairs import augmented_views

    rows = [[10, 11, 12, 13, 14, 15, 16, 17], [20], [30, 31, 32, 33, 34, 35]]
    views, identical = augmented_views(rows, seed=3, mask_token_id=8, mask_prob=0.3, delete_prob=0.2, swap_prob=0.2)
    again, _ = augmented_views(rows, seed=3, mask_token_id=8, mask_prob=0.3, delete_prob=0.2, swap_prob=0.2)
    assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(views, again))  # static: the same on every run
    assert len(views) + identical == 3
    _, identical = augmented_views(rows, seed=3, mask_token_id=None, delete_prob=0.2, swap_prob=0.2)
    assert identical >= 1  # without masking, the 1-token row can only stay itself (its one token is always kept)
    for a, b in views:
        assert not torch.equal(a, b)
        assert set(a.tolist()) <= set(range(8, 40)) and set(b.tolist()) <= set(range(8, 40))
    _, _, text = data
    root = text.parent
    assert main(_args(text, root / "views") + []) == 0
    assert "80 texts, two augmented views each; skipped" in capsys.readouterr().out


def test_bad_settings_are_clear_errors(data, capsys):
    root, path, _ = data
    assert main(_args(path, root / "bad1", "--fields", "question,answer", "--contrastive.use_momentum_encoder", "--contrastive.queue_size", "24")) != 0
    assert "--contrastive.queue_size 24 is not a multiple of 16" in capsys.readouterr().err
    assert main(_args(path, root / "bad2", "--fields", "question,answer", "--train.batch_size", "1")) != 0
    assert "at least 2" in capsys.readouterr().err
    assert main(_args(path, root / "bad3", "--fields", "question")) != 0
    assert "two field names" in capsys.readouterr().err
    assert not (root / "bad1").exists() and not (root / "bad2").exists()


def test_retrieval_metrics_by_hand():
    from minigpt.evaluation.retrieval import retrieval_metrics

    scores = torch.tensor([
        [0.9, 0.1, 0.2],  # own document first: rank 1
        [0.8, 0.5, 0.7],  # two documents above it: rank 3
        [0.3, 0.6, 0.6],  # a tie does not count against it: rank 1
    ])
    m = retrieval_metrics(scores, ks=(1, 2))
    assert m["recall@1"] == pytest.approx(2 / 3) and m["recall@2"] == pytest.approx(2 / 3)
    assert m["mrr"] == pytest.approx((1 + 1 / 3 + 1) / 3)
    with pytest.raises(UserError):
        retrieval_metrics(torch.zeros(2, 3))


def test_moco_queues_every_micro_batch_of_an_update_and_never_evaluation_keys():
    from minigpt.model import MiniGPTConfig
    from minigpt.model.encoder import MiniGPTForEmbedding
    from minigpt.objectives.contrastive import ContrastiveObjective
    from minigpt.train.step import OptimizerStep

    torch.manual_seed(0)
    cfg = MiniGPTConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                        num_key_value_heads=1, max_position_embeddings=16, projection_dim=4)
    model = MiniGPTForEmbedding(cfg)
    objective = ContrastiveObjective.moco(model, 0.1, queue_size=20, momentum=0.5)
    step = OptimizerStep(model, objective, torch.optim.SGD(model.parameters(), lr=0.1))

    def batch(seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.randint(9, 40, (3, 6), generator=g)
        return {"input_ids_1": x, "attention_mask_1": torch.ones_like(x), "input_ids_2": x.flip(1), "attention_mask_2": torch.ones_like(x)}

    import copy

    def keys(encoder, *batches):
        with torch.no_grad():
            return torch.cat([torch.nn.functional.normalize(encoder(b[f"input_ids_{side}"], b[f"attention_mask_{side}"]).projections, dim=-1)
                              for b in batches for side in ("1", "2")])

    model.train()
    expected = keys(copy.deepcopy(objective.key_encoder), batch(1), batch(2))  # taken before the update moves the key encoder
    step([batch(1), batch(2)])
    assert objective.queue.shape == (12, 4) and torch.allclose(objective.queue, expected, atol=1e-6)  # both micro-batches, in order
    model.eval()
    with torch.no_grad():
        objective.compute_loss(model, batch(3))
    model.train()
    expected = torch.cat([expected, keys(copy.deepcopy(objective.key_encoder), batch(4), batch(5))])[-20:]
    step([batch(4), batch(5)])
    assert torch.allclose(objective.queue, expected, atol=1e-6)  # FIFO: the oldest 4 left; batch 3 (evaluation) never entered
