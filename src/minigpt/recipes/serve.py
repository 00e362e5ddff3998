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
):
    """Load `model` and wrap it for serving; returns the FastAPI app (see `serve` for the
    arguments). The batcher starts when the app does."""
    from minigpt.inference.batching import ContinuousBatcher
    from minigpt.inference.engine import GenerationEngine
    from minigpt.inference.loading import engine_dtype, load_model_and_tokenizer
    from minigpt.inference.server import OpenAIServer, create_app
    from minigpt.tokenizer.chat import chat_eos_ids

    net, tok = load_model_and_tokenizer(model, device, allow_base_mismatch=allow_base_mismatch)
    if not getattr(tok, "chat_template", None):
        raise UserError(f"{model}: the tokenizer has no chat template; serve a model whose tokenizer `minigpt tokenizer` made")
    engine = GenerationEngine(net, eos_token_id=chat_eos_ids(tok), pad_token_id=tok.pad_token_id, dtype=engine_dtype(dtype))
    batcher = ContinuousBatcher(engine, max_batch_size=max_batch_size, max_queue=max_queue, max_length=max_length, seed=seed)
    name = served_model_name or Path(model).resolve().name
    return create_app(OpenAIServer(batcher, tok, name, api_key=api_key, default_max_tokens=max_tokens))


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
        log_level: uvicorn's log level (debug, info, warning, error).

    Raises:
        UserError: a bad model directory, a tokenizer without a chat template, or bad limits.
    """
    import uvicorn

    if api_key is None:
        api_key = os.environ.get("MINIGPT_API_KEY") or None
    app = build_server(model, served_model_name, api_key, max_batch_size, max_queue, max_length, max_tokens, dtype,
                       device, seed, allow_base_mismatch)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
