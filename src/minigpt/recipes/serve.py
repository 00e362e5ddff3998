"""`minigpt serve`: an OpenAI-compatible HTTP server with continuous batching and a chat page."""

from __future__ import annotations

import os
from pathlib import Path

from minigpt.errors import UserError


def build_server(
    model: str,
    served_model_name: str | None = None,
    api_key: str | None = None,
    max_batch_size: int = 64,
    max_queue: int = 256,
    max_length: int | None = None,
    max_tokens: int | None = None,
    dtype: str = "fp32",
    device: str = "auto",
    seed: int | None = None,
    allow_base_mismatch: bool = False,
    allowed_hosts: list[str] | None = None,
    max_request_bytes: int = 4 * 2**20,
    on_failure=None,
):
    """Load `model` and wrap it for serving; returns the FastAPI app (see `serve` for the
    arguments; `allowed_hosts` None = any host). The batcher starts when the app does."""
    from minigpt.inference.batching import ContinuousBatcher
    from minigpt.inference.engine import GenerationEngine
    from minigpt.inference.loading import engine_dtype, load_model_and_tokenizer
    from minigpt.inference.server import OpenAIServer, create_app
    from minigpt.tokenizer.chat import chat_eos_ids

    from minigpt.errors import check_seed

    check_seed(seed)
    if max_request_bytes < 1024:
        raise UserError(f"--max_request_bytes must be at least 1024, got {max_request_bytes}")
    net, tok = load_model_and_tokenizer(model, device, allow_base_mismatch=allow_base_mismatch)
    if not getattr(tok, "chat_template", None):
        raise UserError(f"{model}: the tokenizer has no chat template; serve a model whose tokenizer `minigpt tokenizer` made")
    engine = GenerationEngine(net, eos_token_id=chat_eos_ids(tok), pad_token_id=tok.pad_token_id, dtype=engine_dtype(dtype))
    batcher = ContinuousBatcher(engine, max_batch_size=max_batch_size, max_queue=max_queue, max_length=max_length, seed=seed)
    name = served_model_name or Path(model).resolve().name
    return create_app(OpenAIServer(batcher, tok, name, api_key=api_key, default_max_tokens=max_tokens),
                      allowed_hosts=allowed_hosts, max_request_bytes=max_request_bytes, on_failure=on_failure)


def serve(
    model: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    served_model_name: str | None = None,
    api_key: str | None = None,
    max_batch_size: int = 64,
    max_queue: int = 256,
    max_length: int | None = None,
    max_tokens: int | None = None,
    dtype: str = "fp32",
    device: str = "auto",
    seed: int | None = None,
    allow_base_mismatch: bool = False,
    allowed_hosts: list[str] | None = None,
    max_request_bytes: int = 4 * 2**20,
    log_level: str = "info",
) -> None:
    """Serve a model over HTTP with OpenAI's API, and a chat page at http://HOST:PORT/.

    Endpoints: POST /v1/chat/completions (streamed or not), POST /v1/completions,
    GET /v1/models, GET /health. Concurrent requests share one running batch (continuous
    batching): each joins at its first token and leaves at its last. Any OpenAI client works,
    e.g. `OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none")`.

    Args:
        model: model directory (e.g. the output of `minigpt sft`), or a LoRA adapter
            directory (served on the base it records).
        host: address to listen on (127.0.0.1 = this machine only).
        port: TCP port.
        served_model_name: the model id clients send and /v1/models lists (default: the
            directory's name).
        api_key: require `Authorization: Bearer KEY` on /v1/* (default: the MINIGPT_API_KEY
            environment variable, else no key). The environment keeps it out of `ps`.
        max_batch_size: requests decoded together at most (rows of the preallocated KV cache).
        max_queue: requests waiting for a row at most; beyond it requests get 503.
        max_length: positions per request, prompt and reply together (default: the model's
            context, max_position_embeddings).
        max_tokens: a chat reply's token budget when the request gives none (default: what
            the context leaves).
        dtype: decoding precision: fp32 (exact), bf16 (faster on CPUs with bf16 support),
            int8 (weight-only; approximate).
        device: auto, cpu, cuda or mps.
        seed: seed of the sampler for requests that send no seed.
        allow_base_mismatch: serve an adapter on its recorded base even when that base's
            weights are not the ones it was trained on.
        allowed_hosts: `Host` header values the server answers, e.g. `[mybox.lan, 10.0.0.5]`
            (others get 400, so a web page that rebinds its DNS name to this machine cannot
            drive the server). Default: the loopback names when `host` is a loopback address,
            else any.
        max_request_bytes: largest request body; larger ones get 413 before being read.
        log_level: uvicorn's log level (debug, info, warning, error).

    Exits with status 1 if the decoding loop stops for good (it is restarted after a failure,
    up to 3 times a minute); `/health` answers 503 from that moment.

    Raises:
        UserError: a bad model directory, a tokenizer without a chat template, or bad limits.
    """
    import sys

    import uvicorn

    from minigpt.inference.server import default_allowed_hosts

    if api_key is None:
        api_key = os.environ.get("MINIGPT_API_KEY") or None
    if allowed_hosts is None:
        allowed_hosts = default_allowed_hosts(host)
    failure: list[str] = []

    def stop(reason: str) -> None:
        failure.append(reason)
        web.should_exit = True

    app = build_server(model, served_model_name, api_key, max_batch_size, max_queue, max_length, max_tokens, dtype,
                       device, seed, allow_base_mismatch, allowed_hosts, max_request_bytes, on_failure=stop)
    web = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level))
    shown = f"[{host}]" if ":" in host else ("127.0.0.1" if host in ("0.0.0.0", "::") else host)
    print(f"minigpt serve: chat page at http://{shown}:{port}/ , OpenAI API at http://{shown}:{port}/v1"
          + ("" if api_key is None else " (API key required)"), file=sys.stderr, flush=True)
    web.run()
    if failure:
        print(f"minigpt serve: error: the decoding loop stopped ({failure[0]}); the server shut down",
              file=sys.stderr)
        raise SystemExit(1)
