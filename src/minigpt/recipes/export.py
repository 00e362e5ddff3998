"""`minigpt export`: a trained MiniGPT directory as a Llama / Mistral / Mixtral checkpoint for
transformers, or as one GGUF file for llama.cpp and Ollama (`minigpt.model.export`,
`minigpt.model.gguf_export` do the work)."""

from __future__ import annotations

from pathlib import Path

from minigpt.errors import UserError

#: The formats `minigpt export --to` writes.
SUPPORTED_FORMATS = ("llama", "mistral", "mixtral", "gguf")


def export_command(
    model: str,
    to: str = "llama",
    out: str | None = None,
    tokenizer: str | None = None,
    dtype: str | None = None,
    overwrite: bool = False,
) -> Path:
    """`minigpt export`: convert a trained MiniGPT directory to another format.

    Args:
        model: the MiniGPT model (or run) directory.
        to: target format: `llama` (a `transformers` `LlamaForCausalLM` checkpoint), `mistral`
            (dense, keeps a sliding window), `mixtral` (mixture of experts), or `gguf`
            (one llama.cpp file with the tokenizer, chat template and stop tokens, plus an
            Ollama `Modelfile` beside it: `ollama create NAME -f OUT/Modelfile`).
        out: output directory (for gguf: a directory, or a file name ending in .gguf);
            default `<model>-<to>` beside the model directory.
        tokenizer: tokenizer directory to copy, if not the model directory.
        dtype: weight dtype of the export (`float32`, `bfloat16`, `float16`; gguf: `float32`
            or `float16`); default: as saved (gguf: float32).
        overwrite: write over files that no export made: an existing `.gguf` file or
            `Modelfile`, or into a non-empty folder (files of the export's names are replaced;
            nothing else is touched). Without it those are refused before any work.

    Returns:
        The output directory.

    Raises:
        UserError: on an unsupported format, a reward model, encoder or embedder, an output
            that would overwrite files no export made (without `overwrite`), an unwritable
            output, and as `export_to_llama` does.
    """
    from minigpt.model.export import export_to_hf

    fmt = to.lower()
    if fmt not in SUPPORTED_FORMATS:
        raise UserError(f"unsupported export format {to!r}; supported: {', '.join(SUPPORTED_FORMATS)}")
    if out:
        out_dir = Path(out)
    else:
        src = Path(model).resolve()
        out_dir = src.parent / f"{src.name}-{fmt}"
    if fmt == "gguf":
        from minigpt.model.gguf_export import export_to_gguf

        folder = out_dir.suffix != ".gguf"
        target = out_dir / f"{Path(model).resolve().name}.gguf" if folder else out_dir
        path = export_to_gguf(model, target, dtype=dtype, tokenizer_dir=tokenizer, overwrite=overwrite, own_folder=folder)
        print(f"exported {model} -> {path} (gguf) and {path.parent / 'Modelfile'}; "
              f"run it with llama.cpp (llama-cli -m {path}) or Ollama (ollama create NAME -f {path.parent / 'Modelfile'})")
        return path
    path = export_to_hf(model, out_dir, fmt, tokenizer_dir=tokenizer, dtype=dtype, overwrite=overwrite)
    print(f"exported {model} -> {path} ({fmt}); load it with transformers.{fmt.capitalize()}ForCausalLM.from_pretrained({str(path)!r})")
    return path


__all__ = ["SUPPORTED_FORMATS", "export_command"]
