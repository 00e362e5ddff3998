"""What every RL config dataclass shares: building it from a plain dict (SPEC: "config may be a
dict") with a clear error for a misspelt field."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from minigpt.errors import UserError


class DictConfig:
    """Mixin for config dataclasses: `from_dict` refuses unknown keys and lists the known ones."""

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str | None = None):
        """Build from a dict.

        Raises:
            UserError: `values` is not a mapping, has a key that is not a field (the message
                names it, lists the fields, and starts with `where` when given), or a value the
                dataclass refuses.
        """
        what = where or cls.__name__
        if not isinstance(values, Mapping):
            raise UserError(f"{what}: expected a mapping of {cls.__name__} fields, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            prefix = f"{where}: unknown field(s)" if where else f"unknown {cls.__name__} field(s)"
            raise UserError(f"{prefix} {unknown}; known: {sorted(known)}")
        try:
            return cls(**dict(values))
        except TypeError as e:  # e.g. a missing required field
            raise UserError(f"{what}: {e}") from None
