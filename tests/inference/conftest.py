"""Fixtures of the server tests (`test_server.py`, `test_server_hardening.py`): the readable
tiny chat model (`serving.save_readable_chat_model`), on disk and loaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving import save_readable_chat_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_readable_chat_model(tmp_path_factory.mktemp("serve") / "tiny-chat")


@pytest.fixture(scope="module")
def loaded(model_dir):
    from minigpt.inference.loading import load_model_and_tokenizer

    return load_model_and_tokenizer(model_dir, device="cpu")
