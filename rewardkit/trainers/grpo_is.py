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
                                 ``early_stop_kl``; the next optimizer step uses a fresh rollout, so optimizer
                                 steps (LR schedule, logging, checkpoints) are never skipped or repeated
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

Old-policy log-probs are TRL's ``old_per_token_logps``: computed once per rollout, at generation, by TRL's own
rule (only when the rollout spans more than one optimizer step, i.e. no extra forward pass when μ = 1 and one
epoch is one step). With QLoRA the reference is the 4-bit base with the adapter disabled (TRL's PEFT path) and
the old policy is the cached log-probs, so one copy of the base weights serves policy, old policy and reference.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import torch
from trl import GRPOConfig, GRPOTrainer
from trl.trainer.utils import (
    RepeatSampler,
    shuffle_sequence_dict,
    split_pixel_values_by_grid,
    split_tensor_dict,
    unsplit_pixel_values_by_grid,
)

from rewardkit.algorithms.kl import builtin_estimator, kl_controller
from rewardkit.algorithms import grpo_is as core
from rewardkit.algorithms.masked import kl_old_new
from rewardkit.trainers.base import over_processes
from rewardkit.trainers.dynamic_sampling import DynamicSamplingConfig, DynamicSamplingMixin
from rewardkit.trainers.rollout_kl import RolloutKLConfig, estimator_kwarg, renamed_problems
from rewardkit.trainers.trl_stages import GRPOStage

STATE_FILE = "grpo_is_state.pt"
EPOCH_LOG = "grpo_is_epochs.jsonl"


@dataclass
class GRPOISConfig(DynamicSamplingConfig, RolloutKLConfig, GRPOConfig):
    """``GRPOConfig`` plus multi-epoch importance sampling; rollout reuse and KL control are ``RolloutKLConfig``'s
    (shared with ``trainer: ppo``), dynamic sampling ``DynamicSamplingConfig``'s. TRL's ``num_iterations`` is
    replaced by ``rollout_epochs`` and must stay 1; ``epsilon``/``epsilon_high``/``importance_sampling_level``/
    ``delta`` keep their TRL meaning."""

    disable_dropout: bool = field(default=True, metadata={
        "help": "Dropout off in the policy (and reference), so generation, the old log-probs and the update see the "
                "same function and the importance ratio is 1 on a rollout's first minibatch (verl and OpenRLHF do "
                "this; TRL's default is false)."})

    def __post_init__(self):
        super().__post_init__()
        problems = core.batch_problems(
            per_device_train_batch_size=self.per_device_train_batch_size, num_processes=self.world_size,
            steps_per_generation=self.steps_per_generation,
            gradient_accumulation_steps=self.gradient_accumulation_steps, num_generations=self.num_generations,
            rollout_epochs=self.rollout_epochs)
        # batch_problems already explains rollout_epochs < 1 and steps_per_generation vs accumulation
        problems += [p for p in self.rollout_kl_problems()
                     if not p.startswith(("rollout_epochs must", "early_stop_kl acts"))]
        problems += self.dynamic_sampling_problems()
        if self.loss_type not in core.SUPPORTED_LOSS_TYPES:
            problems.append(f"loss_type={self.loss_type!r}: grpo_is implements the clipped-surrogate losses "
                            f"{', '.join(core.SUPPORTED_LOSS_TYPES)}")
        if self.use_vllm:
            problems.append("use_vllm: not supported by grpo_is (use trainer: grpo)")
        if problems:
            raise ValueError("; ".join(problems))


class _StaleRollout(Exception):
    """Raised inside ``compute_loss`` before any backward: the rollout has drifted past ``early_stop_kl``."""


class GRPOISTrainer(DynamicSamplingMixin, GRPOTrainer):
    """TRL ``GRPOTrainer`` reusing each rollout for up to μ reshuffled epochs with target-KL early stopping.

    Overrides: ``_prepare_inputs`` (serves minibatches from the rollout buffer, reshuffled per epoch, and draws a
    new rollout when μ epochs are done or the rollout went stale), ``_compute_loss`` (TRL's own loss, to which the
    KL term of the registered estimator with adaptive β is added, and per-epoch statistics), ``training_step``
    (retries a step on a fresh rollout when the first minibatch of that step shows KL(old‖new) > ``early_stop_kl``),
    and checkpoint save/load (rollout state); dynamic sampling comes from ``DynamicSamplingMixin``. Everything
    else, generation, rewards, advantages, reference log-probs, the old policy's log-probs and the optimizer loop,
    is TRL's.
    """

    _tag_names = ["trl", "grpo", "rewardkit", "grpo_is"]
    _name = "GRPO-IS"

    def __init__(self, *args, kl_estimator_fn=None, **kwargs):
        super().__init__(*args, **kwargs)
        a = self.args
        if not isinstance(a, GRPOISConfig):
            raise TypeError(f"GRPOISTrainer needs a GRPOISConfig, got {type(a).__name__}")
        if isinstance(self.train_dataset, torch.utils.data.IterableDataset) or not hasattr(self.train_dataset,
                                                                                            "__getitem__"):
            raise ValueError("grpo_is draws prompts per rollout and needs a map-style (indexable) train dataset")
        # TRL reads num_iterations for the dataloader length (our step clock) and for whether to compute old
        # log-probs at generation (it does exactly when a rollout spans more than one optimizer step).
        self.num_iterations = a.rollout_epochs
        self.kl_fn = kl_estimator_fn or builtin_estimator(a.kl_estimator)
        self.kl_ctl = kl_controller(a.beta, a.beta_target, a.beta_controller, a.beta_horizon)
        self.windows_per_epoch = a.steps_per_generation // a.gradient_accumulation_steps
        # Rollout state (saved with checkpoints).
        self.rollouts = 0  # rollouts generated so far = position in the prompt stream
        self._rollout = None  # the current rollout (TRL's generation dict, shuffled once as TRL does)
        self._minibatches = None  # the current epoch's minibatches
        self._epoch = 0  # epoch of the current rollout being served
        self._mb = 0  # next minibatch of the current epoch to serve
        self._cursor = (0, 0)  # (epoch, minibatch) of the minibatch being trained on
        self._exhausted = True
        self._acc = self._new_acc()  # statistics of the current epoch
        self._rollout_ref_kl = [0.0, 0.0]  # [Σ per-token KL to the reference, sequences] over the current rollout
        self.rollout_history: list[dict] = []  # one record per finished rollout
        self.epoch_history: list[dict] = []  # one record per finished (possibly partial) epoch
        self._stream = None
        self._stash = None  # set while _compute_loss runs TRL's loss

    # ------------------------------------------------------------------ prompts, one chunk per rollout
    def _prompt_sampler(self):
        return RepeatSampler(data_source=self.train_dataset, mini_repeat_count=self.num_generations,
                             batch_size=self.args.generation_batch_size // self.num_generations, repeat_count=1,
                             shuffle=self.shuffle_dataset, seed=self.args.seed)

    def _next_indices(self) -> list[int]:
        """The global generation batch of the next rollout: the same order TRL's dataloader would give,
        advanced once per rollout (not once per optimizer step), cycling over the dataset."""
        n = self.args.generation_batch_size
        if self._stream is None:
            self._sampler = self._prompt_sampler()
            self._stream = iter(self._sampler)
            for _ in range(self.rollouts * n):  # resume: replay the sampler's order up to where we were
                self._pull()
        return [self._pull() for _ in range(n)]

    def _pull(self) -> int:
        try:
            return next(self._stream)
        except StopIteration:
            self._stream = iter(self._sampler)
            return next(self._stream)

    def _local_prompts(self) -> list[dict]:
        idx = self._next_indices()
        local = len(idx) // self.accelerator.num_processes
        start = self.accelerator.process_index * local
        return [self.train_dataset[i] for i in idx[start:start + local]]

    # ------------------------------------------------------------------ rollout buffer
    def _start_rollout(self) -> None:
        batch = self._generate_and_score_completions(self._local_prompts())
        self.rollouts += 1
        batch = split_pixel_values_by_grid(batch)
        self._rollout_ref_kl = [0.0, 0.0]
        if self.args.kl_placement == "reward" and self.beta != 0.0:
            self._kl_into_advantages(batch)
        self._rollout = shuffle_sequence_dict(batch)  # the same (global-RNG) shuffle as TRL: epoch 0 == TRL
        self._epoch, self._mb, self._exhausted = 0, 0, False
        self._acc = self._new_acc()
        self._split_epoch()

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

    def _split_epoch(self) -> None:
        batch = self._rollout
        if self.args.reshuffle and self._epoch > 0:
            n = len(next(v for v in batch.values() if isinstance(v, (list, torch.Tensor)) and
                         getattr(v, "ndim", 1) >= 1))
            batch = core.permute_rows(batch, core.epoch_permutation(n, self.args.seed, self.rollouts, self._epoch))
        self._minibatches = [unsplit_pixel_values_by_grid(b)
                             for b in split_tensor_dict(batch, self.args.steps_per_generation)]

    def _prepare_inputs(self, generation_batch):
        """Train: the next minibatch of the rollout buffer (the dataloader's batch only ticks the step clock).
        Eval: TRL's behaviour."""
        if not self.model.training:
            return super()._prepare_inputs(generation_batch)
        if self._exhausted or self._rollout is None:
            self._start_rollout()
        elif self._mb == self.args.steps_per_generation:
            self._epoch, self._mb = self._epoch + 1, 0
            self._split_epoch()
        self._cursor = (self._epoch, self._mb)
        self._mb += 1
        return self._minibatches[self._cursor[1]]

    def training_step(self, model, inputs, num_items_in_batch=None):
        """TRL's step; if its first minibatch finds the rollout stale (KL(old‖new) > early_stop_kl), the rollout is
        retired before any backward pass and the same optimizer step is taken on a fresh rollout."""
        try:
            return super().training_step(model, inputs, num_items_in_batch)
        except _StaleRollout:
            return super().training_step(model, inputs, num_items_in_batch)

    # ------------------------------------------------------------------ statistics
    @staticmethod
    def _new_acc() -> dict:
        return {"kl_sum": 0.0, "tokens": 0.0, "clipped": 0.0, "clip_n": 0.0, "ratio_min": math.inf,
                "ratio_max": -math.inf, "minibatches": 0}

    def _finish_epoch(self, partial: bool) -> None:
        acc = self._acc
        kl_sum, tokens, clipped, clip_n = over_processes(self.accelerator, [acc["kl_sum"], acc["tokens"], acc["clipped"], acc["clip_n"]])
        (rmin,) = over_processes(self.accelerator, [acc["ratio_min"]], "min")
        (rmax,) = over_processes(self.accelerator, [acc["ratio_max"]], "max")
        rec = {"rollout": self.rollouts, "epoch": self._epoch, "global_step": self.state.global_step,
               "minibatches": acc["minibatches"], "partial": partial,
               "approx_kl": kl_sum / max(tokens, 1.0), "clip_fraction": clipped / max(clip_n, 1.0),
               "ratio_min": rmin, "ratio_max": rmax}
        self.epoch_history.append(rec)
        m = self._metrics["train"]
        m["is/approx_kl"].append(rec["approx_kl"])
        m["is/clip_fraction"].append(rec["clip_fraction"])
        m["is/ratio_min"].append(rmin)
        m["is/ratio_max"].append(rmax)
        if self.args.should_save:
            os.makedirs(self.args.output_dir, exist_ok=True)
            with open(os.path.join(self.args.output_dir, EPOCH_LOG), "a") as f:
                f.write(json.dumps(rec) + "\n")
        self._acc = self._new_acc()

    def _finish_rollout(self, windows_done: int, early: bool) -> None:
        used = core.rollout_epochs_used(windows_done, self.windows_per_epoch)
        kl_sum, seqs = over_processes(self.accelerator, self._rollout_ref_kl)
        ref_kl = kl_sum / seqs if seqs else float("nan")  # nats per sequence, as PPO's
        if self.beta != 0.0 and seqs:
            # the proportional controller's horizon is in episodes: this rollout's completions (all processes)
            self.beta = self.kl_ctl.update(ref_kl, n_steps=self.args.generation_batch_size)
        self.rollout_history.append({"rollout": self.rollouts, "epochs_used": used, "early_stop": early,
                                     "optimizer_steps": windows_done, "ref_kl": ref_kl, "beta": self.beta,
                                     "global_step": self.state.global_step})
        m = self._metrics["train"]
        m["is/rollout_epochs_used"].append(used)
        m["is/early_stops"].append(float(early))
        m["is/rollouts"].append(float(self.rollouts))
        m["beta"].append(self.beta)
        self._exhausted = True

    # ------------------------------------------------------------------ loss
    def _get_per_token_logps_and_entropies(self, *args, **kwargs):
        out = super()._get_per_token_logps_and_entropies(*args, **kwargs)
        if self._stash is not None:  # inside _compute_loss: keep the policy's log-probs (with their graph)
            self._stash["logps"] = out[0]
        return out

    def _compute_loss(self, model, inputs):
        """TRL's loss, unchanged (clipped surrogate of every loss type, ε/ε_high, δ, entropy masking, the router
        aux loss, its metrics), with what grpo_is changes added around it: the KL-to-reference term uses the
        registered ``kl_estimator`` (TRL hard-codes k3) with a possibly adaptive β, so TRL runs with β = 0 and the
        term is added with TRL's aggregation (the loss is linear in it); a minibatch that opens a reuse step is
        dropped before any backward once KL(old‖new) exceeds ``early_stop_kl``; per-epoch statistics are kept."""
        mode = "train" if self.model.training else "eval"
        metrics = self._metrics[mode]
        logged = {k: len(v) for k, v in metrics.items()}
        beta, self.beta, self._stash = self.beta, 0.0, {}
        try:
            loss = super()._compute_loss(model, inputs)
            logps = self._stash["logps"]
        finally:
            self.beta, self._stash = beta, None
        mask = inputs["completion_mask"] if "tool_mask" not in inputs else inputs["completion_mask"] * inputs["tool_mask"]
        old = inputs.get("old_per_token_logps")
        old = logps.detach() if old is None else old
        approx_kl = kl_old_new(logps, old, mask)
        if mode == "train" and self._rollout_is_stale(approx_kl):
            for k, v in metrics.items():  # the minibatch is not trained on: neither are its metrics kept
                del v[logged.get(k, 0):]
            raise _StaleRollout
        coef_1 = torch.exp(core.importance_log_weights(logps, old, mask, self.importance_sampling_level))
        if beta != 0.0 and self.args.kl_placement == "loss":
            per_token_kl = self.kl_fn(logps, inputs["ref_per_token_logps"])
            if self.args.use_bias_correction_kl:  # the token ratio, also under GSPO: the one that unbiases k·ρ
                per_token_kl = per_token_kl * torch.exp(logps - old)
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
            self._accumulate(approx_kl, (low | high).float(), coef_1, mask)
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

    def _rollout_is_stale(self, approx_kl: torch.Tensor) -> bool:
        """Whether this minibatch opens a reuse step (any optimizer step after a rollout's first) with the
        rollout already too far from the policy (global KL(old‖new) > ``early_stop_kl``); if so the rollout is
        retired here."""
        epoch, mb = self._cursor
        opens_reuse_step = mb % self.args.gradient_accumulation_steps == 0 and (epoch, mb) != (0, 0)
        if not opens_reuse_step or self.args.early_stop_kl is None:
            return False
        (kl_now,) = over_processes(self.accelerator, [approx_kl.item()])
        if kl_now / self.accelerator.num_processes <= self.args.early_stop_kl:
            return False
        if self._acc["minibatches"]:
            self._finish_epoch(partial=True)
        self._finish_rollout(windows_done=epoch * self.windows_per_epoch + mb // self.args.gradient_accumulation_steps,
                             early=True)
        return True

    def _accumulate(self, approx_kl, region, coef, mask) -> None:
        acc = self._acc
        tokens = mask.sum().item()
        acc["kl_sum"] += approx_kl.item() * tokens
        acc["tokens"] += tokens
        seq_level = region.shape[-1] == 1 and mask.shape[-1] != 1
        acc["clipped"] += region.sum().item() if seq_level else (region * mask).sum().item()
        acc["clip_n"] += region.numel() if seq_level else tokens
        rmin, rmax = core.ratio_range(coef.detach(), mask)
        if not math.isnan(rmin):
            acc["ratio_min"], acc["ratio_max"] = min(acc["ratio_min"], rmin), max(acc["ratio_max"], rmax)
        acc["minibatches"] += 1
        epoch, mb = self._cursor
        if mb == self.args.steps_per_generation - 1:
            self._finish_epoch(partial=False)
            if epoch == self.args.rollout_epochs - 1:
                self._finish_rollout(windows_done=self.args.rollout_epochs * self.windows_per_epoch, early=False)

    # ------------------------------------------------------------------ accounting
    @property
    def completions_generated(self) -> int:
        """Completions generated for training so far (all processes), dynamic sampling's refills included."""
        return self.rollouts * self.args.generation_batch_size + self.dynamic_sampling_totals["extra_completions"]

    def _state_dict(self) -> dict:
        return {"rollouts": self.rollouts, "rollout": self._rollout, "epoch": self._epoch, "mb": self._mb,
                "cursor": self._cursor, "exhausted": self._exhausted, "acc": self._acc,
                "rollout_ref_kl": self._rollout_ref_kl, "beta": self.beta, "kl_ctl_beta": self.kl_ctl.beta,
                "rollout_history": self.rollout_history, "epoch_history": self.epoch_history}

    def _save_checkpoint(self, model, trial):
        """TRL's checkpoint plus this process's rollout state (buffer, cursor, β, prompt-stream position)."""
        super()._save_checkpoint(model, trial)
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR  # noqa: PLC0415

        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if os.path.isdir(folder):
            name = STATE_FILE if self.accelerator.num_processes == 1 else f"rank{self.accelerator.process_index}_{STATE_FILE}"
            torch.save(self._state_dict(), os.path.join(folder, name))

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        name = STATE_FILE if self.accelerator.num_processes == 1 else f"rank{self.accelerator.process_index}_{STATE_FILE}"
        path = os.path.join(checkpoint, name)
        if not os.path.exists(path):
            return
        s = torch.load(path, map_location=self.accelerator.device, weights_only=False)
        self.rollouts, self._rollout, self._epoch, self._mb = s["rollouts"], s["rollout"], s["epoch"], s["mb"]
        self._cursor, self._exhausted, self._acc = tuple(s["cursor"]), s["exhausted"], s["acc"]
        self._rollout_ref_kl, self.beta, self.kl_ctl.beta = s["rollout_ref_kl"], s["beta"], s["kl_ctl_beta"]
        self.rollout_history, self.epoch_history = s["rollout_history"], s["epoch_history"]
        self._stream = None  # rebuilt and advanced to `rollouts` on the next draw
        if self._rollout is not None and not self._exhausted:
            self._split_epoch()


class GRPOISStage(GRPOStage):
    """Multi-epoch importance-sampled GRPO with target-KL early stopping (``GRPOISTrainer``)."""

    config_class = "rewardkit.trainers.grpo_is:GRPOISConfig"
    trainer_class = "rewardkit.trainers.grpo_is:GRPOISTrainer"

    @classmethod
    def check_args(cls, args: dict, registry) -> list[str]:
        return renamed_problems(args) or super().check_args(args, registry)

    def trainer_kwargs(self, ctx):
        return {**super().trainer_kwargs(ctx), **estimator_kwarg(ctx)}
