"""`minigpt.pretraining`: the names the API guide imports for self-supervised pretraining,
gathered in one namespace. Nothing is defined here: the masked-LM (BERT, Devlin et al. 2019) and
contrastive (SimCLR, Chen et al. 2020; MoCo, He et al. 2020) pretrainers live in
`minigpt.trainers.mlm` and `minigpt.trainers.contrastive`, `TextAugmentation` in
`minigpt.data.augment`.

The names are imported on first use (`minigpt._lazy`)."""

from minigpt._lazy import lazy_exports

_EXPORTS = {
    "TextAugmentation": "minigpt.data.augment",
    "ContrastiveConfig": "minigpt.objectives.config",
    **dict.fromkeys(["ContrastivePretrainer", "create_contrastive_pretrainer"], "minigpt.trainers.contrastive"),
    "MLMConfig": "minigpt.objectives.config",
    **dict.fromkeys(["MLMPretrainer", "create_mlm_pretrainer"], "minigpt.trainers.mlm"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)
