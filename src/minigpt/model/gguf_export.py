"""Export a MiniGPT checkpoint to GGUF, the file format of llama.cpp (and so of Ollama, LM Studio,
llama-cpp-python), with an Ollama `Modelfile` beside it.

The model is written as llama.cpp's `llama` architecture through the `gguf` package's
`GGUFWriter` (the writer llama.cpp's own converter uses). What has to change on the way:

* **Rotary layout.** Hugging Face Llama checkpoints (and MiniGPT) rotate pairs of dimensions
  `(i, i + d/2)` of each head ("rotate half"); llama.cpp's `llama` architecture rotates
  adjacent pairs `(2i, 2i + 1)`. The rows of `q_proj` and `k_proj` are therefore reordered
  within each head so that row `2i` is old row `i` and row `2i + 1` is old row `i + d/2`;
  attention scores are unchanged, since queries and keys are permuted alike.
* **Names.** `model.layers.N.self_attn.q_proj.weight` becomes `blk.N.attn_q.weight`, and so on
  (`gguf.TENSOR_NAMES`).
* **Tokenizer.** The byte-level BPE vocabulary and merges go in as a `gpt2` tokenizer. MiniGPT's
  pre-tokenizer splits every digit apart and then applies GPT-2's regex, which is the split
  llama.cpp calls `starcoder`, so that is the pre-tokenizer type recorded. Special tokens are
  marked as control tokens; `<|im_end|>` is recorded as the end-of-turn token and the
  end-of-text token as EOS, so llama.cpp stops a chat reply where MiniGPT does. The ChatML
  template (`tokenizer.chat_template`) is stored too.

Weights are written in fp32 (exact) or fp16; norms always in fp32.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from minigpt.errors import UserError

#: llama.cpp's name for MiniGPT's pre-tokenization (single digits, then GPT-2's regex).
GGUF_PRE_TOKENIZER = "starcoder"

_LAYER_TENSORS = {
    "input_layernorm.weight": "attn_norm",
    "self_attn.q_proj.weight": "attn_q",
    "self_attn.k_proj.weight": "attn_k",
    "self_attn.v_proj.weight": "attn_v",
    "self_attn.o_proj.weight": "attn_output",
    "post_attention_layernorm.weight": "ffn_norm",
    "mlp.gate_proj.weight": "ffn_gate",
    "mlp.up_proj.weight": "ffn_up",
    "mlp.down_proj.weight": "ffn_down",
}


def rotary_to_interleaved(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Reorder the rows of a query or key projection from the rotate-half layout to the
    adjacent-pairs layout, head by head.

    Args:
        weight: `(num_heads · D, in)` (a `q_proj` or `k_proj` weight; for keys, `num_heads` is
            the number of key/value heads).
        num_heads: heads in the projection.

    Returns `(num_heads · D, in)`: within each head, row `2i` is input row `i` and row
    `2i + 1` is input row `i + D/2`.
    """
    out_dim = weight.shape[0]
    d = out_dim // num_heads
    return weight.reshape(num_heads, 2, d // 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def _tokenizer_tables(tok) -> tuple[list[str], list[int], list[str]]:
    """(tokens in id order, their GGUF token types, merges as "a b")."""
    import gguf

    vocab = tok.get_vocab()
    size = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [int(gguf.TokenType.UNUSED)] * size
    for text, idx in vocab.items():
        tokens[idx] = text
        types[idx] = int(gguf.TokenType.NORMAL)
    for idx, added in tok.added_tokens_decoder.items():
        tokens[idx] = added.content
        types[idx] = int(gguf.TokenType.CONTROL if added.special else gguf.TokenType.USER_DEFINED)
    state = json.loads(tok.backend_tokenizer.to_str())
    model = state.get("model", {})
    if model.get("type") != "BPE":
        raise UserError(f"GGUF export supports byte-level BPE tokenizers, not {model.get('type')!r}")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, types, merges


def export_to_gguf(
    model_dir: str | os.PathLike,
    out: str | os.PathLike,
    dtype: str | None = None,
    tokenizer_dir: str | os.PathLike | None = None,
    modelfile: bool = True,
    overwrite: bool = False,
    own_folder: bool = False,
) -> Path:
    """Write `model_dir` as one GGUF file `out` (and an Ollama `Modelfile` beside it).

    Args:
        model_dir: a MiniGPT model directory with its tokenizer.
        out: the `.gguf` file to write (written to a temporary name, then renamed).
        dtype: `float32`/`fp32` (default, exact) or `float16`/`fp16` for the 2-D weights.
        tokenizer_dir: where the tokenizer is, if not in `model_dir`.
        modelfile: also write `Modelfile` (Ollama) next to `out`: `FROM ./<file>`, the ChatML
            template, the stop tokens, and the model's generation defaults.
        overwrite: replace an existing `out` or `Modelfile` that no export made (and with
            `own_folder`, write into a folder holding other files). Without it they are refused
            before any work; files a previous export recorded in the folder's
            `minigpt_export.json` are replaced either way.
        own_folder: the folder of `out` is the export's own (`minigpt export --out DIR`): it
            must be new, empty or a previous export, and gets a `minigpt_export.json` record.

    Returns the path of the GGUF file.

    Raises:
        UserError: a model llama.cpp's `llama` architecture cannot express (biases, an
            encoder, a mixture of experts, a sliding window, RoPE scaling other than linear), a
            reward model or embedder, no tokenizer, a tokenizer that is not byte-level BPE or
            lacks a chat template, an unknown dtype, or an output that would replace files no
            export made (without `overwrite`) or cannot be written.
    """
    import gguf

    from minigpt.errors import check_writable
    from minigpt.model.export import EXPORT_MARKER, load_export_source, previous_export_files
    from minigpt.tokenizer import load_tokenizer
    from minigpt.tokenizer.bpe import IM_END

    src = Path(model_dir)
    out = Path(out)
    if out.is_dir():
        raise UserError(f"{out} is a folder; give the .gguf file's name")
    check_writable(out)
    folder = out.parent
    owned: list[str] = []
    if folder.is_dir() and (own_folder or (folder / EXPORT_MARKER).is_file()) and any(folder.iterdir()):
        owned = previous_export_files(folder, overwrite)
    for target in [out] + ([folder / "Modelfile"] if modelfile else []):
        if target.exists() and target.name not in owned and not overwrite:
            raise UserError(f"{target} already exists and no export made it; choose another --out, or pass "
                            "--overwrite to replace it")
    model = load_export_source(src)
    cfg = model.config
    tok_dir = Path(tokenizer_dir) if tokenizer_dir else src
    if not (tok_dir / "tokenizer.json").is_file():
        raise UserError(f"{tok_dir} holds no tokenizer (tokenizer.json), which a GGUF file must carry; "
                        "pass --tokenizer DIR with the model's tokenizer")
    tok = load_tokenizer(tok_dir)
    kind = {None: "float32", "auto": "float32", "float32": "float32", "fp32": "float32", "float16": "float16",
            "fp16": "float16"}.get(dtype if dtype is None else str(dtype).lower())
    if kind is None:
        raise UserError(f"GGUF export dtype must be float32 or float16, not {dtype!r}")
    problems = []
    if getattr(cfg, "use_bidirectional_attention", False):
        problems.append("it is an encoder")
    if cfg.attention_bias or cfg.mlp_bias:
        problems.append("it has attention or feed-forward biases")
    if getattr(cfg, "num_local_experts", 0):
        problems.append("it is a mixture of experts, which this exporter does not write (export --to mixtral for transformers)")
    if getattr(cfg, "sliding_window", None):
        problems.append("it uses sliding-window attention, which llama.cpp's llama architecture lacks (export --to mistral)")
    if getattr(cfg, "qk_norm", False):
        problems.append("it normalises queries and keys (qk_norm), which llama.cpp's llama architecture lacks")
    if getattr(cfg, "hidden_act", "silu") != "silu":
        problems.append(f"its feed-forward uses {cfg.hidden_act}, and llama.cpp's llama architecture SiLU")
    if getattr(cfg, "final_logit_softcapping", None):
        problems.append("it soft-caps its logits (final_logit_softcapping), which llama.cpp's llama architecture does not")
    scaling = dict(cfg.rope_parameters or {})
    rope_type = scaling.get("rope_type", "default")
    if rope_type not in ("default", "linear"):
        problems.append(f"its RoPE scaling {rope_type!r} is not written by this exporter (linear is)")
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    known = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    for i in range(cfg.num_hidden_layers):
        known |= {f"model.layers.{i}.{k}" for k in _LAYER_TENSORS}
    unknown = sorted(set(state) - known)
    if unknown:
        problems.append(f"it has parameters llama.cpp's llama architecture lacks ({', '.join(unknown[:3])})")
    if problems:
        raise UserError(f"{src}: cannot export to GGUF: {'; '.join(problems)}")
    if not getattr(tok, "chat_template", None):
        raise UserError(f"{src}: the tokenizer has no chat template to store in the GGUF file")

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.tmp-", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        w = gguf.GGUFWriter(str(tmp), "llama")
        w.add_name(src.resolve().name)
        w.add_file_type(int(gguf.LlamaFileType.ALL_F32 if kind == "float32" else gguf.LlamaFileType.MOSTLY_F16))
        w.add_context_length(int(cfg.max_position_embeddings))
        w.add_embedding_length(int(cfg.hidden_size))
        w.add_block_count(int(cfg.num_hidden_layers))
        w.add_feed_forward_length(int(cfg.intermediate_size))
        w.add_head_count(int(cfg.num_attention_heads))
        w.add_head_count_kv(int(cfg.num_key_value_heads))
        w.add_key_length(int(cfg.head_dim))
        w.add_value_length(int(cfg.head_dim))
        w.add_rope_dimension_count(int(cfg.head_dim))
        w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
        w.add_rope_freq_base(float(scaling.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))))
        if rope_type == "linear":
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(float(scaling["factor"]))
        w.add_vocab_size(int(cfg.vocab_size))

        tokens, types, merges = _tokenizer_tables(tok)
        if len(tokens) > cfg.vocab_size:
            raise UserError(f"{src}: the tokenizer has {len(tokens)} tokens, the model {cfg.vocab_size}")
        while len(tokens) < cfg.vocab_size:  # embedding rows no token uses
            tokens.append(f"[PAD{len(tokens)}]")
            types.append(int(gguf.TokenType.UNUSED))
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(GGUF_PRE_TOKENIZER)
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        im_end = tok.convert_tokens_to_ids(IM_END)
        if tok.eos_token_id is not None:
            w.add_eos_token_id(int(tok.eos_token_id))
        if isinstance(im_end, int) and im_end != tok.unk_token_id:
            w.add_eot_token_id(int(im_end))
        if tok.pad_token_id is not None:
            w.add_pad_token_id(int(tok.pad_token_id))
        if tok.bos_token_id is not None:
            w.add_bos_token_id(int(tok.bos_token_id))
        w.add_add_bos_token(False)
        w.add_add_eos_token(False)
        w.add_chat_template(tok.chat_template)

        def put(name: str, t: torch.Tensor) -> None:
            array = t.numpy()  # float32
            if kind == "float16" and array.ndim == 2:
                array = array.astype(np.float16)
            w.add_tensor(name, np.ascontiguousarray(array))

        put("token_embd.weight", state["model.embed_tokens.weight"])
        put("output_norm.weight", state["model.norm.weight"])
        if not cfg.tie_word_embeddings:
            put("output.weight", state["lm_head.weight"])
        for i in range(cfg.num_hidden_layers):
            for hf, name in _LAYER_TENSORS.items():
                t = state[f"model.layers.{i}.{hf}"]
                if name == "attn_q":
                    t = rotary_to_interleaved(t, cfg.num_attention_heads)
                elif name == "attn_k":
                    t = rotary_to_interleaved(t, cfg.num_key_value_heads)
                put(f"blk.{i}.{name}.weight", t)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    if modelfile:
        _write_modelfile(out, model)
    if own_folder or (folder / EXPORT_MARKER).is_file():
        from minigpt.train.checkpoint import atomic_write_text

        files = sorted(set(owned) | {out.name, EXPORT_MARKER} | ({"Modelfile"} if modelfile else set()))
        atomic_write_text(folder / EXPORT_MARKER, json.dumps({"format": "gguf", "source": str(src), "files": files},
                                                              indent=2) + "\n")
    return out


def _write_modelfile(gguf_path: Path, model) -> Path:
    """An Ollama Modelfile beside the GGUF file: ChatML template, stop tokens, defaults."""
    from minigpt.tokenizer.bpe import IM_END, IM_START

    gen = getattr(model, "generation_config", None)
    lines = [
        f"FROM ./{gguf_path.name}",
        "",
        '# ChatML, as minigpt renders conversations (the same template is stored in the GGUF file).',
        'TEMPLATE """{{- range .Messages }}' + IM_START + '{{ .Role }}\n{{ .Content }}' + IM_END + '\n{{ end }}'
        + IM_START + 'assistant\n"""',
        f'PARAMETER stop "{IM_END}"',
        f'PARAMETER stop "{IM_START}"',
        f"PARAMETER num_ctx {int(model.config.max_position_embeddings)}",
    ]
    for key, param in (("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k"),
                       ("repetition_penalty", "repeat_penalty")):
        value = getattr(gen, key, None) if gen is not None else None
        if value is not None and getattr(gen, "do_sample", False):
            lines.append(f"PARAMETER {param} {value}")
    path = gguf_path.parent / "Modelfile"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


__all__ = ["GGUF_PRE_TOKENIZER", "export_to_gguf", "rotary_to_interleaved"]
