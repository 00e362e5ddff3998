"""Data: raw-text loaders, the pretraining token cache, packing, splitting and sampling."""

from minigpt.data.loaders import DOC_SEPARATOR, SUPPORTED_SUFFIXES, iter_documents, resolve_source
from minigpt.data.pretrain import (
    FORMAT_VERSION,
    BlockSampler,
    PackedDataset,
    TokenFile,
    build_token_file,
    split_train_val,
)

__all__ = [
    "DOC_SEPARATOR",
    "SUPPORTED_SUFFIXES",
    "FORMAT_VERSION",
    "BlockSampler",
    "PackedDataset",
    "TokenFile",
    "build_token_file",
    "iter_documents",
    "resolve_source",
    "split_train_val",
]
