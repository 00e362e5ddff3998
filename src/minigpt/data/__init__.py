"""Data: raw-text and record loaders, the pretraining token cache, packing, splitting and
sampling, SFT datasets (rendered conversations with loss masks), preference datasets (pairs
and KTO examples) and generated SFT sets.

The names are imported on first use (`minigpt._lazy`): importing the package is cheap."""

from minigpt._lazy import lazy_exports

_EXPORTS = {
    "DOC_SEPARATOR": "minigpt.data.loaders",
    "SUPPORTED_SUFFIXES": "minigpt.data.loaders",
    "iter_documents": "minigpt.data.loaders",
    "iter_records": "minigpt.data.loaders",
    "resolve_source": "minigpt.data.loaders",
    "FORMAT_VERSION": "minigpt.data.pretrain",
    "PackedDataset": "minigpt.data.pretrain",
    "DocumentAlignedDataset": "minigpt.data.pretrain",
    "TokenFile": "minigpt.data.pretrain",
    "build_token_file": "minigpt.data.pretrain",
    "split_train_val": "minigpt.data.pretrain",
    "PreferenceDataset": "minigpt.data.preference",
    "PreferencePair": "minigpt.data.preference",
    "UnpairedExample": "minigpt.data.kto",
    "UnpairedPreferenceDataset": "minigpt.data.kto",
    "collate_preference": "minigpt.data.preference",
    "collate_unpaired": "minigpt.data.kto",
    "split_preference": "minigpt.data.preference",
    "PackedSFTDataset": "minigpt.data.sft",
    "PaddedSFTDataset": "minigpt.data.sft",
    "SFTDataset": "minigpt.data.sft",
    "collate_packed": "minigpt.data.sft",
    "collate_padded": "minigpt.data.sft",
    "split_examples": "minigpt.data.sft",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "DOC_SEPARATOR",
    "SUPPORTED_SUFFIXES",
    "FORMAT_VERSION",
    "PackedDataset",
    "DocumentAlignedDataset",
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
