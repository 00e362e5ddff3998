"""Byte-level BPE tokenizer: training, saving/loading, chat template and byte accounting.

The tokenizer is the GPT-2 style byte-level BPE (Radford et al. 2019, "Language Models are
Unsupervised Multitask Learners", section 2.2; BPE itself from Sennrich et al. 2016): every
UTF-8 byte is first mapped to one printable character, and merges are learned over those
characters. Because the 256 byte characters are all in the initial alphabet, any text encodes
without an unknown token and decodes back to exactly the same string.

The special tokens take the ids 0..7, in the order of :data:`SPECIAL_TOKENS`, so every tokenizer
trained here agrees on them no matter what corpus it saw.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from minigpt.errors import UserError, first_line

from minigpt.tokenizer.special import (
    EOS_TOKEN,
    IM_END,
    IM_START,
    MASK_TOKEN,
    PAD_TOKEN,
    REASONING_TAGS,
    SPECIAL_TOKENS,
)

#: Default ``model_max_length`` stored with the tokenizer. It only bounds ``truncation=True``
#: calls; the model's own context length lives in the model config (RoPE scaling can extend it),
#: so this is set well above any context we train at rather than tied to one model.
DEFAULT_MODEL_MAX_LENGTH = 32768

# ChatML (as used by Qwen/minimind): each message is
#   <|im_start|>{role}\n{content}<|im_end|>\n
# and the generation prompt opens an assistant turn. No system prompt is injected: a default
# system prompt would silently change every SFT example and every chat. Content may be a string,
# None (an assistant turn that only calls tools) or a list of {"type": "text", "text": ...} parts
# (the multimodal message format of transformers), of which only the text parts are kept.
CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant', 'tool'] -%}"
    "{{ raise_exception('chat template: unknown role ' + message['role']"
    " + ' (expected system, user, assistant or tool)') }}"
    "{%- endif -%}"
    "{%- if message['content'] is none -%}{%- set content = '' -%}"
    "{%- elif message['content'] is string -%}{%- set content = message['content'] -%}"
    "{%- else -%}{%- set content = message['content'] | selectattr('type', 'equalto', 'text')"
    " | map(attribute='text') | join('') -%}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

# Files `save_pretrained` writes that `load_tokenizer` needs; tokenizer.json holds the model.
_TOKENIZER_FILE = "tokenizer.json"


def _byte_level_alphabet() -> frozenset[str]:
    """The 256 characters byte-level BPE uses to stand for the 256 byte values."""
    return frozenset(pre_tokenizers.ByteLevel.alphabet())


def byte_level_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """The pre-tokenizer :func:`train_tokenizer` installs: every digit its own piece, then
    GPT-2's byte-level split.

    Splitting digits one by one is what Llama (Touvron et al. 2023, section 2.1), DeepSeek and
    Qwen2 do: BPE would otherwise merge whatever digit pairs the corpus happens to repeat (``415``
    became ``4`` + ``15`` and ``83`` became ``8`` + ``3``), so the same digit would get a
    different token in each number and column-wise arithmetic could not be learned. Neither
    step changes a character, so ``decode(encode(text)) == text`` still holds;
    ``add_prefix_space=False`` means a leading space is never invented.
    """
    return pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 6400,
    min_frequency: int = 2,
    out_dir: str | Path | None = None,
    model_max_length: int = DEFAULT_MODEL_MAX_LENGTH,
    mask_token: bool = False,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` and wrap it for ``transformers``.

    Args:
        texts: documents (str). Any iterable, consumed once; a generator is fine, so a corpus
            larger than memory can be streamed.
        vocab_size: final vocabulary size, special tokens and the 256 byte tokens included.
            Fewer ids result if the corpus runs out of pairs seen ``min_frequency`` times.
        min_frequency: a pair must occur at least this often to be merged.
        out_dir: if given, the tokenizer is saved there with ``save_pretrained`` (the directory
            is created), loadable by ``PreTrainedTokenizerFast.from_pretrained(out_dir)``.
        model_max_length: stored as the tokenizer's ``model_max_length``.
        mask_token: also reserve ``<|mask|>`` at id 8 (its ``mask_token``), for masked-LM
            encoders; ids 0..7 are the same as without it.

    Returns:
        A ``PreTrainedTokenizerFast`` with eos ``<|endoftext|>`` (id 0), pad ``<|pad|>`` (id 1),
        no bos/unk, the ChatML and reasoning tags as extra special tokens (ids 2..7) and
        :data:`CHATML_TEMPLATE` as its chat template. It adds no tokens when encoding.

    Raises:
        UserError: ``vocab_size`` < 256 + len(SPECIAL_TOKENS), ``min_frequency`` < 1, an item
            of ``texts`` is not a str, ``texts`` is itself a single str, or ``texts`` holds no
            characters at all.
    """
    minimum = 256 + len(SPECIAL_TOKENS) + int(mask_token)
    if not isinstance(vocab_size, int) or vocab_size < minimum:
        raise UserError(
            f"vocab_size: must be an integer >= {minimum} (256 byte tokens + "
            f"{len(SPECIAL_TOKENS)} special tokens), got {vocab_size!r}"
        )
    if isinstance(texts, (str, bytes)):
        # A bare string would be iterated character by character: almost surely a mistake.
        raise UserError("texts: expected an iterable of documents (str), got a single string")
    if not isinstance(min_frequency, int) or min_frequency < 1:
        raise UserError(f"min_frequency: must be an integer >= 1, got {min_frequency!r}")

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = byte_level_pre_tokenizer()
    tokenizer.decoder = decoders.ByteLevel()
    # Only fixes offsets; adds no tokens. Set so that transformers does not install its own
    # template post-processor (which would add bos/eos tokens).
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)

    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS) + ([MASK_TOKEN] if mask_token else []),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )

    counted = {"chars": 0, "docs": 0}

    def checked() -> Iterator[str]:
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise UserError(f"texts: item {i} is {type(text).__name__}, expected str")
            counted["chars"] += len(text)
            counted["docs"] += 1
            yield text

    tokenizer.train_from_iterator(checked(), trainer=trainer)
    if counted["chars"] == 0:
        got = f"{counted['docs']} documents, all empty" if counted["docs"] else "no documents"
        raise UserError(f"texts: no characters to train on ({got})")

    hf_tokenizer = _wrap(tokenizer, model_max_length, mask_token)
    if out_dir is not None:
        save_tokenizer(hf_tokenizer, out_dir)
    return hf_tokenizer


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, out_dir: str | Path) -> None:
    """`tokenizer.save_pretrained(out_dir)`, with no half-written file left if it is stopped.

    The files are written to a hidden staging folder inside `out_dir` and renamed into place
    one by one, `tokenizer.json` last: until it is there the folder is not a tokenizer
    (`load_tokenizer` says so), and once it is, every other file is complete. Staging folders
    left by a killed process are removed first.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(".tmp-tokenizer-*"):
        shutil.rmtree(old, ignore_errors=True)
    tmp = out / f".tmp-tokenizer-{os.getpid()}"
    try:
        tokenizer.save_pretrained(str(tmp))
        names = sorted((p.name for p in tmp.iterdir()), key=lambda n: n == _TOKENIZER_FILE)
        for name in names:
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _wrap(tokenizer: Tokenizer, model_max_length: int, mask_token: bool = False) -> PreTrainedTokenizerFast:
    """Wrap a trained ``tokenizers.Tokenizer`` with our special tokens and chat template (and
    ``<|mask|>`` as its ``mask_token`` when it was trained with one)."""
    hf_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        bos_token=None,
        unk_token=None,
        # transformers 5 name for what v4 called additional_special_tokens.
        extra_special_tokens=[IM_START, IM_END, *REASONING_TAGS],
        chat_template=CHATML_TEMPLATE,
        model_max_length=model_max_length,
        # The default cleanup removes spaces before punctuation (" ," -> ","), which would break
        # losslessness.
        clean_up_tokenization_spaces=False,
        padding_side="right",
        **({"mask_token": MASK_TOKEN} if mask_token else {}),
    )
    ids = [hf_tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    if ids != list(range(len(SPECIAL_TOKENS))):
        raise RuntimeError(f"special tokens got ids {ids}, expected 0..{len(SPECIAL_TOKENS) - 1}")
    return hf_tokenizer


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer directory written by :func:`train_tokenizer` (or any ``save_pretrained``).

    Raises:
        UserError: ``path`` does not exist, is not a directory, has no ``tokenizer.json``, or
            its files cannot be parsed (truncated or corrupt).
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"tokenizer path {path}: does not exist")
    if not path.is_dir():
        raise UserError(f"tokenizer path {path}: is not a directory (expected a saved tokenizer)")
    if not (path / _TOKENIZER_FILE).is_file():
        raise UserError(
            f"tokenizer path {path}: no {_TOKENIZER_FILE} inside; train one with "
            "`minigpt tokenizer` or pass a directory written by save_pretrained"
        )
    try:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(path))
    except Exception as e:  # noqa: BLE001 — json, tokenizers and transformers each raise their own
        first = first_line(e)
        raise UserError(f"tokenizer path {path}: its files are unreadable or corrupt ({type(e).__name__}: {first})") from None
    # Saved configs from other tools may leave cleanup on; it must stay off to be lossless.
    tokenizer.clean_up_tokenization_spaces = False
    return tokenizer


def token_byte_lengths(tokenizer: PreTrainedTokenizerFast) -> np.ndarray:
    """Number of UTF-8 bytes of text that each token id stands for.

    Byte-level BPE spells every ordinary token with characters of the 256-character byte
    alphabet, one character per byte, so a token's byte length is its number of characters.
    Special tokens stand for no text and count 0; other added tokens count the UTF-8 length of
    their content. Summing this over the ids of ``encode(text)`` (no special tokens) gives
    ``len(text.encode("utf-8"))`` exactly, which is what bits per byte needs:
    ``bpb = sum(CE_nats) / (ln 2 * sum(byte_lengths[targets]))``.

    Returns:
        int32 array of shape ``(len(tokenizer),)``; ids never assigned stay 0.

    Raises:
        ValueError: a non-added token has a character outside the byte alphabet, i.e. the
            tokenizer is not byte-level.
    """
    vocab = tokenizer.get_vocab()  # token string -> id, added tokens included
    size = max(len(tokenizer), max(vocab.values()) + 1)
    lengths = np.zeros(size, dtype=np.int32)
    added = tokenizer.added_tokens_decoder  # id -> AddedToken
    alphabet = _byte_level_alphabet()
    for token, idx in vocab.items():
        if idx in added:
            lengths[idx] = 0 if added[idx].special else len(added[idx].content.encode("utf-8"))
            continue
        if not set(token) <= alphabet:
            raise ValueError(
                f"token {token!r} (id {idx}) is not spelled in the byte-level alphabet; "
                "token_byte_lengths needs a byte-level BPE tokenizer"
            )
        lengths[idx] = len(token)
    return lengths
