"""`minigpt mlm`: an encoder pretrained from raw text through the one loop."""

from __future__ import annotations

import json
import random
import shutil

import pytest
import torch

from minigpt.cli import main

WORDS = "the a little cat dog sun tree ran sat saw big red blue happy and then".split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlm")
    rng = random.Random(0)
    path = root / "corpus.txt"
    path.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(40)) for _ in range(300)), encoding="utf-8")
    return root, path


def _args(root, corpus_path, out, *extra):
    return [
        "mlm", "--data", str(corpus_path), "--out", str(out), "--cache_dir", str(root / "cache"),
        "--model.preset", "tiny", "--model.vocab_size", "300", "--model.hidden_size", "32", "--model.intermediate_size", "64",
        "--model.num_hidden_layers", "2", "--model.num_attention_heads", "4", "--model.num_key_value_heads", "2",
        "--block_size", "32", "--train.max_steps", "8", "--train.batch_size", "4", "--train.eval_interval", "4",
        "--train.save_interval", "4", "--train.warmup_steps", "2", "--train.progress", "false", "--train.tensorboard", "false", *extra,
    ]


def test_mlm_trains_an_encoder_and_resumes_exactly(corpus):
    from transformers import AutoModelForMaskedLM

    from minigpt.model.checks import model_fingerprint
    from minigpt.model.encoder import MiniGPTForMaskedLM
    from minigpt.tokenizer import load_tokenizer

    root, path = corpus
    whole = root / "whole"
    assert main(_args(root, path, whole)) == 0
    tok = load_tokenizer(whole / "tokenizer")
    assert tok.mask_token == "<|mask|>" and tok.mask_token_id == 8 and tok.eos_token_id == 0 and tok.pad_token_id == 1
    model = AutoModelForMaskedLM.from_pretrained(whole)
    assert isinstance(model, MiniGPTForMaskedLM) and model.config.use_bidirectional_attention
    rows = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    assert any("val_mlm_accuracy" in r for r in rows) and max(r["step"] for r in rows) == 8

    # Cut a second run back to its step-4 checkpoint, as if killed there, and resume it.
    part = root / "part"
    assert main(_args(root, path, part)) == 0
    shutil.rmtree(part / "checkpoints" / "step_00000008")
    for f in part.glob("model*.safetensors"):
        f.unlink()
    assert main(_args(root, path, part, "--resume")) == 0
    assert model_fingerprint(part) == model_fingerprint(whole)
    ids = torch.tensor([tok.encode("the cat sat")])
    ids[0, 1] = 8
    with torch.no_grad():
        assert model(ids).logits.shape == (1, ids.shape[1], len(tok))


def test_a_tokenizer_without_the_mask_token_is_one_clear_line(corpus, tmp_path, capsys):
    from minigpt.tokenizer import train_tokenizer

    root, path = corpus
    train_tokenizer([path.read_text()], vocab_size=300, out_dir=tmp_path / "plain")
    assert main(_args(root, path, tmp_path / "out", "--tokenizer", str(tmp_path / "plain"))) == 2
    err = capsys.readouterr().err
    assert "has no <|mask|> token" in err and "add_special_tokens" in err and len(err.strip().splitlines()) == 1


def test_embed_writes_one_unit_vector_per_text_independent_of_batching(corpus, tmp_path):
    """`minigpt embed` on the encoder trained above: one row per line, unit norm, the same vector
    for the same text whatever else shares its padded batch, and different texts apart."""
    import numpy as np

    root, path = corpus
    model_dir = root / "whole"
    if not (model_dir / "config.json").is_file():
        assert main(_args(root, path, model_dir)) == 0
    texts = tmp_path / "texts.txt"
    texts.write_text("the cat sat\n\nthe little red dog ran and then sat\nthe cat sat\nsun\n", encoding="utf-8")
    out = tmp_path / "emb" / "e.npy"
    assert main(["embed", "--model", str(model_dir), "--data", str(texts), "--out", str(out), "--batch_size", "4"]) == 0
    e = np.load(out)
    assert e.shape == (4, 32) and e.dtype == np.float32
    assert np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert np.allclose(e[0], e[2], atol=1e-5) and not np.allclose(e[0], e[1], atol=1e-3)
    one = tmp_path / "one.npy"
    assert main(["embed", "--model", str(model_dir), "--data", str(texts), "--out", str(one), "--batch_size", "1"]) == 0
    assert np.allclose(np.load(one), e, atol=1e-5)  # padding in a batch changes nothing


def test_embed_bad_input(tmp_path, capsys):
    assert main(["embed", "--model", str(tmp_path), "--data", "x.txt"]) == 2
    assert "not a model directory" in capsys.readouterr().err


# ---------------------------------------------------------------------------- next-sentence prediction
def test_split_sentences():
    from minigpt.data.mlm import split_sentences

    text = "The cat sat. Did it run? Yes!\nA new line 一只猫。它跑了！好"
    assert split_sentences(text) == ["The cat sat.", "Did it run?", "Yes!", "A new line 一只猫。", "它跑了！", "好"]


def test_sentence_pairs_follow_or_come_from_another_document():
    from minigpt.data.mlm import build_sentence_pairs

    # Document d's sentences hold ids 1000·d + 10·s + k: the owner and the order of every token is known.
    docs = [[[1000 * d + 10 * s + k for k in range(3)] for s in range(12)] for d in range(6)]
    pairs = build_sentence_pairs(docs, max_tokens=12, seed=0)
    labels = [label for _, _, label in pairs]
    assert 0 < sum(labels) < len(labels) and abs(sum(labels) / len(labels) - 0.5) < 0.25
    for a, b, label in pairs:
        assert 0 < len(a) and 0 < len(b) and len(a) + len(b) <= 12 and len(a) <= 6
        assert len({x // 1000 for x in a}) == 1 and a == sorted(a)  # consecutive sentences of one document
        if label == 0:  # B is the text right after A, in the same document
            assert b[0] // 1000 == a[0] // 1000 and b[0] == (a[-1] // 10 + 1) * 10
        else:  # B comes from another document
            assert b[0] // 1000 != a[0] // 1000
    assert build_sentence_pairs(docs, 12, seed=0) == pairs  # seeded
    with pytest.raises(Exception, match="at least two documents"):
        build_sentence_pairs(docs[:1], 12, seed=0)


def test_sentence_pair_blocks_lay_out_sep_a_sep_b_sep_and_never_mask_separators():
    from minigpt.data.mlm import SentencePairBlocks

    pairs = [([20, 21, 22], [30, 31], 0), ([40] * 5, [50] * 4, 1)]
    ds = SentencePairBlocks(pairs, block_size=16, sep_token_id=0, pad_token_id=1, mask_token_id=8, vocab_size=60,
                            mask_prob=0.9, special_ids=[0, 1, 8], seed=0)
    item = ds[0]
    original = torch.tensor([0, 20, 21, 22, 0, 30, 31, 0] + [1] * 8)
    assert item["attention_mask"].tolist() == [1] * 8 + [0] * 8 and int(item["next_sentence_label"]) == 0
    restored = torch.where(item["labels"] != -100, item["labels"], item["input_ids"])
    assert torch.equal(restored, original)  # the labels are the originals exactly where masked
    assert (item["labels"][[0, 4, 7]] == -100).all() and (item["labels"][8:] == -100).all()  # separators, padding
    assert int(ds[1]["next_sentence_label"]) == 1


def test_mlm_with_nsp_trains_both_heads_and_resumes_exactly(tmp_path):
    from transformers import AutoModelForMaskedLM

    from minigpt.model.checks import model_fingerprint

    rng = random.Random(1)
    stories = ["\n".join(". ".join(" ".join(rng.choice(WORDS) for _ in range(6)) for _ in range(3)) + "." for _ in range(4))
               for _ in range(40)]
    path = tmp_path / "stories.txt"
    path.write_text("\n<|endoftext|>\n".join(stories), encoding="utf-8")
    whole = tmp_path / "whole"
    assert main(_args(tmp_path, path, whole, "--mlm.use_nsp", "--val_fraction", "0.1")) == 0
    model = AutoModelForMaskedLM.from_pretrained(whole)
    assert model.config.use_nsp and model.nsp_head is not None
    rows = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    assert any("val_nsp_accuracy" in r and 0 <= r["val_nsp_accuracy"] <= 1 for r in rows)
    assert any("train/nsp_loss" in r for r in rows)
    part = tmp_path / "part"
    assert main(_args(tmp_path, path, part, "--mlm.use_nsp", "--val_fraction", "0.1")) == 0
    shutil.rmtree(part / "checkpoints" / "step_00000008")
    for f in part.glob("model*.safetensors"):
        f.unlink()
    assert main(_args(tmp_path, path, part, "--mlm.use_nsp", "--val_fraction", "0.1", "--resume")) == 0
    assert model_fingerprint(part) == model_fingerprint(whole)
