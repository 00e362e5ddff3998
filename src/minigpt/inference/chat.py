"""Multi-turn chat over the fast generation engine: history, context trimming, streaming, reasoning.

`ChatSession` keeps a conversation (an optional system message, then alternating user and
assistant messages), renders it with the tokenizer's chat template (ChatML, see
`minigpt.tokenizer.CHATML_TEMPLATE`), decodes the reply with `GenerationEngine` until
`<|im_end|>`, and streams the text as it comes.

A reasoning model answers `<think>…</think><answer>…</answer>` (each tag one special token).
`ReasoningSplitter` separates the two parts incrementally, so a front end can show the thinking
apart from the answer while it streams. As in Qwen3 and DeepSeek-R1, only the answer of an
assistant turn goes back into the history: earlier thinking is never fed to the model again
(it would fill the context with text the model was not trained to condition on).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from minigpt.errors import UserError
from minigpt.inference.engine import GenerationEngine
from minigpt.tokenizer.chat import render_prompt
from minigpt.tokenizer.special import ANSWER_END, ANSWER_START, IM_END, REASONING_TAGS, THINK_END, THINK_START

THINKING = "thinking"
ANSWER = "answer"


class ReasoningSplitter:
    """Split streamed text into thinking and answer parts, one piece at a time.

    Text inside `<think>…</think>` is thinking; everything else is answer, with the
    `<answer>`/`</answer>` tags removed. Text without any tag is all answer. An unterminated
    `<think>` leaves the rest of the text as thinking (the model ran out of tokens while
    thinking). A tag may arrive split over pieces (`"<thi"`, `"nk>"`): a piece that ends in
    what could be the start of a tag is held back until the next piece (or `close`) tells.
    Stray closing tags and a `<think>` inside thinking are dropped.

    Pure string processing; independent of tokenizers and models.

    Example:
        >>> s = ReasoningSplitter()
        >>> s.feed("<think>2+2") + s.feed("=4</think><answer>4</answer>") + s.close()
        [('thinking', '2+2'), ('thinking', '=4'), ('answer', '4')]
    """

    TAGS = (THINK_START, THINK_END, ANSWER_START, ANSWER_END)

    def __init__(self) -> None:
        self._mode = ANSWER
        self._buffer = ""  # text not yet classified: it starts with a possible tag prefix
        self._parts: dict[str, list[str]] = {THINKING: [], ANSWER: []}
        self.saw_tag = False

    def feed(self, text: str) -> list[tuple[str, str]]:
        """Take the next piece of text; return the `(kind, text)` events it completes, kind
        being "thinking" or "answer" (consecutive text of one kind is merged)."""
        self._buffer += text
        events: list[tuple[str, str]] = []
        buf = self._buffer
        while buf:
            i = buf.find("<")
            if i < 0:
                self._emit(events, buf)
                buf = ""
                break
            self._emit(events, buf[:i])
            buf = buf[i:]
            tag = next((t for t in self.TAGS if buf.startswith(t)), None)
            if tag is not None:
                self._switch(tag)
                buf = buf[len(tag) :]
            elif any(t.startswith(buf) for t in self.TAGS):
                break  # could still become a tag: wait for more text
            else:
                self._emit(events, "<")
                buf = buf[1:]
        self._buffer = buf
        return events

    def close(self) -> list[tuple[str, str]]:
        """End of the stream: release held-back text (a tag prefix that never completed)."""
        events: list[tuple[str, str]] = []
        self._emit(events, self._buffer)
        self._buffer = ""
        return events

    @property
    def thinking(self) -> str:
        """All thinking text so far, without surrounding whitespace."""
        return "".join(self._parts[THINKING]).strip()

    @property
    def answer(self) -> str:
        """All answer text so far; stripped of surrounding whitespace once a tag was seen (the
        newlines around tags are layout), verbatim for text without tags."""
        text = "".join(self._parts[ANSWER])
        return text.strip() if self.saw_tag else text

    def _switch(self, tag: str) -> None:
        self.saw_tag = True
        self._mode = THINKING if tag == THINK_START else ANSWER

    def _emit(self, events: list[tuple[str, str]], text: str) -> None:
        if not text:
            return
        self._parts[self._mode].append(text)
        if events and events[-1][0] == self._mode:
            events[-1] = (self._mode, events[-1][1] + text)
        else:
            events.append((self._mode, text))


def split_reasoning(text: str) -> tuple[str, str]:
    """`(thinking, answer)` of a complete reply; see `ReasoningSplitter`."""
    splitter = ReasoningSplitter()
    splitter.feed(text)
    splitter.close()
    return splitter.thinking, splitter.answer


class ReplyDecoder:
    """Generated token ids -> the reply's text, in pieces, as the tokens arrive.

    Special tokens are dropped, except the reasoning tags (`<think>`, `</think>`, `<answer>`,
    `</answer>`), which stay as text so that `ReasoningSplitter` can split thinking from
    answer. A piece never ends inside a multi-byte character (a token that ends mid-character
    is held back until the next completes it). With `stop` strings, the reply ends before the
    first occurrence of any of them (OpenAI's `stop`): text that might be the start of a stop
    string is held back until it is known not to be, so no piece of a stop string is ever
    emitted.

    Args:
        tokenizer: the model's tokenizer.
        stop: strings that end the reply (not included in it); empty strings are ignored.

    Example (schematic): `push` each generated id and show what it returns; after the last,
    show `flush()`; `text` is then the whole reply and `stopped` says whether a stop string
    ended it.
    """

    def __init__(self, tokenizer, stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.token_ids: list[int] = []
        self.stopped = False
        self._tag_ids: dict[int, str] = {}
        for tag in REASONING_TAGS:
            idx = tokenizer.convert_tokens_to_ids(tag)
            if isinstance(idx, int) and idx != tokenizer.unk_token_id:
                self._tag_ids[idx] = tag
        self._done = ""  # decoded text of the ids up to and including the last tag token
        self._run: list[int] = []  # ids after the last tag token
        self._shown = ""  # text emitted so far

    @property
    def text(self) -> str:
        """The reply's text emitted so far (after `flush`, all of it)."""
        return self._shown

    def push(self, token: int) -> str:
        """Take the next generated id; return the new text it completes ("" if none yet, or
        after a stop string ended the reply)."""
        if self.stopped:
            return ""
        self.token_ids.append(int(token))
        if token in self._tag_ids:
            self._done += self._decode(self._run) + self._tag_ids[token]
            self._run = []
            text = self._done
        else:
            self._run.append(int(token))
            text = self._done + self._decode(self._run)
        if text.endswith("\ufffd"):  # the last token ended inside a multi-byte character
            return ""
        return self._release(text, final=False)

    def flush(self) -> str:
        """The end of generation: the text still held back."""
        if self.stopped:
            return ""
        return self._release(self._done + self._decode(self._run), final=True)

    def _release(self, text: str, final: bool) -> str:
        end = len(text)
        if self.stop:
            start = max(0, len(self._shown) - max(len(s) for s in self.stop) + 1)
            hits = [i for i in (text.find(s, start) for s in self.stop) if i >= 0]
            if hits:
                end = min(hits)
                self.stopped = True
            elif not final:
                end -= self._stop_prefix(text)
        piece = text[len(self._shown) : end]
        self._shown += piece
        return piece

    def _stop_prefix(self, text: str) -> int:
        """Length of the longest end of `text` that begins some stop string."""
        best = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:k]):
                    best = k
                    break
        return best

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True) if ids else ""


@dataclass
class ChatReply:
    """One assistant reply.

    Attributes:
        text: the raw decoded reply, reasoning tags kept as text (`<think>…`), the stopping
            `<|im_end|>` excluded; equals the concatenation of the streamed pieces.
        thinking: the text inside `<think>…</think>` ("" if none).
        answer: the rest, `<answer>` tags removed (== `text` when the reply has no tags);
            this is what the history keeps.
        token_ids: generated ids, the stopping EOS excluded.
        finish_reason: "stop" (an EOS id was produced) or "length" (hit `max_new_tokens`).
        prompt_tokens: length of the rendered prompt in tokens.
        max_new_tokens: the token budget actually used (smaller than asked when the context
            window left less room).
        dropped_exchanges: how many of the oldest user/assistant exchanges the prompt left
            out to fit the context window (cumulative over the session).
    """

    text: str
    thinking: str
    answer: str
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    max_new_tokens: int = 0
    dropped_exchanges: int = 0


class ChatSession:
    """A multi-turn conversation with a causal LM, decoded by `GenerationEngine`.

    Each `reply` renders `[system] + history + [user turn]` with
    the chat template (`minigpt.tokenizer.render_prompt`), generates until
    `<|im_end|>` (or the tokenizer's EOS, or `max_new_tokens`), and appends the user message and
    the reply's *answer* to the history. Thinking (`<think>…</think>`) is returned and streamed
    but not kept in the history, as Qwen3 and DeepSeek-R1 do.

    Context window (`model.config.max_position_embeddings` positions, prompt and reply
    together): the oldest user/assistant exchanges are left out of the prompt (never the system
    message, never the current turn) until prompt length + R fits, where
    R = min(max_new_tokens, context // 2) is the room reserved for the reply. (Reserving all of
    a `max_new_tokens` as large as the context would leave no history at all.) The reply may
    then use every remaining position, up to `max_new_tokens`. Exchanges once left out stay out
    (the window only slides forward), though `history` still lists them. If the system message
    and the current turn alone leave fewer than R positions, the reply gets what is left.

    Args:
        model: a `MiniGPTForCausalLM` (or a PEFT model wrapping one), in eval mode.
        tokenizer: its tokenizer, with a chat template (ChatML) and `<|im_end|>`.
        system: optional system message.
        max_new_tokens: tokens per reply at most.
        temperature / top_k / top_p / repetition_penalty: sampling settings of
            `GenerationEngine.stream` (temperature 0 = greedy).
        dtype: engine compute dtype (None = the model's; torch.bfloat16; torch.int8).
        seed: if given, reply n is sampled with seed `seed + n`, so a session is reproducible.

    Raises:
        UserError: the tokenizer has no chat template, or the engine rejects the model/dtype.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        system: str | None = None,
        max_new_tokens: int = 256,
        temperature: float = 0.7,
        top_k: int = 50,
        top_p: float = 0.95,
        repetition_penalty: float = 1.0,
        dtype: torch.dtype | None = None,
        seed: int | None = None,
    ) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise UserError("the tokenizer has no chat template; chat needs one (train it with `minigpt tokenizer`)")
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_k = top_k
        self.top_p = top_p
        self.repetition_penalty = repetition_penalty
        self.seed = seed
        self.eos_token_ids = self._eos_ids(tokenizer)
        self.engine = GenerationEngine(model, eos_token_id=self.eos_token_ids, pad_token_id=tokenizer.pad_token_id, dtype=dtype)
        self.system: str | None = None
        self.set_system(system)
        self._turns: list[dict[str, str]] = []  # user, assistant, user, assistant, ...
        self._first = 0  # index of the first exchange still inside the context window
        self._replies = 0

    # ------------------------------------------------------------------ conversation state

    @property
    def history(self) -> list[dict[str, str]]:
        """The conversation as chat messages: the system message (if any), then every user
        message and assistant answer so far (including exchanges trimmed from the prompt)."""
        head = [{"role": "system", "content": self.system}] if self.system is not None else []
        return head + [dict(m) for m in self._turns]

    @property
    def context_limit(self) -> int:
        """Tokens the model can attend over: `model.config.max_position_embeddings`."""
        return int(self.model.config.max_position_embeddings)

    def reset(self) -> None:
        """Forget the conversation; the system message stays."""
        self._turns = []
        self._first = 0

    def set_system(self, text: str | None) -> None:
        """Set (or with None or "", remove) the system message; the conversation is kept."""
        if text is not None and not isinstance(text, str):
            raise UserError(f"system message must be a string, got {type(text).__name__}")
        self.system = text if text else None

    # ------------------------------------------------------------------ generation

    def reply(
        self,
        user_text: str,
        on_token: Callable[[str], None] | None = None,
        on_part: Callable[[str, str], None] | None = None,
    ) -> ChatReply:
        """Answer one user message, streaming the reply.

        Args:
            user_text: the user's message.
            on_token: called with each new piece of decoded text as it is generated; pieces
                are whole characters (a multi-byte character split over tokens is held back
                until complete) and concatenate to `ChatReply.text`.
            on_part: called with `(kind, text)`, kind "thinking" or "answer", as
                `ReasoningSplitter` classifies the pieces (tags removed).

        Returns:
            A `ChatReply`. The user message and the reply's answer are appended to the history
            only when generation finishes (an exception, e.g. Ctrl-C, leaves it unchanged).

        Raises:
            UserError: `user_text` is not a string, or the system message plus this message
                leave no room in the context window.
        """
        if not isinstance(user_text, str):
            raise UserError(f"user message must be a string, got {type(user_text).__name__}")
        prompt_ids, first, max_new = self._fit_prompt(user_text)
        seed = None if self.seed is None else self.seed + self._replies
        stream = self.engine.stream(
            prompt_ids,
            max_new_tokens=max_new,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            repetition_penalty=self.repetition_penalty,
            seed=seed,
        )
        splitter = ReasoningSplitter()
        decoder = ReplyDecoder(self.tokenizer)

        def emit(piece: str) -> None:
            if not piece:
                return
            if on_token is not None:
                on_token(piece)
            for kind, text in splitter.feed(piece):
                if on_part is not None:
                    on_part(kind, text)

        for token in stream:
            emit(decoder.push(token))
        emit(decoder.flush())
        text, ids = decoder.text, decoder.token_ids
        for kind, piece in splitter.close():
            if on_part is not None:
                on_part(kind, piece)

        self._turns.append({"role": "user", "content": user_text})
        self._turns.append({"role": "assistant", "content": splitter.answer})
        self._first = first
        self._replies += 1
        return ChatReply(
            text=text,
            thinking=splitter.thinking,
            answer=splitter.answer,
            token_ids=ids,
            finish_reason="length" if len(ids) >= max_new else "stop",
            prompt_tokens=len(prompt_ids),
            max_new_tokens=max_new,
            dropped_exchanges=first,
        )

    def render(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        """Token ids of `messages` plus the assistant generation prompt, through the project's
        one chat renderer (`minigpt.tokenizer.render_prompt`, equal to the chat template's ids)."""
        return render_prompt(self.tokenizer, [dict(m) for m in messages], where="chat")

    # ------------------------------------------------------------------ helpers

    def _fit_prompt(self, user_text: str) -> tuple[list[int], int, int]:
        """Prompt ids, index of the first exchange kept, and the reply's token budget.

        Finds the smallest k >= the current window start such that rendering
        `[system] + exchanges[k:] + [user turn]` leaves R = min(max_new_tokens, context // 2)
        positions; the prompt length does not grow with k (each exchange is whole messages), so
        a binary search works. The budget is then min(max_new_tokens, context - prompt length).
        """
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        head = [{"role": "system", "content": self.system}] if self.system is not None else []
        current = [{"role": "user", "content": user_text}]
        n_exchanges = len(self._turns) // 2
        limit = self.context_limit

        def render(k: int) -> list[int]:
            return self.render(head + self._turns[2 * k :] + current)

        reserve = min(self.max_new_tokens, max(1, limit // 2))

        def fits(ids: list[int]) -> bool:
            return len(ids) + reserve <= limit

        k = self._first
        ids = render(k)
        if not fits(ids):
            last = render(n_exchanges)
            if not fits(last):
                k, ids = n_exchanges, last
            else:
                lo, hi = k + 1, n_exchanges  # fits(render(hi)) holds
                while lo < hi:
                    mid = (lo + hi) // 2
                    if fits(render(mid)):
                        hi = mid
                    else:
                        lo = mid + 1
                k, ids = lo, render(lo)
        room = limit - len(ids)
        if room < 1:
            what = "the system message and this message take" if self.system is not None else "this message takes"
            raise UserError(
                f"{what} {len(ids)} tokens but the model's context is {limit} tokens "
                "(max_position_embeddings): shorten the message"
            )
        return ids, k, min(self.max_new_tokens, room)

    @staticmethod
    def _eos_ids(tokenizer) -> list[int]:
        """[id of <|im_end|>, tokenizer.eos_token_id] (whichever exist, without repeats).

        Raises:
            UserError: the tokenizer has neither.
        """
        ids: list[int] = []
        im_end = tokenizer.convert_tokens_to_ids(IM_END)
        if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
            ids.append(im_end)
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
            ids.append(int(tokenizer.eos_token_id))
        if not ids:
            raise UserError(f"the tokenizer has no {IM_END} token and no eos token: a reply could never stop")
        return ids


def model_reply_budget(net, asked: int, fallback: int) -> int:
    """Tokens a reply may take: `asked` when > 0, else the model's own
    `generation_config.max_new_tokens` (set by `minigpt sft` from its training replies), else
    `fallback`.

    Raises:
        UserError: `asked` < 0.
    """
    if asked < 0:
        raise UserError(f"--sampling.max_new_tokens: must be ≥ 1 (0 = the model's own reply length), got {asked}")
    if asked:
        return asked
    own = getattr(getattr(net, "generation_config", None), "max_new_tokens", None)
    return int(own) if isinstance(own, int) and own > 0 else fallback
