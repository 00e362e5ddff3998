"""What every RL config dataclass shares: building it from a plain dict (every `create_*` API
takes its config as a dataclass or a dict) with a clear error for a misspelt field."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from minigpt.errors import UserError


@dataclasses.dataclass
class DictConfig:
    """Base of config dataclasses: `from_dict` refuses unknown keys and lists the known ones.
    A (field-less) dataclass itself, so its subclasses are pure dataclasses, which jsonargparse
    turns into `--group.field` options with their docstrings."""

    def require(self, checks: list[tuple[bool, str]]) -> None:
        """Raise `UserError("<Class>.<message>")` for the first `(ok, message)` whose `ok` is
        false; `__post_init__` lists its field rules this way."""
        for ok, message in checks:
            if not ok:
                raise UserError(f"{type(self).__name__}.{message}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str | None = None):
        """Build from a dict.

        Raises:
            UserError: `values` is not a mapping, has a key that is not a field (the message
                names it, lists the fields, and starts with `where` when given), a value of
                the wrong type for its field's annotation (null for a number, a list for a
                path; checked with pydantic), or a value the dataclass refuses.
        """
        what = where or cls.__name__
        if not isinstance(values, Mapping):
            raise UserError(f"{what}: expected a mapping of {cls.__name__} fields, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            prefix = f"{where}: unknown field(s)" if where else f"unknown {cls.__name__} field(s)"
            raise UserError(f"{prefix} {unknown}; known: {sorted(known)}")
        from pydantic import ConfigDict, TypeAdapter, ValidationError

        # Each value checked by pydantic against its field's annotation (null where a number is
        # due, a list where a path is due ...); fields typed with classes pydantic cannot
        # describe (a model, a callable object) are left to the dataclass.
        hints = _resolved_hints(cls)
        for name, value in values.items():
            try:
                adapter = TypeAdapter(hints[name], config=ConfigDict(arbitrary_types_allowed=True))
            except Exception:  # noqa: BLE001 — no schema for this annotation: not checked here
                continue
            try:
                adapter.validate_python(value)
            except ValidationError as e:
                raise UserError(f"{what}: field {name!r}: {e.errors()[0]['msg'].lower()}, got {value!r}") from None
        try:
            return cls(**dict(values))
        except TypeError as e:  # e.g. a missing required field
            raise UserError(f"{what}: {e}") from None


def _resolved_hints(cls) -> dict[str, Any]:
    """The dataclass's field annotations as types (they are strings under `from __future__ import
    annotations`)."""
    import sys
    import typing

    return typing.get_type_hints(cls, globalns=vars(sys.modules[cls.__module__]))
