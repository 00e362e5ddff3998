"""Data: raw-text and record loaders, the pretraining token cache, packing, splitting and
sampling, SFT datasets (rendered conversations with loss masks), preference datasets (pairs
and KTO examples) and generated SFT sets."""

from minigpt.data.loaders import DOC_SEPARATOR, SUPPORTED_SUFFIXES, iter_documents, iter_records, resolve_source
from minigpt.data.pretrain import (
    FORMAT_VERSION,
    BlockSampler,
    PackedDataset,
    TokenFile,
    build_token_file,
    split_train_val,
)
from minigpt.data.preference import (
    PreferenceDataset,
    PreferencePair,
    UnpairedExample,
    UnpairedPreferenceDataset,
    collate_preference,
    collate_unpaired,
    split_preference,
)
from minigpt.data.sft import (
    PackedSFTDataset,
    PaddedSFTDataset,
    SFTDataset,
    collate_packed,
    collate_padded,
    split_examples,
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
    "iter_records",
    "PreferenceDataset",
    "PreferencePair",
    "UnpairedExample",
    "UnpairedPreferenceDataset",
    "collate_preference",
    "collate_unpaired",
    "split_preference",
    "PackedSFTDataset",
    "PaddedSFTDataset",
    "SFTDataset",
    "collate_packed",
    "collate_padded",
    "split_examples",
    "resolve_source",
    "split_train_val",
]
