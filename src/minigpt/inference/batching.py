"""Continuous batching: requests join and leave one running batch at token granularity.

A static batch (`GenerationEngine.generate`) decodes until its slowest row ends, and a request
that arrives meanwhile waits for the whole batch. Continuous batching (Yu et al. 2022, "Orca: A
Distributed Serving System for Transformer-Based Generative Models", OSDI, iteration-level
scheduling) instead runs one decoding step at a time over whatever requests are in flight:

* the KV cache is allocated once, `(L, 2, max_batch_size, K, max_length, D)`; each running
  request owns one row of it (a *slot*) from its prefill to its last token;
* between two steps, waiting requests are prefilled into free slots (those arriving together
  in one right-padded forward), and finished or cancelled ones give their slot back;
* a decoding step feeds every running row its last token at that row's own position (rows are
  at different lengths) through the engine's per-layer forward (`GenerationEngine.forward_layers`
  with a `(B,)` tensor of positions), so LoRA adapters and low-precision weights behave exactly
  as in `generate`.

`ContinuousBatcher` runs that loop on a background thread and reports tokens through
callbacks, so any front end (the HTTP server, a benchmark, a test) can drive it. Prompts are
prefilled whole between steps (no chunked prefill): a very long prompt delays the next step
of the others by its prefill time.

Shapes: B = rows in the step (the highest busy slot + 1), S = max_length, V = vocab_size.
"""

from __future__ import annotations

import collections
import itertools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from minigpt.errors import SEED_MAX, SEED_MIN, UserError
from minigpt.inference.engine import GenerationEngine
from minigpt.inference.sampling import filter_logits


class QueueFull(RuntimeError):
    """`ContinuousBatcher.submit` refused a request: `max_queue` requests are already waiting
    for a slot. A server answers 503 and the client retries later."""


@dataclass
class BatchRequest:
    """One generation request for `ContinuousBatcher.submit`.

    Attributes:
        prompt_ids: the prompt's token ids (non-empty, inside the vocabulary).
        max_new_tokens: >= 1 tokens generated at most; prompt + this must fit `max_length`.
        temperature: 0 = greedy, else the softmax temperature.
        top_k / top_p: filters of `filter_logits` (0 / 1.0 = off).
        seed: seeds this request's own `torch.Generator`, so its samples do not depend on
            which other requests share the batch; None draws from the batcher's generator.
            An integer in [-2**63, 2**64 - 1] (what `torch.Generator.manual_seed` takes).
        presence_penalty / frequency_penalty: in [-2, 2]; subtracted from the logit of every
            token already generated for this request, once (presence) or once per occurrence
            (frequency), before temperature and filtering, as OpenAI's API defines them.
        logit_bias: token id -> bias in [-100, 100] added to that token's logit at every step.
        on_token: called on the batcher's thread with each generated id (EOS ids excluded).
            Must be quick (e.g. put it on a queue); an exception it raises cancels the request.
        on_finish: called once, last, with the reason: "stop" (an EOS id was produced),
            "length" (`max_new_tokens` reached), "cancelled" (`cancel`), or "error: ..." (the
            step failed; the message says why).
    """

    prompt_ids: Sequence[int]
    max_new_tokens: int
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] | None = None
    on_token: Callable[[int], None] = lambda token: None
    on_finish: Callable[[str], None] = lambda reason: None
    id: int = field(default=-1, init=False)


@dataclass
class _Slot:
    """A request while it owns a row of the cache."""

    request: BatchRequest
    generator: torch.Generator | None
    generated: int = 0
    counts: torch.Tensor | None = None
    """`(V,)` occurrences of each id generated so far; kept only under a presence or frequency penalty."""


class ContinuousBatcher:
    """Serve many generation requests at once from one preallocated KV cache (see the module doc).

    Args:
        engine: a `GenerationEngine` (its model, EOS ids, pad id and compute dtype are used).
            The model's weights must not change while the batcher runs.
        max_batch_size: cache rows, i.e. requests decoded together at most.
        max_queue: requests that may wait for a free row; `submit` raises `QueueFull` beyond.
        max_length: positions per row (prompt + completion); None = the model's
            `max_position_embeddings` (also the upper bound).
        seed: seeds the generator of requests that bring no seed of their own.
        prefill_tokens: padded prompt tokens prefilled in one forward at most; requests that
            arrive together are prefilled together (a longer prompt than this runs alone).

    Memory: the cache holds `2 · L · max_batch_size · K · max_length · D` numbers of the
    compute dtype, allocated at construction.

    Raises:
        UserError: `max_batch_size` or `max_queue` < 1, or `max_length` outside
            [2, max_position_embeddings].
    """

    def __init__(
        self,
        engine: GenerationEngine,
        max_batch_size: int = 64,
        max_queue: int = 256,
        max_length: int | None = None,
        seed: int | None = None,
        prefill_tokens: int = 8192,
    ) -> None:
        cfg = engine.config
        limit = int(cfg.max_position_embeddings)
        max_length = limit if max_length is None else int(max_length)
        if not 2 <= max_length <= limit:
            raise UserError(f"max_length must be in [2, {limit}] (max_position_embeddings), got {max_length}")
        if max_batch_size < 1 or max_queue < 1:
            raise UserError(f"max_batch_size and max_queue must be >= 1, got {max_batch_size} and {max_queue}")
        self.engine = engine
        self.max_batch_size = int(max_batch_size)
        self.max_queue = int(max_queue)
        self.max_length = max_length
        self.prefill_tokens = int(prefill_tokens)
        model = engine.model
        device = engine.device
        self._dtype = engine._compute_dtype()
        self._cache = torch.zeros(
            len(model.model.layers), 2, self.max_batch_size, engine.num_kv_heads, max_length, engine.head_dim,
            dtype=self._dtype, device=device,
        )
        with torch.inference_mode():
            positions = torch.arange(max_length, device=device)[None]
            cos, sin = model.model.rotary_emb(torch.empty(0, dtype=model.model.embed_tokens.weight.dtype, device=device), positions)
        self._cos, self._sin = cos[0].clone(), sin[0].clone()  # (S, D)
        self._eos = set(engine.eos_token_ids)
        self._pos = torch.zeros(self.max_batch_size, dtype=torch.long, device=device)  # next write slot per row
        self._last = torch.full((self.max_batch_size,), engine.pad_token_id, dtype=torch.long, device=device)
        self._slots: list[_Slot | None] = [None] * self.max_batch_size
        self._waiting: collections.deque[BatchRequest] = collections.deque()
        self._cancelled: set[int] = set()
        self._ids = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._generator = torch.Generator(device=device)
        self._generator.manual_seed(torch.initial_seed() if seed is None else int(seed))
        self.steps = 0
        """Decoding steps run so far."""
        self.tokens_generated = 0
        """Tokens produced so far (all requests)."""
        self.failure: str | None = None
        """Why the loop stopped for good (None while it runs or after a clean `close`)."""
        self.restarts = 0
        """Times the loop was restarted after failing."""
        self.max_restarts = 3
        self.restart_window = 60.0

    # ------------------------------------------------------------------ public API

    def start(self) -> ContinuousBatcher:
        """Start the background thread (idempotent); returns self."""
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="minigpt-batcher", daemon=True)
                self._thread.start()
        return self

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop the loop: every waiting and running request finishes with "cancelled"."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, request: BatchRequest) -> int:
        """Queue `request`; returns its id (for `cancel`).

        Raises:
            UserError: an empty prompt, an id outside the vocabulary, `max_new_tokens` < 1,
                prompt + `max_new_tokens` beyond `max_length`, or invalid sampling settings.
            QueueFull: `max_queue` requests are already waiting.
            RuntimeError: the batcher is closed.
        """
        self._check(request)
        with self._cond:
            if self._closed:
                raise RuntimeError(f"the batcher stopped ({self.failure})" if self.failure else "the batcher is closed")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are already waiting (max_queue {self.max_queue})")
            request.id = next(self._ids)
            self._waiting.append(request)
            self._cond.notify_all()
        return request.id

    def cancel(self, request_id: int) -> None:
        """Stop a request: it finishes with "cancelled" and frees its slot before the next step.
        Unknown or finished ids are ignored."""
        with self._cond:
            self._cancelled.add(request_id)
            self._cond.notify_all()

    @property
    def num_running(self) -> int:
        """Requests holding a cache row."""
        return sum(s is not None for s in self._slots)

    @property
    def num_waiting(self) -> int:
        """Requests queued for a free row."""
        return len(self._waiting)

    # ------------------------------------------------------------------ checks

    def _check(self, r: BatchRequest) -> None:
        ids = list(r.prompt_ids)
        if not ids:
            raise UserError("the prompt has no tokens")
        vocab = self.engine.config.vocab_size
        if any(not isinstance(t, int) or not 0 <= t < vocab for t in ids):
            raise UserError(f"prompt token ids must be integers in [0, {vocab})")
        if not isinstance(r.max_new_tokens, int) or r.max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be a positive integer, got {r.max_new_tokens!r}")
        if len(ids) + r.max_new_tokens > self.max_length:
            raise UserError(
                f"the prompt has {len(ids)} tokens and max_tokens is {r.max_new_tokens}: together "
                f"{len(ids) + r.max_new_tokens}, beyond the context of {self.max_length} tokens"
            )
        if not r.temperature >= 0:
            raise UserError(f"temperature must be >= 0, got {r.temperature}")
        if not isinstance(r.top_k, int) or r.top_k < 0:
            raise UserError(f"top_k must be an integer >= 0, got {r.top_k!r}")
        if not 0 < r.top_p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {r.top_p}")
        if r.seed is not None and (isinstance(r.seed, bool) or not isinstance(r.seed, int) or not SEED_MIN <= r.seed <= SEED_MAX):
            raise UserError(f"seed must be an integer in [{SEED_MIN}, {SEED_MAX}], got {r.seed!r}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(r, name)
            if not -2 <= value <= 2:
                raise UserError(f"{name} must be in [-2, 2], got {value!r}")
        for token, bias in (r.logit_bias or {}).items():
            if not isinstance(token, int) or not 0 <= token < vocab:
                raise UserError(f"logit_bias: token ids must be integers in [0, {vocab}), got {token!r}")
            if not -100 <= bias <= 100:
                raise UserError(f"logit_bias: biases must be in [-100, 100], got {bias!r} for token {token}")
        r.prompt_ids = ids

    # ------------------------------------------------------------------ the loop

    @property
    def alive(self) -> bool:
        """False once the loop has failed for good (`failure` says why) or the batcher is closed."""
        return self.failure is None and not self._closed

    def _run(self) -> None:
        """The thread's body: `_loop`, restarted after a failure of the loop itself (a failed
        step or prefill is handled inside it) with every request it held ended by the error.
        After `max_restarts` failures within `restart_window` seconds the batcher gives up:
        `failure` holds the reason, `alive` is False and `submit` refuses new requests."""
        import time

        failures: list[float] = []
        while True:
            try:
                self._loop()
                return
            except BaseException as e:  # the loop itself failed: nobody may wait forever
                reason = f"error: {type(e).__name__}: {e}"
                now = time.monotonic()
                failures = [t for t in failures if now - t < self.restart_window] + [now]
                give_up = len(failures) > self.max_restarts or not isinstance(e, Exception)
                with self._cond:
                    if give_up:
                        self.failure = reason
                        self._closed = True
                        waiting, self._waiting = list(self._waiting), collections.deque()
                    else:
                        waiting = []
                    self._cancelled = set()
                for r in waiting:
                    self._notify_finish(r, reason)
                for slot, state in enumerate(self._slots):
                    if state is not None:
                        self._release(slot, reason)
                if give_up:
                    return
                self.restarts += 1

    def _loop(self) -> None:
        with self.engine._context():
            linears = self.engine._prepared_linears(self._dtype)
            while True:
                with self._cond:
                    while not self._closed and not self._waiting and not self._cancelled and self.num_running == 0:
                        self._cond.wait()
                    if self._closed:
                        break
                    cancelled, self._cancelled = self._cancelled, set()
                    for r in [r for r in self._waiting if r.id in cancelled]:
                        self._waiting.remove(r)
                        self._notify_finish(r, "cancelled")
                    admitted = []
                    for slot in range(self.max_batch_size):
                        if not self._waiting:
                            break
                        if self._slots[slot] is None:
                            request = self._waiting.popleft()
                            try:
                                generator = self._request_generator(request)
                            except Exception as e:  # this request alone fails
                                self._notify_finish(request, f"error: {type(e).__name__}: {e}")
                                continue
                            self._slots[slot] = _Slot(request, generator)
                            admitted.append(slot)
                for slot, state in enumerate(self._slots):
                    if state is not None and state.request.id in cancelled:
                        self._release(slot, "cancelled")
                admitted = [slot for slot in admitted if self._slots[slot] is not None]
                if admitted:
                    self._prefill(admitted, linears)
                try:
                    if self.num_running:
                        self._step(linears)
                except Exception as e:  # a failed step must not leave callers waiting forever
                    for slot, state in enumerate(self._slots):
                        if state is not None:
                            self._release(slot, f"error: {type(e).__name__}: {e}")
        with self._cond:
            waiting, self._waiting = list(self._waiting), collections.deque()
        for r in waiting:
            self._notify_finish(r, "cancelled")
        for slot, state in enumerate(self._slots):
            if state is not None:
                self._release(slot, "cancelled")

    def _request_generator(self, request: BatchRequest) -> torch.Generator | None:
        if request.seed is None:
            return None
        gen = torch.Generator(device=self.engine.device)
        gen.manual_seed(int(request.seed))
        return gen

    def _prefill(self, slots: list[int], linears: dict) -> None:
        """Run the prompts of the requests newly in `slots` into their cache rows and emit each
        one's first token.

        Prompts are sorted by length and run together in groups of at most `prefill_tokens`
        padded tokens: each group is one right-padded forward (causal attention needs no mask:
        a real token never sees the padding after it) into a scratch cache, whose first P
        positions are then copied into the group's rows; each row's logits are read at its own
        last prompt token. Padding left in a row beyond its prompt is hidden by the decoding
        mask and overwritten as the reply grows. A group whose forward fails ends its own
        requests with the error; the others go on."""
        order = sorted(slots, key=lambda s: len(self._slots[s].request.prompt_ids))
        groups: list[list[int]] = []
        for slot in order:  # lengths ascend, so the newest slot sets the group's padded width
            n = len(self._slots[slot].request.prompt_ids)
            if groups and (len(groups[-1]) + 1) * n <= self.prefill_tokens:
                groups[-1].append(slot)
            else:
                groups.append([slot])
        for group in groups:
            try:
                self._prefill_group(group, linears)
            except Exception as e:  # the requests of this group alone fail
                for slot in group:
                    if self._slots[slot] is not None:
                        self._release(slot, f"error: {type(e).__name__}: {e}")

    def _prefill_group(self, group: list[int], linears: dict) -> None:
        """Prefill one group of `_prefill` (right-padded, one forward) and emit its first tokens."""
        model = self.engine.model
        device = self._pos.device
        prompts = [self._slots[s].request.prompt_ids for s in group]
        p = max(map(len, prompts))
        ids = torch.full((len(group), p), self.engine.pad_token_id, dtype=torch.long, device=device)
        for r, prompt in enumerate(prompts):
            ids[r, : len(prompt)] = torch.tensor(prompt, dtype=torch.long, device=device)
        lengths = torch.tensor([len(x) for x in prompts], device=device)
        scratch = self._cache.new_zeros(self._cache.shape[0], 2, len(group), *self._cache.shape[3:4], p,
                                        self._cache.shape[-1])  # (L, 2, G, K, P, D)
        window = getattr(model.config, "sliding_window", None)
        prefill_mask = None
        if window and p > window:  # causal within the window (right padding needs nothing more)
            i = torch.arange(p, device=device)
            prefill_mask = ((i[None] <= i[:, None]) & (i[None] > i[:, None] - window))[None, None]  # (1, 1, P, P)
        logits = self.engine.forward_layers(
            model.model.embed_tokens(ids), self._cos[None, :p], self._sin[None, :p], scratch, 0, prefill_mask, linears,
            last_only=lengths - 1,
        )  # (G, V)
        index = torch.tensor(group, device=device)
        self._cache[:, :, index, :, :p] = scratch
        self._pos[index] = lengths
        self._advance(group, logits.float())

    def _step(self, linears: dict) -> None:
        """One decoding step over rows `0..B-1`, B = the highest busy slot + 1."""
        busy = [i for i, s in enumerate(self._slots) if s is not None]
        b = busy[-1] + 1
        model = self.engine.model
        pos = self._pos[:b].clone()  # (B,) idle rows sit at 0 and feed the pad id
        idle = torch.tensor([s is None for s in self._slots[:b]], device=pos.device)
        pos.masked_fill_(idle, 0)
        tokens = self._last[:b].masked_fill(idle, self.engine.pad_token_id)
        end = int(pos.max()) + 1
        slots = torch.arange(end, device=pos.device)[None]  # (1, end): slot index = position here
        mask = slots <= pos[:, None]
        window = getattr(model.config, "sliding_window", None)
        if window:  # sliding-window attention: positions pos-W+1..pos only
            mask = mask & (slots > pos[:, None] - window)
        mask = mask[:, None, None]  # (B, 1, 1, end)
        x = model.model.embed_tokens(tokens[:, None])  # (B, 1, C)
        logits = self.engine.forward_layers(
            x, self._cos[pos][:, None], self._sin[pos][:, None], self._cache[:, :, :b], pos, mask, linears, last_only=False
        )  # (B, V)
        self._pos[:b] += 1
        self.steps += 1
        self._advance(busy, logits.float()[busy])

    def _adjust(self, slots: list[int], logits: torch.Tensor) -> torch.Tensor:
        """`logits` `(len(slots), V)` with each request's logit bias and presence / frequency
        penalties applied (OpenAI's definition: `logit[j] -= count[j] * frequency +
        (count[j] > 0) * presence`, counts over the tokens generated so far)."""
        for i, slot in enumerate(slots):
            r = self._slots[slot].request
            state = self._slots[slot]
            if r.logit_bias:
                ids = torch.tensor(list(r.logit_bias), dtype=torch.long, device=logits.device)
                logits[i, ids] += torch.tensor(list(r.logit_bias.values()), dtype=logits.dtype, device=logits.device)
            if state.counts is not None:
                logits[i] -= state.counts * r.frequency_penalty + (state.counts > 0).to(logits.dtype) * r.presence_penalty
        return logits

    def _advance(self, slots: list[int], logits: torch.Tensor) -> None:
        """Sample the next token of each slot from its `(len(slots), V)` logits and deliver it."""
        tokens = self._sample(slots, self._adjust(slots, logits)).tolist()
        for slot, token in zip(slots, tokens):
            state = self._slots[slot]
            if token in self._eos:
                self._release(slot, "stop")
                continue
            if state.request.presence_penalty or state.request.frequency_penalty:
                if state.counts is None:
                    state.counts = torch.zeros(logits.shape[-1], dtype=logits.dtype, device=logits.device)
                state.counts[token] += 1
            state.generated += 1
            self.tokens_generated += 1
            try:
                state.request.on_token(token)
            except Exception:  # the consumer is gone: stop generating for it
                self._release(slot, "cancelled")
                continue
            if state.generated >= state.request.max_new_tokens:
                self._release(slot, "length")
            else:
                self._last[slot] = token

    def _sample(self, slots: list[int], logits: torch.Tensor) -> torch.Tensor:
        """Next token per row of `(n, V)` logits, each row with its own request's settings.

        Rows sharing (temperature, top_k, top_p) are filtered together by `filter_logits`;
        each seeded row draws its uniform number from its own generator (inverse CDF, as
        `minigpt.inference.sampling.draw`)."""
        out = torch.empty(len(slots), dtype=torch.long, device=logits.device)
        groups: dict[tuple, list[int]] = {}
        for i, slot in enumerate(slots):
            r = self._slots[slot].request
            groups.setdefault((float(r.temperature), r.top_k, float(r.top_p)), []).append(i)
        for (temperature, top_k, top_p), rows in groups.items():
            idx = torch.tensor(rows, device=logits.device)
            part = logits[idx]
            if temperature == 0:
                out[idx] = part.argmax(-1)
                continue
            cdf = filter_logits(part, temperature, top_k, top_p).softmax(-1).cumsum(-1)  # (n, V)
            u = torch.empty(len(rows), 1, dtype=cdf.dtype, device=cdf.device)
            for j, i in enumerate(rows):
                gen = self._slots[slots[i]].generator or self._generator
                u[j] = torch.rand(1, generator=gen, device=cdf.device, dtype=cdf.dtype)
            picked = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_(max=cdf.shape[-1] - 1)
            out[idx] = picked.squeeze(-1)
        return out

    def _release(self, slot: int, reason: str) -> None:
        state = self._slots[slot]
        self._slots[slot] = None
        self._pos[slot] = 0
        self._last[slot] = self.engine.pad_token_id
        if state is not None:
            self._notify_finish(state.request, reason)

    @staticmethod
    def _notify_finish(request: BatchRequest, reason: str) -> None:
        try:
            request.on_finish(reason)
        except Exception:  # a consumer's failure must not stop the loop
            pass


__all__ = ["BatchRequest", "ContinuousBatcher", "QueueFull"]
