"""Self-supervised pretraining of encoders as Python APIs: masked-LM (BERT, Devlin et al. 2019).
Contrastive pretraining (SimCLR, MoCo) follows."""

from minigpt.pretraining.mlm import MLMConfig, MLMPretrainer, create_mlm_pretrainer

__all__ = ["MLMConfig", "MLMPretrainer", "create_mlm_pretrainer"]
