"""Self-supervised pretraining of encoders as Python APIs: masked-LM (BERT, Devlin et al. 2019)
and contrastive learning (SimCLR, Chen et al. 2020; MoCo, He et al. 2020).

The names are imported on first use (`minigpt._lazy`): importing the package is cheap."""

from minigpt._lazy import lazy_exports

_EXPORTS = {
    "TextAugmentation": "minigpt.data.augment",
    "ContrastiveConfig": "minigpt.pretraining.contrastive",
    "ContrastivePretrainer": "minigpt.pretraining.contrastive",
    "create_contrastive_pretrainer": "minigpt.pretraining.contrastive",
    "MLMConfig": "minigpt.pretraining.mlm",
    "MLMPretrainer": "minigpt.pretraining.mlm",
    "create_mlm_pretrainer": "minigpt.pretraining.mlm",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "ContrastiveConfig",
    "ContrastivePretrainer",
    "MLMConfig",
    "MLMPretrainer",
    "TextAugmentation",
    "create_contrastive_pretrainer",
    "create_mlm_pretrainer",
]
