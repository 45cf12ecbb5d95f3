"""PPO with a learned critic on TRL's current machinery (TRL deleted its ``PPOTrainer`` in 1.13).

``PPOTrainer`` subclasses TRL's ``GRPOTrainer`` and keeps everything it already does well: model loading,
PEFT/4-bit, the reference model (or, with LoRA, the base with adapters disabled, or TRL's "ref" adapter when an
existing adapter is trained further), generation, calling the reward functions, logging. What PPO adds, and all
this file writes:

- a critic: a value head on the policy's own backbone (default, one model) or a separate backbone;
- per-token rewards (score on the last token, −β·k1 on every token with ``kl_placement: reward``, or β·k·ρ as a
  loss term with ``kl_placement: loss``), GAE, whitening (:mod:`rewardkit.algorithms.ppo`);
- the clipped (optionally dual-clipped, token or GSPO sequence ratio, any of TRL's loss aggregations) or
  adaptive-KL-penalty policy loss, the clipped value loss, an optional
  entropy bonus, several epochs over reshuffled minibatches with an optional target-KL early stop;
- β from a fixed or adaptive KL controller (:mod:`rewardkit.algorithms.kl`), the KL estimator chosen from the registry;
- score shaping: a missing-EOS penalty, running normalisation, clipping.

Batch vocabulary, in TRL's field names: a *rollout* is ``generation_batch_size`` episodes (prompts ×
``num_generations``), split into ``steps_per_generation`` minibatches of ``per_device_train_batch_size``;
``rollout_epochs`` is the number of PPO epochs over it (the name ``grpo_is`` uses too; TRL's ``num_iterations``
stays 1). With ``gradient_accumulation_steps=1`` each minibatch is one optimizer step, so one rollout makes
``steps_per_generation × rollout_epochs`` optimizer steps.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import warnings

import torch
from torch import nn
from trl import GRPOTrainer

from rewardkit.algorithms import masked
from rewardkit.algorithms import ppo as alg
from rewardkit.algorithms.grpo_is import aggregate_loss, clip_masks
from rewardkit.algorithms.kl import AdaptiveKLController, builtin_estimator, kl_controller
from rewardkit.trainers.ppo_config import GRPO_ONLY
from rewardkit.trainers import sampler_correction
from rewardkit.trainers.rollout import RolloutReuseMixin
from rewardkit.trainers.rollout_kl import estimator_kwarg, renamed_problems
from rewardkit.trainers.trl_stages import GRPOStage

# TRL's condition for its own old-log-prob pass at generation, which PPO skips (``_without_trl_old_logps``).
TRL_OLD_LOGPS_RULE = "self.args.gradient_accumulation_steps % generate_every != 0"


@functools.cache
def trl_old_logps_rule_holds() -> bool:
    """Whether the installed TRL still decides its old-log-prob pass by ``TRL_OLD_LOGPS_RULE`` (read from its
    source once). If a TRL release changes it, PPO lets TRL's pass run: correct (PPO overwrites the result with
    its own), one forward pass per rollout slower, and said once."""
    try:
        return TRL_OLD_LOGPS_RULE in inspect.getsource(GRPOTrainer._generate_and_score_completions)
    except (OSError, TypeError):
        return False


def load_critic_backbone(path: str):
    """(backbone, head weight or None) for a separate critic: a reward model (…ForSequenceClassification with one
    label) gives its backbone and its score head; any other checkpoint its backbone only."""
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification  # noqa: PLC0415

    archs = AutoConfig.from_pretrained(path).architectures or []
    if not any(a.endswith("ForSequenceClassification") for a in archs):
        return AutoModel.from_pretrained(path, dtype=torch.float32), None
    rm = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32)
    score = getattr(rm, "score", None)
    if rm.config.num_labels != 1 or not isinstance(score, nn.Linear):
        raise ValueError(f"critic_model {path}: a reward model needs one label and a linear 'score' head "
                         f"(got num_labels={rm.config.num_labels})")
    return rm.base_model, score.weight.detach().clone()  # (1, H)


def load_critic_checkpoint(critic: nn.Module, path: str) -> None:
    """Load a ``critic.pt`` (a file, or a stage folder holding one) into ``critic``; mismatches name the field."""
    file = os.path.join(path, "critic.pt") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise ValueError(f"critic_checkpoint: no critic.pt at {path}")
    state = torch.load(file, map_location="cpu", weights_only=True)
    try:
        critic.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"critic_checkpoint {file} does not fit this critic (critic kind or model sizes differ): "
                         f"{str(exc).splitlines()[0]}") from None


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


class PPOTrainer(RolloutReuseMixin, GRPOTrainer):
    """TRL's GRPOTrainer with PPO's critic, advantages and losses (see the module docstring).

    The rollout buffer, prompt stream, epochs, early stop, statistics and checkpoint state are the rollout layer's
    (:mod:`rewardkit.trainers.rollout`, shared with grpo_is). Overrides: ``_make_rollout`` and
    ``_generate_and_score_completions`` (TRL's generation and rewards, then PPO's per-token rewards, values and
    advantages), ``_compute_loss``, ``create_optimizer`` (the critic's learning rate) and saving (the critic next to
    a plain causal LM).
    """

    _tag_names = ["trl", "ppo", "rewardkit"]
    _name = "PPO"

    def __init__(self, *args, kl_estimator_fn=None, **kwargs):
        super().__init__(*args, **kwargs)
        cfg = self.args
        self.kl_fn = kl_estimator_fn or builtin_estimator(cfg.kl_estimator)
        self.kl_ctl = kl_controller(cfg.beta, cfg.beta_target, cfg.beta_controller, cfg.beta_horizon)
        self.penalty_ctl = AdaptiveKLController(cfg.ppo_penalty_coef, cfg.ppo_penalty_target, "halve_double")
        self.use_ref = cfg.beta > 0
        self.kl_in_loss = cfg.kl_placement == "loss"
        # TRL's beta only decided whether to build a reference model; PPO puts the KL into the reward with β from
        # self.kl_ctl, so GRPO's own KL term (and its reference pass) stay off.
        self.beta = 0.0
        self.score_moments = alg.RunningMoments()
        policy = self._policy()
        self._hidden = None
        backbone = policy.base_model  # the transformer under the LM head; also under LoRA layers
        backbone.register_forward_hook(self._keep_hidden)
        hidden_size = policy.config.get_text_config().hidden_size
        critic_backbone, head = None, None
        if cfg.critic == "separate":
            critic_backbone, head = load_critic_backbone(cfg.critic_model or policy.config._name_or_path)
            hidden_size = critic_backbone.config.get_text_config().hidden_size
        critic = Critic(hidden_size, critic_backbone)
        if head is not None:
            with torch.no_grad():
                critic.head.weight.copy_(head)
        if cfg.critic_checkpoint:
            load_critic_checkpoint(critic, cfg.critic_checkpoint)
        # A submodule of the trained model, so the Trainer's optimizer, device placement and checkpoints see it.
        self.model.critic = critic.to(self.accelerator.device)
        self._adapted = False  # β_pen's update for the current rollout is done
        self._rewards_per_func = None
        self._init_rollout_reuse()

    # ------------------------------------------------------------------ plumbing
    def _policy(self):
        from accelerate.utils import is_peft_model  # noqa: PLC0415

        model = self.accelerator.unwrap_model(self.model)
        return model.get_base_model() if is_peft_model(model) else model

    def _keep_hidden(self, module, args, output):
        self._hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state

    def _in_warmup(self) -> bool:
        return self.model.training and self.state.global_step < self.args.critic_warmup_steps

    def _forward(self, model, ids, attn, k: int, values: bool = True, entropy: bool = False):
        """One pass: log-probs (B, k) of the completion tokens, their entropies, and the critic's values."""
        self._hidden = None
        logps, ent, _ = self._get_per_token_logps_and_entropies(model, ids, attn, k, compute_entropy=entropy)
        v = None
        if values:
            critic = self.accelerator.unwrap_model(model).critic
            hidden = self._hidden.detach() if self._in_warmup() and self._hidden is not None else self._hidden
            v = critic(hidden, ids, attn, k)
        self._hidden = None
        return logps, ent, v

    def _ref_context(self):
        """The reference: TRL's frozen copy; with PEFT, TRL's "ref" adapter when it made one (an existing adapter
        trained further: the reference is its starting copy), otherwise the base with adapters disabled."""
        if self.ref_model is not None:
            return self.ref_model, contextlib.nullcontext()
        from trl.trainer.utils import use_adapter  # noqa: PLC0415

        model = self.accelerator.unwrap_model(self.model)
        return self.model, use_adapter(model, adapter_name="ref" if "ref" in model.peft_config else None)

    @contextlib.contextmanager
    def _without_trl_old_logps(self):
        """TRL computes old log-probs at generation whenever a rollout spans several optimizer steps; PPO computes
        them itself, in the pass that also gives the critic's values, so TRL's pass would be a wasted forward.
        TRL's test is ``gradient_accumulation_steps % (steps_per_generation × num_iterations) != 0``; 0 passes it.
        Checked against the installed TRL's source (:func:`trl_old_logps_rule_holds`); where it no longer holds,
        TRL's pass runs and its result is overwritten."""
        if not trl_old_logps_rule_holds():
            warnings.warn("rewardkit PPO: this TRL decides its old-log-prob pass differently from TRL 1.16; PPO "
                          "lets it run (one extra forward pass per rollout, results unchanged)", stacklevel=2)
            yield
            return
        ga = self.args.gradient_accumulation_steps
        self.args.gradient_accumulation_steps = 0
        try:
            yield
        finally:
            self.args.gradient_accumulation_steps = ga

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        self._rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        return self._rewards_per_func

    # ------------------------------------------------------------------ rollout
    def _make_rollout(self, prompts: list[dict]) -> dict:
        self._adapt_penalty_once()  # the finished rollout's β_pen update, before the next one is generated
        out = self._generate_and_score_completions(prompts)
        self._adapted = False
        return out

    def _adapt_penalty_once(self) -> None:
        """β_pen's update for the current rollout, once: when the next rollout starts, or earlier at a checkpoint
        taken right after the rollout's last update (so a resumed run has it)."""
        if self.args.policy_loss == "penalty" and self.buffer.batch is not None and not self._adapted:
            self._adapt_penalty()
            self._adapted = True

    def _adapt_penalty(self) -> None:
        """PPO-penalty (Schulman et al. 2017 §4): after the policy update on a rollout, d = KL(old‖new) on its
        tokens (k3, all processes) with the updated policy; β_pen ← β_pen/2 if d < d_targ/1.5, ×2 if d > 1.5·d_targ.
        One extra no-grad pass over the finished rollout, as the paper's rule needs the KL after the update."""
        r = self.buffer.batch
        ids = torch.cat([r["prompt_ids"], r["completion_ids"]], dim=1)
        attn = torch.cat([r["prompt_mask"], r["completion_mask"]], dim=1)
        k, bs = r["completion_ids"].size(1), self.args.per_device_train_batch_size
        with torch.no_grad():
            new = torch.cat([self._forward(self.model, ids[i:i + bs], attn[i:i + bs], k, values=False)[0]
                             for i in range(0, ids.size(0), bs)])
            d = masked.kl_old_new(new, r["old_per_token_logps"], r["loss_mask"], self._all_reduce())
        self.penalty_ctl.update(d.item())
        self._metrics["train"]["ppo/policy/penalty_kl"].append(d.item())

    def _generate_and_score_completions(self, inputs):
        self._last_rows, self._last_row_ids = inputs, getattr(self, "_rollout_row_ids", None)
        with self._without_trl_old_logps(), sampler_correction.deferred(self):  # PPO's own pass gives both
            out = super()._generate_and_score_completions(inputs)  # TRL generates and calls the reward functions
        mode = "train" if self.model.training else "eval"
        self._metrics[mode].pop("frac_reward_zero_std", None)  # a GRPO group statistic, meaningless here
        score, scorable = self._episode_scores(out, update=mode == "train")
        mask = out["completion_mask"] * scorable[:, None].to(out["completion_mask"].dtype)  # (B, T) loss mask
        if "tool_mask" in out:  # tool outputs: attended to, but not the policy's actions
            mask = mask * out["tool_mask"]
        old_logp, values, kl, ref_logp = self._old_values_and_kl(out, mask)
        w_samp = sampler_correction.weights(self, out, old_logp, mask, mode)  # vLLM: min(π_old/π_samp, c), else None
        beta = self.kl_ctl.beta
        # kl_placement: reward puts −β·k1 into every token's reward; loss adds β·k·ρ in _compute_loss instead
        rewards = alg.token_rewards(score, torch.zeros_like(kl) if self.kl_in_loss else kl, beta, mask)  # (B, T)
        advantages, returns = alg.gae(rewards, values, mask, self.args.gamma, self.args.lam)
        raw_adv = advantages
        if self.args.whiten_advantages:
            advantages = masked.masked_whiten(advantages, mask, all_reduce=self._all_reduce())
        self._log_rollout(mode, score, scorable, kl, beta, raw_adv, returns, values, mask)
        # completion_mask stays the attention mask TRL built (old log-probs and values used it); loss_mask is PPO's.
        out.update(loss_mask=mask, advantages=advantages, returns=returns, old_values=values,
                   old_per_token_logps=old_logp, ref_per_token_logps=ref_logp)
        if w_samp is not None:
            out["sampler_weight"] = w_samp
        if self.args.loss_type == "dapo":  # its normaliser: the rollout's loss tokens, all processes
            out["num_items_in_batch"] = self.accelerator.reduce(mask.sum(), reduction="sum")
        return out

    def _episode_scores(self, out, update: bool):
        """(score (B,), scorable (B,)): weighted reward sum, minus the missing-EOS penalty, normalised, clipped."""
        cfg = self.args
        n_local = out["completion_ids"].size(0)
        rank = self.accelerator.process_index
        per_func = self._rewards_per_func[rank * n_local:(rank + 1) * n_local]  # (B, n_funcs)
        self._last_rewards = per_func  # for the rollout log
        scorable = ~torch.isnan(per_func).all(dim=1)  # every reward said "cannot judge": no episode
        score = (per_func * self.reward_weights.to(per_func.device)).nansum(dim=1)  # (B,)
        if cfg.missing_eos_penalty is not None:
            score = score - cfg.missing_eos_penalty * (~alg.ends_with(out["completion_ids"],
                                                                          out["completion_mask"],
                                                                          self.eos_token_ids)).to(score.dtype)
        if cfg.reward_normalization == "running":
            if update:
                self.score_moments.update(score[scorable], all_reduce=self._all_reduce())
            score = self.score_moments.normalize(score).to(score.dtype)
        if cfg.reward_clip is not None:
            score = score.clamp(-cfg.reward_clip, cfg.reward_clip)
        return score, scorable

    def _old_values_and_kl(self, out, mask):
        """Old log-probs and values in one pass per minibatch (attention: TRL's masks), the per-token KL estimate
        at the rollout's tokens, and the reference's log-probs (None without a reference)."""
        ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)  # (B, P+T)
        attn = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
        k = out["completion_ids"].size(1)
        bs = self.args.per_device_train_batch_size
        chunks = [slice(i, i + bs) for i in range(0, ids.size(0), bs)]
        with torch.no_grad():
            old = [self._forward(self.model, ids[c], attn[c], k) for c in chunks]
            old_logp = torch.cat([o[0] for o in old])  # (B, T)
            values = torch.cat([o[2] for o in old]).float() * mask  # (B, T)
            if not self.use_ref:
                return old_logp, values, torch.zeros_like(old_logp), None
            ref_model, ctx = self._ref_context()
            with ctx:
                ref_logp = torch.cat([self._forward(ref_model, ids[c], attn[c], k, values=False)[0] for c in chunks])
        return old_logp, values, self.kl_fn(old_logp, ref_logp) * mask, ref_logp  # (B, T) each

    def _log_rollout(self, mode, score, scorable, kl, beta, raw_adv, returns, values, mask) -> None:
        """Rollout statistics over all processes; in training, β's controller steps on them (n = episodes)."""
        red = self._all_reduce()
        seq = scorable.to(kl.dtype)
        seq_kl = masked.global_masked_mean(kl.sum(1), seq, red).item()
        n_episodes = float(seq.sum() if red is None else red(seq.sum()))
        if mode == "train":
            self.kl_ctl.update(seq_kl, n_steps=int(n_episodes))
        # per token, under TRL's name (what the health monitor reads); ppo/kl is per sequence (what β adapts to)
        self._metrics[mode]["kl"].append(masked.global_masked_mean(kl, mask, red).item())
        adv_mean = masked.global_masked_mean(raw_adv, mask, red)
        stats = {"score": masked.global_masked_mean(score, seq, red).item(), "kl": seq_kl, "beta": beta,
                 "non_score_reward": 0.0 if self.kl_in_loss else -beta * seq_kl, "advantages/mean": adv_mean.item(),
                 "advantages/std": masked.global_masked_mean((raw_adv - adv_mean) ** 2, mask, red).sqrt().item(),
                 "returns/mean": masked.global_masked_mean(returns, mask, red).item(),
                 "values/mean": masked.global_masked_mean(values, mask, red).item(),
                 "explained_variance": alg.explained_variance(values, returns, mask, red),
                 "unscorable": 1.0 - masked.global_masked_mean(seq, torch.ones_like(seq), red).item()}
        for key, val in stats.items():
            self._metrics[mode][f"ppo/{key}"].append(val)

    # ------------------------------------------------------------------ loss
    def _compute_loss(self, model, inputs):
        cfg = self.args
        mode = "train" if self.model.training else "eval"
        ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attn = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        mask = inputs["loss_mask"]
        k = inputs["completion_ids"].size(1)
        logp, entropy, values = self._forward(model, ids, attn, k, entropy=True)
        old = inputs["old_per_token_logps"]
        self._stale_check(logp, old, mask)
        reduce = self._reduce(inputs, mode)
        w = inputs.get("sampler_weight")  # vLLM generation: w_samp on every policy-loss and KL token (docs/ppo.md)
        if cfg.policy_loss == "penalty":
            pg_loss, pg = alg.penalty_policy_loss(logp, old, inputs["advantages"], mask, self.penalty_ctl.beta,
                                                  reduce=reduce, weight=w)
        else:
            pg_loss, pg = alg.policy_loss(logp, old, inputs["advantages"], mask, cfg.epsilon, cfg.epsilon_high,
                                          cfg.dual_clip, level=cfg.importance_sampling_level, reduce=reduce, weight=w)
        kl_loss = torch.zeros((), device=logp.device)
        if self.kl_in_loss and self.use_ref:
            kl_term = self._kl_loss_term(logp, old, inputs["ref_per_token_logps"])
            kl_loss = reduce(kl_term if w is None else kl_term * w, mask)
        vf_loss, vf = alg.value_loss(values.float(), inputs["old_values"], inputs["returns"], mask,
                                          cfg.cliprange_value)
        mean_entropy = masked.masked_mean(entropy, mask)
        if self._in_warmup():
            loss = cfg.vf_coef * vf_loss  # critic warm-up: the policy is not updated
            if self.accelerator.num_processes > 1:  # DDP (ddp_find_unused_parameters off) needs every parameter in
                loss = loss + 0.0 * logp.sum()  # the graph: zero gradients, no update under weight_decay 0
        else:
            loss = pg_loss + self.kl_ctl.beta * kl_loss + cfg.vf_coef * vf_loss - cfg.entropy_coef * mean_entropy
        stats = {"loss/policy": pg_loss.item(), "loss/value": vf_loss.item(), "policy/clipfrac": pg["clipfrac"],
                 "policy/approx_kl": pg["approx_kl"], "value/clipfrac": vf["clipfrac"], "entropy": mean_entropy.item()}
        if cfg.dual_clip is not None:
            stats["policy/dual_clipfrac"] = pg["dual_clipfrac"]
        if cfg.policy_loss == "penalty":
            stats["policy/penalty_coef"] = self.penalty_ctl.beta
        if self.kl_in_loss and self.use_ref:
            stats["loss/kl"] = kl_loss.item()
        for key, val in stats.items():
            self._metrics[mode][f"ppo/{key}"].append(val)
        if mode == "train":
            self._record_rollout_stats(logp, old, inputs["advantages"], mask)
        return loss / (self.current_gradient_accumulation_steps if mode == "train" else 1)

    def _record_rollout_stats(self, logp, old, advantages, mask) -> None:
        """The rollout layer's per-epoch statistics: the ratio the policy loss used and where its clip is active
        (none under policy_loss: penalty)."""
        with torch.no_grad():
            level = self.args.importance_sampling_level
            ratio = alg.sequence_level_ratio(logp, old, mask) if level == "sequence" else torch.exp(logp - old)
            if self.args.policy_loss == "clip":
                low, high = clip_masks(ratio, advantages, self.epsilon_low, self.epsilon_high)
                region = low | high
            else:
                region = torch.zeros_like(mask, dtype=torch.bool)
        self._record_minibatch(logp, old, region, ratio, mask)

    def _reduce(self, inputs, mode):
        """The per-token loss reduction for ``loss_type`` (before the division by gradient accumulation steps that
        ``_compute_loss`` applies to the whole loss)."""
        cfg = self.args
        if cfg.loss_type == "dapo":  # tokens of the accumulation window: this minibatch's share of the rollout's
            n = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
            n = n / cfg.steps_per_generation if mode == "train" else n
            return functools.partial(aggregate_loss, loss_type="dapo", num_items=n)
        return functools.partial(aggregate_loss, loss_type=cfg.loss_type,
                                 max_completion_length=cfg.max_completion_length)

    def _kl_loss_term(self, logp, old, ref_logp):
        """kl_placement: loss: the estimator at the current policy, times the per-token ratio π_θ/π_old (its value
        is 1 at θ = old; TRL's use_bias_correction_kl), whatever the policy term's importance_sampling_level:
        the token ratio is the one that makes k1/k3 unbiased (rewardkit/algorithms/kl.py)."""
        kl = self.kl_fn(logp, ref_logp)  # (B, T)
        return kl * torch.exp(logp - old) if self.args.use_bias_correction_kl else kl

    def create_optimizer(self, model=None):
        """The Trainer's optimizer, with the critic's parameters in their own groups at ``critic_learning_rate``
        (the same LR schedule scales both)."""
        optimizer = super().create_optimizer(model)
        lr = self.args.critic_learning_rate
        if lr is None:
            return optimizer
        critic_ids = {id(p) for p in self.accelerator.unwrap_model(self.model).critic.parameters()}
        groups = []
        for group in optimizer.param_groups:
            mine = [p for p in group["params"] if id(p) in critic_ids]
            group["params"] = [p for p in group["params"] if id(p) not in critic_ids]
            if mine:
                groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": mine, "lr": lr})
        for group in groups:
            optimizer.add_param_group(group)
        return optimizer

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

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        """TRL's weights, then the critic saved beside them (``_save`` keeps it out of the model's weights file),
        so a resumed run goes on with the critic it had, not a fresh zero head."""
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if os.path.isfile(os.path.join(resume_from_checkpoint, "critic.pt")):
            load_critic_checkpoint(self.accelerator.unwrap_model(self.model).critic, resume_from_checkpoint)

    def save_critic(self, output_dir: str) -> str:
        os.makedirs(output_dir, exist_ok=True)
        path = os.path.join(output_dir, "critic.pt")
        torch.save(self.accelerator.unwrap_model(self.model).critic.state_dict(), path)
        return path

    def _rollout_extra_state(self) -> dict:
        """What PPO adapts as it trains (β, β_pen, the running score statistics), saved with the rollout state so a
        resumed run continues with them instead of the initial values."""
        m = self.score_moments
        return {"beta": self.kl_ctl.beta, "penalty_coef": self.penalty_ctl.beta, "adapted": self._adapted,
                "score_moments": [m.count, m.mean, m.m2]}

    def _load_rollout_extra_state(self, s: dict) -> None:
        self.kl_ctl.beta, self.penalty_ctl.beta, self._adapted = s["beta"], s["penalty_coef"], s["adapted"]
        m = self.score_moments
        m.count, m.mean, m.m2 = s["score_moments"]

    def _save_checkpoint(self, model, trial):
        if self.buffer.retired:  # a checkpoint right after a rollout's last update holds its β_pen update
            self._adapt_penalty_once()  # every process: it reduces over them
        super()._save_checkpoint(model, trial)

    def train(self, *args, **kwargs):
        if self.accelerator.is_main_process:
            print(f"[rewardkit] PPO: {self.args.describe_batches()}", flush=True)
        result = super().train(*args, **kwargs)
        self.save_critic(self.args.output_dir)  # also with LoRA, where the pipeline saves only the adapter
        return result


class PPOStage(GRPOStage):
    """PPO (``rewardkit.trainers.ppo:PPOTrainer``) on prompts, with rewards from the registry."""

    config_class = "rewardkit.trainers.ppo_config:PPOConfig"
    trainer_class = "rewardkit.trainers.ppo:PPOTrainer"

    @classmethod
    def check_args(cls, args: dict, registry) -> list[str]:
        problems = renamed_problems(args)
        problems += [f"{k}: a GRPO option; PPO's loss does not use it" for k in args if k in GRPO_ONLY]
        return problems or super().check_args(args, registry)

    def config(self, ctx, **extra):
        """The stage's PPOConfig, with '{output_dir}' in the critic paths replaced by the recipe's output_dir."""
        cfg = super().config(ctx, **extra)
        for name in ("critic_model", "critic_checkpoint"):
            value = getattr(cfg, name)
            if isinstance(value, str):
                setattr(cfg, name, value.replace("{output_dir}", ctx.recipe.output_dir))
        return cfg

    def trainer_kwargs(self, ctx):
        return {**super().trainer_kwargs(ctx), **estimator_kwarg(ctx)}
