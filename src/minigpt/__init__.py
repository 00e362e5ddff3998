"""minigpt: raw text to an aligned chat model, end to end, on PyTorch."""

__version__ = "0.1.0"
