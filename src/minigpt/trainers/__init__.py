"""The Python-API trainers: one `train_step` per batch, each running its algorithm's objective
through the training loop's optimizer step (`minigpt.train.step.OptimizerStep`).

- `reward_model`: `RewardModelTrainer` (Bradley–Terry, Ouyang et al. 2022)
- `dpo`: `create_dpo_trainer` (the DPO family and KTO, Rafailov et al. 2023)
- `grpo`: `create_grpo_trainer` (GRPO / GSPO, Shao et al. 2024)
- `rlhf`: `create_rlhf_trainer` (PPO-RLHF, Ouyang et al. 2022)
- `mlm`: `create_mlm_pretrainer` (BERT, Devlin et al. 2019)
- `contrastive`: `create_contrastive_pretrainer` (SimCLR / MoCo)

`base` holds what they share. The names are imported on first use (`minigpt._lazy`)."""

from minigpt._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["ContrastivePretrainer", "create_contrastive_pretrainer"], "minigpt.trainers.contrastive"),
    **dict.fromkeys(["DPOTrainer", "create_dpo_trainer"], "minigpt.trainers.dpo"),
    **dict.fromkeys(["GRPOTrainer", "create_grpo_trainer"], "minigpt.trainers.grpo"),
    **dict.fromkeys(["MLMPretrainer", "create_mlm_pretrainer"], "minigpt.trainers.mlm"),
    **dict.fromkeys(["RewardModelTrainer"], "minigpt.trainers.reward_model"),
    **dict.fromkeys(["RLHFTrainer", "create_rlhf_trainer"], "minigpt.trainers.rlhf"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)
