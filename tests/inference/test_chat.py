"""`ChatSession` and `minigpt chat`: prompts equal the chat template of the history, commands,
context trimming, streaming of whole characters, the reasoning splitter, stopping at <|im_end|>.

Two kinds of model stand in for a trained one:
- a *scripted engine* (`ScriptedEngine`) that records the prompt ids the session passes and
  yields fixed token ids: it tests the session's own logic (history, trimming, decoding)
  exactly, without depending on what a random model happens to sample;
- a *chain model*: a real `MiniGPTForCausalLM` whose attention and MLP outputs are zeroed, so
  the logits at a position depend only on that position's token; its embeddings and (untied)
  LM head are set so that token a's argmax is a chosen token b. Greedy decoding then follows a
  chain we write down, e.g. "\\n" -> h -> i -> ! -> <|im_end|> -> h -> ..., through the real
  engine and the real `minigpt chat` recipe.
"""

from __future__ import annotations

import io
import sys

import pytest
import torch

from minigpt.inference.options import SamplingOptions
from minigpt.errors import UserError
from minigpt.inference import GenerationEngine
from minigpt.inference.chat import ChatSession, ReasoningSplitter, split_reasoning
from minigpt.model import MiniGPTConfig, MiniGPTForCausalLM
from minigpt.recipes.chat import chat, run_chat
from minigpt.tokenizer import IM_END, train_tokenizer

TEXTS = [
    f"{line} ({i})"
    for i in range(20)
    for line in [
        "The quick brown fox jumps over the lazy dog. answer number question about apples pears plums",
        "今天天气很好，我们一起去公园散步吧。你好，世界！",
        "system user assistant: you are terse and kind.",
    ]
]
THINK, END_THINK, ANS, END_ANS = 4, 5, 6, 7  # reasoning tag ids (contract: ids 4..7)

GREEDY = SamplingOptions(temperature=0.0)


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, vocab_size=320)


def tiny_model(vocab: int, max_pos: int = 256, **overrides) -> MiniGPTForCausalLM:
    torch.manual_seed(0)
    cfg = MiniGPTConfig.from_preset(
        "tiny",
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_pos,
        **overrides,
    )
    return MiniGPTForCausalLM(cfg).eval()


def render(tok, messages) -> list[int]:
    """The chat template's ids, computed independently of ChatSession."""
    out = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    return list(out["input_ids"] if isinstance(out, dict) else out)


class ScriptedEngine:
    """Stands in for GenerationEngine: records each call, yields the next scripted reply."""

    def __init__(self, replies: list[list[int]]):
        self.replies = list(replies)
        self.prompts: list[list[int]] = []
        self.budgets: list[int] = []

    def stream(self, prompt_ids, max_new_tokens, **sampling):
        self.prompts.append(list(prompt_ids))
        self.budgets.append(max_new_tokens)
        return iter(self.replies[len(self.prompts) - 1][:max_new_tokens])


def scripted_session(tok, replies, max_pos=256, **kw) -> tuple[ChatSession, ScriptedEngine]:
    session = ChatSession(tiny_model(len(tok), max_pos), tok, temperature=0.0, **kw)
    session.engine = ScriptedEngine(replies)
    return session, session.engine


def byte_token_ids(tok, data: bytes) -> list[int]:
    """Ids of the single-byte tokens spelling `data` (GPT-2's byte -> printable char map)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, n = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + n)
            n += 1
    return [tok.convert_tokens_to_ids(chars[b]) for b in data]


def chain_model(tok, links: dict[int, int], max_pos: int = 256) -> MiniGPTForCausalLM:
    """A model whose greedy successor of token `a` is `links[a]` (see the module docstring).

    With o_proj and down_proj zero, the residual stream at a position is the token's embedding.
    Each source token gets a one-hot embedding e_j (j = its index among the sources); after the
    final RMSNorm (weight 1) that is sqrt(H)·e_j, so logit[b] = W[b, j]·sqrt(H): W[links[a], j]
    = 10 gives the successor a logit of 10·sqrt(32) ≈ 57 and every other token 0.
    """
    model = tiny_model(len(tok), max_pos, tie_word_embeddings=False)
    sources = sorted(links)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb, head = model.model.embed_tokens.weight, model.lm_head.weight
        assert emb.data_ptr() != head.data_ptr()
        head.zero_()
        for j, src in enumerate(sources):
            emb[src] = 0.0
            emb[src, j] = 1.0
        for src, dst in links.items():
            head[dst, sources.index(src)] = 10.0
    return model


def letter(tok, ch: str) -> int:
    idx = tok.convert_tokens_to_ids(ch)
    assert tok.decode([idx]) == ch
    return idx


def newline_id(tok) -> int:
    """The last prompt token: the "\\n" closing `<|im_start|>assistant\\n`."""
    nl = render(tok, [{"role": "user", "content": "x"}])[-1]
    assert tok.decode([nl]) == "\n"
    return nl


# ---------------------------------------------------------------- reasoning splitter


@pytest.mark.parametrize(
    "pieces, thinking, answer",
    [
        # think then answer, each tag its own piece (as the tokenizer emits them)
        (["<think>", "let me", " see", "</think>", "\n", "<answer>", "42", "</answer>"], "let me see", "42"),
        # tags split across pieces
        (["<thi", "nk>ab", "c</", "think><ans", "wer>4", "2</answer", ">"], "abc", "42"),
        # no tags: everything is the answer, verbatim (spaces kept)
        (["hello ", "world "], "", "hello world "),
        # unterminated think: the model ran out of tokens while thinking
        (["<think>", "still ", "thinking"], "still thinking", ""),
        # a "<" that never becomes a tag is text, even when held back at a piece boundary
        (["a <", " b <th", "e end"], "", "a < b <the end"),
        # answer without the <answer> tag after thinking
        (["<think>x</think>", " y"], "x", "y"),
    ],
)
def test_reasoning_splitter(pieces, thinking, answer):
    s = ReasoningSplitter()
    events = [e for p in pieces for e in s.feed(p)] + s.close()
    assert (s.thinking, s.answer) == (thinking, answer)
    # The streamed events carry exactly that text, tags removed.
    streamed = {k: "".join(t for kind, t in events if kind == k) for k in ("thinking", "answer")}
    assert streamed["thinking"].strip() == thinking
    assert streamed["answer"].strip() == answer.strip()
    assert split_reasoning("".join(pieces)) == (thinking, answer)


def test_splitter_holds_back_partial_tags():
    """A piece ending in "<thi" must not leak "<thi" as answer text before "nk>" arrives."""
    s = ReasoningSplitter()
    assert s.feed("ok <thi") == [("answer", "ok ")]
    assert s.feed("nk>hmm") == [("thinking", "hmm")]
    assert s.feed("</think") == []
    assert s.feed(">") == []
    assert s.feed("done") == [("answer", "done")]


# ---------------------------------------------------------------- prompts and history


def test_prompt_is_template_of_history_and_keeps_only_the_answer(tok):
    """Turn 2's prompt must be the template of [system, user 1, answer 1, user 2]: the first
    reply's thinking ("hmm") is not fed back, its answer ("42") is."""
    first = [THINK, *tok.encode("hmm"), END_THINK, ANS, *tok.encode("42"), END_ANS]
    second = tok.encode("ok")
    session, engine = scripted_session(tok, [first, second], system="be terse")
    r1 = session.reply("what is six times seven?")
    assert (r1.thinking, r1.answer) == ("hmm", "42")
    assert r1.text == "<think>hmm</think><answer>42</answer>"
    session.reply("thanks")
    sys_msg = {"role": "system", "content": "be terse"}
    assert engine.prompts[0] == render(tok, [sys_msg, {"role": "user", "content": "what is six times seven?"}])
    expected_history = [
        sys_msg,
        {"role": "user", "content": "what is six times seven?"},
        {"role": "assistant", "content": "42"},
        {"role": "user", "content": "thanks"},
    ]
    assert engine.prompts[1] == render(tok, expected_history)
    # max_new_tokens (256) == the context (256): history is kept, the reply gets what is left
    assert engine.budgets[1] == 256 - len(engine.prompts[1])
    assert session.history == expected_history + [{"role": "assistant", "content": "ok"}]


def test_reset_and_system_commands_change_the_next_prompt(tok):
    replies = [tok.encode(f"A{i}") for i in range(4)]
    session, engine = scripted_session(tok, replies)
    out = io.StringIO()
    lines = ["hi", "/system Be brief.", "again", "", "/reset", "third\n", "/system", "fourth", "/bogus", "/exit", "never sent"]
    transcript = run_chat(session, lines, out=out)
    u = lambda t: {"role": "user", "content": t}  # noqa: E731
    a = lambda t: {"role": "assistant", "content": t}  # noqa: E731
    s = {"role": "system", "content": "Be brief."}
    assert engine.prompts == [
        render(tok, [u("hi")]),
        render(tok, [s, u("hi"), a("A0"), u("again")]),  # /system keeps the conversation
        render(tok, [s, u("third")]),  # /reset forgets it, keeps the system message
        render(tok, [u("third"), a("A2"), u("fourth")]),  # bare /system removes it
    ]
    assert transcript == [u("hi"), a("A0"), s, u("again"), a("A1"), u("third"), a("A2"), u("fourth"), a("A3")]
    assert "unknown command /bogus" in out.getvalue()


def test_trimming_drops_oldest_exchange_and_keeps_system(tok):
    """Context = len(template([sys, u2, a2, u3])) + max_new_tokens exactly (max_new_tokens is
    below half the context, so all of it is reserved): the full history does not fit (it is
    longer by the first exchange), dropping exchange 1 fits exactly."""
    sys_msg = {"role": "system", "content": "you are terse"}
    u = ["question about apples", "question about pears", "question about plums and the lazy dog"]
    a = ["answer number 1", "answer number 2", "answer number 3"]
    msgs = lambda *m: [sys_msg] + [  # noqa: E731
        {"role": r, "content": t} for r, t in m
    ]
    third = msgs(("user", u[1]), ("assistant", a[1]), ("user", u[2]))
    max_new = 8
    limit = len(render(tok, third)) + max_new
    # Preconditions of the scenario: the first two turns fit, the full third prompt does not.
    second = msgs(("user", u[0]), ("assistant", a[0]), ("user", u[1]))
    full = msgs(("user", u[0]), ("assistant", a[0]), ("user", u[1]), ("assistant", a[1]), ("user", u[2]))
    assert len(render(tok, second)) + max_new <= limit < len(render(tok, full)) + max_new
    assert max_new <= limit // 2

    replies = [tok.encode(t) for t in a]
    session, engine = scripted_session(tok, replies, max_pos=limit, system=sys_msg["content"], max_new_tokens=max_new)
    session.reply(u[0])
    session.reply(u[1])
    r3 = session.reply(u[2])
    assert engine.prompts[2] == render(tok, third)
    assert len(engine.prompts[2]) + engine.budgets[2] == limit
    assert r3.dropped_exchanges == 1 and r3.max_new_tokens == max_new
    assert len(session.history) == 7  # the history still lists everything


def test_a_turn_longer_than_the_context(tok):
    long = "question about apples and pears " * 3
    need = len(render(tok, [{"role": "user", "content": long}]))
    # 3 positions left: the reply budget shrinks from 8 to 3
    session, engine = scripted_session(tok, [tok.encode("answer number one two")], max_pos=need + 3, max_new_tokens=8)
    r = session.reply(long)
    assert engine.budgets == [3] and r.max_new_tokens == 3 and len(r.token_ids) == 3
    assert r.finish_reason == "length"
    # no position left: a clear error, and the history stays empty
    session, _ = scripted_session(tok, [[]], max_pos=need, max_new_tokens=8)
    with pytest.raises(UserError, match="context is"):
        session.reply(long)
    assert session.history == []


# ---------------------------------------------------------------- streaming


def test_stream_holds_back_a_split_multibyte_character(tok):
    """"你" is 3 UTF-8 bytes sent as 3 byte tokens: after the 1st and 2nd only "\\ufffd" is
    decodable, so nothing may be emitted until the 3rd; then "你" comes as one piece."""
    ids = tok.encode("ab") + byte_token_ids(tok, "你".encode()) + tok.encode("c")
    session, _ = scripted_session(tok, [ids])
    pieces: list[str] = []
    r = session.reply("hi", on_token=pieces.append)
    assert r.text == "ab你c" and "".join(pieces) == r.text
    assert pieces[-2:] == ["你", "c"]
    assert not any("\ufffd" in p for p in pieces)


def test_streamed_pieces_concatenate_to_the_reply(tok):
    """A random model sampling freely (any token, partial bytes included) through the real
    engine: the pieces concatenate to `text`, which is the decode of the ids (specials other
    than the tags never appear as text; the stopping EOS is not in the ids)."""
    model = tiny_model(len(tok), initializer_range=0.3)
    for seed in range(3, 13):  # a random model may stop at once; take the first seed that talks
        session = ChatSession(model, tok, max_new_tokens=60, temperature=1.0, top_k=0, top_p=1.0, seed=seed)
        pieces: list[str] = []
        r = session.reply("你好，世界", on_token=pieces.append)
        if len(r.token_ids) > 5:
            break
    assert len(r.token_ids) > 5
    assert "".join(pieces) == r.text
    visible = [i for i in r.token_ids if i not in (1, 2)]  # pad / im_start are skipped in text
    assert r.text == tok.decode(visible, skip_special_tokens=False)


def test_generation_stops_at_im_end(tok):
    """Chain "\\n" -> h -> i -> ! -> <|im_end|> -> h -> ...: the reply must be exactly "hi!"
    (3 tokens) and finish by "stop". Control: the same engine stopping only at
    <|endoftext|> runs past <|im_end|> and repeats "hi!" until max_new_tokens."""
    h, i, bang = letter(tok, "h"), letter(tok, "i"), letter(tok, "!")
    im_end = tok.convert_tokens_to_ids(IM_END)
    model = chain_model(tok, {newline_id(tok): h, h: i, i: bang, bang: im_end, im_end: h})
    session = ChatSession(model, tok, max_new_tokens=20, temperature=0.0)
    assert session.eos_token_ids == [im_end, tok.eos_token_id]
    r = session.reply("hello")
    assert (r.token_ids, r.text, r.finish_reason) == ([h, i, bang], "hi!", "stop")
    plain = GenerationEngine(model, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    ids = list(plain.stream(render(tok, [{"role": "user", "content": "hello"}]), max_new_tokens=9, temperature=0.0))
    assert ids == [h, i, bang, im_end] * 2 + [h]


# ---------------------------------------------------------------- the recipe


@pytest.fixture(scope="module")
def saved_models(tok, tmp_path_factory):
    """Two chain models saved as model directories: a plain one answering "hi!", and a
    reasoning one answering <think>h</think><answer>i</answer>."""
    h, i, bang = letter(tok, "h"), letter(tok, "i"), letter(tok, "!")
    im_end, nl = tok.convert_tokens_to_ids(IM_END), newline_id(tok)
    dirs = {}
    for name, links in {
        "plain": {nl: h, h: i, i: bang, bang: im_end, im_end: h},
        "reasoning": {nl: THINK, THINK: h, h: END_THINK, END_THINK: ANS, ANS: i, i: END_ANS, END_ANS: im_end, im_end: h},
    }.items():
        d = tmp_path_factory.mktemp(name)
        chain_model(tok, links).save_pretrained(d)
        tok.save_pretrained(d)
        dirs[name] = str(d)
    return dirs


def test_recipe_prompt_prints_one_reply(saved_models, capsys):
    transcript = chat(saved_models["plain"], prompt="hello", sampling=GREEDY, dtype="fp32", device="cpu")
    assert capsys.readouterr().out == "hi!\n"
    assert transcript == [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi!"}]


def test_recipe_reads_a_scripted_chat_from_stdin(saved_models, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n\n/system be nice\nagain\n"))
    transcript = chat(saved_models["plain"], sampling=GREEDY, device="cpu")  # default dtype bf16
    assert capsys.readouterr().out == (
        "user: hello\nassistant: hi!\n(system message set)\nuser: again\nassistant: hi!\n"
    )
    assert [m["role"] for m in transcript] == ["user", "assistant", "system", "user", "assistant"]


def test_a_bad_scripted_line_is_skipped_and_the_chat_goes_on(saved_models, capsys, monkeypatch):
    """Piped input: a line longer than the context, or one typing a reasoning tag (which
    would become the control token, not text), is skipped with its line number on stderr."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n" + "word " * 3000 + "\nsay <think>x</think>\nagain\n"))
    transcript = chat(saved_models["plain"], sampling=GREEDY, dtype="fp32", device="cpu")
    captured = capsys.readouterr()
    assert [m["content"] for m in transcript if m["role"] == "user"] == ["hello", "again"]
    assert captured.out.count("assistant: hi!") == 2 and captured.out.count("(skipped)") == 2
    assert "skipped line 2:" in captured.err and "context" in captured.err
    assert "skipped line 3:" in captured.err and "'<think>'" in captured.err


def test_prompt_with_a_control_token_is_one_clear_error(saved_models):
    for text in ("<|endoftext|> hi", "a <answer>5</answer>", "<|pad|>"):
        with pytest.raises(UserError, match="control token"):
            chat(saved_models["plain"], prompt=text, sampling=GREEDY, dtype="fp32", device="cpu")


def test_recipe_shows_thinking_apart_or_hides_it(saved_models, capsys):
    transcript = chat(saved_models["reasoning"], prompt="q", sampling=GREEDY, dtype="fp32", device="cpu")
    assert capsys.readouterr().out == "[thinking] h\ni\n"
    assert transcript[-1] == {"role": "assistant", "content": "i", "reasoning_content": "h"}
    chat(saved_models["reasoning"], prompt="q", sampling=GREEDY, dtype="fp32", device="cpu", hide_thinking=True)
    assert capsys.readouterr().out == "i\n"
    with pytest.raises(UserError, match="dtype"):
        chat(saved_models["reasoning"], prompt="q", dtype="fp64")
