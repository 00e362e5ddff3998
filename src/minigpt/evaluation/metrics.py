"""Text metrics with bootstrap confidence intervals: BLEU, ROUGE, accuracy, win rate, bits per
byte and perplexity.

* BLEU (Papineni et al. 2002) is sacrebleu's corpus BLEU (Post 2018, "A Call for Clarity in
  Reporting BLEU Scores"), with its `13a` tokenizer for English and `zh` for Chinese.
* ROUGE-1/2/L (Lin 2004) are rouge-score's F-measures, averaged over the examples. rouge-score's
  own tokenizer keeps only `[a-z0-9]` runs, which deletes every other script (Chinese,
  Cyrillic, Greek, Arabic, Hebrew, Devanagari, Thai, ...) entirely, so `MixedScriptTokenizer` is
  used instead: words of any script as runs of letters, marks and digits (on ASCII text exactly
  rouge-score's tokens), and every character of a script written without spaces between words
  (Han, kana, hangul, Thai, Lao, Khmer, Myanmar) as a token of its own (the usual practice for
  Chinese ROUGE, e.g. the LCSTS and CLUE evaluations, where text is not word-segmented).
* Every metric gets a percentile bootstrap interval (Efron & Tibshirani 1993, "An
  Introduction to the Bootstrap", ch. 13): the examples are resampled with replacement
  `resamples` times and the metric recomputed on each resample. Corpus-level metrics (BLEU,
  bits per byte, perplexity) are recomputed from resampled per-example sufficient statistics,
  not averaged per example.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from minigpt.errors import UserError

#: Metric names `minigpt eval` accepts.
METRICS = ("bpb", "ppl", "bleu", "rouge", "accuracy", "win_rate")

_CJK = (
    "\u3040-\u30ff"  # hiragana, katakana
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # CJK ideographs
    "\uac00-\ud7af"  # hangul syllables
)
_CJK_RE = re.compile(rf"[{_CJK}]")
#: Scripts written without spaces between words: one token per character (with its marks).
_UNSPACED = r"\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}"


@functools.cache
def _token_re():
    import regex

    return regex.compile(rf"[{_UNSPACED}]\p{{M}}*|(?:(?![{_UNSPACED}])[\p{{L}}\p{{N}}])(?:(?![{_UNSPACED}])[\p{{L}}\p{{M}}\p{{N}}])*")


class MixedScriptTokenizer:
    """ROUGE tokenizer for text in any script, and text mixing scripts.

    Lower-cases (Unicode case folding), then returns every character of a script written
    without spaces between words (Han, hiragana, katakana, hangul, Thai, Lao, Khmer, Myanmar),
    with the combining marks after it, as one token, and every run of letters, combining marks
    and digits of the other scripts (Latin, Cyrillic, Greek, Arabic, Hebrew, Devanagari, ...) as
    one token; everything else (punctuation, spaces) separates tokens. On ASCII text this gives
    the tokens rouge-score's default tokenizer gives (without stemming).
    `tokenize(text) -> list[str]` is the interface rouge-score expects.
    """

    def tokenize(self, text: str) -> list[str]:
        """`text` -> its tokens (strings), case-folded."""
        return _token_re().findall(text.casefold())


def has_cjk(texts: Sequence[str]) -> bool:
    """Whether any text holds a CJK character (picks sacrebleu's `zh` tokenizer)."""
    return any(_CJK_RE.search(t) for t in texts)


@dataclass
class Estimate:
    """A metric's value over the whole set and its bootstrap interval.

    Attributes:
        value: the metric on all examples.
        low / high: the percentile bootstrap interval at `level` (e.g. 2.5 % and 97.5 %).
        n: examples.
        level: the interval's coverage, e.g. 0.95.
    """

    value: float
    low: float
    high: float
    n: int
    level: float = 0.95

    def as_dict(self) -> dict[str, float]:
        """`{"value", "ci_low", "ci_high", "n", "level"}`."""
        return {"value": self.value, "ci_low": self.low, "ci_high": self.high, "n": self.n, "level": self.level}


def bootstrap(
    stats: np.ndarray,
    metric: Callable[[np.ndarray], float],
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """Percentile bootstrap interval of `metric` over examples.

    Args:
        stats: `(N, ...)` per-example sufficient statistics (for a mean: the values `(N,)`).
        metric: maps the sum of a resample's rows (shape `stats.shape[1:]`) to the metric.
            A mean is written as rows `[value, 1]` and `lambda s: s[0] / s[1]`; corpus BLEU
            as sentence statistics and BLEU of their sum.
        resamples: bootstrap resamples (0 = no interval: low = high = value).
        level: coverage of the interval, in (0, 1).
        seed: seed of the resampling (equal seeds, equal intervals).

    Returns an `Estimate`.

    Raises:
        UserError: no examples, or `level` outside (0, 1).
    """
    stats = np.asarray(stats, dtype=np.float64)
    n = len(stats)
    if n == 0:
        raise UserError("no examples to score")
    if not 0 < level < 1:
        raise UserError(f"the confidence level must be in (0, 1), got {level}")
    value = float(metric(stats.sum(axis=0)))
    if resamples <= 0:
        return Estimate(value, value, value, n, level)
    rng = np.random.default_rng(seed)
    draws = np.empty(resamples)
    for r in range(resamples):
        counts = np.bincount(rng.integers(0, n, size=n), minlength=n)  # (N,) times each example is drawn
        draws[r] = metric(np.tensordot(counts, stats, axes=1))
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return Estimate(value, float(low), float(high), n, level)


def mean_estimate(values: Sequence[float], **kw) -> Estimate:
    """The mean of per-example `values` with its bootstrap interval (accuracy, win rate, ROUGE)."""
    v = np.asarray(values, dtype=np.float64)
    return bootstrap(np.stack([v, np.ones_like(v)], axis=1), lambda s: s[0] / s[1], **kw)


def bleu(predictions: Sequence[str], references: Sequence[str], tokenize: str | None = None, **kw) -> Estimate:
    """Corpus BLEU (0–100) of `predictions` against one reference each, by sacrebleu.

    Args:
        predictions / references: N strings each.
        tokenize: sacrebleu's tokenizer; None = `zh` when any text holds CJK characters, else
            `13a` (sacrebleu's default, WMT's).
        **kw: `resamples`, `level`, `seed` of `bootstrap`.

    Raises:
        UserError: the lists differ in length or are empty.
    """
    from sacrebleu.metrics import BLEU

    _same_length(predictions, references)
    if tokenize is None:
        tokenize = "zh" if has_cjk(list(predictions) + list(references)) else "13a"
    scorer = BLEU(tokenize=tokenize)
    # Per-sentence sufficient statistics: matches and totals of 1..4-grams, hypothesis and
    # reference lengths; corpus BLEU of any resample is BLEU of their sum.
    stats = np.asarray(scorer._extract_corpus_statistics(list(predictions), [list(references)]), dtype=np.float64)
    return bootstrap(stats, lambda s: scorer._compute_score_from_stats([int(round(x)) for x in s]).score, **kw)


def rouge(predictions: Sequence[str], references: Sequence[str], **kw) -> dict[str, Estimate]:
    """ROUGE-1, ROUGE-2 and ROUGE-L F-measures (0–1), averaged over examples, by rouge-score
    with `MixedScriptTokenizer` (so Chinese is scored by characters).

    Returns `{"rouge1": Estimate, "rouge2": ..., "rougeL": ...}`.

    Raises:
        UserError: the lists differ in length or are empty.
    """
    from rouge_score import rouge_scorer

    _same_length(predictions, references)
    kinds = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(kinds), tokenizer=MixedScriptTokenizer())
    rows = [scorer.score(ref, pred) for pred, ref in zip(predictions, references)]
    return {k: mean_estimate([r[k].fmeasure for r in rows], **kw) for k in kinds}


def bits_per_byte_estimate(nll_nats: Sequence[float], num_bytes: Sequence[int], **kw) -> Estimate:
    """Bits per UTF-8 byte, `Σ NLL / (ln 2 · Σ bytes)`, over per-example sums."""
    stats = np.stack([np.asarray(nll_nats, float), np.asarray(num_bytes, float)], axis=1)
    return bootstrap(stats, lambda s: s[0] / (math.log(2) * s[1]) if s[1] > 0 else float("nan"), **kw)


def perplexity_estimate(nll_nats: Sequence[float], num_tokens: Sequence[int], **kw) -> Estimate:
    """Token perplexity, `exp(Σ NLL / Σ tokens)`, over per-example sums."""
    stats = np.stack([np.asarray(nll_nats, float), np.asarray(num_tokens, float)], axis=1)
    return bootstrap(stats, lambda s: math.exp(s[0] / s[1]) if s[1] > 0 else float("nan"), **kw)


def score_predictions(
    predictions: Sequence[str], references: Sequence[str], metrics: Sequence[str] = ("bleu", "rouge"), **kw
) -> dict[str, Estimate]:
    """BLEU and/or ROUGE of predictions against references: report keys `bleu`, `rouge1`,
    `rouge2`, `rougeL`.

    Raises:
        UserError: a metric other than bleu/rouge, or lists of different lengths.
    """
    out: dict[str, Estimate] = {}
    for m in metrics:
        if m == "bleu":
            out["bleu"] = bleu(predictions, references, **kw)
        elif m == "rouge":
            out.update(rouge(predictions, references, **kw))
        else:
            raise UserError(f"scoring predictions alone supports bleu and rouge, not {m!r}")
    return out


def _same_length(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise UserError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise UserError("no predictions to score")


__all__ = [
    "METRICS",
    "Estimate",
    "MixedScriptTokenizer",
    "bits_per_byte_estimate",
    "bleu",
    "bootstrap",
    "has_cjk",
    "mean_estimate",
    "perplexity_estimate",
    "rouge",
    "score_predictions",
]
