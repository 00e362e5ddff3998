"""The RLHF pipeline: SFT -> reward model -> PPO from one config (the three stages of
Ouyang et al. 2022, arXiv:2203.02155).

    pipeline = create_rlhf_pipeline("rlhf.json")      # or a dict
    pipeline.run_full_pipeline()                       # or run_sft / run_reward_training / run_ppo_training

Each stage is the stage's own recipe (`minigpt sft`, `minigpt reward`, `minigpt ppo`), run
through the one training loop, so a stage run by the pipeline equals the same stage run by
hand. `save_dir` ends up holding:

    config.json       the resolved pipeline config
    logs/pipeline.log every stage's messages (level `log_level`), plus each stage's
                      metrics.jsonl inside its own directory
    sft/              the SFT model (loadable with AutoModelForCausalLM)
    reward_model/     the reward model (AutoModelForSequenceClassification / MiniGPTRewardModel)
    ppo/              the PPO policy (top level), its critic (ppo/value_model/) and a resumable
                      checkpoint every `save_interval` iterations (ppo/checkpoints/)

A stage whose directory already holds a finished model is resumed (`--resume` semantics: its
last checkpoint is continued up to the configured steps), so re-running the pipeline after a
crash redoes nothing that was finished.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from minigpt.errors import UserError
from minigpt.config import DictConfig
from minigpt.train.config import TrainConfig

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass
class RLHFPipelineConfig(DictConfig):
    """Every field of the pipeline's config (the original design's names), with the stage each one drives."""

    model_name: str = "tiny"
    """The starting model: a pretrained model directory (`minigpt pretrain`), or a preset name
    (tiny, small, base) for a randomly initialised model with the tokenizer at
    `tokenizer_path`."""
    tokenizer_path: str | None = None
    """Tokenizer directory; needed when `model_name` is a preset or a directory without one."""
    device: str = "auto"
    """auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps."""
    sft_data_path: str | None = None
    """SFT conversations (any `minigpt sft` format)."""
    sft_epochs: float = 1.0
    """Passes over the SFT data."""
    sft_batch_size: int = 8
    """Sequences per SFT micro-batch."""
    sft_lr: float = 1e-4
    """Peak SFT learning rate."""
    reward_data_path: str | None = None
    """Preference pairs (`{"prompt","chosen","rejected"}` or HH-RLHF transcripts)."""
    reward_epochs: float = 1.0
    """Passes over the preference pairs."""
    reward_lr: float = 1e-5
    """Peak reward-model learning rate."""
    reward_batch_size: int = 8
    """Pairs per reward-model micro-batch."""
    freeze_reward_backbone: bool = False
    """Train only the reward model's score head."""
    ppo_data_path: str | None = None
    """Prompts for PPO (any `minigpt ppo` prompt format; preference records give their prompts)."""
    ppo_iterations: int = 100
    """PPO iterations: rollout batches, each followed by `ppo_epochs` passes over it in
    micro-batches of `ppo_mini_batch_size` (so `ppo_iterations × ppo_epochs × ⌈ppo_batch_size
    / ppo_mini_batch_size⌉` optimizer updates in all)."""
    ppo_lr_policy: float = 1e-5
    """Policy (actor) learning rate."""
    ppo_lr_value: float = 1e-5
    """Value model (critic) learning rate."""
    ppo_batch_size: int = 8
    """Prompts per rollout batch."""
    ppo_mini_batch_size: int = 0
    """Rows per PPO micro-batch (0 = the whole rollout batch)."""
    ppo_epochs: int = 4
    """Optimisation passes over each rollout batch."""
    max_length: int = 512
    """Tokens per SFT conversation / preference pair; PPO prompt + completion."""
    save_dir: str = "runs/rlhf"
    """Where the pipeline writes everything (see the module docstring)."""
    save_interval: int = 50
    """Steps between resumable checkpoints of every stage (PPO: iterations)."""
    log_level: str = "INFO"
    """DEBUG, INFO, WARNING or ERROR."""
    ppo_max_new_tokens: int = 64
    """Longest PPO completion (the prompt may use `max_length` minus this)."""
    kl_coef: float = 0.1
    """PPO's per-token KL penalty coefficient."""
    seed: int = 1337
    """Seed of every stage."""

    def __post_init__(self) -> None:
        if str(self.log_level).upper() not in _LOG_LEVELS:
            raise UserError(f"log_level must be one of {', '.join(_LOG_LEVELS)}, not {self.log_level!r}")
        self.log_level = str(self.log_level).upper()
        for name in ("sft_batch_size", "reward_batch_size", "ppo_batch_size", "ppo_iterations", "ppo_epochs", "max_length", "save_interval", "ppo_max_new_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise UserError(f"pipeline field {name!r} must be a positive integer, got {value!r}")
        if self.ppo_max_new_tokens >= self.max_length:
            raise UserError(f"ppo_max_new_tokens {self.ppo_max_new_tokens} must be below max_length {self.max_length}")



class RLHFPipeline:
    """SFT -> reward model -> PPO (Ouyang et al. 2022). See the module docstring for `save_dir`.

    Args:
        config: `RLHFPipelineConfig` or a dict of its fields.

    Raises:
        UserError: unknown fields or bad values; a stage whose data path is missing (raised when
            that stage runs, naming the field).
    """

    def __init__(self, config: RLHFPipelineConfig | Mapping[str, Any]) -> None:
        self.config = config if isinstance(config, RLHFPipelineConfig) else RLHFPipelineConfig.from_dict(config, where="pipeline config")
        self.save_dir = Path(self.config.save_dir)
        self.sft_dir = self.save_dir / "sft"
        self.reward_dir = self.save_dir / "reward_model"
        self.ppo_dir = self.save_dir / "ppo"
        self.results: dict[str, dict] = {}
        self._logger: logging.Logger | None = None

    # ------------------------------------------------------------------ plumbing
    @property
    def logger(self) -> logging.Logger:
        """The pipeline's logger: `save_dir/logs/pipeline.log` and the console."""
        if self._logger is None:
            (self.save_dir / "logs").mkdir(parents=True, exist_ok=True)
            log = logging.getLogger(f"minigpt.pipeline.{self.save_dir.resolve()}")
            log.setLevel(self.config.log_level)
            log.propagate = False
            fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
            fh = logging.FileHandler(self.save_dir / "logs" / "pipeline.log", encoding="utf-8")
            fh.setFormatter(fmt)
            sh = logging.StreamHandler()
            sh.setFormatter(logging.Formatter("%(message)s"))
            log.handlers = [fh, sh]
            self._logger = log
        return self._logger

    def _stage_output(self, stage: str):
        """Copy everything the stage prints into `save_dir/logs/<stage>.log` too."""
        import contextlib
        import sys

        (self.save_dir / "logs").mkdir(parents=True, exist_ok=True)
        log = open(self.save_dir / "logs" / f"{stage}.log", "a", encoding="utf-8")
        stack = contextlib.ExitStack()
        stack.callback(log.close)
        stack.enter_context(contextlib.redirect_stdout(_Tee(sys.stdout, log)))
        return stack

    def _say(self, *parts: Any, **_: Any) -> None:
        self.logger.info(" ".join(str(p) for p in parts))

    def _write_config(self) -> None:
        from minigpt.train.checkpoint import atomic_write_text

        self.save_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.save_dir / "config.json", json.dumps(dataclasses.asdict(self.config), indent=2) + "\n")

    def _need(self, field: str) -> str:
        value = getattr(self.config, field)
        if not value:
            raise UserError(f"pipeline field {field!r} is required for this stage")
        if not Path(value).exists():
            raise UserError(f"pipeline field {field!r}: {value} does not exist")
        return value

    def _train(self, **kw: Any) -> TrainConfig:
        c = self.config
        base = dict(device=c.device, seed=c.seed, save_interval=c.save_interval, progress=False, tensorboard=False)
        base.update(kw)
        return TrainConfig(**base)

    @staticmethod
    def _finished(run_dir: Path) -> bool:
        return (run_dir / "run.json").is_file()

    def _starting_model(self) -> str:
        """A model directory for SFT: `model_name` itself, or a fresh preset model saved under
        `save_dir/init` with the tokenizer of `tokenizer_path`."""
        c = self.config
        path = Path(c.model_name)
        if path.is_dir():
            if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
                if not c.tokenizer_path:
                    raise UserError(f"{path} has no tokenizer; set tokenizer_path")
                return self._with_tokenizer(path)
            return str(path)
        from minigpt.model import PRESETS

        if c.model_name not in PRESETS:
            raise UserError(f"model_name {c.model_name!r} is neither a model directory nor a preset ({', '.join(sorted(PRESETS))})")
        if not c.tokenizer_path:
            raise UserError("a preset model_name needs tokenizer_path (a tokenizer from `minigpt tokenizer`)")
        init = self.save_dir / "init"
        if not (init / "config.json").is_file():
            import torch

            from minigpt.model import MiniGPTConfig, MiniGPTForCausalLM
            from minigpt.tokenizer import load_tokenizer

            tok = load_tokenizer(c.tokenizer_path)
            torch.manual_seed(c.seed)
            cfg = MiniGPTConfig.from_preset(
                c.model_name, vocab_size=len(tok), max_position_embeddings=max(c.max_length, PRESETS[c.model_name]["max_position_embeddings"]),
                pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None,
            )
            MiniGPTForCausalLM(cfg).save_pretrained(init)
            tok.save_pretrained(init)
            self._say(f"initialised a {c.model_name} model at {init}")
        return str(init)

    def _with_tokenizer(self, path: Path) -> str:
        import shutil

        from minigpt.tokenizer import load_tokenizer

        init = self.save_dir / "init"
        if not (init / "config.json").is_file():
            shutil.copytree(path, init, dirs_exist_ok=True)
            load_tokenizer(self.config.tokenizer_path).save_pretrained(init)
        return str(init)

    # ------------------------------------------------------------------ stages
    def run_sft(self) -> dict:
        """Supervised fine-tuning of `model_name` on `sft_data_path` into `save_dir/sft`."""
        from minigpt.recipes.sft import sft

        c = self.config
        self._write_config()
        data = self._need("sft_data_path")
        start = self._starting_model()
        self._say(f"[sft] {start} on {data} -> {self.sft_dir}")
        train = self._train(epochs=c.sft_epochs, batch_size=c.sft_batch_size, lr=c.sft_lr, warmup_steps=10)
        with self._stage_output("sft"):
            metrics = sft(model=start, data=data, out=str(self.sft_dir), max_length=c.max_length, train=train, **self._restart(self.sft_dir))
        self.results["sft"] = metrics
        self._say(f"[sft] done: {_brief(metrics)}")
        return metrics

    def run_reward_training(self) -> dict:
        """The reward model on `reward_data_path`, initialised from the SFT model, into
        `save_dir/reward_model`."""
        from minigpt.recipes.reward import reward

        c = self.config
        self._write_config()
        data = self._need("reward_data_path")
        self._require_model(self.sft_dir, "run_sft")
        self._say(f"[reward] {self.sft_dir} on {data} -> {self.reward_dir}")
        train = self._train(epochs=c.reward_epochs, batch_size=c.reward_batch_size, lr=c.reward_lr, warmup_steps=10)
        with self._stage_output("reward"):
            metrics = reward(
                model=str(self.sft_dir), data=data, out=str(self.reward_dir), max_length=c.max_length,
                freeze_backbone=c.freeze_reward_backbone, train=train, **self._restart(self.reward_dir),
            )
        self.results["reward"] = metrics
        self._say(f"[reward] done: {_brief(metrics)}")
        return metrics

    def run_ppo_training(self) -> dict:
        """PPO of the SFT policy against the reward model on `ppo_data_path` into `save_dir/ppo`:
        `ppo_iterations` rollouts, a checkpoint every `save_interval` of them, the final policy
        and critic. The critic starts from the SFT model with a new value head."""
        from minigpt.recipes.ppo import PPO_SAMPLING, ppo

        c = self.config
        self._write_config()
        data = self._need("ppo_data_path")
        self._require_model(self.sft_dir, "run_sft")
        self._require_model(self.reward_dir, "run_reward_training")
        self._say(f"[ppo] {self.sft_dir} against {self.reward_dir} on {data} -> {self.ppo_dir}")
        updates = self.ppo_updates_per_iteration()
        train = self._train(
            max_steps=c.ppo_iterations * updates, batch_size=c.ppo_batch_size, lr=c.ppo_lr_policy, warmup_steps=0,
            min_lr_ratio=1.0, weight_decay=0.0, log_interval=1, eval_interval=c.save_interval * updates,
            save_interval=c.save_interval * updates,
        )
        with self._stage_output("ppo"):
            metrics = ppo(
                model=str(self.sft_dir), data=data, out=str(self.ppo_dir), reward_model=str(self.reward_dir), reward="model",
                value_model=str(self.sft_dir),  # the critic starts from the SFT model, with a new value head
                ppo_epochs=c.ppo_epochs, kl_coef=c.kl_coef, value_lr=c.ppo_lr_value, mini_batch_size=c.ppo_mini_batch_size,
                sampling=dataclasses.replace(PPO_SAMPLING, max_new_tokens=c.ppo_max_new_tokens), max_prompt_length=c.max_length - c.ppo_max_new_tokens, train=train,
                **self._restart(self.ppo_dir),
            )
        self.results["ppo"] = metrics
        self._say(f"[ppo] done: {_brief(metrics)}")
        return metrics

    def ppo_updates_per_iteration(self) -> int:
        """Optimizer updates of one PPO iteration: `ppo_epochs` passes over a rollout of
        `ppo_batch_size` completions in micro-batches of `ppo_mini_batch_size` (0: all)."""
        c = self.config
        size = c.ppo_mini_batch_size or c.ppo_batch_size
        return c.ppo_epochs * -(-c.ppo_batch_size // size)

    def run_full_pipeline(self) -> dict[str, dict]:
        """`run_sft`, `run_reward_training`, `run_ppo_training` in order; returns each stage's
        final metrics by stage name."""
        self.run_sft()
        self.run_reward_training()
        self.run_ppo_training()
        self._say(f"pipeline finished; policy at {self.ppo_dir}")
        return self.results

    # ------------------------------------------------------------------ helpers
    def _restart(self, run_dir: Path) -> dict[str, bool]:
        """Continue a stage that has a checkpoint (after a crash, or finished earlier); start a
        stage without one afresh, discarding whatever a crash before its first checkpoint left."""
        from minigpt.train.checkpoint import latest_checkpoint

        resume = latest_checkpoint(run_dir) is not None
        return {"resume": resume, "overwrite": not resume}

    @staticmethod
    def _require_model(run_dir: Path, stage: str) -> None:
        if not (run_dir / "config.json").is_file():
            raise UserError(f"{run_dir} holds no model yet; run {stage}() first")


class _Tee:
    """A text stream that writes to two others."""

    def __init__(self, a, b) -> None:
        self.a, self.b = a, b

    def write(self, text: str) -> int:
        self.a.write(text)
        self.b.write(text)
        return len(text)

    def flush(self) -> None:
        self.a.flush()
        self.b.flush()


def _brief(metrics: dict) -> str:
    keys = [k for k in ("steps", "val_loss", "val_accuracy", "mean_reward", "mean_kl", "val_reward") if k in metrics]
    return ", ".join(f"{k} {metrics[k]:.4g}" if isinstance(metrics[k], float) else f"{k} {metrics[k]}" for k in keys)


def create_rlhf_pipeline(config: str | Path | Mapping[str, Any] | RLHFPipelineConfig) -> RLHFPipeline:
    """An `RLHFPipeline` from a dict, an `RLHFPipelineConfig` or a JSON file path.

    Raises:
        UserError: an unreadable or invalid JSON file (named, with the line of a syntax error),
            unknown fields, bad values.
    """
    if isinstance(config, (str, Path)):
        path = Path(config)
        if not path.is_file():
            raise UserError(f"pipeline config {path} does not exist")
        try:
            values = json.loads(path.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
        return RLHFPipeline(RLHFPipelineConfig.from_dict(values, where=str(path)))
    return RLHFPipeline(config)


def pipeline_command(pipeline_config: str, stage: str = "all") -> dict:
    """Run the RLHF pipeline (SFT -> reward model -> PPO) from a JSON config.

    Args:
        pipeline_config: path of the pipeline's JSON config (the fields of `RLHFPipelineConfig`).
        stage: all, sft, reward or ppo.
    """
    p = create_rlhf_pipeline(pipeline_config)
    runs = {"all": p.run_full_pipeline, "sft": p.run_sft, "reward": p.run_reward_training, "ppo": p.run_ppo_training}
    if stage not in runs:
        raise UserError(f"--stage must be one of {', '.join(runs)}, not {stage!r}")
    return runs[stage]()


pipeline_command.cli_positional = True  # `minigpt pipeline CONFIG.json`
