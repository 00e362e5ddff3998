"""Self-supervised pretraining of encoders as Python APIs: masked-LM (BERT, Devlin et al. 2019)
and contrastive learning (SimCLR, Chen et al. 2020; MoCo, He et al. 2020)."""

from minigpt.data.augment import TextAugmentation
from minigpt.pretraining.contrastive import ContrastiveConfig, ContrastivePretrainer, create_contrastive_pretrainer
from minigpt.pretraining.mlm import MLMConfig, MLMPretrainer, create_mlm_pretrainer

__all__ = [
    "ContrastiveConfig",
    "ContrastivePretrainer",
    "MLMConfig",
    "MLMPretrainer",
    "TextAugmentation",
    "create_contrastive_pretrainer",
    "create_mlm_pretrainer",
]
