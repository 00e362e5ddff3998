"""The one chat renderer: data records -> messages -> ``(input_ids, loss_mask)``.

Used by SFT now and by DPO and RL later, so every stage sees a conversation tokenized the same
way (nanochat's ``render_conversation``, but through the tokenizer's own chat template so that
training ids are exactly what ``tokenizer.apply_chat_template`` produces).

Three steps:

1. :func:`normalize_messages` turns one record of any supported data format into a list of
   ``{"role", "content"}`` messages (roles ``system``, ``user``, ``assistant``, ``tool``).
2. :func:`render_conversation` renders the messages with the chat template, tokenizes the string
   once (with character offsets) and marks as supervised the tokens that overlap an assistant
   reply or the ``<|im_end|>`` closing it. Role headers, system/user/tool turns and the ``"\\n"``
   after ``<|im_end|>`` get mask 0. Truncation keeps the first ``max_length`` tokens.
3. :func:`render_prompt` gives the ids of a prompt that opens an assistant turn, for generation.

Supported record formats (auto-detected, or forced with ``fmt``):

=============  ===============================================================================
``messages``   ``{"messages" | "conversations": [{"role": ..., "content": ...}, ...]}``, with an
               optional top-level ``"system"`` string (prepended when no system message is
               present)
``sharegpt``   ``{"conversations" | "messages": [{"from": ..., "value": ...}, ...]}`` (optional
               ``"system"``); ``from``: human/user -> user, gpt/assistant/function_call ->
               assistant, system -> system, tool/function/observation -> tool
``alpaca``     ``{"instruction", "input", "output"}`` with optional ``"system"`` and
               ``"history"`` (``[[user, assistant], ...]`` turns placed before the
               instruction, as in LLaMA-Factory); the user turn is the instruction and the
               input (when non-empty) joined by ``"\\n"``
=============  ===============================================================================

Where a token straddles the start of an assistant reply (a reply starting with whitespace can
merge with the ``"\\n"`` of the role header into one BPE token), that token is supervised, so
every character of the reply is covered by the loss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from minigpt.errors import UserError, first_line
from minigpt.tokenizer.special import ANSWER_END, ANSWER_START, EOS_TOKEN, IM_END, IM_START, PAD_TOKEN, THINK_END, THINK_START

__all__ = [
    "FORMATS",
    "ROLES",
    "SkipRecord",
    "chat_eos_ids",
    "check_content",
    "encode_rendered",
    "mask_from_offsets",
    "normalize_messages",
    "parse_messages",
    "parse_sharegpt",
    "render_conversation",
    "render_prompt",
    "render_prompt_literal",
    "render_text",
    "truncate_example",
]

#: Roles a normalized message may have.
ROLES = ("system", "user", "assistant", "tool")

#: Record formats :func:`normalize_messages` understands.
FORMATS = ("messages", "alpaca", "sharegpt")

# ShareGPT "from" values -> roles (LLaMA-Factory's names plus the common aliases).
_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "function_call": "assistant",  # the assistant's tool call (LLaMA-Factory)
    "system": "system",
    "tool": "tool",
    "function": "tool",
    "observation": "tool",
}

# Text that would let one message close its turn and open another (prompt injection through
# data), or end or pad the sequence: no content may hold it.
_CONTROL_TOKENS = (IM_START, IM_END, EOS_TOKEN, PAD_TOKEN)
# The reasoning format's tags: the assistant's own structure, which a user, system or tool
# message typing them would forge (they tokenize to the control ids, not to text).
_REASONING_TAGS = (THINK_START, THINK_END, ANSWER_START, ANSWER_END)


def control_token_in(text: str, role: str) -> str | None:
    """The first special token that `text`, as the content of a `role` message, may not hold
    (None if it holds none): ChatML and sequence tokens anywhere, reasoning tags outside
    assistant messages."""
    for token in _CONTROL_TOKENS + (() if role == "assistant" else _REASONING_TAGS):
        if token in text:
            return token
    return None


class SkipRecord(Exception):
    """A record that is well-formed but has nothing to train on; datasets skip and count it.

    Not a :class:`UserError`: the data is not wrong, only unusable for this purpose.

    Attributes:
        reason: one line saying why.
        kind: ``"no_assistant"`` (no assistant turn), ``"empty_reply"`` (a blank assistant
            reply) or ``"truncated"`` (no supervised token left after truncation), so datasets
            can count each kind apart.
    """

    def __init__(self, reason: str, kind: str = "no_assistant") -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


# ---------------------------------------------------------------------------------------------
# Records -> messages
# ---------------------------------------------------------------------------------------------


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def check_content(where: str, what: str, value: Any, role: str = "user") -> str:
    """Return ``value`` if it is a string free of ChatML control tokens, else raise.

    Blank content is an error except in an assistant reply: public sets hold a few blank
    replies (Alpaca-52k: 28 in English, 50 in Chinese) in otherwise well-formed records, so
    :func:`normalize_messages` skips and counts those records (:class:`SkipRecord`, kind
    ``"empty_reply"``) after checking the whole record, rather than stopping a run.
    """
    if not isinstance(value, str):
        raise UserError(f"{where}: {what} must be a string, got {_type_name(value)}")
    if not value.strip() and role != "assistant":
        raise UserError(f"{where}: {what} is empty")
    token = control_token_in(value, role)
    if token is not None:
        raise UserError(f"{where}: {what} contains the control token {token!r}")
    return value


def _detect_format(record: Mapping[str, Any], where: str) -> str:
    for key in ("conversations", "messages"):
        if key in record:
            turns = record[key]
            first = next((t for t in turns if isinstance(t, Mapping)), None) if isinstance(turns, list) else None
            if first is not None and "from" in first and "role" not in first:
                return "sharegpt"
            return "messages"  # reports a wrongly typed list itself
    if "instruction" in record:
        return "alpaca"
    keys = ", ".join(map(str, record)) or "none"
    raise UserError(
        f"{where}: unknown record format (keys: {keys}); expected 'messages' or 'conversations' "
        "(role/content or ShareGPT from/value) or Alpaca 'instruction'/'input'/'output'"
    )


def _turn_list(record: Mapping[str, Any], where: str) -> tuple[str, list]:
    for key in ("conversations", "messages"):
        if key in record:
            turns = record[key]
            if not isinstance(turns, list):
                raise UserError(f"{where}: field {key!r} must be a list, got {_type_name(turns)}")
            return key, turns
    keys = ", ".join(map(str, record)) or "none"
    raise UserError(f"{where}: missing field 'conversations' or 'messages' (keys: {keys})")


def _with_system(record: Mapping[str, Any], where: str, messages: list[dict]) -> list[dict]:
    """Prepend the record's optional top-level ``system`` string unless a system turn exists."""
    system = record.get("system")
    if system is None or system == "":
        return messages
    check_content(where, "field 'system'", system)
    if any(m["role"] == "system" for m in messages):
        return messages
    return [{"role": "system", "content": system}, *messages]


def parse_messages(record: Mapping[str, Any], where: str) -> list[dict]:
    """The ``role``/``content`` turns of a ``{"messages": [...]}`` record, checked and copied
    as ``[{"role", "content"}]``.

    Raises:
        UserError: a turn that is not an object, lacks ``role``/``content``, has an unknown
            role, or holds a control token; the message names ``where`` and the turn number.
    """
    key, turns = _turn_list(record, where)
    out = []
    for n, turn in enumerate(turns, start=1):
        if not isinstance(turn, Mapping):
            raise UserError(f"{where}: {key} message {n} must be an object, got {_type_name(turn)}")
        if "role" not in turn:
            raise UserError(f"{where}: message {n} has no 'role' field")
        role = turn["role"]
        if role not in ROLES:
            raise UserError(
                f"{where}: message {n} has unknown role {role!r} (expected {'/'.join(ROLES)})"
            )
        if "content" not in turn:
            raise UserError(f"{where}: message {n} has no 'content' field")
        content = check_content(where, f"message {n} ({role}) content", turn["content"], role)
        out.append({"role": role, "content": content})
    return _with_system(record, where, out)


def parse_sharegpt(record: Mapping[str, Any], where: str) -> list[dict]:
    """The ShareGPT ``from``/``value`` turns of a ``{"conversations": [...]}`` record as
    ``[{"role", "content"}]`` (``human`` -> user, ``gpt`` -> assistant, ...).

    Raises:
        UserError: as :func:`parse_messages`.
    """
    key, turns = _turn_list(record, where)
    out = []
    for n, turn in enumerate(turns, start=1):
        if not isinstance(turn, Mapping):
            raise UserError(f"{where}: {key} message {n} must be an object, got {_type_name(turn)}")
        if "from" not in turn:
            raise UserError(f"{where}: message {n} has no 'from' field")
        source = turn["from"]
        role = _SHAREGPT_ROLES.get(source) if isinstance(source, str) else None
        if role is None:
            raise UserError(
                f"{where}: message {n} has unknown role {source!r} in 'from' "
                f"(expected {'/'.join(_SHAREGPT_ROLES)})"
            )
        if "value" not in turn:
            raise UserError(f"{where}: message {n} has no 'value' field")
        content = check_content(where, f"message {n} ({source}) value", turn["value"], role)
        out.append({"role": role, "content": content})
    return _with_system(record, where, out)


def _optional_str(record: Mapping[str, Any], where: str, field: str) -> str:
    value = record.get(field)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise UserError(f"{where}: field {field!r} must be a string, got {_type_name(value)}")
    return value


def _from_alpaca(record: Mapping[str, Any], where: str) -> list[dict]:
    instruction = _optional_str(record, where, "instruction")
    extra = _optional_str(record, where, "input")
    if "output" not in record:
        keys = ", ".join(map(str, record)) or "none"
        raise UserError(f"{where}: Alpaca record has no 'output' field (keys: {keys})")
    prompt = "\n".join(part for part in (instruction, extra) if part)
    if not prompt.strip():
        raise UserError(f"{where}: fields 'instruction' and 'input' are both empty")
    messages: list[dict] = []
    system = record.get("system")
    if system is not None and system != "":
        messages.append({"role": "system", "content": check_content(where, "field 'system'", system)})
    history = record.get("history")
    if history is not None:
        if not isinstance(history, list):
            raise UserError(f"{where}: field 'history' must be a list of [user, assistant] pairs, got {_type_name(history)}")
        for n, pair in enumerate(history, start=1):
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise UserError(f"{where}: history entry {n} must be a [user, assistant] pair")
            messages.append({"role": "user", "content": check_content(where, f"history entry {n} user", pair[0])})
            messages.append(
                {"role": "assistant", "content": check_content(where, f"history entry {n} assistant", pair[1], "assistant")}
            )
    messages.append({"role": "user", "content": check_content(where, "fields 'instruction'/'input'", prompt)})
    messages.append({"role": "assistant", "content": check_content(where, "field 'output'", record["output"], "assistant")})
    return messages


def normalize_messages(record: Mapping[str, Any], fmt: str | None = None, where: str = "record") -> list[dict]:
    """Turn one data record into ``[{"role": ..., "content": ...}, ...]``.

    Args:
        record: one JSON object of a ``messages``, ``sharegpt`` or ``alpaca`` dataset (see the
            module docstring for the fields).
        fmt: one of :data:`FORMATS`, or None to detect it: a ``conversations``/``messages`` list
            whose first object has ``from`` (and no ``role``) is ShareGPT, any other such list is
            ``messages``; a record with ``instruction`` is Alpaca.
        where: names the record in error messages, e.g. ``"data.jsonl:12"``.

    Returns:
        New message dicts with roles in :data:`ROLES` and non-blank string contents (kept
        verbatim, whitespace included). Messages are numbered from 1 in errors.

    Raises:
        UserError: ``record`` is not an object; unknown ``fmt`` or undetectable format; a
            missing or wrongly typed field; an unknown role; empty (blank) system/user/tool
            content; content holding ``<|im_start|>``/``<|im_end|>``.
        SkipRecord: the conversation has no assistant turn (kind ``"no_assistant"``) or a
            blank assistant reply (kind ``"empty_reply"``).
    """
    if not isinstance(record, Mapping):
        raise UserError(f"{where}: expected a JSON object, got {_type_name(record)}")
    if fmt is None:
        fmt = _detect_format(record, where)
    if fmt == "messages":
        messages = parse_messages(record, where)
    elif fmt == "sharegpt":
        messages = parse_sharegpt(record, where)
    elif fmt == "alpaca":
        messages = _from_alpaca(record, where)
    else:
        raise UserError(f"format: unknown format {fmt!r} (expected one of {', '.join(FORMATS)} or None to detect)")
    if not any(m["role"] == "assistant" for m in messages):
        raise SkipRecord(f"{where}: no assistant turn", kind="no_assistant")
    for n, m in enumerate(messages, start=1):
        if m["role"] == "assistant" and not m["content"].strip():
            raise SkipRecord(f"{where}: assistant message {n} is empty", kind="empty_reply")
    return messages


# ---------------------------------------------------------------------------------------------
# Messages -> (ids, mask)
# ---------------------------------------------------------------------------------------------


def _check_messages(messages: Sequence[Mapping[str, Any]], where: str) -> None:
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)):
        raise UserError(f"{where}: messages must be a list of {{'role', 'content'}} dicts")
    for n, m in enumerate(messages, start=1):
        if not isinstance(m, Mapping) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise UserError(
                f"{where}: message {n} must be a dict with a role in {'/'.join(ROLES)} and string "
                "content (use normalize_messages on raw records)"
            )
        token = control_token_in(m["content"], m["role"])
        if token is not None:
            raise UserError(f"{where}: message {n} ({m['role']}) content contains the control token {token!r}")


# Generation prompt per chat template string (rendering it costs as much as a conversation).
_OPENERS: dict[str, str] = {}


def _template(tokenizer, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool) -> str:
    """Render with the tokenizer's chat template (transformers' sandboxed jinja environment).

    Raises:
        UserError: no template, or one that fails: a syntax error, an attribute the sandbox
            forbids (`SecurityError`), an error the template raises itself, or a Python error
            while it runs. The message names the tokenizer's folder.
    """
    from jinja2.exceptions import TemplateError

    if getattr(tokenizer, "chat_template", None) is None:
        raise UserError("tokenizer has no chat template; load one saved by `minigpt tokenizer`")
    try:
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)
    except (TemplateError, TypeError, AttributeError, KeyError, IndexError, ValueError) as e:
        if isinstance(e, UserError):
            raise
        where = getattr(tokenizer, "name_or_path", "") or "the tokenizer"
        first = first_line(e)
        raise UserError(
            f"{where}: its chat template cannot render this conversation ({type(e).__name__}: {first}); "
            "fix chat_template.jinja there, or use a tokenizer saved by `minigpt tokenizer`"
        ) from None


def _generation_prompt(tokenizer) -> str:
    """The text ``add_generation_prompt=True`` appends (ChatML: ``"<|im_start|>assistant\\n"``).

    Found as the difference between a one-message conversation rendered with and without it
    (transformers refuses to render an empty conversation); cached per template string.
    """
    opener = _OPENERS.get(tokenizer.chat_template)
    if opener is None:
        probe = [{"role": "user", "content": "x"}]
        bare = _template(tokenizer, probe, add_generation_prompt=False)
        full = _template(tokenizer, probe, add_generation_prompt=True)
        opener = full[len(bare):] if full.startswith(bare) else ""
        _OPENERS[tokenizer.chat_template] = opener
    return opener


def render_text(
    tokenizer, messages: Sequence[Mapping[str, Any]], where: str = "conversation"
) -> tuple[str, list[tuple[int, int]]]:
    """Render ``messages`` with the chat template and find the supervised character spans.

    The template is rendered once. Each assistant reply is then located, in order, as the first
    occurrence of ``G + reply + "<|im_end|>"`` after the previous reply, where ``G`` is the
    template's generation prompt (``"<|im_start|>assistant\\n"``). This is exact because no
    content may hold ``<|im_start|>`` or ``<|im_end|>`` (checked), so every ``<|im_start|>`` in
    the text opens a turn written by the template, and only an assistant turn opens with ``G``.

    Returns:
        ``(text, spans)``: the rendered string and sorted half-open ``[start, end)`` character
        spans of the assistant replies, each including its closing ``<|im_end|>``.

    Raises:
        UserError: malformed messages or content holding a control token, no chat template,
            or a template that does not write each reply verbatim between ``G`` and
            ``<|im_end|>``.
    """
    _check_messages(messages, where)
    text = _template(tokenizer, messages, add_generation_prompt=False)
    opener = _generation_prompt(tokenizer)
    spans = []
    cursor = 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        found = text.find(opener + m["content"] + IM_END, cursor) if opener.startswith(IM_START) else -1
        if found < 0:
            raise UserError(
                f"{where}: the tokenizer's chat template does not render assistant message {i + 1} "
                f"as generation prompt + reply + {IM_END!r}; a ChatML template is required"
            )
        start = found + len(opener)
        cursor = start + len(m["content"]) + len(IM_END)
        spans.append((start, cursor))
    return text, spans


def mask_from_offsets(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> list[int]:
    """1 for every token whose character range ``[s, e)`` overlaps a span, else 0.

    Args:
        offsets: per-token ``(start, end)`` character offsets (a fast tokenizer's
            ``offset_mapping``), length ``T``.
        spans: half-open character spans ``[a, b)``.

    Returns:
        A list of ``T`` ints in {0, 1}.
    """
    if len(offsets) == 0:
        return []
    off = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    keep = np.zeros(len(off), dtype=bool)
    for a, b in spans:
        keep |= (off[:, 1] > a) & (off[:, 0] < b)
    return keep.astype(np.int64).tolist()


def _mask_from_encoding(encoding, spans: Sequence[tuple[int, int]]) -> list[int]:
    """:func:`mask_from_offsets` for a ``tokenizers.Encoding``, in O(spans).

    Tokens are ordered by offset, so the tokens overlapping ``[a, b)`` run from the one holding
    character ``a`` to the one holding character ``b - 1``. Falls back to the full scan if a
    character belongs to no token (not the case for byte-level BPE).
    """
    n = len(encoding)
    mask = [0] * n
    for a, b in spans:
        first, last = encoding.char_to_token(a), encoding.char_to_token(b - 1)
        if first is None or last is None:
            return mask_from_offsets(encoding.offsets, spans)
        # char_to_token gives the first token holding a character; a character split over
        # several byte tokens (e.g. a CJK character or emoji) has its later pieces in the span too.
        while last + 1 < n and encoding.token_to_chars(last + 1)[0] < b:
            last += 1
        mask[first : last + 1] = [1] * (last + 1 - first)
    return mask


def truncate_example(
    ids: list[int], mask: list[int], max_length: int | None, where: str = "conversation"
) -> tuple[list[int], list[int]]:
    """Keep the first ``max_length`` tokens of ``ids`` and ``mask`` (None: keep all).

    Raises:
        UserError: ``max_length`` < 1.
        SkipRecord: no mask-1 token remains (kind ``"truncated"``).
    """
    if max_length is not None:
        if not isinstance(max_length, int) or max_length < 1:
            raise UserError(f"max_length: must be a positive integer, got {max_length!r}")
        if len(ids) > max_length:
            ids, mask = ids[:max_length], mask[:max_length]
            if not any(mask):
                raise SkipRecord(
                    f"{where}: no supervised token left after truncation to {max_length} tokens",
                    kind="truncated",
                )
    return ids, mask


def encode_rendered(tokenizer, texts: list[str], spans: list[Sequence[tuple[int, int]]]) -> list[tuple[list[int], list[int]]]:
    """Tokenize rendered conversations (no special tokens added) and build their loss masks.

    Uses the fast tokenizer's Rust backend in one batch call: the same ids as
    ``tokenizer(texts, add_special_tokens=False)``, without the per-item Python conversion.

    Returns:
        ``[(ids, mask), ...]``, one pair per text.

    Raises:
        UserError: the tokenizer is not a fast tokenizer (offsets are needed).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is None:
        raise UserError("the chat renderer needs a fast tokenizer (PreTrainedTokenizerFast) for offsets")
    encodings = backend.encode_batch(texts, add_special_tokens=False)
    return [(list(enc.ids), _mask_from_encoding(enc, sp)) for enc, sp in zip(encodings, spans)]


def render_conversation(
    tokenizer,
    messages: Sequence[Mapping[str, Any]],
    max_length: int | None = None,
    where: str = "conversation",
) -> tuple[list[int], list[int]]:
    """Token ids and loss mask of a conversation, through the tokenizer's chat template.

    ``input_ids`` equal ``tokenizer.apply_chat_template(messages, tokenize=True)`` exactly (the
    rendered string tokenized with no extra special tokens). ``loss_mask[t] = 1`` where token
    ``t`` belongs to an assistant reply or is the ``<|im_end|>`` closing it; 0 on role headers,
    system/user/tool turns and the ``"\\n"`` after each ``<|im_end|>``.

    Args:
        tokenizer: a fast tokenizer with a ChatML chat template (``load_tokenizer``).
        messages: ``[{"role", "content"}, ...]`` as returned by :func:`normalize_messages`.
        max_length: keep only the first ``max_length`` tokens (mask cut the same way).
        where: names the conversation in errors.

    Returns:
        ``(input_ids, loss_mask)``: two lists of the same length ``T`` (``T <= max_length``).

    Raises:
        UserError: malformed messages, bad ``max_length``, unsuitable tokenizer or template.
        SkipRecord: truncation left no supervised token (kind ``"truncated"``).
    """
    text, spans = render_text(tokenizer, messages, where)
    [(ids, mask)] = encode_rendered(tokenizer, [text], [spans])
    return truncate_example(ids, mask, max_length, where)


def render_prompt(tokenizer, messages: Sequence[Mapping[str, Any]], where: str = "conversation") -> list[int]:
    """Ids of ``messages`` followed by the generation prompt ``<|im_start|>assistant\\n``.

    The ids equal ``tokenizer.apply_chat_template(messages, tokenize=True,
    add_generation_prompt=True)``; used to prompt a model for its next reply (chat, DPO, RL).

    Raises:
        UserError: malformed messages or no chat template.
    """
    _check_messages(messages, where)
    text = _template(tokenizer, messages, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def render_prompt_literal(tokenizer, messages: Sequence[Mapping[str, Any]], where: str = "conversation") -> list[int]:
    """`render_prompt` for text from outside (an HTTP client): control tokens typed in a
    message stay plain text.

    A message whose content holds `<|im_start|>`, `<|im_end|>`, the end-of-text or pad token,
    or (outside assistant messages) a reasoning tag would, tokenized as the chat template's
    text, turn into the control id itself and could close its turn and open another (prompt
    injection). Here every message is rendered through the chat template with its content
    replaced by a placeholder; the template's own text is tokenized as usual and each content
    separately with `split_special_tokens=True`, so the typed characters become ordinary
    byte tokens that read back as the same text. Messages without control tokens give exactly
    `render_prompt`'s ids.

    Raises:
        UserError: malformed messages (not role/content dicts) or no chat template.
    """
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)):
        raise UserError(f"{where}: messages must be a list of {{'role', 'content'}} dicts")
    if all(isinstance(m, Mapping) and isinstance(m.get("content"), str)
           and control_token_in(m["content"], str(m.get("role"))) is None for m in messages):
        return render_prompt(tokenizer, messages, where)
    import secrets

    nonce = secrets.token_hex(8)
    holders = [f"@@{nonce}:{i}@@" for i in range(len(messages))]
    masked = [{**dict(m), "content": h} if isinstance(m, Mapping) else m for m, h in zip(messages, holders)]
    _check_messages(masked, where)
    text = _template(tokenizer, masked, add_generation_prompt=True)
    ids: list[int] = []
    cursor = 0
    for m, holder in zip(messages, holders):
        at = text.find(holder, cursor)
        if at < 0:
            raise UserError(f"{where}: the tokenizer's chat template does not write message contents verbatim")
        ids += tokenizer(text[cursor:at], add_special_tokens=False)["input_ids"] if at > cursor else []
        if m["content"]:
            ids += tokenizer(m["content"], add_special_tokens=False, split_special_tokens=True)["input_ids"]
        cursor = at + len(holder)
    ids += tokenizer(text[cursor:], add_special_tokens=False)["input_ids"] if cursor < len(text) else []
    return list(ids)


def chat_eos_ids(tok) -> list[int]:
    """Ids that end an assistant turn: `<|im_end|>` first, then end of text (when it differs).

    Raises:
        UserError: the tokenizer has no `<|im_end|>` token (not one of minigpt's).
    """
    im_end = tok.convert_tokens_to_ids(IM_END)
    if im_end is None or im_end == tok.unk_token_id:
        raise UserError(f"the tokenizer has no {IM_END} token; train it with minigpt's tokenizer command")
    return [im_end] + ([tok.eos_token_id] if tok.eos_token_id is not None and tok.eos_token_id != im_end else [])
