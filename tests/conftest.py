"""Shared test setup: quiet `transformers` progress bars, deterministic CPU runs."""

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from transformers.utils import logging as hf_logging  # noqa: E402

hf_logging.disable_progress_bar()


import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny models (`pytestmark = pytest.mark.usefixtures("one_thread")`): one
    torch thread is as fast on such small matrices and leaves the other cores to other
    processes (pytest-xdist workers). The previous thread count is restored after the module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
