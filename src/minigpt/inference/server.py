"""An OpenAI-compatible HTTP server over continuous batching (FastAPI).

Endpoints, as OpenAI's API defines them (https://platform.openai.com/docs/api-reference):

* `POST /v1/chat/completions`: messages in, a reply out, streamed as server-sent events
  (`"stream": true`) or whole. `temperature`, `top_p`, `max_tokens` (or
  `max_completion_tokens`), `stop`, `seed`, `n`, and `top_k` as an extension. A reasoning
  model's thinking (`<think>…</think>`) goes in `reasoning_content`, apart from `content`, as
  DeepSeek's API and minimind's server return it.
* `POST /v1/completions`: raw text (or token ids) in, its continuation out.
* `GET /v1/models`, `GET /health`, and the chat page at `/`.

Every response carries `usage` (prompt, completion and total tokens); a stream carries it on
the chunk that finishes each choice, and in a last chunk without choices when the request asks
`stream_options: {"include_usage": true}`.

Errors have OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`: 400 for a
malformed body (bad JSON, wrong types, an empty message list, a context overflow), 401 for a
missing or wrong API key, 404 for an unknown model, 503 when the waiting queue is full.

Text a client sends cannot open a new turn: message contents are tokenized with control tokens
kept as plain text (`minigpt.tokenizer.chat.render_prompt_literal`). A client that disconnects
has its request cancelled, which frees its cache slot before the next decoding step.
"""

from __future__ import annotations

import asyncio
import html
import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from minigpt.errors import UserError
from minigpt.errors import SEED_MAX, SEED_MIN
from minigpt.inference.batching import BatchRequest, ContinuousBatcher, QueueFull
from minigpt.inference.chat import ReasoningSplitter, ReplyDecoder
from minigpt.inference.web import MarkdownWorker, chat_page
from minigpt.tokenizer.chat import render_prompt_literal


INT32_MAX = 2**31 - 1
STOP_MAX_CHARS = 1024
"""Longest stop sequence: each one is looked for in the reply at every decoded token."""
RENDER_MAX_CHARS = 100_000
"""Longest text `POST /render` takes (the chat page sends one reply at a time)."""
RENDER_SECONDS = 2.0
"""Time budget of one `/render`: beyond it the text comes back escaped, not rendered."""
DEFAULT_MAX_REQUEST_BYTES = 4 * 2**20
"""Largest request body by default (`--max_request_bytes`); larger is a 413 before parsing."""

# --------------------------------------------------------------------------------------------
# Request bodies (pydantic checks them; a failure becomes a 400 in OpenAI's error shape).
# --------------------------------------------------------------------------------------------


def _check_utf8(value: Any) -> Any:
    """`value` unchanged, or a ValueError when a string in it holds a lone surrogate
    (`"\\ud800"` is valid JSON but no text: it cannot be encoded, so it cannot be tokenized)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"the text holds a lone surrogate ({value[e.start:e.end]!r} at character {e.start}); "
                             "send valid Unicode") from None
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_utf8(item)
    return value


class _Body(BaseModel):
    # Unknown fields (`user`, `logprobs`, ...) are accepted and ignored, as most
    # OpenAI-compatible servers do, so that clients written for OpenAI keep working.
    model_config = ConfigDict(extra="ignore")

    @field_validator("*", mode="after")
    @classmethod
    def _valid_text(cls, v):
        return _check_utf8(v)


class TextPart(_Body):
    """A text part of a message's content list (`{"type": "text", "text": ...}`)."""

    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    """One message of a conversation. `developer` is read as `system`; content may be a string
    or a list of text parts; an assistant message's `reasoning_content` is ignored (earlier
    thinking is never fed back, as in DeepSeek's API)."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(_Body):
    """`stream_options`: `include_usage` adds a last chunk with no choices and the usage."""

    include_usage: bool = False


class _Sampling(_Body):
    """The sampling fields both endpoints share (OpenAI's names, plus `top_k`)."""

    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, le=INT32_MAX)
    max_tokens: int | None = Field(None, ge=1, le=INT32_MAX)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX - 16)  # choice i is seeded seed + i, i < n <= 16
    n: int = Field(1, ge=1, le=16)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[int, float] | None = Field(None, max_length=1024)

    @field_validator("logit_bias")
    @classmethod
    def _bias_range(cls, v):
        for token, bias in (v or {}).items():
            if not -100 <= bias <= 100:
                raise ValueError(f"biases must be in [-100, 100], got {bias} for token {token}")
            if token < 0:
                raise ValueError(f"token ids must be >= 0, got {token}")
        return v
    stream: bool = False
    stream_options: StreamOptions | None = None

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, v):
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(len(s) > STOP_MAX_CHARS for s in ([v] if isinstance(v, str) else v or [])):
            raise ValueError(f"a stop sequence is at most {STOP_MAX_CHARS} characters")  # each is searched at every token
        return v

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatCompletionRequest(_Sampling):
    """Body of `POST /v1/chat/completions`."""

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=INT32_MAX)


class CompletionRequest(_Sampling):
    """Body of `POST /v1/completions`: `prompt` is a string, a list of strings, a list of token
    ids, or a list of lists of ids (one choice set per prompt)."""

    model: str | None = None
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1, le=INT32_MAX)
    echo: bool = False


class RenderRequest(_Body):
    """Body of `POST /render` (the chat page's Markdown rendering)."""

    text: str = Field(max_length=RENDER_MAX_CHARS)


# --------------------------------------------------------------------------------------------
# Errors in OpenAI's shape.
# --------------------------------------------------------------------------------------------


class APIError(Exception):
    """An error answered as `{"error": {...}}` with an HTTP status."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        headers = {"Retry-After": "1"} if self.status == 503 else None
        return JSONResponse(body, status_code=self.status, headers=headers)


def _validation_error(exc: RequestValidationError) -> APIError:
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        return APIError(400, f"the request body is not valid JSON: {first.get('msg')}", code="invalid_json")
    where = ".".join(loc) or "body"
    return APIError(400, f"{where}: {first.get('msg')}", param=where or None, code="invalid_value")


# --------------------------------------------------------------------------------------------
# The app.
# --------------------------------------------------------------------------------------------


@dataclass
class _Choice:
    """What one choice produced."""

    text: str = ""
    thinking: str = ""
    answer: str = ""
    completion_tokens: int = 0
    finish_reason: str = "stop"


class _Job:
    """One request inside the batcher, seen from the event loop: tokens arrive on an asyncio
    queue (put there thread-safely by the batcher's callbacks)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()
        self.loop = loop
        self.id: int | None = None

    def on_token(self, token: int) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, ("token", token))

    def on_finish(self, reason: str) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, ("finish", reason))


class OpenAIServer:
    """The serving state behind the FastAPI app: the model's tokenizer, the batcher, the name.

    Args:
        batcher: a `ContinuousBatcher` (started and closed with the app).
        tokenizer: the model's tokenizer (with a ChatML chat template for the chat endpoint).
        model_name: the id clients pass as `model` (also listed by `/v1/models`).
        api_key: when set, `/v1/*` requires `Authorization: Bearer <api_key>`.
        default_max_tokens: a chat reply's token budget when the request names none
            (None = what the context leaves after the prompt).
    """

    def __init__(self, batcher: ContinuousBatcher, tokenizer, model_name: str, api_key: str | None = None,
                 default_max_tokens: int | None = None) -> None:
        self.batcher = batcher
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.api_key = api_key
        self.default_max_tokens = default_max_tokens
        self.created = int(time.time())
        self.max_token_bytes = _max_token_bytes(tokenizer)

    def check_length(self, texts: list[str], param: str) -> None:
        """400 (`context_length_exceeded`) without tokenizing when `texts` hold more UTF-8 bytes
        than `max_length` tokens can cover (no token is longer than `max_token_bytes` bytes),
        so an oversized prompt costs no tokenizer time."""
        size = sum(len(t.encode("utf-8")) for t in texts)
        if size > self.batcher.max_length * self.max_token_bytes:
            raise APIError(400, f"the prompt has {size} bytes: more than this model's context of "
                           f"{self.batcher.max_length} tokens can hold", param=param, code="context_length_exceeded")

    # ------------------------------------------------------------------ helpers

    def check_model(self, name: str | None) -> None:
        """404 (`model_not_found`) unless `name` is None or the served model's id."""
        if name is not None and name != self.model_name:
            raise APIError(404, f"The model `{name}` does not exist; this server serves `{self.model_name}`",
                           param="model", code="model_not_found")

    def budget(self, prompt_len: int, asked: int | None, default: int | None) -> int:
        """The completion's token budget, or a 400 when the prompt and it overflow the context."""
        limit = self.batcher.max_length
        if asked is None:
            room = limit - prompt_len
            asked = room if default is None else min(default, room)
            if asked < 1:
                raise APIError(400, f"the prompt has {prompt_len} tokens; the context is {limit} tokens and "
                               "leaves no room for a reply", param="messages", code="context_length_exceeded")
            return asked
        if prompt_len + asked > limit:
            raise APIError(400, f"This model's maximum context length is {limit} tokens. However, you requested "
                           f"{prompt_len + asked} tokens ({prompt_len} in the prompt, {asked} for the completion).",
                           param="max_tokens", code="context_length_exceeded")
        return asked

    def submit(self, prompt_ids: list[int], max_tokens: int, body: _Sampling, n: int) -> list[_Job]:
        """Queue `n` requests for one prompt (choice i seeded `seed + i`); 503 when the queue is
        full (any already queued are cancelled)."""
        loop = asyncio.get_running_loop()
        jobs: list[_Job] = []
        try:
            for i in range(n):
                job = _Job(loop)
                job.id = self.batcher.submit(BatchRequest(
                    prompt_ids, max_tokens, temperature=body.temperature, top_k=body.top_k, top_p=body.top_p,
                    seed=None if body.seed is None else body.seed + i, presence_penalty=body.presence_penalty,
                    frequency_penalty=body.frequency_penalty, logit_bias=body.logit_bias,
                    on_token=job.on_token, on_finish=job.on_finish,
                ))
                jobs.append(job)
        except QueueFull as e:
            self.cancel(jobs)
            raise APIError(503, f"the server is busy ({e}); retry later", type="server_overloaded", code="queue_full") from None
        except UserError as e:
            self.cancel(jobs)
            param = next((p for p in ("logit_bias", "seed", "presence_penalty", "frequency_penalty") if str(e).startswith(p)), None)
            raise APIError(400, str(e), param=param) from None
        except RuntimeError as e:
            self.cancel(jobs)
            raise APIError(503, f"the server cannot take requests: {e}", type="server_error", code="unavailable") from None
        return jobs

    def cancel(self, jobs: list[_Job]) -> None:
        """Cancel every job still running (finished ones are skipped; cancelling twice is harmless)."""
        for job in jobs:
            if job.id is not None:
                self.batcher.cancel(job.id)

    async def pieces(self, job: _Job, stops: list[str], choice: _Choice) -> AsyncIterator[str]:
        """Text pieces of one job as they are decoded; fills `choice` (finish reason, token
        count) on the way. A stop string cancels the job (its slot is freed at once)."""
        decoder = ReplyDecoder(self.tokenizer, stops)
        while True:
            kind, value = await job.queue.get()
            if kind == "token":
                choice.completion_tokens += 1
                piece = decoder.push(value)
                if piece:
                    yield piece
                if decoder.stopped:
                    self.batcher.cancel(job.id)
                    choice.finish_reason = "stop"
                    job.id = None
                    break
                continue
            if value.startswith("error"):
                raise APIError(500, f"generation failed: {value}", type="server_error")
            choice.finish_reason = "length" if value == "length" else "stop"
            job.id = None
            piece = decoder.flush()
            if piece:
                yield piece
            break
        choice.text = decoder.text

    def usage(self, prompt_tokens: int, choices: list[_Choice]) -> dict[str, int]:
        """OpenAI's `usage` object: prompt tokens (each prompt once, whatever `n`), and the
        completion tokens of every choice so far."""
        completion = sum(c.completion_tokens for c in choices)
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]
"""The `Host` names a server bound to a loopback address answers by default."""


def default_allowed_hosts(host: str) -> list[str]:
    """The `Host` header values `serve` accepts when `--allowed_hosts` is not given: the
    loopback names when `host` is a loopback address (a page from another site that rebinds its
    DNS name to 127.0.0.1 still sends its own name, and is refused), else any ("*")."""
    import ipaddress

    if host == "localhost":
        return list(LOOPBACK_HOSTS)
    try:
        return list(LOOPBACK_HOSTS) if ipaddress.ip_address(host.strip("[]")).is_loopback else ["*"]
    except ValueError:
        return ["*"]


class BodyLimit:
    """ASGI middleware: a request body larger than `max_bytes` is answered 413 before any of
    it is parsed (at once from `Content-Length`; for a chunked body, as soon as the bytes
    received pass the limit)."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, int(max_bytes)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        too_large = APIError(413, f"the request body is larger than the server's limit of {self.max_bytes} bytes "
                                  "(--max_request_bytes)", code="request_too_large")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await too_large.response()(scope, receive, send)
            return
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # An HTTPException passes through FastAPI's body parsing (anything else would
                    # become "error parsing the body") to the app's handler: a 413.
                    raise _BodyTooLarge(413, too_large.message)
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await too_large.response()(scope, receive, send)


class _BodyTooLarge(StarletteHTTPException):
    """A chunked body passed `BodyLimit`'s limit while the app was reading it."""


def create_app(server: OpenAIServer, allowed_hosts: list[str] | None = None,
               max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, on_failure=None) -> FastAPI:
    """The FastAPI application of `server` (its batcher starts and stops with the app).

    Args:
        server: the serving state.
        allowed_hosts: `Host` header values answered (Starlette's `TrustedHostMiddleware`;
            `*.example.com` patterns allowed); others get 400. None = any.
        max_request_bytes: larger bodies get 413 before parsing.
        on_failure: called once (on the event loop) if the batcher stops for good, e.g. to shut
            the server down; `/health` answers 503 from then on either way.

    Tokenizing and chat rendering run on worker threads and Markdown rendering in a child
    process (`MarkdownWorker`), never on the event loop, so one large request cannot stall the
    others. When `server.api_key` is set,
    `/openapi.json` and `/docs` are off and `/render` needs the key too.

    Run it with uvicorn: `uvicorn.run(create_app(server), host=..., port=...)`."""
    from contextlib import asynccontextmanager

    from starlette.concurrency import run_in_threadpool
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server.batcher.start()
        watch = asyncio.create_task(_watch_batcher(server.batcher, on_failure))
        try:
            yield
        finally:
            watch.cancel()
            await renderer.close()
            server.batcher.close()

    public = server.api_key is None
    app = FastAPI(title="minigpt", lifespan=lifespan, docs_url="/docs" if public else None, redoc_url=None,
                  openapi_url="/openapi.json" if public else None)
    app.state.server = server
    app.add_middleware(BodyLimit, max_bytes=max_request_bytes)
    if allowed_hosts is not None and "*" not in allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    bearer = HTTPBearer(auto_error=False)
    renderer = MarkdownWorker(RENDER_SECONDS)

    async def authorize(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if server.api_key is None:
            return
        given = credentials.credentials if credentials is not None else ""
        if not secrets.compare_digest(given.encode(), server.api_key.encode()):
            raise APIError(401, "Incorrect or missing API key: send `Authorization: Bearer <key>`",
                           code="invalid_api_key")

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return _validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        kind = {404: "not_found", 413: "request_too_large"}.get(exc.status_code)
        return APIError(exc.status_code, str(exc.detail), code=kind).response()

    @app.get("/health")
    async def health():
        b = server.batcher
        state = {"status": "ok", "model": server.model_name, "running": b.num_running, "waiting": b.num_waiting,
                 "max_batch_size": b.max_batch_size, "max_queue": b.max_queue, "restarts": b.restarts}
        if not b.alive:
            state.update(status="error", error=b.failure or "the batcher is not running")
            return JSONResponse(state, status_code=503)
        return state

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def models() -> dict:
        return {"object": "list", "data": [{
            "id": server.model_name, "object": "model", "created": server.created, "owned_by": "minigpt",
            "max_model_len": server.batcher.max_length,
        }]}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(chat_page())

    @app.post("/render", include_in_schema=False, dependencies=[Depends(authorize)])
    async def render(body: RenderRequest) -> dict:
        rendered = await renderer.render(body.text)
        if rendered is None:  # past the time budget (pathological Markdown): shown as text
            return {"html": f"<pre>{html.escape(body.text)}</pre>", "rendered": False}
        return {"html": rendered}

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)])
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        server.check_model(body.model)
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
        server.check_length([m["content"] for m in messages], "messages")
        try:
            prompt_ids = await run_in_threadpool(render_prompt_literal, server.tokenizer, messages, "messages")
        except UserError as e:
            raise APIError(400, str(e), param="messages") from None
        asked = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        max_tokens = server.budget(len(prompt_ids), asked, server.default_max_tokens)
        jobs = server.submit(prompt_ids, max_tokens, body, body.n)
        rid, created = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())
        head = {"id": rid, "created": created, "model": server.model_name}
        stops = body.stops()
        if body.stream:
            return StreamingResponse(
                _chat_stream(server, jobs, stops, head, len(prompt_ids), body), media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        choices = await _collect(server, jobs, stops, request)
        out = []
        for i, c in enumerate(choices):
            message: dict[str, Any] = {"role": "assistant", "content": c.answer}
            if c.thinking:
                message["reasoning_content"] = c.thinking
            out.append({"index": i, "message": message, "finish_reason": c.finish_reason, "logprobs": None})
        return {**head, "object": "chat.completion", "choices": out, "usage": server.usage(len(prompt_ids), choices)}

    @app.post("/v1/completions", dependencies=[Depends(authorize)])
    async def completions(body: CompletionRequest, request: Request):
        server.check_model(body.model)
        texts = [body.prompt] if isinstance(body.prompt, str) else [p for p in body.prompt if isinstance(p, str)]
        for text in texts:  # each prompt has a context of its own
            server.check_length([text], "prompt")
        prompts = await run_in_threadpool(_prompt_list, body.prompt, server.tokenizer)
        budgets = [server.budget(len(p), body.max_tokens, None) for p in prompts]
        jobs_per_prompt: list[list[_Job]] = []
        try:
            for ids, budget in zip(prompts, budgets):
                jobs_per_prompt.append(server.submit(ids, budget, body, body.n))
        except APIError:
            server.cancel([j for jobs in jobs_per_prompt for j in jobs])
            raise
        rid, created = f"cmpl-{secrets.token_hex(12)}", int(time.time())
        head = {"id": rid, "created": created, "model": server.model_name}
        prompt_tokens = sum(len(p) for p in prompts)  # each prompt once, whatever n is (as OpenAI counts)
        echoes = [server.tokenizer.decode(p, skip_special_tokens=True) if body.echo else "" for p in prompts]
        jobs = [j for js in jobs_per_prompt for j in js]
        if body.stream:
            return StreamingResponse(
                _completion_stream(server, jobs, body.stops(), head, prompt_tokens, body,
                                   [echoes[i // body.n] for i in range(len(jobs))]),
                media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        choices = await _collect(server, jobs, body.stops(), request)
        out = [{"index": i, "text": echoes[i // body.n] + c.text, "finish_reason": c.finish_reason, "logprobs": None}
               for i, c in enumerate(choices)]
        usage = server.usage(prompt_tokens, choices)
        return {**head, "object": "text_completion", "choices": out, "usage": usage}

    return app


async def _watch_batcher(batcher: ContinuousBatcher, on_failure, period: float = 0.25) -> None:
    """Wait until the batcher stops for good, then call `on_failure(reason)` once."""
    while batcher.failure is None:
        await asyncio.sleep(period)
    import logging

    logging.getLogger("minigpt.serve").error("the decoding loop stopped: %s", batcher.failure)
    if on_failure is not None:
        on_failure(batcher.failure)


def _max_token_bytes(tokenizer) -> int:
    """An upper bound on the UTF-8 bytes one ordinary token stands for: the longest vocabulary
    entry's own UTF-8 length (byte-level BPE spells each byte with one character of one or two
    bytes, so this is never below the true figure); 64 when the vocabulary cannot be read."""
    try:
        special = set(getattr(tokenizer, "all_special_tokens", []))
        return max(len(t.encode("utf-8")) for t in tokenizer.get_vocab() if t not in special)
    except Exception:
        return 64


def _prompt_list(prompt, tokenizer) -> list[list[int]]:
    """`CompletionRequest.prompt` -> token-id lists (400 on an empty one)."""
    if isinstance(prompt, str):
        items: list = [prompt]
    elif prompt and all(isinstance(p, int) for p in prompt):
        items = [list(prompt)]
    else:
        items = list(prompt)
    if not items:
        raise APIError(400, "prompt: the list is empty", param="prompt", code="invalid_value")
    out = []
    for i, p in enumerate(items):
        ids = list(tokenizer(p, add_special_tokens=False, split_special_tokens=True)["input_ids"]) if isinstance(p, str) else list(p)
        if not ids:
            raise APIError(400, f"prompt[{i}] is empty", param="prompt", code="invalid_value")
        out.append(ids)
    return out


async def _collect(server: OpenAIServer, jobs: list[_Job], stops: list[str], request: Request) -> list[_Choice]:
    """Run every job to its end (non-streaming); cancel them all if the client goes away."""
    choices = [_Choice() for _ in jobs]

    async def one(job: _Job, choice: _Choice) -> None:
        splitter = ReasoningSplitter()
        async for piece in server.pieces(job, stops, choice):
            splitter.feed(piece)
        splitter.close()
        choice.thinking, choice.answer = splitter.thinking, splitter.answer

    task = asyncio.gather(*(one(j, c) for j, c in zip(jobs, choices)))
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.5)
            if done:
                task.result()
                return choices
            if await request.is_disconnected():
                task.cancel()
                raise APIError(499, "the client closed the connection")
    finally:
        server.cancel(jobs)


async def _events(server: OpenAIServer, jobs: list[_Job], choices: list[_Choice], produce, render, prompt_tokens: int,
                  include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events of a streamed response with one choice per job, the choices
    interleaved as their pieces come: `produce(i)` yields choice i's `(kind, text)` pieces,
    `render(i, kind, text)` makes the chunk of one piece, or with kind "finish" the chunk that
    finishes the choice. A choice whose generation failed sends an error event. Then a
    usage-only chunk when asked, and `[DONE]`. Leaving early (a disconnect) cancels every job."""
    out: asyncio.Queue = asyncio.Queue()

    async def run(i: int) -> None:
        try:
            async for kind, text in produce(i):
                await out.put((i, kind, text))
            await out.put((i, "finish", None))
        except APIError as e:
            await out.put((i, "error", e.message))

    tasks = [asyncio.create_task(run(i)) for i in range(len(jobs))]
    try:
        remaining = len(jobs)
        while remaining:
            i, kind, text = await out.get()
            if kind in ("finish", "error"):
                remaining -= 1
            if kind == "error":
                yield _sse({"error": {"message": text, "type": "server_error", "param": None, "code": None}})
                continue
            chunk = render(i, kind, text)
            if kind == "finish":
                chunk["usage"] = server.usage(prompt_tokens, choices)
            yield _sse(chunk)
        if include_usage:
            yield _sse({**render(0, "usage", None), "choices": [], "usage": server.usage(prompt_tokens, choices)})
        yield "data: [DONE]\n\n"
    finally:
        for t in tasks:
            t.cancel()
        server.cancel(jobs)


def _include_usage(body: _Sampling) -> bool:
    return body.stream_options is not None and body.stream_options.include_usage


async def _chat_stream(server: OpenAIServer, jobs: list[_Job], stops: list[str], head: dict, prompt_tokens: int,
                       body: ChatCompletionRequest) -> AsyncIterator[str]:
    """A streamed chat completion: a role chunk per choice, then `content` and
    `reasoning_content` deltas as they come, a finishing chunk per choice with its usage."""
    head = {**head, "object": "chat.completion.chunk"}
    choices = [_Choice() for _ in jobs]

    async def produce(i: int):
        splitter = ReasoningSplitter()
        async for piece in server.pieces(jobs[i], stops, choices[i]):
            for event in splitter.feed(piece):
                yield event
        for event in splitter.close():
            yield event

    def render(i: int, kind: str, text: str | None) -> dict:
        if kind == "finish":
            return {**head, "choices": [{"index": i, "delta": {}, "finish_reason": choices[i].finish_reason}]}
        delta = {"reasoning_content": text} if kind == "thinking" else {"content": text}
        return {**head, "choices": [{"index": i, "delta": delta, "finish_reason": None}]}

    try:  # a disconnect closes this generator at a yield: the jobs are cancelled here too
        for i in range(len(jobs)):
            yield _sse({**head, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
        async for event in _events(server, jobs, choices, produce, render, prompt_tokens, _include_usage(body)):
            yield event
    finally:
        server.cancel(jobs)


async def _completion_stream(server: OpenAIServer, jobs: list[_Job], stops: list[str], head: dict, prompt_tokens: int,
                             body: CompletionRequest, echoes: list[str]) -> AsyncIterator[str]:
    """A streamed text completion: text chunks as they come (after the echoed prompt, with
    `echo`), a finishing chunk per choice with its usage."""
    head = {**head, "object": "text_completion"}
    choices = [_Choice() for _ in jobs]

    async def produce(i: int):
        if echoes[i]:
            yield "text", echoes[i]
        async for piece in server.pieces(jobs[i], stops, choices[i]):
            yield "text", piece

    def render(i: int, kind: str, text: str | None) -> dict:
        finish = choices[i].finish_reason if kind == "finish" else None
        return {**head, "choices": [{"index": i, "text": text or "", "finish_reason": finish, "logprobs": None}]}

    try:
        async for event in _events(server, jobs, choices, produce, render, prompt_tokens, _include_usage(body)):
            yield event
    finally:
        server.cancel(jobs)


__all__ = ["APIError", "ChatCompletionRequest", "CompletionRequest", "OpenAIServer", "create_app"]
