"""Shared test setup: quiet `transformers` progress bars, deterministic CPU runs."""

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from transformers.utils import logging as hf_logging  # noqa: E402

hf_logging.disable_progress_bar()
