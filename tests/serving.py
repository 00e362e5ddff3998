"""Helpers of the serving tests: a readable tiny chat model, a uvicorn server in a thread, and
a batcher that replies from a script."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import torch

from minigpt.inference.batching import ContinuousBatcher

from tiny_models import save_tiny_chat_model

TEXTS = ["hello world, the cat sat on the mat.", "a dog ran in the park; 1 + 2 = 3"] * 10


def save_readable_chat_model(out: Path) -> Path:
    """A random tiny chat model with a long context (2,048), so a greedy reply can run for a
    second or two (the disconnect and burst tests need requests still in flight); from the
    prompts of the tests it emits no EOS in 1,500 greedy steps.

    Its replies are readable: the output rows of tokens that are not whole printable text
    (byte pieces of multi-byte characters, control tokens) are zero, so the greedy choice is a
    printable token and replies stream character by character."""
    tok, model = save_tiny_chat_model(out, TEXTS, max_position_embeddings=2048)
    with torch.no_grad():
        for i in range(len(tok)):
            piece = tok.decode([i])
            if not piece or "\ufffd" in piece or not piece.isprintable():
                model.lm_head.weight[i] = 0.0
    model.save_pretrained(out)
    return out


class Running:
    """A uvicorn server on a free port of 127.0.0.1, in a thread."""

    def __init__(self, app) -> None:
        self.server = _uvicorn().Server(_uvicorn().Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline, "the server did not start"
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = app

    @property
    def batcher(self) -> ContinuousBatcher:
        return self.app.state.server.batcher

    def client(self, api_key: str = "unused", **kw):
        return _openai().OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, **kw)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)



def _uvicorn():
    import uvicorn

    return uvicorn


def _openai():
    import openai

    return openai


class ScriptedBatcher(ContinuousBatcher):
    """A batcher whose 'model' replies with a fixed token script (a reasoning model's reply)."""

    def __init__(self, engine, script: list[int]) -> None:
        super().__init__(engine, max_batch_size=2, max_queue=4)
        self.script = script

    def _run(self) -> None:
        while not self._closed:
            with self._cond:
                request = self._waiting.popleft() if self._waiting else None
                if request is None:
                    self._cond.wait(0.05)
                    continue
            for token in self.script[: request.max_new_tokens]:
                request.on_token(token)
            request.on_finish("stop")
