"""`minigpt generate`: sample text from a trained model, streaming tokens as they come."""

from __future__ import annotations

import sys

from minigpt.inference.options import SamplingOptions

#: `minigpt generate`'s sampling defaults.
#: `max_new_tokens` 0 = the model's own reply budget (`generation_config.max_new_tokens`), else 200.
GENERATE_SAMPLING = SamplingOptions(max_new_tokens=0, temperature=0.8, top_k=50, top_p=0.95, repetition_penalty=1.0)


def _engine(model, tok, dtype: str = "fp32"):
    from minigpt.inference.loading import engine_dtype

    from minigpt.inference import GenerationEngine

    return GenerationEngine(model, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, dtype=engine_dtype(dtype))


def sample_texts(model, tok, prompts: list[str], max_new_tokens: int = 100, dtype: str = "fp32", **sampling) -> list[str]:
    """Complete each prompt in one left-padded batch; returns the completions' text."""
    ids = [tok.encode(p) for p in prompts]
    out = _engine(model, tok, dtype).generate(ids, max_new_tokens=max_new_tokens, **sampling)
    texts = []
    for row, mask in zip(out.completion_ids, out.completion_mask):
        texts.append(tok.decode(row[mask.bool()].tolist(), skip_special_tokens=True))
    return texts


def stream_text(model, tok, prompt: str, max_new_tokens: int, file=None, dtype: str = "fp32", **sampling) -> str:
    """Print the completion of `prompt` token by token; returns it.

    Text is emitted when it decodes to whole characters (a multi-byte character split over
    two tokens is held back until complete)."""
    file = file or sys.stdout
    ids: list[int] = []
    shown = ""
    for token in _engine(model, tok, dtype).stream(tok.encode(prompt), max_new_tokens=max_new_tokens, **sampling):
        if token == tok.eos_token_id:
            break
        ids.append(token)
        text = tok.decode(ids, skip_special_tokens=True)
        if not text.endswith("\ufffd"):
            file.write(text[len(shown) :])
            file.flush()
            shown = text
    return tok.decode(ids, skip_special_tokens=True)


def generate(
    model: str,
    prompt: str | list[str] = "",
    sampling: SamplingOptions = GENERATE_SAMPLING,
    greedy: bool = False,
    seed: int | None = None,
    device: str = "auto",
    tokenizer: str | None = None,
    dtype: str = "fp32",
    allow_base_mismatch: bool = False,
) -> list[str]:
    """Generate text from a trained model, streaming each completion as it is produced.

    Args:
        model: model directory (e.g. a `minigpt pretrain` run directory).
        prompt: one prompt, or several (each streamed in turn).
        sampling: how completions are sampled (`--sampling.max_new_tokens`, `.temperature`, `.top_k`,
            `.top_p`, `.repetition_penalty`; see `minigpt.inference.options.SamplingOptions`).
            `max_new_tokens` 0 (the default) takes the model's own reply length
            (`generation_config.max_new_tokens`, set by `minigpt sft` from the replies it
            trained on), else 200.
        greedy: always take the most likely token.
        seed: random seed for sampling.
        device: auto, cpu, cuda or mps.
        tokenizer: tokenizer directory if not saved beside the model.
        dtype: decoding precision of the fast engine: fp32 (exactly `model.generate`'s greedy
            tokens), bf16 (about 2.5x faster on CPU), int8 (weight-only quantized, about 5x
            faster at batch 1; approximate).
        allow_base_mismatch: load an adapter on its recorded base even when that base's
            weights are not the ones it was trained on.
    """
    from minigpt.inference.loading import load_model_and_tokenizer

    from minigpt.errors import check_seed

    check_seed(seed)
    net, tok = load_model_and_tokenizer(model, device, tokenizer, allow_base_mismatch)
    from minigpt.inference.chat import model_reply_budget

    budget = model_reply_budget(net, sampling.max_new_tokens, 200)
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    filters = {**sampling.filters(), "seed": seed}
    if greedy:
        filters["temperature"] = 0.0
    outs = []
    for p in prompts:
        sys.stdout.write(p)
        outs.append(stream_text(net, tok, p, budget, dtype=dtype, **filters))
        sys.stdout.write("\n")
    return outs
