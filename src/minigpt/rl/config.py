"""Old import path of `DictConfig`; it lives in `minigpt.config`, on the bottom floor, so that
every config dataclass (objectives, recipes) can use it."""

from minigpt.config import DictConfig

__all__ = ["DictConfig"]
