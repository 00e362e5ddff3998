"""Reward functions for online RL (GRPO family, PPO): rule rewards, a reward-model scorer, and
the weighted combination the trainers call.

A reward function has the TRL signature, and is called by keyword as TRL calls it::

    fn(prompts=prompts, completions=completions, **columns) -> list[float | None]

so ``def reward_len(completions, **kwargs)`` works; a function whose required parameters have
other names (``lambda p, c: …``) is refused when the reward is built.

one value per completion; ``None`` means "not applicable to this sample" (it counts as 0 in the
weighted sum and is kept as ``None`` in the per-function values so it can be logged apart).
``columns`` carries the dataset's extra columns as lists aligned with the completions (e.g.
``answer=[...]``) plus ``prompt_ids`` / ``completion_ids: list[list[int]]`` (token ids, the stop
token excluded). Completion strings are decoded with the reasoning tags kept (``<think>``,
``</think>``, ``<answer>``, ``</answer>``) and without the stop token and padding.

Built-in rule rewards (:data:`REWARD_FUNCTIONS`): ``format`` (:func:`format_reward`), ``answer``
(:func:`answer_reward`), ``length`` (:func:`length_penalty`), ``repetition``
(:func:`repetition_penalty`); ``model`` is a :class:`RewardModelScorer`. :func:`make_reward`
builds a :class:`CombinedReward` from a spec string such as ``"format:0.5,answer"``.

This module imports torch only for :class:`RewardModelScorer`'s forward pass; the rule rewards
are plain Python.
"""

from __future__ import annotations

import functools
import math
import numbers
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from minigpt.rewards.answers import answers_equal, extract_answer
from minigpt.errors import UserError
from minigpt.tokenizer.bpe import IM_END

__all__ = [
    "as_combined_reward",
    "REWARD_FUNCTIONS",
    "CombinedReward",
    "RewardModelScorer",
    "answer_reward",
    "format_reward",
    "gsm8k_final_answer",
    "length_penalty",
    "make_reward",
    "parse_reward_spec",
    "repetition_penalty",
]

RewardFn = Callable[..., Sequence[Any]]

# --------------------------------------------------------------------------------------------
# Format
# --------------------------------------------------------------------------------------------

_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_FORMAT_RE = re.compile(r"<think>(.*)</think>\s*<answer>(.*)</answer>", re.DOTALL)


def _format_ok(completion: str) -> bool:
    text = completion.strip()
    if any(text.count(tag) != 1 for tag in _TAGS):
        return False
    m = _FORMAT_RE.fullmatch(text)
    return m is not None and m.group(2).strip() != ""


def format_reward(prompts: list[str], completions: list[str], **kw: Any) -> list[float]:
    """1.0 for a completion in the reasoning format, else 0.0 (DeepSeek-R1's format reward,
    arXiv:2501.12948 §2.2.2).

    The format: after stripping outer whitespace, the whole completion is
    ``<think>…</think>``, optional whitespace, then ``<answer>…</answer>``; each of the four tags
    occurs exactly once and the answer holds more than whitespace (the thinking may be empty).
    Text before ``<think>``, between the blocks or after ``</answer>`` fails.

    Args:
        prompts: ignored (the TRL signature).
        completions: ``N`` decoded completions, tags kept.

    Returns:
        ``N`` floats in {0.0, 1.0}.
    """
    return [1.0 if _format_ok(c) else 0.0 for c in completions]


# --------------------------------------------------------------------------------------------
# Answer
# --------------------------------------------------------------------------------------------



def gsm8k_final_answer(solution: str) -> str:
    """The final answer of a GSM8K solution: the text after its last ``"####"``, stripped
    (``"…\\n#### 1,234"`` -> ``"1,234"``); a string without ``"####"`` is returned stripped.

    Thousands separators are kept; :func:`answer_reward` compares them away.
    """
    head, sep, tail = solution.rpartition("####")
    return tail.strip() if sep else solution.strip()


def answer_reward(
    prompts: list[str], completions: list[str], answer: list[str] | None = None, **kw: Any
) -> list[float | None]:
    """1.0 when the completion's final answer equals the reference, else 0.0.

    The completion's answer is the content of its last complete ``<answer>…</answer>``
    (:func:`minigpt.rewards.answers.extract_answer`); none, or an empty one, scores 0.0. The
    reference is ``answer[i]``: for a GSM8K solution the text after its last ``"####"``
    (:func:`gsm8k_final_answer`), otherwise the whole string (ints are turned into strings).
    Both are compared as exact numbers when both parse as numbers (thousands separators, a
    leading ``$`` or ``+``, a trailing ``.`` or ``%`` ignored; ``"3/4" == "0.75"``, ``"42" ==
    "42.0" == "$42"``), else as whitespace-collapsed strings. A ``None`` reference gives
    ``None`` (not applicable).

    Args:
        prompts: ignored.
        completions: ``N`` decoded completions.
        answer: the dataset's ``answer`` column, ``N`` references.

    Raises:
        UserError: the ``answer`` column is missing or not ``N`` long.
    """
    if answer is None:
        raise UserError(
            "answer_reward: the dataset has no 'answer' column (one reference answer per prompt is required)"
        )
    if isinstance(answer, (str, bytes)) or len(answer) != len(completions):
        n = "a single string" if isinstance(answer, (str, bytes)) else f"{len(answer)} values"
        raise UserError(f"answer_reward: column 'answer' holds {n} for {len(completions)} completions")
    out: list[float | None] = []
    for completion, ref in zip(completions, answer):
        if ref is None:
            out.append(None)
            continue
        got = extract_answer(completion)
        if not got:
            out.append(0.0)
            continue
        out.append(1.0 if answers_equal(got, gsm8k_final_answer(str(ref))) else 0.0)
    return out


# --------------------------------------------------------------------------------------------
# Length and repetition
# --------------------------------------------------------------------------------------------


def _check_ids(completion_ids: Any, completions: list[str], fn: str) -> None:
    if completion_ids is None:
        raise UserError(f"{fn}: needs the 'completion_ids' column (token ids of every completion)")
    if len(completion_ids) != len(completions):
        raise UserError(
            f"{fn}: 'completion_ids' holds {len(completion_ids)} rows for {len(completions)} completions"
        )


def length_penalty(
    prompts: list[str],
    completions: list[str],
    completion_ids: list[list[int]] | None = None,
    max_completion_length: int | None = None,
    cache_length: int | None = None,
    **kw: Any,
) -> list[float]:
    """DAPO's soft overlong punishment (Yu et al. 2025, arXiv:2503.14476 eq. 13).

    With ``L = len(completion_ids[i])`` (tokens, stop token excluded), ``L_max =
    max_completion_length`` and ``c = cache_length`` (default ``L_max // 4``)::

        R = 0                      if L <= L_max - c
        R = (L_max - c - L) / c    if L_max - c < L <= L_max     (0 down to -1, linear)
        R = -1                     if L > L_max

    ``c = 0`` (also the default when ``L_max < 4``) leaves no soft zone: 0 up to ``L_max``.

    Args:
        completion_ids: ``N`` token-id lists.
        max_completion_length: ``L_max`` in tokens (:func:`make_reward` binds it).
        cache_length: ``c`` in tokens, ``0 <= c <= L_max``.

    Returns:
        ``N`` floats in [-1, 0].

    Raises:
        UserError: ``completion_ids`` missing or of the wrong length; ``max_completion_length``
            not a positive int; ``cache_length`` outside ``[0, L_max]``.
    """
    _check_ids(completion_ids, completions, "length_penalty")
    l_max = max_completion_length
    if isinstance(l_max, bool) or not isinstance(l_max, int) or l_max < 1:
        raise UserError(f"length_penalty: max_completion_length must be a positive integer, got {l_max!r}")
    cache = l_max // 4 if cache_length is None else cache_length
    if isinstance(cache, bool) or not isinstance(cache, int) or not 0 <= cache <= l_max:
        raise UserError(f"length_penalty: cache_length must be an integer in [0, {l_max}], got {cache_length!r}")
    out = []
    for ids in completion_ids:
        n = len(ids)
        if n <= l_max - cache:
            out.append(0.0)
        elif n <= l_max:
            out.append((l_max - cache - n) / cache)
        else:
            out.append(-1.0)
    return out


def repetition_penalty(
    prompts: list[str], completions: list[str], completion_ids: list[list[int]] | None = None, ngram: int = 3, **kw: Any
) -> list[float]:
    """``-(1 - unique / total)`` over each completion's token n-grams (the repetition penalty of
    Yeo et al. 2025, "Demystifying Long Chain-of-Thought Reasoning in LLMs", arXiv:2502.03373).

    ``total = L - n + 1`` overlapping n-grams of the ``L`` completion tokens, ``unique`` the
    number of distinct ones; 0.0 for fewer than ``n`` tokens. No repeat gives 0; a completion
    that is one n-gram over and over tends to -1.

    Args:
        completion_ids: ``N`` token-id lists.
        ngram: ``n`` >= 1.

    Returns:
        ``N`` floats in (-1, 0].

    Raises:
        UserError: ``completion_ids`` missing or of the wrong length; ``ngram`` < 1.
    """
    _check_ids(completion_ids, completions, "repetition_penalty")
    if isinstance(ngram, bool) or not isinstance(ngram, int) or ngram < 1:
        raise UserError(f"repetition_penalty: ngram must be a positive integer, got {ngram!r}")
    out = []
    for ids in completion_ids:
        ids = list(ids)
        total = len(ids) - ngram + 1
        if total <= 0:
            out.append(0.0)
            continue
        unique = len({tuple(ids[i : i + ngram]) for i in range(total)})
        out.append(-(1.0 - unique / total))
    return out


# --------------------------------------------------------------------------------------------
# Reward model
# --------------------------------------------------------------------------------------------


class RewardModelScorer:
    """A reward function backed by a :class:`~minigpt.model.reward_model.MiniGPTRewardModel`.

    Each sample is scored as ``prompt_ids + completion_ids + [<|im_end|>]``: the completion
    ids come without their stop token, and the reward model was trained on replies closed by
    ``<|im_end|>`` (the ChatML template), so the scored text matches its training data.

    Args:
        reward_model: a ``MiniGPTRewardModel`` (anything with ``rewards`` output, ``config`` and
            parameters); used in eval mode without gradients (its mode is restored), on its
            own device.
        tokenizer: gives the ``<|im_end|>`` id.
        batch_size: sequences per forward pass.
        max_length: longest scored sequence in tokens; a longer one keeps its last
            ``max_length`` tokens (the prompt's start is dropped, so the end the ``"last"``
            pooling reads stays). None: no cut.

    Raises:
        UserError: the tokenizer has no ``<|im_end|>`` token; ``batch_size`` or ``max_length``
            not a positive int.
    """

    __name__ = "reward_model"

    def __init__(
        self, reward_model: torch.nn.Module, tokenizer: Any, batch_size: int = 16, max_length: int | None = None
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"RewardModelScorer: batch_size must be a positive integer, got {batch_size!r}")
        bad_length = isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1
        if max_length is not None and bad_length:
            raise UserError(f"RewardModelScorer: max_length must be a positive integer or None, got {max_length!r}")
        im_end = tokenizer.convert_tokens_to_ids(IM_END)
        if im_end is None or im_end == getattr(tokenizer, "unk_token_id", None):
            raise UserError(
                f"RewardModelScorer: the tokenizer has no {IM_END!r} token (a ChatML tokenizer is required)"
            )
        self.reward_model = reward_model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        self.im_end_id = int(im_end)
        pad = getattr(reward_model.config, "pad_token_id", None)
        if pad is None:
            pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = 0 if pad is None else int(pad)

    def sequences(self, prompt_ids: list[list[int]], completion_ids: list[list[int]]) -> list[list[int]]:
        """The id lists that get scored: ``prompt + completion + [im_end]``, cut to
        ``max_length`` from the left."""
        seqs = [list(p) + list(c) + [self.im_end_id] for p, c in zip(prompt_ids, completion_ids)]
        if self.max_length is not None:
            seqs = [s[-self.max_length :] for s in seqs]
        return seqs

    def __call__(
        self,
        prompts: list[str],
        completions: list[str],
        prompt_ids: list[list[int]] | None = None,
        completion_ids: list[list[int]] | None = None,
        **kw: Any,
    ) -> list[float]:
        """Rewards of the ``N`` samples, ``batch_size`` at a time: each batch is right-padded
        to ``(b, T)`` with its attention mask and passed to ``reward_model(...).rewards``
        (``(b,)`` fp32).

        Raises:
            UserError: ``prompt_ids`` / ``completion_ids`` missing or not ``N`` long.
        """
        n = len(completions)
        for name, col in (("prompt_ids", prompt_ids), ("completion_ids", completion_ids)):
            if col is None:
                raise UserError(f"reward_model: needs the {name!r} column (token ids of every sample)")
            if len(col) != n:
                raise UserError(f"reward_model: {name!r} holds {len(col)} rows for {n} completions")
        seqs = self.sequences(prompt_ids, completion_ids)
        model = self.reward_model
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        out: list[float] = []
        try:
            with torch.no_grad():
                for start in range(0, n, self.batch_size):
                    chunk = seqs[start : start + self.batch_size]
                    t = max(len(s) for s in chunk)
                    ids = torch.full((len(chunk), t), self.pad_id, dtype=torch.long)
                    mask = torch.zeros((len(chunk), t), dtype=torch.long)
                    for i, s in enumerate(chunk):
                        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
                        mask[i, : len(s)] = 1
                    rewards = model(input_ids=ids.to(device), attention_mask=mask.to(device)).rewards  # (b,)
                    out.extend(rewards.float().cpu().tolist())
        finally:
            model.train(was_training)
        return out


# --------------------------------------------------------------------------------------------
# Registry, spec parsing, combination
# --------------------------------------------------------------------------------------------

#: The rule rewards by spec name; ``"model"`` (a :class:`RewardModelScorer`) is added by
#: :func:`make_reward`.
REWARD_FUNCTIONS: dict[str, RewardFn] = {
    "format": format_reward,
    "answer": answer_reward,
    "length": length_penalty,
    "repetition": repetition_penalty,
}
_MODEL = "model"


def parse_reward_spec(spec: str | Sequence[str], extra_names: Iterable[str] = ()) -> list[tuple[str, float]]:
    """Parse a reward spec into ``[(name, weight), ...]`` in the given order.

    ``"format,answer"``, ``"format:0.5,answer"`` or ``["format", "answer:2"]`` (list items may
    themselves hold commas); a name without ``:weight`` has weight 1.0. Names come from
    :data:`REWARD_FUNCTIONS`, ``"model"`` and ``extra_names`` (user functions given to
    :func:`make_reward`).

    Raises:
        UserError: an empty spec or item, an unknown name (the message lists the known ones), a
            weight that is not a finite number, a name given twice.
    """
    if isinstance(spec, str):
        items = spec.split(",")
    elif isinstance(spec, Sequence) and all(isinstance(s, str) for s in spec):
        items = [part for s in spec for part in s.split(",")]
    else:
        raise UserError(
            f"reward spec: expected a string like 'format,answer:2' or a list of such strings, got {spec!r}"
        )
    known = [*REWARD_FUNCTIONS, _MODEL, *(n for n in extra_names if n not in REWARD_FUNCTIONS and n != _MODEL)]
    out: list[tuple[str, float]] = []
    for item in items:
        name, sep, weight_text = (part.strip() for part in item.partition(":"))
        if not name:
            raise UserError(f"reward spec {spec!r}: empty reward name in item {item.strip()!r}")
        if name not in known:
            raise UserError(f"reward spec {spec!r}: unknown reward {name!r}; known: {', '.join(known)}")
        weight = 1.0
        if sep:
            try:
                weight = float(weight_text)
            except ValueError:
                weight = math.nan
            if not math.isfinite(weight):
                raise UserError(
                    f"reward spec {spec!r}: weight of {name!r} must be a finite number, got {weight_text!r}"
                )
        if any(name == n for n, _ in out):
            raise UserError(f"reward spec {spec!r}: reward {name!r} given twice")
        out.append((name, weight))
    if not out:  # pragma: no cover - "".split(",") gives [""], caught above as an empty name
        raise UserError(f"reward spec {spec!r}: no reward function named")
    return out


def _slice_columns(columns: Mapping[str, Any], i: int, n: int) -> dict[str, Any]:
    """Columns of sample ``i`` alone: every length-``n`` list cut to ``[i : i + 1]``, the rest
    passed as is."""
    out = {}
    for key, value in columns.items():
        if isinstance(value, (list, tuple)) and len(value) == n:
            out[key] = value[i : i + 1]
        else:
            out[key] = value
    return out


class CombinedReward:
    """The weighted sum of reward functions, with every function's output checked.

    ``total_i = sum_k w_k * r_k,i`` with ``None`` counted as 0.

    Each function is called once on the whole batch. Only if that raises is it called again
    one sample at a time, to name the first sample it fails on (so a function is called more
    than once only on the way to an error).

    Args:
        functions: ``[(name, fn, weight), ...]``; names must be distinct.

    Raises:
        UserError: a duplicate name, a non-callable ``fn`` or one that cannot be called by
            keyword (``_check_keyword_call``), a weight that is not a finite number.
    """

    def __init__(self, functions: Sequence[tuple[str, RewardFn, float]]) -> None:
        seen: set[str] = set()
        checked = []
        for name, fn, weight in functions:
            if name in seen:
                raise UserError(f"CombinedReward: reward function name {name!r} given twice")
            if not callable(fn):
                raise UserError(f"CombinedReward: reward function {name!r} is not callable ({type(fn).__name__})")
            if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight):
                raise UserError(f"CombinedReward: weight of {name!r} must be a finite number, got {weight!r}")
            _check_keyword_call(name, fn)
            seen.add(name)
            checked.append((name, fn, float(weight)))
        self.functions: list[tuple[str, RewardFn, float]] = checked

    @property
    def names(self) -> list[str]:
        """The function names, in order."""
        return [name for name, _, _ in self.functions]

    def _call(
        self, name: str, fn: RewardFn, prompts: list[str], completions: list[str], columns: dict
    ) -> Sequence[Any]:
        """``fn`` on the whole batch; on an exception, find the first sample it fails on alone
        (calling it once per sample) and name it in a UserError."""

        def call(p: list[str], c: list[str], cols: dict) -> Sequence[Any]:
            return fn(prompts=p, completions=c, **cols)

        try:
            return call(prompts, completions, columns)
        except Exception as exc:  # noqa: BLE001 - re-raised as a UserError naming the function
            batch_exc = exc
        n = len(completions)
        for i in range(n):
            try:
                call(prompts[i : i + 1], completions[i : i + 1], _slice_columns(columns, i, n))
            except Exception as exc:  # noqa: BLE001
                prompt = str(prompts[i])[:60] if i < len(prompts) else ""
                raise UserError(
                    f"reward function {name!r} failed on sample {i} (prompt: {prompt!r}): {type(exc).__name__}: {exc}"
                ) from exc
        raise UserError(
            f"reward function {name!r} failed on the batch of {n} samples (no single sample fails alone): "
            f"{type(batch_exc).__name__}: {batch_exc}"
        ) from batch_exc

    def __call__(
        self, prompts: list[str], completions: list[str], **columns: Any
    ) -> tuple[list[float], dict[str, list[float | None]]]:
        """Score ``N`` completions.

        Returns:
            ``(total, per_function)``: ``total`` ``N`` floats; ``per_function[name]`` the ``N``
            values of each function as floats, ``None`` kept where a function returned it.

        Raises:
            UserError: ``prompts`` and ``completions`` of different lengths; a function
                raised (the message names it, the first sample it fails on
                and that sample's prompt); returned a non-sequence, the wrong number of values
                (both counts named), or a value that is not a number / not finite (function and
                sample index named).
        """
        n = len(completions)
        if len(prompts) != n:
            raise UserError(f"CombinedReward: {len(prompts)} prompts for {n} completions")
        total = [0.0] * n
        per_function: dict[str, list[float | None]] = {}
        for name, fn, weight in self.functions:
            result = self._call(name, fn, prompts, completions, columns)
            if isinstance(result, torch.Tensor):
                result = result.detach().cpu().reshape(-1).tolist()
            if isinstance(result, (str, bytes)) or not isinstance(result, Sequence):
                raise UserError(
                    f"reward function {name!r} returned {type(result).__name__}, expected a list of {n} floats"
                )
            if len(result) != n:
                raise UserError(f"reward function {name!r} returned {len(result)} values for {n} completions")
            values: list[float | None] = []
            for i, r in enumerate(result):
                if r is None:
                    values.append(None)
                    continue
                if not isinstance(r, numbers.Real):
                    raise UserError(f"reward function {name!r} returned a non-number for sample {i}: {r!r}")
                r = float(r)
                if not math.isfinite(r):
                    raise UserError(f"reward function {name!r} returned {r} for sample {i}")
                values.append(r)
                total[i] += weight * r
            per_function[name] = values
        return total, per_function


def _check_keyword_call(name: str, fn: RewardFn) -> None:
    """Refuse a reward function that cannot be called as TRL calls it, by keyword
    (`fn(prompts=…, completions=…, **columns)`): one with a required parameter of another name
    and no `completions` parameter (e.g. `lambda p, c: …`).

    Raises:
        UserError: naming the function and the call it must accept.
    """
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin or C callable: nothing to inspect, use keywords
        return
    required = [p.name for p in params.values() if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if "completions" not in params and required:
        raise UserError(
            f"reward function {name!r} takes ({', '.join(required)}): reward functions are called by keyword as in TRL, "
            "fn(prompts=…, completions=…, **columns); name its parameters prompts and completions"
        )


def make_reward(
    spec: str | Sequence[str],
    reward_model: torch.nn.Module | None = None,
    tokenizer: Any = None,
    max_completion_length: int | None = None,
    functions: Mapping[str, RewardFn] | None = None,
) -> CombinedReward:
    """Build a :class:`CombinedReward` from a spec (see :func:`parse_reward_spec`).

    ``"model"`` becomes a :class:`RewardModelScorer` of ``reward_model`` and ``tokenizer``;
    ``"length"`` is :func:`length_penalty` with ``max_completion_length`` bound; ``functions``
    adds user reward functions by name (a user function named like a built-in replaces it).

    Raises:
        UserError: bad spec; ``"model"`` without ``reward_model`` and ``tokenizer``; ``"length"``
            without ``max_completion_length``; a user function that is not callable.
    """
    functions = dict(functions or {})
    for name, fn in functions.items():
        if not callable(fn):
            raise UserError(f"make_reward: user reward function {name!r} is not callable ({type(fn).__name__})")
    built = []
    for name, weight in parse_reward_spec(spec, extra_names=functions):
        if name in functions:
            fn = functions[name]
        elif name == _MODEL:
            if reward_model is None or tokenizer is None:
                raise UserError("make_reward: reward 'model' needs a reward_model and its tokenizer")
            fn = RewardModelScorer(reward_model, tokenizer)
        elif name == "length":
            if max_completion_length is None:
                raise UserError("make_reward: reward 'length' needs max_completion_length")
            fn = functools.partial(length_penalty, max_completion_length=max_completion_length)
        else:
            fn = REWARD_FUNCTIONS[name]
        built.append((name, fn, weight))
    return CombinedReward(built)


def as_combined_reward(reward_funcs: Any, reward_model=None, tokenizer=None, max_completion_length: int | None = None) -> CombinedReward | None:
    """The reward argument of the Python-API trainers as a `CombinedReward` (None stays None):
    a `CombinedReward` as it is; a spec string or a list of names (`make_reward`); TRL's list of
    functions (each weighted 1, named by `__name__`) or of `(name, fn, weight)`; one callable.

    Raises:
        UserError: anything else.
    """
    if reward_funcs is None:
        return None
    if isinstance(reward_funcs, CombinedReward):
        return reward_funcs
    if isinstance(reward_funcs, (str, list)) and all(isinstance(x, str) for x in ([reward_funcs] if isinstance(reward_funcs, str) else reward_funcs)):
        return make_reward(reward_funcs, reward_model=reward_model, tokenizer=tokenizer, max_completion_length=max_completion_length)
    if isinstance(reward_funcs, list):  # TRL's `reward_funcs=[f, g]`, or (name, fn, weight) triples
        return CombinedReward([(getattr(f, "__name__", f"reward_{i}"), f, 1.0) if callable(f) else f for i, f in enumerate(reward_funcs)])
    if callable(reward_funcs):
        return CombinedReward([(getattr(reward_funcs, "__name__", "reward"), reward_funcs, 1.0)])
    raise UserError("reward_funcs must be a CombinedReward, a spec string like 'format,answer', a list or a callable")
