"""Tiny random chat models saved to disk for recipe tests (imported by the test modules)."""

from __future__ import annotations

from pathlib import Path

import torch

from minigpt.model import MiniGPTConfig, MiniGPTForCausalLM
from minigpt.tokenizer import train_tokenizer


def save_tiny_chat_model(out_dir: Path, texts: list[str], vocab_size: int = 300, max_position_embeddings: int = 96, seed: int = 0,
                         **config: object):
    """Train a byte-level BPE tokenizer (with the chat specials) on `texts`, build a random
    2-layer MiniGPT (hidden 32, 4 heads, 2 KV heads, initializer_range 0.1, any other
    `MiniGPTConfig` field from `config`) seeded with `seed`, and save both to `out_dir`.
    Returns `(tokenizer, model)`."""
    tok = train_tokenizer(texts, vocab_size=vocab_size, out_dir=out_dir)
    torch.manual_seed(seed)
    cfg = MiniGPTConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=max_position_embeddings, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id, bos_token_id=None, initializer_range=0.1, **config,
    )
    model = MiniGPTForCausalLM(cfg)
    model.save_pretrained(out_dir)
    return tok, model


class TokenBlocks:
    """A token stream cut into blocks for the causal-LM objective: item `i` is `{"input_ids":
    tokens[i·B : (i+1)·B], "targets": the same shifted by one}` (aligned targets, no padding)."""

    def __init__(self, tokens: torch.Tensor, block: int) -> None:
        self.tokens, self.block = tokens, block

    def __len__(self) -> int:
        return (len(self.tokens) - 1) // self.block

    def __getitem__(self, i: int) -> dict:
        s = i * self.block
        return {"input_ids": self.tokens[s : s + self.block], "targets": self.tokens[s + 1 : s + self.block + 1]}


def random_blocks(vocab_size: int, n_blocks: int, block: int = 16, seed: int = 0) -> TokenBlocks:
    """`n_blocks` blocks of a seeded uniform random stream of ids below `vocab_size`."""
    g = torch.Generator().manual_seed(seed)
    return TokenBlocks(torch.randint(0, vocab_size, (n_blocks * block + 1,), generator=g), block)
