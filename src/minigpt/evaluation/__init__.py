"""Evaluation: text metrics with bootstrap intervals, and a model's scores on a data file
(`minigpt eval`).

The names are imported on first use (`minigpt._lazy`): importing the package is cheap."""

from minigpt._lazy import lazy_exports

_EXPORTS = {
    "EvalExample": "minigpt.evaluation.evaluate",
    "evaluate_model": "minigpt.evaluation.evaluate",
    "format_report": "minigpt.evaluation.evaluate",
    "load_eval_examples": "minigpt.evaluation.evaluate",
    "Estimate": "minigpt.evaluation.metrics",
    "bleu": "minigpt.evaluation.metrics",
    "bootstrap": "minigpt.evaluation.metrics",
    "rouge": "minigpt.evaluation.metrics",
    "score_predictions": "minigpt.evaluation.metrics",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "Estimate",
    "EvalExample",
    "bleu",
    "bootstrap",
    "evaluate_model",
    "format_report",
    "load_eval_examples",
    "rouge",
    "score_predictions",
]
