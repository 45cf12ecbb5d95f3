"""``grpo_is``: multi-epoch, importance-sampled GRPO with target-KL early stopping (issue 6).

A thin subclass of TRL 1.16's ``GRPOTrainer``. Generation dominates GRPO's cost, so each rollout is reused for
μ = ``rollout_epochs`` optimisation epochs, importance-sampled against the policy that generated it (PPO's
clipped surrogate). What differs from TRL, and only that, is overridden:

=============================== =========================================================================
TRL 1.16 ``num_iterations``      ``grpo_is``
=============================== =========================================================================
replays the same minibatches in  reshuffles the rollout into new minibatches every epoch (``reshuffle``);
the same order every pass        epoch 0 keeps TRL's order, so ``reshuffle: false`` replays TRL exactly
always runs μ passes             stops reusing a rollout once approx. KL(old‖new) of a minibatch exceeds
                                 ``early_stop_kl`` or the ESS of its sequence weights falls below
                                 ``early_stop_ess``; the next optimizer step uses a fresh rollout, so optimizer
                                 steps (LR schedule, logging, checkpoints) are never skipped or repeated
trains each rollout only while   ``replay_rollouts``: the last K rollouts are trained again beside each fresh one,
it is the current one            each sample weighted by min(π_prox/π_behav, ``replay_is_cap``) (decoupled PPO
                                 objective with truncated IS; docs/grpo_is.md "Reuse levers")
k3 KL to the reference, fixed β  any registered estimator (``kl_estimator``) in the loss, weighted by the token
                                 ratio even under GSPO, or k1 in the advantage as a reward-to-go
                                 (``kl_placement``); optional adaptive β toward ``beta_target`` nats per sequence
                                 (``rewardkit.algorithms.kl.AdaptiveKLController``)
dropout as configured (TRL: on)  off by default (``disable_dropout``), so a rollout's first ratio is 1
prompts tied to optimizer steps  prompts drawn per rollout from the same seeded ``RepeatSampler`` order, so an
                                 early stop moves on to fresh prompts; the Trainer's dataloader only keeps
                                 the step clock (its length is what TRL's would be for ``num_iterations=μ``)
resume regenerates a rollout     the rollout buffer, its epoch/minibatch cursor, β and the prompt-stream
                                 position are saved with each checkpoint, so a resumed run continues the
                                 same rollout
=============================== =========================================================================

The rows about serving, retiring, resuming and measuring a rollout are the rollout layer's
(:mod:`rewardkit.trainers.rollout`), which PPO stands on too.

Old-policy log-probs are TRL's ``old_per_token_logps``: computed once per rollout, at generation, by TRL's own
rule (only when the rollout spans more than one optimizer step, i.e. no extra forward pass when μ = 1 and one
epoch is one step). With QLoRA the reference is the 4-bit base with the adapter disabled (TRL's PEFT path) and
the old policy is the cached log-probs, so one copy of the base weights serves policy, old policy and reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from trl import GRPOConfig, GRPOTrainer

from rewardkit.algorithms.kl import builtin_estimator, kl_controller
from rewardkit.algorithms import grpo_is as core
from rewardkit.algorithms import sampler
from rewardkit.trainers.base import over_processes
from rewardkit.trainers.dynamic_sampling import DynamicSamplingConfig, DynamicSamplingMixin
from rewardkit.algorithms.masked import kl_old_new
from rewardkit.trainers.rollout import ReplayStore, RolloutReuseMixin
from rewardkit.trainers import sampler_correction
from rewardkit.trainers.rollout_kl import RolloutKLConfig, estimator_kwarg, renamed_problems
from rewardkit.trainers.trl_stages import GRPOStage
from rewardkit.vllm_lora import VLLMLoRAConfig


@dataclass
class GRPOISConfig(DynamicSamplingConfig, RolloutKLConfig, VLLMLoRAConfig, GRPOConfig):
    """``GRPOConfig`` plus multi-epoch importance sampling; rollout reuse and KL control are ``RolloutKLConfig``'s
    (shared with ``trainer: ppo``), dynamic sampling ``DynamicSamplingConfig``'s, the LoRA sync to vLLM
    ``VLLMLoRAConfig``'s. TRL's ``num_iterations`` is replaced by ``rollout_epochs`` and must stay 1;
    ``epsilon``/``epsilon_high``/``importance_sampling_level``/``delta`` keep their TRL meaning."""

    disable_dropout: bool = field(default=True, metadata={
        "help": "Dropout off in the policy (and reference), so generation, the old log-probs and the update see the "
                "same function and the importance ratio is 1 on a rollout's first minibatch (verl and OpenRLHF do "
                "this; TRL's default is false)."})
    early_stop_ess: float | None = field(default=None, metadata={
        "help": "Adaptive reuse: stop reusing a rollout when the normalised effective sample size (Σw)²/(n·Σw²) "
                "(Kong 1992) of the sequence importance weights w = π_θ(y|x)/π_old(y|x) of the minibatch that opens "
                "an optimizer step falls below this, in (0, 1]; rollout_epochs is then only the cap. null: never."})
    replay_rollouts: int = field(default=0, metadata={
        "help": "Replay: train the last K earlier rollouts again beside each fresh one (K = this; 0 = off), each "
                "sample weighted by the truncated ratio of the current policy to the one that generated it "
                "(decoupled PPO objective, Hilton et al. 2021; truncated IS, Espeholt et al. 2018). K is the "
                "staleness bound in rollouts; replay_max_kl bounds it in policy distance."})
    replay_max_kl: float | None = field(default=None, metadata={
        "help": "Drop a stored rollout once KL(π_behaviour‖π_θ) (k3, nats per token) of its samples exceeds this "
                "(a staleness bound in policy distance). null: kept until it is K rollouts old."})
    replay_is_cap: float = field(default=2.0, metadata={
        "help": "Truncation c of a replayed sample's behaviour weight min(π_θ/π_behaviour, c) (IMPALA's ρ̄; "
                "truncated IS of Yao et al. 2025 uses 2)."})
    replay_is_level: str = field(default="token", metadata={
        "help": "'token': one behaviour weight per token; 'sequence': one per completion, the product of its "
                "token ratios, truncated."})

    def rollout_arithmetic_problems(self) -> list[str]:
        """The batch arithmetic explained with the user's numbers (``core.batch_problems``): it covers
        ``rollout_epochs`` and requires every epoch to end on an optimizer step, ``early_stop_kl`` or not."""
        return core.batch_problems(
            per_device_train_batch_size=self.per_device_train_batch_size, num_processes=self.world_size,
            steps_per_generation=self.steps_per_generation,
            gradient_accumulation_steps=self.gradient_accumulation_steps, num_generations=self.num_generations,
            rollout_epochs=self.rollout_epochs)

    def __post_init__(self):
        super().__post_init__()
        problems = self.rollout_kl_problems()
        problems += self.dynamic_sampling_problems()
        problems += self.reuse_problems()
        if self.loss_type not in core.SUPPORTED_LOSS_TYPES:
            problems.append(f"loss_type={self.loss_type!r}: grpo_is implements the clipped-surrogate losses "
                            f"{', '.join(core.SUPPORTED_LOSS_TYPES)}")
        problems += sampler.biasing_sampling_problems(self.use_vllm, self.vllm_importance_sampling_correction,
                                                      self.top_p, self.top_k, self.min_p, self.generation_kwargs)
        if problems:
            raise ValueError("; ".join(problems))

    def reuse_problems(self) -> list[str]:
        """What is wrong with the adaptive-reuse and replay fields, each problem naming its field."""
        p = []
        if self.early_stop_ess is not None and not 0.0 < self.early_stop_ess <= 1.0:
            p.append(f"early_stop_ess is a fraction of the minibatch's samples, in (0, 1]; got {self.early_stop_ess}")
        if self.replay_rollouts < 0:
            p.append(f"replay_rollouts must be >= 0 (0: no replay), got {self.replay_rollouts}")
        if self.replay_max_kl is not None and self.replay_max_kl <= 0:
            p.append(f"replay_max_kl must be > 0 or null, got {self.replay_max_kl}")
        if not self.replay_is_cap > 0:
            p.append(f"replay_is_cap must be > 0 (a weight above it is cut to it), got {self.replay_is_cap}")
        if self.replay_is_level not in ("token", "sequence"):
            p.append(f"replay_is_level must be 'token' or 'sequence', got {self.replay_is_level!r}")
        return p


class GRPOISTrainer(RolloutReuseMixin, DynamicSamplingMixin, GRPOTrainer):
    """TRL ``GRPOTrainer`` reusing each rollout for up to μ reshuffled epochs with target-KL early stopping.

    The rollout buffer, prompt stream, early stop, statistics and checkpoint state are the rollout layer's
    (:mod:`rewardkit.trainers.rollout`, shared with PPO). What grpo_is adds: ``_make_rollout`` (TRL's generation,
    rewards and advantages; the KL reward-to-go with ``kl_placement: reward``) and ``_compute_loss`` (TRL's own
    loss, to which the KL term of the registered estimator with adaptive β is added). Everything else, generation,
    rewards, advantages, reference log-probs, the old policy's log-probs and the optimizer loop, is TRL's.
    """

    _tag_names = ["trl", "grpo", "rewardkit", "grpo_is"]
    _name = "GRPO-IS"

    def __init__(self, *args, kl_estimator_fn=None, **kwargs):
        super().__init__(*args, **kwargs)
        a = self.args
        if not isinstance(a, GRPOISConfig):
            raise TypeError(f"GRPOISTrainer needs a GRPOISConfig, got {type(a).__name__}")
        self._init_rollout_reuse()
        self.kl_fn = kl_estimator_fn or builtin_estimator(a.kl_estimator)
        self.kl_ctl = kl_controller(a.beta, a.beta_target, a.beta_controller, a.beta_horizon)
        self._rollout_ref_kl = [0.0, 0.0]  # [Σ per-token KL to the reference, sequences] over the current rollout
        self._stash = None  # set while _compute_loss runs TRL's loss
        self.replay = ReplayStore(a.replay_rollouts)

    # ------------------------------------------------------------------ rollout
    def _make_rollout(self, prompts: list[dict]) -> dict:
        with sampler_correction.deferred(self):  # applied below, on the raw ratios (sampler_correction's docstring)
            batch = self._generate_and_score_completions(prompts)
        self._rollout_ref_kl = [0.0, 0.0]
        self._correct_for_sampler(batch)
        if self.args.kl_placement == "reward" and self.beta != 0.0:
            self._kl_into_advantages(batch)
        if self.args.replay_rollouts:
            batch = self._with_replay(batch)
        return batch

    def _correct_for_sampler(self, batch: dict) -> None:
        """With vLLM generation: ``sampler_weight`` w_samp = min(π_behav/π_samp, c) in TRL's mode, π_behav the
        trainer's log-probs at generation (``old_per_token_logps``, computed here when TRL skipped them, as TRL
        itself does when it corrects), stored with the rollout (a replayed sample keeps its own)."""
        if not sampler_correction.active(self) or batch.get("sampling_per_token_logps") is None:
            return
        if batch.get("old_per_token_logps") is None:
            batch["old_per_token_logps"] = self._policy_logps(batch)
        batch["sampler_weight"] = sampler_correction.weights(self, batch, batch["old_per_token_logps"],
                                                             self._row_mask(batch))

    def _policy_logps(self, rows: dict) -> torch.Tensor:
        """Log-probs of ``rows``' completion tokens under the current policy, no gradient. (B, T)"""
        ids = torch.cat([rows["prompt_ids"], rows["completion_ids"]], dim=1)
        attn = torch.cat([rows["prompt_mask"], rows["completion_mask"]], dim=1)
        with torch.no_grad():
            return self._get_per_token_logps_and_entropies(self.model, ids, attn, rows["completion_ids"].size(1),
                                                           batch_size=self.args.per_device_train_batch_size)[0]

    def _with_replay(self, batch: dict) -> dict:
        """The fresh rollout plus the stored ones still fresh enough, as one rollout to serve (docs/grpo_is.md,
        "Replay"). A stored sample's old log-probs become the current policy's (π_prox, the clip's anchor) and its
        ``replay_weight`` the truncated behaviour weight min(π_prox/π_behav, c); the fresh samples get weight 1.
        The fresh rollout is then stored with its own log-probs as behaviour."""
        a = self.args
        kept = set(core.ROW_KEYS) | {"advantages", "num_items_in_batch"}
        other = sorted(k for k, v in batch.items() if k not in kept and v is not None)
        if other:
            raise ValueError(f"replay_rollouts: grpo_is replays text-only rollouts; this one carries {other}")
        fresh = {k: v for k, v in batch.items() if k in kept and v is not None}
        if fresh.get("old_per_token_logps") is None:
            fresh["old_per_token_logps"] = self._policy_logps(fresh)
        parts, stale, kls, weights = [dict(fresh, replay_weight=self._row_mask(fresh).float())], set(), [], []
        for index, rows in self.replay.rollouts:
            mask = self._row_mask(rows)
            prox = self._policy_logps(rows)
            kl = kl_old_new(prox, rows["behaviour_logps"], mask, self._all_reduce()).item()  # KL(π_behav‖π_prox)
            if a.replay_max_kl is not None and kl > a.replay_max_kl:
                stale.add(index)
                continue
            w = core.truncated_behaviour_weights(prox, rows["behaviour_logps"], mask, a.replay_is_level,
                                                 a.replay_is_cap)
            part = {k: v for k, v in rows.items() if k != "behaviour_logps"}
            parts.append(dict(part, old_per_token_logps=prox, replay_weight=w))
            kls.append(kl)
            weights.append((w[mask.bool()], mask))
        self.replay.drop(stale)
        self.replay.add(self.buffer.index + 1, {**{k: v for k, v in fresh.items() if k != "old_per_token_logps"},
                                                "behaviour_logps": fresh["old_per_token_logps"]})
        self._log_replay(len(parts) - 1, len(stale), kls, weights)
        return core.concat_rollouts(parts, self.processing_class.pad_token_id)

    @staticmethod
    def _row_mask(rows: dict) -> torch.Tensor:
        return rows["completion_mask"] * rows["tool_mask"] if "tool_mask" in rows else rows["completion_mask"]

    def _log_replay(self, used: int, dropped: int, kls: list, weights: list) -> None:
        """``rollout/replayed`` (stored rollouts trained beside the fresh one), ``rollout/replay_dropped`` (dropped
        as stale), ``rollout/replay_kl`` (KL(π_behav‖π_prox), nats per token, mean over the replayed),
        ``rollout/replay_weight`` (mean behaviour weight over replayed tokens) and ``rollout/replay_truncated``
        (share of those weights at the cap)."""
        m = self._metrics["train"]
        m["rollout/replayed"].append(float(used))
        m["rollout/replay_dropped"].append(float(dropped))
        if kls:
            w = torch.cat([x for x, _ in weights])
            m["rollout/replay_kl"].append(sum(kls) / len(kls))
            m["rollout/replay_weight"].append(w.mean().item())
            m["rollout/replay_truncated"].append((w >= self.args.replay_is_cap * (1 - 1e-6)).float().mean().item())

    def _rollout_minibatches(self, batch: dict) -> int | None:
        if not self.args.replay_rollouts:
            return None
        return len(batch["advantages"]) // self.args.per_device_train_batch_size

    def _kl_into_advantages(self, batch: dict) -> None:
        """``kl_placement: reward``: A_t = Â − β·Σ_{t'≥t} k1_{t'}, k1 = log π_old − log π_ref at the rollout's
        tokens, after TRL's group normalisation (rewardkit/algorithms/kl.py: the exact sequence-KL gradient). The
        old log-probs are computed here when TRL did not (a rollout that is one optimizer step)."""
        ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
        attn = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
        if batch.get("old_per_token_logps") is None:
            with torch.no_grad():
                batch["old_per_token_logps"] = self._get_per_token_logps_and_entropies(
                    self.model, ids, attn, batch["completion_ids"].size(1),
                    batch_size=self.args.per_device_train_batch_size)[0]
        mask = batch["completion_mask"] * batch.get("tool_mask", 1)
        kl = self.kl_fn(batch["old_per_token_logps"], batch["ref_per_token_logps"]) * mask  # (B, T)
        batch["advantages"] = core.kl_reward_to_go(batch["advantages"], kl, mask, self.beta)
        kl_tok, tokens = over_processes(self.accelerator, [kl.sum().item(), mask.sum().item()])
        self._metrics["train"]["kl"].append(kl_tok / max(tokens, 1.0))  # global token mean, as TRL logs it
        self._rollout_ref_kl = [kl.sum().item(), float((mask.sum(-1) > 0).sum().item())]

    def _on_rollout_finished(self) -> dict:
        """β's controller steps on the finished rollout's KL to the reference (nats per sequence, as PPO's)."""
        kl_sum, seqs = over_processes(self.accelerator, self._rollout_ref_kl)
        ref_kl = kl_sum / seqs if seqs else float("nan")
        if self.beta != 0.0 and seqs:
            # the proportional controller's horizon is in episodes: this rollout's completions (all processes)
            self.beta = self.kl_ctl.update(ref_kl, n_steps=self.args.generation_batch_size)
        self._metrics["train"]["beta"].append(self.beta)
        return {"ref_kl": ref_kl, "beta": self.beta}

    # ------------------------------------------------------------------ loss
    def _get_per_token_logps_and_entropies(self, *args, **kwargs):
        out = super()._get_per_token_logps_and_entropies(*args, **kwargs)
        if self._stash is not None:  # inside _compute_loss: keep the policy's log-probs (with their graph)
            self._stash["logps"] = out[0]
        return out

    def _compute_loss(self, model, inputs):
        """TRL's loss, unchanged (clipped surrogate of every loss type, ε/ε_high, δ, entropy masking and bonus, the
        off-policy mask, the router aux loss, its metrics), with what grpo_is changes added around it: the
        KL-to-reference term uses the registered ``kl_estimator`` (TRL hard-codes k3) with a possibly adaptive β
        and the token ratio, so TRL runs with β = 0 and the term is added with TRL's aggregation (the loss is
        linear in it); a minibatch that opens a reuse step is dropped before any backward once KL(old‖new) exceeds
        ``early_stop_kl``; per-epoch statistics are kept."""
        mode = "train" if self.model.training else "eval"
        metrics = self._metrics[mode]
        logged = {k: len(v) for k, v in metrics.items()}
        beta, self.beta, self._stash = self.beta, 0.0, {}
        # w_samp: computed at generation (train); in eval, TRL's own correction of its generation, when it made one
        w_samp = inputs.get("sampler_weight", inputs.get("importance_sampling_ratio"))
        replay_w = sampler.combined_weight(w_samp, inputs.get("replay_weight"))
        flags = self.use_vllm, self.vllm_importance_sampling_correction
        try:
            # TRL's sampler-correction hook multiplies the per-token loss by w_samp·w_replay; without either, TRL
            # must not look for its own ratio (grpo_is generated with TRL's correction deferred)
            self.use_vllm = self.vllm_importance_sampling_correction = replay_w is not None
            if replay_w is not None:
                inputs = dict(inputs, importance_sampling_ratio=replay_w)
            loss = super()._compute_loss(model, inputs)
            logps = self._stash["logps"]
        finally:
            self.beta, self._stash = beta, None
            self.use_vllm, self.vllm_importance_sampling_correction = flags
        mask = inputs["completion_mask"] if "tool_mask" not in inputs else inputs["completion_mask"] * inputs["tool_mask"]
        old = inputs.get("old_per_token_logps")
        old = logps.detach() if old is None else old
        self._stale_check(logps, old, mask, metrics, logged)
        coef_1 = torch.exp(core.importance_log_weights(logps, old, mask, self.importance_sampling_level))
        if beta != 0.0 and self.args.kl_placement == "loss":
            per_token_kl = self.kl_fn(logps, inputs["ref_per_token_logps"])
            if self.args.use_bias_correction_kl:  # the token ratio, also under GSPO: the one that unbiases k·ρ
                per_token_kl = per_token_kl * torch.exp(logps - old)
                if replay_w is not None:  # a replayed or vLLM sample's KL term is corrected as its loss is
                    per_token_kl = per_token_kl * replay_w
            loss = loss + beta * self._aggregate(per_token_kl, mask, inputs, mode)
            with torch.no_grad():
                kl_tok, tokens = (per_token_kl * mask).sum().item(), mask.sum().item()
                total, count = over_processes(self.accelerator, [kl_tok, tokens])
                metrics["kl"].append(total / max(count, 1.0))  # global token mean, as TRL logs it
                if mode == "train":
                    self._rollout_ref_kl[0] += kl_tok
                    self._rollout_ref_kl[1] += float((mask.sum(-1) > 0).sum().item())
        if mode == "train":
            advantages = inputs["advantages"]
            advantages = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
            low, high = core.clip_masks(coef_1.detach(), advantages, self.epsilon_low, self.epsilon_high)
            self._record_minibatch(logps, old, low | high, coef_1, mask)
        return loss

    def _aggregate(self, per_token: torch.Tensor, mask: torch.Tensor, inputs: dict, mode: str) -> torch.Tensor:
        """A per-token term aggregated exactly as TRL aggregates its loss for ``loss_type``."""
        if self.loss_type == "dapo":
            num_items = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
            if mode == "train":
                num_items = num_items * self.current_gradient_accumulation_steps / self.args.steps_per_generation
            return core.aggregate_loss(per_token, mask, "dapo", num_items=num_items)
        ga_norm = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        return core.aggregate_loss(per_token, mask, self.loss_type,
                                   max_completion_length=self.max_completion_length) / ga_norm

    # ------------------------------------------------------------------ accounting
    @property
    def completions_generated(self) -> int:
        """Completions generated for training so far (all processes), dynamic sampling's refills included."""
        return self.rollouts * self.args.generation_batch_size + self.dynamic_sampling_totals["extra_completions"]

    def _rollout_extra_state(self) -> dict:
        return {"rollout_ref_kl": self._rollout_ref_kl, "beta": self.beta, "kl_ctl_beta": self.kl_ctl.beta,
                "replay": self.replay.state_dict()}

    def _load_rollout_extra_state(self, s: dict) -> None:
        self._rollout_ref_kl, self.beta, self.kl_ctl.beta = s["rollout_ref_kl"], s["beta"], s["kl_ctl_beta"]
        if "replay" in s:
            self.replay.load_state_dict(s["replay"])


class GRPOISStage(GRPOStage):
    """Multi-epoch importance-sampled GRPO with target-KL early stopping (``GRPOISTrainer``)."""

    config_class = "rewardkit.trainers.grpo_is:GRPOISConfig"
    trainer_class = "rewardkit.trainers.grpo_is:GRPOISTrainer"

    @classmethod
    def check_args(cls, args: dict, registry) -> list[str]:
        return renamed_problems(args) or super().check_args(args, registry)

    def trainer_kwargs(self, ctx):
        return {**super().trainer_kwargs(ctx), **estimator_kwarg(ctx)}
