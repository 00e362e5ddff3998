"""Training callbacks: user code hooked into the one loop.

A callback subclasses `Callback`, overrides the events it cares about, and may set a `priority`
(lower runs first) and `conflicts_with` (names of callbacks it cannot run beside). Conflicts are
checked when the loop starts, so two callbacks that would both change the objective fail loudly
instead of silently mixing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

from minigpt.errors import UserError

if TYPE_CHECKING:
    from minigpt.train.loop import Trainer


class Callback:
    """Base class: every event is a no-op. `metrics` are plain dicts of Python floats.

    Events:
        on_train_start(trainer): before the first step (after a resume has restored state).
        on_batch_end(trainer, metrics): after each micro-batch's backward pass.
        on_step_end(trainer, metrics): after each optimizer step; `trainer.step` is the count
            of steps done. Set `trainer.should_stop = True` to end training cleanly.
        on_evaluate(trainer, metrics): after each evaluation.
        on_epoch_end(trainer, epoch): when the data sampler finishes a pass.
        on_train_end(trainer): after the last step and the final checkpoint.
    """

    priority: int = 100
    conflicts_with: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """The name other callbacks use in `conflicts_with` (the class name)."""
        return type(self).__name__

    def on_train_start(self, trainer: "Trainer") -> None: ...

    def on_batch_end(self, trainer: "Trainer", metrics: dict[str, float]) -> None: ...

    def on_step_end(self, trainer: "Trainer", metrics: dict[str, float]) -> None: ...

    def on_evaluate(self, trainer: "Trainer", metrics: dict[str, float]) -> None: ...

    def on_epoch_end(self, trainer: "Trainer", epoch: int) -> None: ...

    def on_train_end(self, trainer: "Trainer") -> None: ...


class CallbackList:
    """Callbacks sorted by priority (stable for equal priorities), dispatched in that order.

    Raises:
        UserError: if two callbacks conflict (either side may declare it).
    """

    def __init__(self, callbacks: Iterable[Callback] = ()) -> None:
        self.callbacks = sorted(callbacks, key=lambda c: c.priority)
        names = {c.name for c in self.callbacks}
        for cb in self.callbacks:
            clash = names.intersection(cb.conflicts_with) - {cb.name}
            if clash:
                raise UserError(f"callback {cb.name} conflicts with {', '.join(sorted(clash))}; remove one of them")

    def fire(self, event: str, *args: Any) -> None:
        """Call `event` on every callback in priority order."""
        for cb in self.callbacks:
            getattr(cb, event)(*args)
