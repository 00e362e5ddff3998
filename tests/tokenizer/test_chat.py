"""Tests for the chat renderer (minigpt.tokenizer.chat): record formats, ids, loss masks.

Expected ids and masks are built here from independently tokenized pieces. That is exact
because (a) special tokens are split off before BPE, so the text between two special tokens
tokenizes on its own, and (b) the byte-level pre-tokenizer always splits between a "\\n" and a
following non-space character, so "assistant\\n" + reply tokenizes as the two pieces apart
when the reply starts with a non-space character (every test conversation here does, except
the one that tests the straddling case on purpose).
"""

from __future__ import annotations

import pytest

from minigpt.errors import UserError
from minigpt.tokenizer import IM_END, IM_START, train_tokenizer
from minigpt.tokenizer.chat import (
    SkipRecord,
    mask_from_offsets,
    normalize_messages,
    render_conversation,
    render_prompt,
    render_text,
)

_TEXTS = [
    "The user asks a question and the assistant answers it politely.",
    "System: you are a helpful assistant. User: what is two plus two? Assistant: four.",
    "你好，我是一个小模型。今天天气很好。",
    "Paragraph one.\n\n\nParagraph two.\n\n\nParagraph three.",
    "def f(x):\n    return x * 2\n",
]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer([f"{t} {i}" for i in range(20) for t in _TEXTS], vocab_size=400)


def _enc(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def _expected(tok, messages: list[dict]) -> tuple[list[int], list[int]]:
    """ChatML `<|im_start|>{role}\\n{content}<|im_end|>\\n` per message, tokenized piece by
    piece; mask 1 on an assistant content piece and its <|im_end|>, 0 on everything else."""
    start, end = tok.convert_tokens_to_ids([IM_START, IM_END])
    ids: list[int] = []
    mask: list[int] = []
    for m in messages:
        on = int(m["role"] == "assistant")
        for piece, flag in (
            ([start], 0),
            (_enc(tok, m["role"] + "\n"), 0),
            (_enc(tok, m["content"]), on),
            ([end], on),
            (_enc(tok, "\n"), 0),
        ):
            ids += piece
            mask += [flag] * len(piece)
    return ids, mask


def _template_ids(tok, messages, **kw) -> list[int]:
    out = tok.apply_chat_template(messages, tokenize=True, **kw)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


MULTI_TURN = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is two plus two?"},
    {"role": "assistant", "content": "Four. 你好"},
    {"role": "user", "content": "And 2*3?"},
    {"role": "assistant", "content": "Six.\ndef f(x): return x"},
]

# Each input format, with the messages it must normalize to (written out by hand).
FORMAT_CASES = {
    "messages": (
        {"messages": MULTI_TURN},
        MULTI_TURN,
    ),
    "conversations": (
        {"conversations": MULTI_TURN[1:], "system": "You are a helpful assistant."},
        MULTI_TURN,
    ),
    "alpaca": (
        {
            "system": "Answer briefly.",
            "history": [["Hi there", "Hello! 你好"], ["Who are you?", "A small model."]],
            "instruction": "Translate to French",
            "input": "good morning",
            "output": "Bonjour.",
        },
        [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": "Hello! 你好"},
            {"role": "user", "content": "Who are you?"},
            {"role": "assistant", "content": "A small model."},
            {"role": "user", "content": "Translate to French\ngood morning"},
            {"role": "assistant", "content": "Bonjour."},
        ],
    ),
    "sharegpt": (
        {
            "conversations": [
                {"from": "system", "value": "Use tools."},
                {"from": "human", "value": "Weather in Paris?"},
                {"from": "function_call", "value": '{"name": "weather", "city": "Paris"}'},
                {"from": "observation", "value": "sunny, 21C"},
                {"from": "gpt", "value": "It is sunny and 21C."},
            ]
        },
        [
            {"role": "system", "content": "Use tools."},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": '{"name": "weather", "city": "Paris"}'},
            {"role": "tool", "content": "sunny, 21C"},
            {"role": "assistant", "content": "It is sunny and 21C."},
        ],
    ),
}


def test_template_renders_spec_string(tok):
    """SPEC section 1: the stored template renders exactly this string, and render_prompt
    tokenizes it: <|im_start|> (id 2), "user\\n你好", <|im_end|> (id 3), "\\n", <|im_start|>,
    "assistant\\n"."""
    messages = [{"role": "user", "content": "你好"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n"
    expected = [2] + _enc(tok, "user\n你好") + [3] + _enc(tok, "\n") + [2] + _enc(tok, "assistant\n")
    assert render_prompt(tok, messages) == expected
    assert render_prompt(tok, messages) == _template_ids(tok, messages, add_generation_prompt=True)


@pytest.mark.parametrize("fmt", sorted(FORMAT_CASES))
def test_each_format_normalizes_and_masks_exactly(tok, fmt):
    record, messages = FORMAT_CASES[fmt]
    # Both auto-detected and forced formats give the hand-written messages.
    forced = {"conversations": "messages"}.get(fmt, fmt)
    assert normalize_messages(record) == messages
    assert normalize_messages(record, forced) == messages

    ids, mask = render_conversation(tok, messages)
    exp_ids, exp_mask = _expected(tok, messages)
    assert ids == exp_ids
    assert mask == exp_mask
    # The ids are exactly what the tokenizer's own chat template produces.
    assert ids == _template_ids(tok, messages)
    # Every assistant reply (and its <|im_end|>) is supervised, nothing else: decoding the
    # supervised tokens gives the replies back, each followed by <|im_end|>.
    replies = "".join(m["content"] + IM_END for m in messages if m["role"] == "assistant")
    assert tok.decode([i for i, k in zip(ids, mask) if k]) == replies


def test_mask_helpers_agree_with_offset_scan(tok):
    """The O(spans) mask from the Rust encoding equals the plain overlap scan of the offsets."""
    text, spans = render_text(tok, MULTI_TURN)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    _, mask = render_conversation(tok, MULTI_TURN)
    assert mask == mask_from_offsets(enc["offset_mapping"], spans)
    # Spans are the replies plus "<|im_end|>", located in the rendered text.
    assert [text[a:b] for a, b in spans] == ["Four. 你好" + IM_END, "Six.\ndef f(x): return x" + IM_END]


def test_reply_starting_with_newlines_supervises_the_straddling_token(tok):
    """ "assistant\\n" + "\\n\\nEnd" pre-tokenizes as "assistant", "\\n\\n", "\\n", "End": the
    "\\n\\n" token holds the header's newline and the reply's first one. It is supervised, so the
    supervised tokens decode to "\\n" + reply + <|im_end|> (the reply is covered entirely)."""
    assert len(_enc(tok, "\n\n")) == 1  # the training text has "\n\n\n" runs, so "\n\n" is merged
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "\n\nEnd"}]
    ids, mask = render_conversation(tok, messages)
    assert ids == _template_ids(tok, messages)
    assert tok.decode([i for i, k in zip(ids, mask) if k]) == "\n\n\nEnd" + IM_END
    # The header before it ("<|im_start|>assistant") stays unsupervised.
    first = mask.index(1)
    assert tok.decode(ids[:first]).endswith("<|im_start|>assistant")


def test_truncation_keeps_mask_aligned_or_skips(tok):
    """For every cut m the result is the first m ids and mask bits of the full rendering, or a
    SkipRecord (kind "truncated") exactly when those m bits hold no 1."""
    full_ids, full_mask = _expected(tok, MULTI_TURN)
    first_supervised = full_mask.index(1)
    for m in range(1, len(full_ids) + 3):
        if m <= first_supervised:
            with pytest.raises(SkipRecord, match=f"after truncation to {m} tokens") as info:
                render_conversation(tok, MULTI_TURN, max_length=m, where="data.jsonl:4")
            assert info.value.kind == "truncated"
            assert "data.jsonl:4" in str(info.value)
        else:
            assert render_conversation(tok, MULTI_TURN, max_length=m) == (full_ids[:m], full_mask[:m])


def test_no_assistant_and_empty_reply_are_skips(tok):
    with pytest.raises(SkipRecord) as info:
        normalize_messages({"messages": [{"role": "user", "content": "hi"}]}, where="d.jsonl:3")
    assert info.value.kind == "no_assistant" and "d.jsonl:3" in str(info.value)
    with pytest.raises(SkipRecord) as info:
        normalize_messages({"instruction": "Say hi", "input": "", "output": "  "}, where="d.jsonl:5")
    assert info.value.kind == "empty_reply" and "d.jsonl:5" in str(info.value)
    assert not issubclass(SkipRecord, UserError)
    # A record that is malformed elsewhere is an error even when its reply is also empty.
    with pytest.raises(UserError, match="unknown role 'bot'"):
        normalize_messages({"messages": [{"role": "assistant", "content": ""}, {"role": "bot", "content": "x"}]})


@pytest.mark.parametrize(
    "record, fmt, pattern",
    [
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]},
            None,
            r"^data\.jsonl:12: message 2 has unknown role 'bot' \(expected system/user/assistant/tool\)$",
        ),
        (
            {"conversations": [{"from": "human", "value": "a"}, {"from": "robot", "value": "b"}]},
            None,
            r"^data\.jsonl:12: message 2 has unknown role 'robot' in 'from'",
        ),
        (
            {"messages": [{"role": "user", "content": " \n"}, {"role": "assistant", "content": "b"}]},
            None,
            r"^data\.jsonl:12: message 1 \(user\) content is empty$",
        ),
        (
            {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "b"}]},
            None,
            r"^data\.jsonl:12: message 1 \(user\) content must be a string, got int$",
        ),
        (
            {"messages": [{"role": "user"}, {"role": "assistant", "content": "b"}]},
            None,
            r"^data\.jsonl:12: message 1 has no 'content' field$",
        ),
        ({"messages": "hello"}, None, r"^data\.jsonl:12: field 'messages' must be a list, got str$"),
        ({"instruction": "a", "input": "b"}, None, r"^data\.jsonl:12: Alpaca record has no 'output' field"),
        ({"instruction": "a", "output": ["x"]}, None, r"^data\.jsonl:12: field 'output' must be a string, got list$"),
        ({"instruction": "a", "output": "b", "history": [["only one"]]}, None, r"history entry 1 must be a \[user, assistant\] pair"),
        ({"prompt": "a", "answer": "b"}, None, r"^data\.jsonl:12: unknown record format \(keys: prompt, answer\)"),
        ({"instruction": "a", "output": "b"}, "chatml", r"^format: unknown format 'chatml'"),
        ({"instruction": "a", "output": "b"}, "messages", r"^data\.jsonl:12: missing field 'conversations' or 'messages'"),
        (
            {"messages": [{"role": "user", "content": "x<|im_end|>y"}, {"role": "assistant", "content": "b"}]},
            None,
            r"^data\.jsonl:12: message 1 \(user\) content contains the control token '<\|im_end\|>'$",
        ),
        (
            {"messages": [{"role": "user", "content": "say <think>x"}, {"role": "assistant", "content": "b"}]},
            None,
            r"^data\.jsonl:12: message 1 \(user\) content contains the control token '<think>'$",
        ),
        (
            {"messages": [{"role": "system", "content": "end <|endoftext|>"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
            None,
            r"^data\.jsonl:12: message 1 \(system\) content contains the control token '<\|endoftext\|>'$",
        ),
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b<|pad|>"}]},
            None,
            r"^data\.jsonl:12: message 2 \(assistant\) content contains the control token '<\|pad\|>'$",
        ),
        ({"instruction": "a </answer>", "output": "b"}, None, r"^data\.jsonl:12: fields 'instruction'/'input' contains the control token '</answer>'$"),
        (["not", "a", "dict"], None, r"^data\.jsonl:12: expected a JSON object, got list$"),
    ],
)
def test_bad_records_name_record_and_field(record, fmt, pattern):
    with pytest.raises(UserError, match=pattern):
        normalize_messages(record, fmt, where="data.jsonl:12")


def test_render_rejects_unnormalized_messages(tok):
    with pytest.raises(UserError, match="message 2 must be a dict with a role"):
        render_conversation(tok, [{"role": "user", "content": "a"}, {"role": "gpt", "content": "b"}])
    with pytest.raises(UserError, match="control token"):
        render_prompt(tok, [{"role": "user", "content": "<|im_start|>system"}])
    with pytest.raises(UserError, match=r"message 1 \(user\) content contains the control token '<answer>'"):
        render_prompt(tok, [{"role": "user", "content": "<answer>42</answer>"}])


def test_reasoning_tags_stay_allowed_in_assistant_replies(tok):
    """The reasoning format is the assistant's own: its tags become the control ids there."""
    messages = normalize_messages({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>s</think><answer>4</answer>"}]}, None, where="x")
    ids, _ = render_conversation(tok, messages)
    assert tok.convert_tokens_to_ids("<think>") in ids and tok.convert_tokens_to_ids("</answer>") in ids
