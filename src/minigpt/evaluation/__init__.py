"""Evaluation: text metrics with bootstrap intervals, and a model's scores on a data file
(`minigpt eval`)."""

from minigpt.evaluation.evaluate import EvalExample, evaluate_model, format_report, load_eval_examples
from minigpt.evaluation.metrics import Estimate, bleu, bootstrap, rouge, score_predictions

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
