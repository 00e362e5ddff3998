"""`minigpt export --to gguf`: the file loads in transformers' GGUF reader as a Llama with our
logits and our tokenizer; the rotary reordering by hand; the Ollama Modelfile; refusals; and,
when llama-cpp-python is installed, llama.cpp's greedy tokens equal ours."""

from __future__ import annotations

import json

import pytest
import torch

from minigpt.errors import UserError
from minigpt.model import MiniGPTConfig, MiniGPTForCausalLM
from minigpt.model.gguf_export import export_to_gguf, rotary_to_interleaved

from tiny_models import save_tiny_chat_model

gguf = pytest.importorskip("gguf")
TEXTS = ["hello world, the cat sat on the mat. 1234 一只猫 " + json.dumps({"a": 1})] * 20
PROBE = "hello world, the cat 1234 一只猫"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf")
    tok, model = save_tiny_chat_model(root / "model", TEXTS)
    path = export_to_gguf(root / "model", root / "out" / "model.gguf")
    return root, tok, model.eval(), path


def test_the_rotary_reordering_by_hand():
    # One head of width 4: rotate-half pairs rows (0, 2) and (1, 3); llama.cpp pairs adjacent
    # rows, so the order becomes 0, 2, 1, 3. Two heads are reordered each on its own.
    w = torch.arange(8.0)[:, None]
    assert rotary_to_interleaved(w, 2)[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    assert rotary_to_interleaved(w, 1)[:, 0].tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


def test_transformers_reads_the_gguf_as_a_llama_with_our_logits_and_tokens(exported):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root, tok, model, path = exported
    llama = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name).eval()
    assert type(llama).__name__ == "LlamaForCausalLM"
    ids = torch.tensor([tok(PROBE)["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(llama(ids).logits, model(ids).logits, atol=1e-5)
    theirs = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    for text in (PROBE, "<|im_start|>user\nhi<|im_end|>\n", "x = [1, 22, 333]"):
        assert theirs(text, add_special_tokens=False)["input_ids"] == tok(text, add_special_tokens=False)["input_ids"]
    assert theirs.chat_template == tok.chat_template


def test_the_file_records_the_chat_format(exported):
    root, tok, model, path = exported
    reader = gguf.GGUFReader(str(path))

    def value(key):
        field = reader.fields[key]
        return field.contents()

    assert value("general.architecture") == "llama"
    assert value("tokenizer.ggml.pre") == "starcoder"
    assert value("tokenizer.ggml.eot_token_id") == tok.convert_tokens_to_ids("<|im_end|>")
    assert value("tokenizer.ggml.eos_token_id") == tok.eos_token_id
    assert value("tokenizer.chat_template") == tok.chat_template
    assert value("llama.context_length") == model.config.max_position_embeddings
    names = {t.name for t in reader.tensors}
    assert "blk.1.attn_q.weight" in names and "output.weight" not in names  # tied embeddings
    modelfile = (path.parent / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./model.gguf\n")
    assert 'PARAMETER stop "<|im_end|>"' in modelfile and "{{ .Content }}<|im_end|>" in modelfile


def test_fp16_export_is_close_and_half_the_size(exported, tmp_path):
    from transformers import AutoModelForCausalLM

    root, tok, model, path = exported
    half = export_to_gguf(root / "model", tmp_path / "half.gguf", dtype="fp16")
    assert half.stat().st_size < 0.75 * path.stat().st_size
    llama = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="half.gguf", dtype=torch.float32).eval()
    ids = torch.tensor([tok(PROBE)["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(llama(ids).logits, model(ids).logits, atol=2e-2)


def test_what_llama_cpp_cannot_express_is_refused(exported, tmp_path):
    root, tok, _, _ = exported
    cfg = MiniGPTConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=4, num_key_value_heads=2, attention_bias=True)
    MiniGPTForCausalLM(cfg).save_pretrained(tmp_path / "biased")
    tok.save_pretrained(tmp_path / "biased")
    with pytest.raises(UserError, match="biases"):
        export_to_gguf(tmp_path / "biased", tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists() and not list(tmp_path.glob(".x.gguf*"))
    with pytest.raises(UserError, match="float32 or float16"):
        export_to_gguf(root / "model", tmp_path / "y.gguf", dtype="int4")


def test_the_export_command_writes_gguf_and_modelfile(exported, tmp_path, capsys):
    from minigpt.cli import main

    root, _, _, _ = exported
    assert main(["export", "--model", str(root / "model"), "--to", "gguf", "--out", str(tmp_path / "ollama")]) == 0
    assert (tmp_path / "ollama" / "model.gguf").is_file() and (tmp_path / "ollama" / "Modelfile").is_file()
    assert "ollama create" in capsys.readouterr().out


def test_llama_cpp_greedy_tokens_equal_ours(exported):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install -e '.[llamacpp]' builds llama.cpp)")
    from minigpt.inference import GenerationEngine

    root, tok, model, path = exported
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=model.config.max_position_embeddings, n_threads=1, verbose=False)
    engine = GenerationEngine(model, eos_token_id=[], pad_token_id=tok.pad_token_id)
    for prompt in ("hello", "the cat sat", "1234 一只猫", "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"):
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == ids, prompt
        ours = engine.generate([ids], max_new_tokens=24, temperature=0).completion_ids[0].tolist()
        llm.reset()
        theirs = []
        for t in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, repeat_penalty=1.0, reset=True):
            theirs.append(t)
            if len(theirs) == len(ours):
                break
        assert theirs == ours, prompt
