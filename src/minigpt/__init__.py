"""minigpt: raw text to an aligned chat model, end to end, on PyTorch.

After `import minigpt`, `MiniGPTConfig` / `MiniGPTForCausalLM` (and the reward model, encoder
and embedder) are registered with `transformers`' Auto classes as soon as those are imported,
so a saved run directory loads with `AutoModelForCausalLM.from_pretrained(run_dir)`. The
package's names are imported on first use: `import minigpt` itself loads neither torch nor
transformers.
"""

import sys as _sys

from minigpt._lazy import lazy_exports

_EXPORTS = {
    "UserError": "minigpt.errors",
    "SFTDataset": "minigpt.data.sft",
    **dict.fromkeys(["PRESETS", "MiniGPT", "MiniGPTConfig", "MiniGPTForCausalLM", "MiniGPTModel", "MiniGPTRewardModel",
                     "apply_lora", "count_parameters"], "minigpt.model"),
    "MiniGPTForMaskedLM": "minigpt.model.encoder",
    "TextAugmentation": "minigpt.data.augment",
    "ContrastiveConfig": "minigpt.objectives.config",
    "create_contrastive_pretrainer": "minigpt.trainers.contrastive",
    "MLMConfig": "minigpt.objectives.config",
    "create_mlm_pretrainer": "minigpt.trainers.mlm",
    "DPOConfig": "minigpt.objectives.config",
    "create_dpo_trainer": "minigpt.trainers.dpo",
    "GRPOConfig": "minigpt.objectives.config",
    "create_grpo_trainer": "minigpt.trainers.grpo",
    "RLHFConfig": "minigpt.objectives.config",
    "create_rlhf_trainer": "minigpt.trainers.rlhf",
    "RewardModelTrainer": "minigpt.trainers.reward_model",
    "create_reward_model": "minigpt.model.reward_model",
    **dict.fromkeys(["RLHFPipeline", "create_rlhf_pipeline"], "minigpt.recipes.pipeline"),
    "Callback": "minigpt.train.callbacks",
    "TrainConfig": "minigpt.train.config",
    **dict.fromkeys(["Trainer", "TrainingDivergedError"], "minigpt.train.loop"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


_MODEL_MODULES = ("minigpt.model.configuration", "minigpt.model.modeling", "minigpt.model.reward_model", "minigpt.model.encoder")
_pending = False


def _register_with_transformers(finishing: str | None = None) -> None:
    """Register the MiniGPT classes with transformers' Auto classes by importing their modules,
    which register themselves. While one of those modules is itself being imported (its own
    transformers imports load the Auto package), the import is postponed: each of them calls
    `_register_if_pending` at its end (`finishing`: its classes are all defined by then), and
    the last to finish does it."""
    global _pending
    import importlib

    if any(m != finishing and getattr(getattr(_sys.modules.get(m), "__spec__", None), "_initializing", False)
           for m in _MODEL_MODULES):
        _pending = True
        return
    _pending = False
    for name in _MODEL_MODULES:
        importlib.import_module(name)


def _register_if_pending(module: str) -> None:
    """Called at the end of each model module (`module`, its name): finish a registration
    postponed while it loaded."""
    if _pending:
        _register_with_transformers(finishing=module)


_AUTO = "transformers.models.auto"
"""The package of transformers' Auto classes: importing it (any use of AutoConfig,
AutoModelForCausalLM, ...) registers MiniGPT first."""


class _RegisterWhenTransformersLoads:
    """A `sys.meta_path` finder that lets the other finders find transformers' Auto package,
    and makes its loader register the MiniGPT classes right after the package has run. So
    `import minigpt` stays cheap (no torch, no transformers), a command that only tokenizes never
    loads torch, and `AutoModelForCausalLM.from_pretrained(run_dir)` still works after
    `import minigpt`, whichever of the two is imported first."""

    def find_spec(self, name, path=None, target=None):
        if name != _AUTO:
            return None
        import importlib.util

        if self in _sys.meta_path:
            _sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module) -> None:
            run(module)
            try:
                _register_with_transformers()
            except Exception as e:  # never break the user's import of transformers
                import warnings

                warnings.warn(f"minigpt could not register its models with transformers: {e}", stacklevel=2)

        spec.loader.exec_module = exec_module
        return spec


if _AUTO in _sys.modules:
    _register_with_transformers()
elif not any(isinstance(f, _RegisterWhenTransformersLoads) for f in _sys.meta_path):
    _sys.meta_path.insert(0, _RegisterWhenTransformersLoads())

try:  # the installed distribution's version: one number, in pyproject.toml
    from importlib.metadata import PackageNotFoundError, version as _version

    __version__ = _version("minigpt")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "Callback",
    "DPOConfig",
    "GRPOConfig",
    "MiniGPTRewardModel",
    "MiniGPTForMaskedLM",
    "MLMConfig",
    "create_mlm_pretrainer",
    "ContrastiveConfig",
    "TextAugmentation",
    "create_contrastive_pretrainer",
    "RLHFConfig",
    "RLHFPipeline",
    "RewardModelTrainer",
    "create_dpo_trainer",
    "create_grpo_trainer",
    "create_rlhf_pipeline",
    "create_rlhf_trainer",
    "create_reward_model",
    "SFTDataset",
    "apply_lora",
    "MiniGPT",
    "MiniGPTConfig",
    "MiniGPTForCausalLM",
    "MiniGPTModel",
    "PRESETS",
    "TrainConfig",
    "Trainer",
    "TrainingDivergedError",
    "UserError",
    "count_parameters",
]
