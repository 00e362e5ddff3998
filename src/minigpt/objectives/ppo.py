"""The PPO-RLHF objective: an actor-critic trained on sampled completions with a KL-penalised
reward (Ziegler et al. 2019, arXiv:1909.08593; Stiennon et al. 2020; Ouyang et al. 2022,
InstructGPT, arXiv:2203.02155 eq. 2).

Producer side (`make_batches`, run by the loop without gradients): sample one completion per
prompt with the rollout engine, score it (a reward model and/or rule rewards: a scalar `s` per
completion), build the per-token reward

    r_t = −kl_coef · KL_t  (+ s on the completion's last token),   KL_t = log π(y_t) − log π_ref(y_t)

read the critic's values `V_t`, and turn `(r, V)` into advantages and returns with GAE
(`minigpt.losses.advantages.gae`), the advantages whitened over the rollout's tokens. The
rollout then becomes `ppo_epochs` passes of shuffled micro-batches of `mini_batch_size` rows,
handed out lazily so that an approximate-KL early stop can drop the rest.

Consumer side (`compute_loss`): PPO's clipped surrogate (Schulman et al. 2017,
arXiv:1707.06347 eq. 7) plus `vf_coef` × the clipped value loss minus `entropy_coef` × the
entropy, per completion token, averaged over the tokens of the optimizer step by the loop.

The model is a `ActorCritic` (policy + critic in one module, so one optimizer
and one checkpoint hold both); its `forward(input_ids, attention_mask, completion_mask,
temperature)` returns `(logprobs, entropy, values)`, each `(B, N)`.

Micro-batch keys (B rows, L = P + N columns, N completion positions):
`input_ids (B, L)`, `attention_mask (B, L)`, `completion_mask (B, N)`, `advantages (B, N)`,
`returns (B, N)`, `values (B, N)` (the critic's at sampling, for value clipping),
optional `old_logprobs (B, N)` (absent while the policy has not been updated since sampling:
the ratio is then exactly 1 and `logprobs.detach()` stands in), `rollout` (the rollout's
number, for the early stop) and `rollout_metrics` (floats).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from minigpt.inference.options import SamplingOptions
from minigpt.errors import UserError
from minigpt.losses.advantages import gae, whiten
from minigpt.losses.kl import AdaptiveKLController, token_rewards
from minigpt.losses.policy import aggregate, clipped_policy_loss, clipped_value_loss
from minigpt.objectives.config import RLHFConfig
from minigpt.train.objective import LossOutput
from minigpt.objectives.rollout import RolloutObjective, eval_mode, reward_means, score_rollout
from minigpt.inference.rollout import Rollout, completion_logprobs
from minigpt.model.lora import has_lora, load_adapter_state
from minigpt.train.distributed import all_reduce_sum


VALUE_MODEL_DIR = "value_model"


class ActorCritic(nn.Module):
    """The policy and its critic in one module, so one optimizer, one gradient clip and one
    checkpoint cover both.

    Args:
        policy: a `MiniGPTForCausalLM` (optionally with LoRA adapters).
        value_model: a `MiniGPTRewardModel` used per token (`token_values`).
        value_lr_scale: the critic learns at this multiple of the optimizer's learning rate
            (set as `value_model.lr_scale`, read by `minigpt.train.optim.param_groups`);
            None leaves the critic's attribute as it is.

    `save_pretrained(dir)` writes the policy at `dir` (so `AutoModelForCausalLM` loads it) and
    the critic at `dir/value_model/`; `load_state_dict` takes `value_model.*` keys for the
    critic and the rest (with or without a `policy.` prefix) for the policy, which is what
    `minigpt.train.checkpoint.load_checkpoint` reads back from such a directory. `config` and
    `tie_weights` are the policy's.
    """

    def __init__(self, policy: nn.Module, value_model: nn.Module, value_lr_scale: float | None = None) -> None:
        super().__init__()
        self.policy = policy
        self.value_model = value_model
        if value_lr_scale is not None:
            value_model.lr_scale = float(value_lr_scale)

    @property
    def config(self):
        return self.policy.config

    @property
    def _tied_weights_keys(self):
        return getattr(self.policy, "_tied_weights_keys", None)

    def tie_weights(self) -> None:
        if hasattr(self.policy, "tie_weights"):
            self.policy.tie_weights()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        completion_mask: torch.Tensor,
        temperature: float = 1.0,
        return_entropy: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Policy log-probs, entropies and critic values of the completion tokens.

        Args:
            input_ids: `(B, P + N)` prompts (left-padded) then completions (right-padded).
            attention_mask: `(B, P + N)` 1 on real tokens.
            completion_mask: `(B, N)` 1 on completion tokens.
            temperature: the sampling temperature (logits are divided by it).
            return_entropy: compute the entropies (else None).

        Returns:
            `(logprobs (B, N), entropy (B, N) | None, values (B, N))` fp32, 0 where
            `completion_mask` is 0. `values[:, t]` is the critic's value of the state before
            completion token t (its hidden state at position `P + t − 1`), the V_t of GAE.
        """
        n = completion_mask.shape[1]
        p = input_ids.shape[1] - n
        if return_entropy:
            logprobs, entropy = completion_logprobs(self.policy, input_ids, attention_mask, completion_mask, temperature, True)
        else:
            logprobs = completion_logprobs(self.policy, input_ids, attention_mask, completion_mask, temperature)
            entropy = None
        values = self.value_model.token_values(input_ids, attention_mask)[:, p - 1 : p + n - 1]  # (B, N)
        values = torch.where(completion_mask.bool(), values, torch.zeros_like(values))
        return logprobs, entropy, values

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> None:
        """Policy at `save_directory`, critic at `save_directory/value_model/`."""
        save_directory = Path(save_directory)
        self.policy.save_pretrained(save_directory, **kwargs)
        self.value_model.save_pretrained(save_directory / VALUE_MODEL_DIR, **kwargs)

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False):
        """Load `value_model.*` keys into the critic and the others into the policy (a
        `policy.` prefix is optional; a policy with LoRA adapters takes the adapter keys of its
        checkpoint, as PEFT names them).

        Returns `(missing_keys, unexpected_keys)` with the prefixes of this module.

        Raises:
            RuntimeError: with `strict`, missing or unexpected keys.
        """
        prefix = VALUE_MODEL_DIR + "."
        critic = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        rest = {k: v for k, v in state_dict.items() if not k.startswith(prefix)}
        prefixed = any(k.startswith("policy.") for k in rest)
        policy = {k[len("policy.") :] if k.startswith("policy.") else k: v for k, v in rest.items()}
        missing: list[str] = []
        unexpected: list[str] = []
        if has_lora(self.policy) and not prefixed:
            unexpected += load_adapter_state(self.policy, policy)
        else:
            result = self.policy.load_state_dict(policy, strict=False, assign=assign)
            missing += list(result.missing_keys)
            unexpected += list(result.unexpected_keys)
        result = self.value_model.load_state_dict(critic, strict=False, assign=assign)
        missing += [prefix + k for k in result.missing_keys]
        unexpected += [prefix + k for k in result.unexpected_keys]
        if strict:
            tied = set(self._tied_weights_keys or ())
            bad_missing = [k for k in missing if k not in tied]
            if bad_missing or unexpected:
                raise RuntimeError(f"ActorCritic.load_state_dict: missing {bad_missing}, unexpected {unexpected}")
        return nn.modules.module._IncompatibleKeys(missing, unexpected)


class PPOObjective(RolloutObjective):
    """PPO-RLHF for the one training loop (see the module docstring).

    Args:
        config: an `RLHFConfig` (`minigpt.objectives.config`).
        sampling: how completions are sampled (`SamplingOptions`; log-probs and entropies
            are taken at its temperature).
        reward_fn: a `minigpt.rewards.functions.CombinedReward` (`(prompts, completions, **columns)
            -> (totals, per_function)`); needs `tokenizer`. Takes precedence over
            `reward_model`.
        tokenizer: decodes prompts and completions for `reward_fn`.
        reward_model: a `MiniGPTRewardModel` scoring `prompt + completion` ids directly (the
            completion ends with the stop token the policy emitted); used without `reward_fn`.
        ref_model: frozen reference policy; None: the policy with its adapters disabled
            (LoRA), an error otherwise (unless `kl_coef` is 0 and fixed).
        engine_dtype: compute dtype of sampling (None = the model's).
        eos_token_id / pad_token_id: stop id(s) and pad id for sampling.
        grad_accum: micro-batches per optimizer step (decides which micro-batches still see
            the sampling policy).
    """

    def __init__(
        self,
        config: RLHFConfig,
        sampling: SamplingOptions,
        reward_fn: Callable | None = None,
        tokenizer=None,
        reward_model: torch.nn.Module | None = None,
        ref_model: torch.nn.Module | None = None,
        engine_dtype: torch.dtype | None = None,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        grad_accum: int = 1,
    ) -> None:
        super().__init__(config, sampling, reward_fn, tokenizer, ref_model, engine_dtype, eos_token_id, pad_token_id, grad_accum)
        self.reward_model = reward_model
        self.kl_ctl = AdaptiveKLController(config.kl_coef, config.kl_target if config.adaptive_kl else None, config.kl_horizon)
        self._yielded = 0  # micro-batches handed out so far (their position in an optimizer step)
        self._rollouts = 0  # rollouts made so far (their number tags their micro-batches)
        self._stopped: int | None = None  # the rollout whose remaining micro-batches are dropped
        self.early_stops = 0  # rollouts cut short by target_kl

    # ------------------------------------------------------------------ state (resume)
    def state_dict(self) -> dict[str, float]:
        """What an exact resume needs besides the weights: the (adaptive) KL coefficient."""
        return self.kl_ctl.state_dict()

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.kl_ctl.load_state_dict(state)

    # ------------------------------------------------------------------ consumer
    def num_units(self, batch: dict[str, Any]) -> int:
        """Completion tokens of the micro-batch (the loss is a token mean over the step)."""
        return int(batch["completion_mask"].sum())

    def compute_loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> LossOutput:
        """Clipped policy loss + vf_coef · clipped value loss − entropy_coef · entropy, summed
        over the micro-batch's completion tokens (the loop divides by the step's tokens)."""
        c = self.config
        mask = batch["completion_mask"]
        logprobs, entropy, values = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], completion_mask=mask, temperature=self.sampling.temperature
        )
        old = batch.get("old_logprobs")
        old = logprobs.detach() if old is None else old
        pg, stats = clipped_policy_loss(logprobs, old, batch["advantages"], mask, c.clip_epsilon)
        vf, vstats = clipped_value_loss(values, batch["values"], batch["returns"], mask, c.clip_range_value)
        per_token = pg + c.vf_coef * vf
        if c.entropy_coef:
            per_token = per_token - c.entropy_coef * entropy
        loss_sum, units = aggregate(per_token, mask, "token")
        n = max(units, 1)
        keep = mask != 0
        with torch.no_grad():
            sums = torch.stack([pg.sum(), vf.sum(), torch.where(keep, entropy.detach(), torch.zeros_like(entropy)).sum()])
            ppo_loss, value_loss, ent = (float(x) / n for x in sums.tolist())
        metrics = {"ppo_loss": ppo_loss, "value_loss": value_loss, "entropy": ent, **stats, **vstats}
        if c.target_kl is not None and "rollout" in batch:
            # One decision for every rank (their mean), so data-parallel ranks stop together.
            total, count = all_reduce_sum([stats["approx_kl"], 1.0], mask.device)
            if total / count > c.target_kl:
                self._stopped = batch["rollout"]
        metrics.update(batch.get("rollout_metrics", {}))
        return LossOutput(loss_sum, units, metrics=metrics)

    # ------------------------------------------------------------------ producer
    def make_batches(self, model: torch.nn.Module, batch: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Prompt batch (`minigpt.data.prompts.collate_prompts`) -> training micro-batches.

        Sampling, scoring and GAE run now; the returned iterator only slices the results
        (lazily, so the early stop can drop what is left)."""
        return self.rollout(model, batch["prompt_ids"], batch.get("prompt"), batch.get("columns"))

    @torch.no_grad()
    def rollout(
        self,
        model: torch.nn.Module,
        prompt_ids: Sequence[Sequence[int]],
        prompts: Sequence[str] | None = None,
        columns: dict[str, list] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Sample one completion per prompt (token-id lists) with `model.policy`, score them, and
        return the micro-batch iterator of `experience`. `prompts` (texts) and `columns` go to
        the reward functions (texts default to the decoded prompt ids)."""
        s = self.sampling
        policy = model.policy
        with eval_mode(policy):
            sample = self.engine(policy).sample(prompt_ids, 1, s.max_new_tokens, s.temperature, s.top_k, s.top_p)
        scores, per_function = self.score(sample, prompt_ids, prompts, columns or {})
        metrics = {
            "completion_length": float(sample.completion_lengths.float().mean()),
            "truncated_fraction": float(sample.truncated.float().mean()),
            **reward_means(per_function),
        }
        return self.experience(model, sample.input_ids, sample.attention_mask, sample.completion_mask, scores, sample.truncated, metrics)

    def score(
        self, sample: Rollout, prompt_ids: Sequence[Sequence[int]], prompts: Sequence[str] | None, columns: dict[str, list]
    ) -> tuple[torch.Tensor, dict[str, list]]:
        """`(scores (B,) fp32, per-function values)` of the sampled completions.

        Raises:
            UserError: neither reward functions (with a tokenizer) nor a reward model.
        """
        device = sample.prompt_ids.device
        if self.reward_fn is not None:
            if self.tokenizer is None:
                raise UserError("PPO's reward functions need a tokenizer to decode the sampled completions")
            return score_rollout(self.reward_fn, self.tokenizer, sample, prompt_ids, prompts, columns)
        if self.reward_model is not None:
            rm = self.reward_model
            with eval_mode(rm):
                rm_device = next(rm.parameters()).device
                out = rm(input_ids=sample.input_ids.to(rm_device), attention_mask=sample.attention_mask.to(rm_device))
            return out.rewards.float().to(device), {}
        raise UserError("PPO needs a reward model or reward functions (with a tokenizer) to score completions")

    @torch.no_grad()
    def experience(
        self,
        model: torch.nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        completion_mask: torch.Tensor,
        scores: torch.Tensor,
        truncated: torch.Tensor | None = None,
        metrics: dict[str, float] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Scored completions -> an iterator over `ppo_epochs` shuffled passes of micro-batches.

        Args: `input_ids (B, L)`, `attention_mask (B, L)`, `completion_mask (B, N)`
        (right-padded), `scores (B,)`, `truncated (B,)` bool (rows without a stop token; they
        lose `missing_eos_penalty`), `metrics` logged with every micro-batch.

        Computes, without gradients and in eval mode: the policy's log-probs and the critic's
        values on the rollout, the reference log-probs, the per-token rewards
        (`token_rewards`), GAE advantages and returns, and updates the adaptive KL coefficient
        (the rewards use the coefficient from before the update). The shuffles of every pass
        are drawn now, so the random stream does not depend on how far the iterator is read.

        Raises:
            UserError: no reference model and no adapters with a KL penalty.
        """
        c = self.config
        mask = completion_mask.long()
        rows = input_ids.shape[0]
        kl_coef = self.kl_ctl.value
        with eval_mode(model):
            logprobs, _, values = model(
                input_ids=input_ids, attention_mask=attention_mask, completion_mask=mask, temperature=self.sampling.temperature, return_entropy=False
            )
            ref = self.reference_logprobs(model.policy, input_ids, attention_mask, mask, logprobs)
        scores = scores.float().to(logprobs.device)
        if c.missing_eos_penalty is not None and truncated is not None:
            scores = scores - c.missing_eos_penalty * truncated.to(scores.device).float()
        rewards, kl = token_rewards(scores, logprobs, ref, mask, kl_coef, c.kl_estimator)
        advantages, returns = gae(rewards, values, mask, c.gamma, c.gae_lambda)
        if c.whiten_advantages:
            advantages = whiten(advantages, mask)
        kl_sum, score_sum, n_rows = all_reduce_sum([float(kl.sum()), float(scores.sum()), float(rows)], scores.device)
        mean_kl = kl_sum / max(n_rows, 1.0)
        mean_score = score_sum / max(n_rows, 1.0)
        self.kl_ctl.update(mean_kl, int(n_rows))
        keep = mask != 0
        n_tok = max(int(keep.sum()), 1)
        m = dict(metrics or {})
        m.update(
            {
                "mean_reward": mean_score,
                "mean_kl": mean_kl,
                "rlhf_reward": mean_score - kl_coef * mean_kl,
                "kl_coef": kl_coef,
                "mean_value": float(torch.where(keep, values, torch.zeros_like(values)).sum()) / n_tok,
                "mean_return": float(returns.sum()) / n_tok,
            }
        )
        size = c.mini_batch_size or rows
        orders = [torch.arange(rows) if e == 0 else torch.randperm(rows) for e in range(c.ppo_epochs)]
        data = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "completion_mask": mask,
            "advantages": advantages,
            "returns": returns,
            "values": values,
            "old_logprobs": logprobs,
        }
        rollout_id = self._rollouts
        self._rollouts += 1
        # Micro-batches until the end of the current optimizer step still see the policy that
        # sampled: their ratio is exactly 1 (old_logprobs left out, logprobs.detach() used).
        on_policy = self.grad_accum - self._yielded % self.grad_accum
        return self._micro_batches(rollout_id, data, orders, size, on_policy, m)

    def _micro_batches(self, rollout_id, data, orders, size, on_policy, metrics) -> Iterator[dict[str, Any]]:
        k = 0
        rows = data["input_ids"].shape[0]
        for order in orders:
            for s in range(0, rows, size):
                if self._stopped == rollout_id:  # a micro-batch of this rollout passed target_kl
                    self.early_stops += 1
                    return
                idx = order[s : s + size].to(data["input_ids"].device)
                mb = {key: value[idx] for key, value in data.items() if key != "old_logprobs" or k >= on_policy}
                mb["rollout"] = rollout_id
                mb["rollout_metrics"] = metrics
                self._yielded += 1
                k += 1
                yield mb

    def reference_logprobs(self, policy, input_ids, attention_mask, completion_mask, logprobs) -> torch.Tensor:
        """Log-probs of the completions under the reference policy (no grad). With a fixed
        zero KL coefficient there is no penalty and no reference: the policy's own log-probs
        stand in (KL 0)."""
        c = self.config
        ref = self.reference_or_none(policy, input_ids, attention_mask, completion_mask)
        if ref is not None:
            return ref
        if c.kl_coef == 0 and not c.adaptive_kl:
            return logprobs
        raise UserError("PPO's KL penalty needs a reference model (or LoRA adapters to disable); pass kl_coef=0 to train without it")


__all__ = ["VALUE_MODEL_DIR", "ActorCritic", "AdaptiveKLController", "PPOObjective", "RLHFConfig", "token_rewards"]
