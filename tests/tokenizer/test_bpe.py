"""Tests for the byte-level BPE tokenizer (SPEC section 1)."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from minigpt.errors import UserError
from minigpt.tokenizer import (
    ANSWER_END,
    ANSWER_START,
    EOS_TOKEN,
    IM_END,
    IM_START,
    PAD_TOKEN,
    REASONING_TAGS,
    SPECIAL_TOKENS,
    THINK_END,
    THINK_START,
    load_tokenizer,
    token_byte_lengths,
    train_tokenizer,
)
from minigpt.recipes.tokenizer import tokenizer_command

VOCAB = 500

# A small multilingual training set: English prose, Chinese, Python code, emoji and whitespace.
# Each line is varied by its index so that merges have more than one context to learn from.
_BASE = [
    "The quick brown fox jumps over the lazy dog while the cat sleeps in the sun.",
    "Language models predict the next token given all the tokens before it.",
    "今天天气很好，我们一起去公园散步吧。机器学习是人工智能的一个分支。",
    "你好，世界！这是一个小小的语言模型，它会学习说话。",
    "def add(a, b):\n    return a + b\n\nfor i in range(10):\n\tprint(add(i, i))\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "Party time 🎉🎉 rocket 🚀 and snake 🐍 emoji, naïve café résumé.",
    "Tabs\tand   spaces    and\n\n\nnewlines   are   kept.",
]
TRAIN_TEXTS = [f"{line} ({i})" for i in range(30) for line in _BASE]

ROUND_TRIP = [
    "你好，MiniGPT！",
    "Hello, world!",
    "🎉🚀🐍 👩‍👩‍👧 🇫🇷 emoji with joiners and flags",
    "\t\t  \n\n\n    x \r\n\t \u3000 trailing   ",
    "   leading spaces and a trailing space ",
    "def f(x):\n\tif x > 0:\n\t\treturn {'k': [x, -x]}\n    return None  # comment\n",
    "spaces before punctuation , . ; ! ? stay exactly as they are .",
    # Never seen in training: other scripts, rare symbols, control characters.
    "日本語のテキスト、한국어 텍스트, текст на русском, نص عربي, ∑∫√∞ ≠ ≤",
    "control \x00\x01\x7f chars and a lone combining mark \u0301 and U+FFFD \ufffd",
    f"{IM_START}user\n你好{IM_END}\n{IM_START}assistant\n{THINK_START}想一想{THINK_END}"
    f"{ANSWER_START}42{ANSWER_END}{EOS_TOKEN}",
    "",
]


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return train_tokenizer(TRAIN_TEXTS, vocab_size=VOCAB)


def test_vocab_size_reached(tok):
    # The corpus has far more than VOCAB distinct mergeable pairs, so the trainer must stop at
    # exactly VOCAB ids, specials and the 256 byte tokens included.
    assert len(tok) == VOCAB
    assert len(tok.get_vocab()) == VOCAB


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_round_trip_is_lossless(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    # Batch decoding goes through a different code path in transformers.
    assert tok.batch_decode([ids])[0] == text


def test_merges_compress_seen_text(tok):
    # BPE must have learnt merges: a training sentence takes far fewer tokens than bytes.
    text = _BASE[0]
    assert len(tok.encode(text)) < len(text.encode("utf-8")) / 2


def test_digits_are_always_single_tokens():
    # A corpus that repeats the same numbers would give BPE every reason to merge their digits;
    # the digit pre-tokenizer must still keep one token per digit, wherever the digit stands.
    texts = [f"{n} + {n} = {2 * n}; x{n}y, 0{n}.5 and  {n}" for n in (12, 415, 83, 2026, 7)] * 60
    tok = train_tokenizer(texts, vocab_size=400)
    digit_ids = {tok.convert_tokens_to_ids(d) for d in "0123456789"}
    for text in ["415 + 83 = 498", "x2026y 12.5", " 7  7", "a1b22c333"]:
        ids = tok.encode(text)
        pieces = [tok.decode([i]) for i in ids]
        # A piece holding a digit is that one digit (a set, so "01" cannot pass as a substring).
        assert all(p in set("0123456789") for p in pieces if any(c.isdigit() for c in p)), pieces
        assert sum(i in digit_ids for i in ids) == sum(c.isdigit() for c in text)
        assert tok.decode(ids) == text
    # Merges are still learnt for the rest of the text.
    assert len(tok.encode(" and")) == 1


def test_special_token_ids(tok):
    assert SPECIAL_TOKENS == [
        EOS_TOKEN, PAD_TOKEN, IM_START, IM_END, THINK_START, THINK_END, ANSWER_START, ANSWER_END,
    ]
    assert REASONING_TAGS == [THINK_START, THINK_END, ANSWER_START, ANSWER_END]
    for i, special in enumerate(SPECIAL_TOKENS):
        assert tok.encode(special) == [i], special
        assert tok.convert_ids_to_tokens(i) == special
    assert tok.eos_token_id == 0
    assert tok.pad_token_id == 1
    assert tok.bos_token is None
    assert tok.unk_token is None
    assert sorted(tok.all_special_ids) == list(range(8))


def test_special_tokens_are_single_tokens_in_context(tok):
    ids = tok.encode("<|im_start|>user")
    assert ids[0] == 2
    assert 2 not in ids[1:]
    assert tok.decode(ids[1:]) == "user"
    ids = tok.encode("a<think>b</think><answer>c</answer>")
    assert [i for i in ids if i < 8] == [4, 5, 6, 7]


def test_encode_adds_no_tokens(tok):
    # No BOS/EOS may be added implicitly: packing and the SFT mask rely on exact ids.
    ids = tok.encode("hello")
    assert not set(ids) & set(range(8))
    assert tok("hello")["input_ids"] == ids


def test_decode_can_skip_special_tokens(tok):
    ids = tok.encode(f"{IM_START}user\nhi{IM_END}")
    assert tok.decode(ids, skip_special_tokens=True) == "user\nhi"


def test_chat_template_generation_prompt(tok):
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": "你好"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n"


def test_chat_template_multi_turn_all_roles(tok):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<think>add</think><answer>4</answer>"},
        {"role": "tool", "content": "{\"ok\": true}"},
    ]
    expected = (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n<think>add</think><answer>4</answer><|im_end|>\n"
        "<|im_start|>tool\n{\"ok\": true}<|im_end|>\n"
    )
    assert tok.apply_chat_template(messages, tokenize=False) == expected
    # Tokenizing the template gives the same ids as encoding the rendered string.
    ids = tok.apply_chat_template(messages, tokenize=True, return_dict=False)
    assert list(ids) == tok.encode(expected)


def test_chat_template_rejects_unknown_role(tok):
    with pytest.raises(Exception, match="unknown role robot"):
        tok.apply_chat_template([{"role": "robot", "content": "x"}], tokenize=False)


def test_save_load_round_trip(tok, tmp_path):
    out = tmp_path / "tok"
    trained = train_tokenizer(TRAIN_TEXTS, vocab_size=VOCAB, out_dir=out)
    assert (out / "tokenizer.json").is_file()
    loaded = [
        load_tokenizer(out),
        PreTrainedTokenizerFast.from_pretrained(str(out)),
        AutoTokenizer.from_pretrained(str(out)),
    ]
    messages = [{"role": "user", "content": "你好"}]
    for other in loaded:
        assert len(other) == len(trained)
        assert other.eos_token_id == 0 and other.pad_token_id == 1
        for text in ROUND_TRIP:
            assert other.encode(text) == trained.encode(text)
            assert other.decode(other.encode(text)) == text
        assert other.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        ) == "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n"


def test_training_is_deterministic(tok):
    again = train_tokenizer(TRAIN_TEXTS, vocab_size=VOCAB)
    assert again.get_vocab() == tok.get_vocab()


def test_token_byte_lengths_sum_to_utf8_length(tok):
    lengths = token_byte_lengths(tok)
    assert lengths.shape == (len(tok),)
    assert lengths.dtype == np.int32
    assert lengths[:8].tolist() == [0] * 8
    # Every ordinary token stands for at least one byte.
    assert (lengths[8:] >= 1).all()
    for text in ROUND_TRIP + TRAIN_TEXTS[:8]:
        ids = tok.encode(text)
        text_only = text
        for special in SPECIAL_TOKENS:
            text_only = text_only.replace(special, "")
        assert int(lengths[ids].sum()) == len(text_only.encode("utf-8")), text


def test_token_byte_lengths_single_characters(tok):
    lengths = token_byte_lengths(tok)
    # One token per character here would be a coincidence, so check the sum per character:
    # 'a' is 1 byte, 'é' 2, '你' 3, '🐍' 4 in UTF-8.
    for char, nbytes in [("a", 1), ("é", 2), ("你", 3), ("🐍", 4)]:
        assert int(lengths[tok.encode(char)].sum()) == nbytes


@pytest.mark.parametrize(
    "texts",
    [[], [""], ["", ""], iter([]), (t for t in [])],
    ids=["empty-list", "one-empty", "all-empty", "empty-iter", "empty-gen"],
)
def test_empty_input_is_user_error(texts):
    with pytest.raises(UserError, match="texts"):
        train_tokenizer(texts, vocab_size=300)


def test_bad_arguments_are_user_errors():
    with pytest.raises(UserError, match="vocab_size"):
        train_tokenizer(TRAIN_TEXTS, vocab_size=263)
    with pytest.raises(UserError, match="texts"):
        train_tokenizer("a single string is not a corpus", vocab_size=300)
    with pytest.raises(UserError, match="item 1"):
        train_tokenizer(["ok", 3], vocab_size=300)
    with pytest.raises(UserError, match="min_frequency"):
        train_tokenizer(TRAIN_TEXTS, vocab_size=300, min_frequency=0)


def test_load_tokenizer_errors_name_the_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(UserError, match="nope"):
        load_tokenizer(missing)
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(UserError, match="empty_dir.*tokenizer.json"):
        load_tokenizer(empty)


def test_a_save_stopped_midway_leaves_no_tokenizer_and_a_corrupt_one_is_named(tok, tmp_path, monkeypatch):
    """tokenizer.json is renamed into place last: a save stopped before it leaves a folder that
    is not a tokenizer (said plainly), never one whose other files are missing; the next save
    clears the staging folder. A truncated tokenizer.json is one clear error."""
    from minigpt.tokenizer import bpe

    real_replace = bpe.os.replace

    def stop_at_the_model(src, dst):
        if str(dst).endswith("tokenizer.json"):
            raise KeyboardInterrupt  # the process is stopped here
        real_replace(src, dst)

    monkeypatch.setattr(bpe.os, "replace", stop_at_the_model)
    monkeypatch.setattr(bpe.shutil, "rmtree", lambda *a, **k: None)  # a killed process cleans nothing
    with pytest.raises(KeyboardInterrupt):
        bpe.save_tokenizer(tok, tmp_path / "t")
    monkeypatch.undo()
    assert (tmp_path / "t" / "tokenizer_config.json").is_file() and not (tmp_path / "t" / "tokenizer.json").exists()
    with pytest.raises(UserError, match="no tokenizer.json inside"):
        load_tokenizer(tmp_path / "t")
    bpe.save_tokenizer(tok, tmp_path / "t")
    assert [p.name for p in (tmp_path / "t").iterdir() if p.name.startswith(".")] == []
    assert load_tokenizer(tmp_path / "t").get_vocab() == tok.get_vocab()
    model = tmp_path / "t" / "tokenizer.json"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    with pytest.raises(UserError, match=r"tokenizer path .*t: its files are unreadable or corrupt"):
        load_tokenizer(tmp_path / "t")


def test_tokenizer_command_from_file(tmp_path, capsys):
    data = tmp_path / "corpus.txt"
    data.write_text("\n".join(TRAIN_TEXTS), encoding="utf-8")
    out = tokenizer_command([str(data)], vocab_size=400, out=str(tmp_path / "t"), max_chars=5000)
    assert out == tmp_path / "t"
    summary = capsys.readouterr().out
    assert "vocab 400" in summary
    # max_chars caps what is read: exactly 5,000 characters of the (longer) file.
    assert "5,000 chars" in summary
    loaded = load_tokenizer(out)
    assert len(loaded) == 400
    assert loaded.decode(loaded.encode("你好，MiniGPT！")) == "你好，MiniGPT！"


def test_tokenizer_command_default_corpus(tmp_path, capsys):
    out = tokenizer_command([], vocab_size=300, out=str(tmp_path / "t"), max_chars=20_000)
    summary = capsys.readouterr().out
    assert "embedded Python docs" in summary and "20,000 chars" in summary
    assert len(load_tokenizer(out)) == 300
