"""Lazy package attributes (PEP 562): a package lists which module each public name lives in,
and the module is imported the first time the name is used. `minigpt --help` thereby parses
its options without importing torch or transformers."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """`(__getattr__, __dir__)` for `package`, whose attribute `name` is `exports[name]`'s
    attribute of that name, imported on first access and then cached in the package.

    Raises (from `__getattr__`):
        AttributeError: `name` is not exported.
    """

    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
