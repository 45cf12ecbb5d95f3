"""PPO with a learned critic on TRL's current machinery (TRL deleted its ``PPOTrainer`` in 1.13).

``PPOTrainer`` subclasses TRL's ``GRPOTrainer`` and keeps everything it already does well: model loading,
PEFT/4-bit, the reference model (or, with LoRA, the base with adapters disabled), generation, calling the
reward functions, logging. What PPO adds, and all this file writes:

- a critic: a value head on the policy's own backbone (default, one model) or a separate backbone;
- per-token rewards (score on the last token, −β·KL on every token), GAE, whitening (:mod:`rewardkit.ppo_core`);
- the clipped policy/value losses with an optional entropy bonus, several epochs over reshuffled minibatches;
- β from a fixed or adaptive KL controller (:mod:`rewardkit.kl`), the KL estimator chosen from the registry.

Batch vocabulary, in TRL's field names: a *rollout* is ``generation_batch_size`` episodes (prompts ×
``num_generations``), split into ``steps_per_generation`` minibatches of ``per_device_train_batch_size``;
``num_iterations`` is the number of PPO epochs over it. With ``gradient_accumulation_steps=1`` each minibatch is
one optimizer step, so one rollout makes ``steps_per_generation × num_iterations`` optimizer steps.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

import torch
from torch import nn
from trl import GRPOConfig, GRPOTrainer

from rewardkit import ppo_core
from rewardkit.kl import AdaptiveKLController, kl_controller
from rewardkit.trainers.trl_stages import GRPOStage

CRITICS = ("value_head", "separate")
# GRPO fields that mean nothing to PPO's loss: setting one is almost certainly a mistake.
GRPO_ONLY = ("loss_type", "scale_rewards", "multi_objective_aggregation", "importance_sampling_level",
             "top_entropy_quantile", "delta", "off_policy_mask_threshold")


@dataclass
class PPOConfig(GRPOConfig):
    """GRPOConfig plus PPO's fields. ``epsilon`` (and ``epsilon_high``) is the policy clip range."""

    num_generations: int | None = field(default=1, metadata={
        "help": "Completions per prompt, each its own episode; 1 suffices since the critic is the baseline."})
    num_iterations: int = field(default=4, metadata={
        "help": "PPO epochs over each rollout, minibatches reshuffled each epoch (Schulman et al. 2017, K)."})
    beta: float = field(default=0.05, metadata={
        "help": "Initial KL coefficient β of the per-token reward penalty −β·KL(π‖π_ref) (Ziegler et al. 2019); "
                "0 without kl_target: no reference model is used."})
    kl_estimator: str = field(default="k1", metadata={
        "help": "Registered per-token KL estimator (`rewardkit plugins`); k1 is the log-ratio of Ziegler et al."})
    kl_target: float | None = field(default=None, metadata={
        "help": "Adapt β toward this per-sequence KL (nats) (Schulman et al. 2017 §4, Ziegler et al. 2019); "
                "None keeps β fixed."})
    kl_controller: str = field(default="proportional", metadata={
        "help": "With kl_target: 'proportional' (Ziegler et al. 2019) or 'halve_double' (Schulman et al. 2017)."})
    kl_horizon: int = field(default=10000, metadata={
        "help": "Horizon (in episodes) of the proportional KL controller (Ziegler et al. 2019 use 10000)."})
    gamma: float = field(default=1.0, metadata={
        "help": "Discount γ of GAE (Schulman et al. 2016); 1.0 is usual for LM episodes."})
    lam: float = field(default=0.95, metadata={
        "help": "GAE λ trading bias (0: one-step TD) for variance (1: Monte Carlo) (Schulman et al. 2016)."})
    vf_coef: float = field(default=0.1, metadata={
        "help": "Weight of the value loss in the total loss (Schulman et al. 2017, c1)."})
    cliprange_value: float | None = field(default=0.2, metadata={
        "help": "Clip of the value update around the rollout's values (OpenAI baselines PPO2); None: no clip."})
    whiten_advantages: bool = field(default=True, metadata={
        "help": "Normalize advantages to mean 0, std 1 over each rollout's tokens (OpenAI baselines PPO2)."})
    entropy_coef: float = field(default=0.0, metadata={
        "help": "Weight of the entropy bonus (Schulman et al. 2017, c2); 0 disables it."})
    critic: str = field(default="value_head", metadata={
        "help": "'value_head': a linear head on the policy's backbone (one model); 'separate': its own backbone."})
    critic_model: str | None = field(default=None, metadata={
        "help": "With critic='separate', the model its backbone is loaded from (default: the policy's)."})

    def __post_init__(self):
        problems = self.ppo_problems()
        if problems:
            raise ValueError("; ".join(problems))
        n = self.num_generations
        if n == 1:  # GRPO insists on groups of >= 2 for its group baseline; PPO's baseline is the critic.
            self.num_generations = 2
        try:
            super().__post_init__()
        except ValueError as exc:
            if n == 1 and "num_generations" in str(exc):
                raise ValueError(f"with num_generations=1 the rollout (generation_batch_size="
                                 f"{self.generation_batch_size}) must be even (TRL's sampler); {exc}") from None
            raise
        finally:
            self.num_generations = n

    def ppo_problems(self) -> list[str]:
        p = []
        if not 0.0 <= self.gamma <= 1.0:
            p.append(f"gamma must be in [0, 1], got {self.gamma}")
        if not 0.0 <= self.lam <= 1.0:
            p.append(f"lam must be in [0, 1], got {self.lam}")
        if self.vf_coef < 0 or self.entropy_coef < 0 or self.beta < 0:
            p.append(f"vf_coef, entropy_coef and beta must be >= 0, got {self.vf_coef}, {self.entropy_coef}, "
                     f"{self.beta}")
        if self.cliprange_value is not None and self.cliprange_value <= 0:
            p.append(f"cliprange_value must be > 0 or None, got {self.cliprange_value}")
        if self.critic not in CRITICS:
            p.append(f"critic must be one of {', '.join(CRITICS)}, got {self.critic!r}")
        if self.critic_model is not None and self.critic != "separate":
            p.append("critic_model is only used with critic: separate")
        if self.kl_controller not in AdaptiveKLController.MODES:
            p.append(f"kl_controller must be one of {', '.join(AdaptiveKLController.MODES)}, "
                     f"got {self.kl_controller!r}")
        if self.kl_target is not None and (self.kl_target <= 0 or self.beta <= 0):
            p.append(f"kl_target={self.kl_target} needs kl_target > 0 and a starting beta > 0 (got beta="
                     f"{self.beta}); an adaptive β multiplies the current one")
        if self.num_generations is None or self.num_generations < 1:
            p.append(f"num_generations must be >= 1, got {self.num_generations}")
        if self.num_iterations < 1:
            p.append(f"num_iterations (PPO epochs) must be >= 1, got {self.num_iterations}")
        return p

    def describe_batches(self) -> str:
        """The batch arithmetic in the user's numbers."""
        per_step = self.per_device_train_batch_size * self.gradient_accumulation_steps
        steps = self.generation_batch_size * self.num_iterations // max(per_step, 1)
        return (f"rollout = generation_batch_size {self.generation_batch_size} episodes "
                f"({self.generation_batch_size // self.num_generations} prompts x num_generations "
                f"{self.num_generations}) in steps_per_generation {self.steps_per_generation} minibatches of "
                f"per_device_train_batch_size {self.per_device_train_batch_size}; num_iterations "
                f"{self.num_iterations} PPO epochs -> {steps} optimizer steps per rollout (gradient_accumulation_"
                f"steps {self.gradient_accumulation_steps})")


class Critic(nn.Module):
    """V(s_t) for every completion token: a linear head on the policy's hidden states, or on its own backbone."""

    def __init__(self, hidden_size: int, backbone: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.head.weight)  # V ≡ 0 at the start: no spurious advantages before the critic learns
        nn.init.zeros_(self.head.bias)

    def forward(self, shared_hidden, input_ids, attention_mask, logits_to_keep: int) -> torch.Tensor:
        """-> (B, logits_to_keep): the value of the state before each completion token."""
        if self.backbone is None:
            hidden = shared_hidden
        else:
            hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        hidden = hidden[:, -logits_to_keep - 1:-1]  # (B, T, H): position i predicts token i + 1
        return self.head(hidden.to(self.head.weight.dtype)).squeeze(-1)


class PPOTrainer(GRPOTrainer):
    """TRL's GRPOTrainer with PPO's critic, advantages and losses (see the module docstring)."""

    _tag_names = ["trl", "ppo", "rewardkit"]
    _name = "PPO"

    def __init__(self, *args, kl_estimator_fn=None, **kwargs):
        super().__init__(*args, **kwargs)
        cfg = self.args
        if kl_estimator_fn is None:
            from rewardkit.registry import get_registry  # noqa: PLC0415

            kl_estimator_fn = get_registry().kl_estimator(cfg.kl_estimator)
        self.kl_fn = kl_estimator_fn
        self.kl_ctl = kl_controller(cfg.beta, cfg.kl_target, cfg.kl_controller, cfg.kl_horizon)
        self.use_ref = cfg.beta > 0
        # TRL's beta only decided whether to build a reference model; PPO puts the KL into the reward with β from
        # self.kl_ctl, so GRPO's own KL term (and its reference pass) stay off.
        self.beta = 0.0
        policy = self._policy()
        self._hidden = None
        backbone = policy.base_model  # the transformer under the LM head; also under LoRA layers
        backbone.register_forward_hook(self._keep_hidden)
        hidden_size = policy.config.get_text_config().hidden_size
        critic_backbone = None
        if cfg.critic == "separate":
            from transformers import AutoModel  # noqa: PLC0415

            path = cfg.critic_model or policy.config._name_or_path
            critic_backbone = AutoModel.from_pretrained(path, dtype=torch.float32)
            hidden_size = critic_backbone.config.get_text_config().hidden_size
        # A submodule of the trained model, so the Trainer's optimizer, device placement and checkpoints see it.
        self.model.critic = Critic(hidden_size, critic_backbone).to(self.accelerator.device)
        self._rollout = None
        self._rewards_per_func = None

    # ------------------------------------------------------------------ plumbing
    def _policy(self):
        from accelerate.utils import is_peft_model  # noqa: PLC0415

        model = self.accelerator.unwrap_model(self.model)
        return model.get_base_model() if is_peft_model(model) else model

    def _keep_hidden(self, module, args, output):
        self._hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state

    def _forward(self, model, ids, attn, k: int, values: bool = True, entropy: bool = False):
        """One pass: log-probs (B, k) of the completion tokens, their entropies, and the critic's values."""
        self._hidden = None
        logps, ent, _ = self._get_per_token_logps_and_entropies(model, ids, attn, k, compute_entropy=entropy)
        v = None
        if values:
            critic = self.accelerator.unwrap_model(model).critic
            v = critic(self._hidden, ids, attn, k)
        self._hidden = None
        return logps, ent, v

    def _ref_context(self):
        if self.ref_model is not None:
            return self.ref_model, contextlib.nullcontext()
        return self.model, self.accelerator.unwrap_model(self.model).disable_adapter()

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        self._rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        return self._rewards_per_func

    # ------------------------------------------------------------------ rollout
    def _prepare_inputs(self, generation_batch):
        """A new rollout every ``steps_per_generation × num_iterations`` minibatches; reshuffled each epoch."""
        if not self.model.training:
            return super()._prepare_inputs(generation_batch)
        from trl.trainer.utils import shuffle_sequence_dict, split_tensor_dict  # noqa: PLC0415

        spg = self.args.steps_per_generation
        if self._step % (spg * self.num_iterations) == 0 or self._rollout is None:
            self._rollout = self._generate_and_score_completions(generation_batch)
        if self._step % spg == 0 or self._buffered_inputs is None:
            self._buffered_inputs = split_tensor_dict(shuffle_sequence_dict(self._rollout), spg)
        return self._buffered_inputs[self._step % spg]

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)  # TRL generates and calls the reward functions
        if not self.model.training:
            return out
        cfg, metrics = self.args, self._metrics["train"]
        metrics.pop("frac_reward_zero_std", None)  # a GRPO group statistic, meaningless here
        n_local = out["completion_ids"].size(0)
        rank = self.accelerator.process_index
        per_func = self._rewards_per_func[rank * n_local:(rank + 1) * n_local]  # (B, n_funcs)
        scorable = ~torch.isnan(per_func).all(dim=1)  # every reward said "cannot judge": no episode
        score = (per_func * self.reward_weights.to(per_func.device)).nansum(dim=1)  # (B,)
        mask = out["completion_mask"] * scorable[:, None].to(out["completion_mask"].dtype)  # (B, T)
        if "tool_mask" in out:
            mask = mask * out["tool_mask"]
        ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)  # (B, P+T)
        attn = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
        k = out["completion_ids"].size(1)
        bs = cfg.per_device_train_batch_size
        chunks = [slice(i, i + bs) for i in range(0, ids.size(0), bs)]
        with torch.no_grad():
            old = [self._forward(self.model, ids[c], attn[c], k) for c in chunks]
            old_logp = torch.cat([o[0] for o in old])  # (B, T)
            values = torch.cat([o[2] for o in old]).float() * mask  # (B, T)
            if self.use_ref:
                ref_model, ctx = self._ref_context()
                with ctx:
                    ref_logp = torch.cat([self._forward(ref_model, ids[c], attn[c], k, values=False)[0]
                                          for c in chunks])
                kl = self.kl_fn(old_logp, ref_logp) * mask  # (B, T)
            else:
                kl = torch.zeros_like(old_logp)
        beta = self.kl_ctl.beta
        rewards = ppo_core.token_rewards(score, kl, beta, mask)  # (B, T)
        advantages, returns = ppo_core.gae(rewards, values, mask, cfg.gamma, cfg.lam)
        raw_adv = advantages
        if cfg.whiten_advantages:
            advantages = ppo_core.masked_whiten(advantages, mask)
        seq_kl = self.accelerator.gather(kl.sum(1)[scorable]).mean().item() if scorable.any() else 0.0
        self.kl_ctl.update(seq_kl, n_steps=int(self.accelerator.gather(scorable.sum()).sum().item()))
        stats = {"score": self.accelerator.gather(score[scorable]).mean().item() if scorable.any() else 0.0,
                 "kl": seq_kl, "beta": beta, "non_score_reward": -beta * seq_kl,
                 "advantages/mean": ppo_core.masked_mean(raw_adv, mask).item(),
                 "advantages/std": ppo_core.masked_var(raw_adv, mask).sqrt().item(),
                 "returns/mean": ppo_core.masked_mean(returns, mask).item(),
                 "values/mean": ppo_core.masked_mean(values, mask).item(),
                 "explained_variance": ppo_core.explained_variance(values, returns, mask),
                 "unscorable": (~scorable).float().mean().item()}
        for key, val in stats.items():
            metrics[f"ppo/{key}"].append(val)
        out.update(completion_mask=mask, advantages=advantages, returns=returns, old_values=values,
                   old_per_token_logps=old_logp)
        return out

    # ------------------------------------------------------------------ loss
    def _compute_loss(self, model, inputs):
        cfg, metrics = self.args, self._metrics["train"]
        ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attn = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        mask = inputs["completion_mask"]
        k = inputs["completion_ids"].size(1)
        logp, entropy, values = self._forward(model, ids, attn, k, entropy=True)
        pg_loss, pg = ppo_core.policy_loss(logp, inputs["old_per_token_logps"], inputs["advantages"], mask,
                                           cfg.epsilon, cfg.epsilon_high)
        vf_loss, vf = ppo_core.value_loss(values.float(), inputs["old_values"], inputs["returns"], mask,
                                          cfg.cliprange_value)
        mean_entropy = ppo_core.masked_mean(entropy, mask)
        loss = pg_loss + cfg.vf_coef * vf_loss - cfg.entropy_coef * mean_entropy
        for key, val in {"loss/policy": pg_loss.item(), "loss/value": vf_loss.item(),
                         "policy/clipfrac": pg["clipfrac"], "policy/approx_kl": pg["approx_kl"],
                         "value/clipfrac": vf["clipfrac"], "entropy": mean_entropy.item()}.items():
            metrics[f"ppo/{key}"].append(val)
        return loss / self.current_gradient_accumulation_steps

    # ------------------------------------------------------------------ saving
    def _save(self, output_dir=None, state_dict=None):
        """The policy is saved as a plain causal LM (loadable by the next stage); the critic next to it."""
        output_dir = output_dir or self.args.output_dir
        model = self.accelerator.unwrap_model(self.model)
        critic = model._modules.pop("critic")
        try:
            if state_dict is not None:
                state_dict = {k: v for k, v in state_dict.items() if not k.startswith("critic.")}
            super()._save(output_dir, state_dict)
        finally:
            model._modules["critic"] = critic
        self.save_critic(output_dir)

    def save_critic(self, output_dir: str) -> str:
        os.makedirs(output_dir, exist_ok=True)
        path = os.path.join(output_dir, "critic.pt")
        torch.save(self.accelerator.unwrap_model(self.model).critic.state_dict(), path)
        return path

    def train(self, *args, **kwargs):
        if self.accelerator.is_main_process:
            print(f"[rewardkit] PPO: {self.args.describe_batches()}", flush=True)
        result = super().train(*args, **kwargs)
        self.save_critic(self.args.output_dir)  # also with LoRA, where the pipeline saves only the adapter
        return result


class PPOStage(GRPOStage):
    """PPO (``rewardkit.trainers.ppo:PPOTrainer``) on prompts, with rewards from the registry."""

    config_class = "rewardkit.trainers.ppo:PPOConfig"
    trainer_class = "rewardkit.trainers.ppo:PPOTrainer"

    @classmethod
    def check_args(cls, args: dict) -> list[str]:
        problems = [f"{k}: a GRPO option; PPO's loss does not use it" for k in args if k in GRPO_ONLY]
        return problems or super().check_args(args)

    def trainer_kwargs(self, ctx):
        name = ctx.spec.trainer_args.get("kl_estimator", "k1")
        return {**super().trainer_kwargs(ctx), "kl_estimator_fn": ctx.registry.kl_estimator(name)}
