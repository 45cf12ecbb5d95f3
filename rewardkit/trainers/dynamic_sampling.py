"""Dynamic sampling (DAPO, Yu et al. 2025 §3.2) for ``trainer: grpo`` and ``trainer: grpo_is``.

A group whose completions all get the same reward has zero advantage: it costs a forward and backward pass and
moves nothing. With ``dynamic_sampling: true`` such groups are dropped from the rollout and replaced by groups
of fresh prompts, generated in extra rounds (up to ``dynamic_sampling_max_rounds`` rounds per rollout in all),
so every minibatch carries signal. A refill round generates, on every process, the largest deficit of any
process scaled up by the fraction of groups that carried signal so far (at most one full generation batch).
If the rounds run out, the rollout is completed with zero-variance groups from the first round (logged as
``filled_zero_var_groups``), so batch sizes, the optimizer clock and every process's shapes stay as configured.

"Zero variance" is TRL's own test (``torch.isclose(std, 0)``, its ``frac_reward_zero_std``) on the weighted sum
of the reward functions (``multi_objective_aggregation: sum_then_normalize``, TRL's default) or on every reward
function (``normalize_then_sum``); a group with fewer than two scorable completions has none either.

Refill prompts come from a second seeded stream over the training set (its own order, so they are not the
prompts the next rollouts will draw), whose position is saved with each checkpoint. Logged per rollout (means
over the logging interval): ``dynamic_sampling/rounds``, ``dropped_groups`` (zero-variance groups not trained
on), ``extra_completions`` (generated beyond the configured rollout), ``filled_zero_var_groups``; totals are in
``trainer.dynamic_sampling_totals``. TRL's reward metrics (``reward``, ``reward_std``, ``rewards/<name>/mean``
and ``/std``, ``frac_reward_zero_std``) describe the groups trained on; the same statistics of everything
generated, discarded rounds included, are ``dynamic_sampling/generated_<metric>``, and the health monitor's
zero-variance alarm reads the generated one (the trained groups carry signal by construction).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import torch
from trl import GRPOConfig, GRPOTrainer
from trl.trainer.utils import nanstd

from rewardkit.trainers.base import over_processes
from rewardkit.vllm_lora import VLLMLoRAConfig
from rewardkit.trainers.rollout import PromptStream, checkpoint_folder

STATE_FILE = "dynamic_sampling_state.json"
LEFT_PADDED = {"prompt_ids", "prompt_mask"}
RIGHT_PADDED = {"completion_ids", "completion_mask", "old_per_token_logps", "ref_per_token_logps",
                "sampling_per_token_logps", "importance_sampling_ratio", "tool_mask"}
PER_ROW = {"advantages"}
SEED_OFFSET = 104729  # the refill stream's seed is args.seed + this: a different order from the main stream


@dataclass
class DynamicSamplingConfig:
    """Dynamic-sampling fields (mixed into the GRPO and grpo_is config dataclasses)."""

    dynamic_sampling: bool = field(default=False, metadata={
        "help": "Drop groups whose rewards have zero variance and refill the rollout with groups of fresh prompts "
                "(DAPO dynamic sampling, Yu et al. 2025), so every minibatch carries signal."})
    dynamic_sampling_max_rounds: int = field(default=4, metadata={
        "help": "Generation rounds per rollout, the first included, before the rollout is completed with "
                "zero-variance groups."})

    def dynamic_sampling_problems(self) -> list[str]:
        if not self.dynamic_sampling:
            return []
        p = []
        if self.dynamic_sampling_max_rounds < 1:
            p.append(f"dynamic_sampling_max_rounds must be >= 1, got {self.dynamic_sampling_max_rounds}")
        local = self.per_device_train_batch_size * self.steps_per_generation
        if local % self.num_generations:
            p.append(f"dynamic_sampling keeps or drops whole groups on each process: the per-process rollout "
                     f"(per_device_train_batch_size {self.per_device_train_batch_size} × steps_per_generation "
                     f"{self.steps_per_generation} = {local}) must be a multiple of num_generations "
                     f"({self.num_generations})")
        return p


def zero_signal_groups(rewards_per_func: torch.Tensor, weights: torch.Tensor, num_generations: int,
                       aggregation: str = "sum_then_normalize") -> torch.Tensor:
    """Bool per group of ``num_generations`` consecutive rows: True where the group carries no advantage."""
    grouped = rewards_per_func.view(-1, num_generations, rewards_per_func.shape[-1])
    if aggregation == "sum_then_normalize":
        unscorable = torch.isnan(grouped).all(-1)
        total = (grouped * weights.to(grouped.device)).nansum(-1)
        total[unscorable] = torch.nan
        std = nanstd(total, dim=1)
        return torch.isnan(std) | torch.isclose(std, torch.zeros_like(std))
    std = torch.stack([nanstd(grouped[..., k], dim=1) for k in range(grouped.shape[-1])], -1)
    return (torch.isnan(std) | torch.isclose(std, torch.zeros_like(std))).all(-1)


def group_rows(groups: list[int], num_generations: int) -> list[int]:
    """The row indices of whole groups (each ``num_generations`` consecutive rows)."""
    return [grp * num_generations + i for grp in groups for i in range(num_generations)]


def reward_metrics(rewards_per_func: torch.Tensor, weights: torch.Tensor, names: list[str], num_generations: int,
                   aggregation: str = "sum_then_normalize") -> dict[str, float]:
    """TRL's logged reward statistics of a set of whole groups, ``rewards_per_func`` (N, F) with NaN where a
    reward could not judge: per function mean and std, the weighted sum's mean and std (rows no function judged
    left out), and the share of groups without signal (:func:`zero_signal_groups`)."""
    out = {}
    for i, name in enumerate(names):
        out[f"rewards/{name}/mean"] = torch.nanmean(rewards_per_func[:, i]).item()
        out[f"rewards/{name}/std"] = nanstd(rewards_per_func[:, i]).item()
    total = (rewards_per_func * weights.to(rewards_per_func.device)).nansum(1)
    total[torch.isnan(rewards_per_func).all(1)] = torch.nan
    out["reward"], out["reward_std"] = torch.nanmean(total).item(), nanstd(total).item()
    out["frac_reward_zero_std"] = zero_signal_groups(rewards_per_func, weights, num_generations,
                                                     aggregation).float().mean().item()
    return out


def _pad(t: torch.Tensor, length: int, value, left: bool) -> torch.Tensor:
    extra = length - t.shape[1]
    if extra == 0:
        return t
    fill = torch.full((t.shape[0], extra, *t.shape[2:]), value, dtype=t.dtype, device=t.device)
    return torch.cat([fill, t] if left else [t, fill], 1)


def merge_rollouts(pieces: list[tuple[dict, list[int]]], num_generations: int, pad_token_id: int) -> dict:
    """One rollout dict from the chosen groups of several (``pieces``: (TRL rollout dict, group indices)):
    rows concatenated, prompts left-padded and completions right-padded to the longest. ``num_items_in_batch``
    is left to the caller (it is a global count)."""
    keys = [k for k in pieces[0][0] if k != "num_items_in_batch"]
    unknown = [k for k in keys if k not in LEFT_PADDED | RIGHT_PADDED | PER_ROW]
    if unknown:
        raise ValueError(f"dynamic_sampling cannot merge rollout field(s) {', '.join(unknown)} (multimodal or "
                         f"tool rollouts are not supported); set dynamic_sampling: false")
    out = {}
    for k in keys:
        parts = []
        for batch, groups in pieces:
            rows = torch.tensor(group_rows(groups, num_generations), dtype=torch.long, device=batch[k].device)
            parts.append(batch[k].index_select(0, rows))
        if k in PER_ROW:
            out[k] = torch.cat(parts)
            continue
        length = max(p.shape[1] for p in parts)
        value = pad_token_id if k in ("prompt_ids", "completion_ids") else (1 if k == "tool_mask" else 0)
        out[k] = torch.cat([_pad(p, length, value, left=k in LEFT_PADDED) for p in parts])
    return out


class DynamicSamplingMixin:
    """Overrides ``_generate_and_score_completions`` (training only, when ``args.dynamic_sampling``) and
    ``_calculate_rewards`` (to see each round's rewards); saves the refill stream's position with checkpoints."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # refill prompts: a second seeded stream over the training set (not the order the next rollouts draw)
        self._ds_stream = PromptStream(self.train_dataset, self.num_generations, 1, self.args.seed + SEED_OFFSET)
        self._ds_rewards = None
        self._ds_round_rewards = []  # (all processes' rows, this process's rows) per round of the current rollout
        # the rollout last generated for training, for the rollout log: its prompts, per-reward scores (B, F) and
        # dataset row ids (None where unknown); after dynamic sampling, those of the groups kept
        self._last_rows, self._last_rewards, self._last_row_ids = [], None, None
        self.dynamic_sampling_totals = {"rollouts": 0, "rounds": 0, "dropped_groups": 0, "extra_completions": 0,
                                        "filled_zero_var_groups": 0}
        if getattr(self.args, "dynamic_sampling", False) and not hasattr(self.train_dataset, "__getitem__"):
            raise ValueError("dynamic_sampling draws refill prompts by index and needs a map-style train dataset")

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._ds_rewards = rewards  # all processes' rows (TRL gathers them before normalising per group)
        return rewards

    def _local_rewards(self, n: int):
        """This process's rows of the last reward call (n rows each)."""
        rank = self.accelerator.process_index
        return self._ds_rewards[rank * n:(rank + 1) * n]

    def _ds_round(self, prompts: list[dict]) -> tuple[dict, torch.Tensor]:
        """One generation round: TRL's rollout dict and a zero-signal flag per local group."""
        out = super()._generate_and_score_completions(prompts)
        n = len(prompts)
        local = self._local_rewards(n)
        zero = zero_signal_groups(local, self.reward_weights, self.num_generations,
                                  self.multi_objective_aggregation)
        self._ds_round_rewards.append((self._ds_rewards, local))
        return out, zero.cpu()

    def _log_reward_metrics(self, logged_before: dict, pieces: list[tuple[dict, list[int]]]):
        """Replace the reward metrics TRL logged for every round by those of the groups trained on, and log the
        statistics of everything generated under ``dynamic_sampling/generated_*``; returns this process's kept
        rows' rewards."""
        metrics, g = self._metrics["train"], self.num_generations
        keys = ["reward", "reward_std", "frac_reward_zero_std"] + [
            f"rewards/{n}/{s}" for n in self.reward_func_names for s in ("mean", "std")]
        for k in keys:
            del metrics[k][logged_before.get(k, 0):]
        stats = lambda rows: reward_metrics(rows, self.reward_weights, self.reward_func_names, g,  # noqa: E731
                                            self.multi_objective_aggregation)
        generated = stats(torch.cat([glob for glob, _ in self._ds_round_rewards]))
        kept = torch.cat([local[group_rows(groups, g)]
                          for (_, local), (_, groups) in zip(self._ds_round_rewards, pieces)])
        for k, v in stats(self.accelerator.gather(kept)).items():
            metrics[k].append(v)
        for k, v in generated.items():
            metrics[f"dynamic_sampling/generated_{k}"].append(v)
        return kept

    def _refill_prompts(self, groups: int) -> list[dict]:
        """``groups`` groups of fresh prompts for this process (every process draws the same global chunk of
        the refill stream and takes its own part)."""
        n = groups * self.num_generations * self.accelerator.num_processes
        return self._ds_stream.draw(n, self.accelerator)

    def _generate_and_score_completions(self, inputs):
        if not self.model.training:
            return super()._generate_and_score_completions(inputs)
        if not getattr(self.args, "dynamic_sampling", False):
            out = super()._generate_and_score_completions(inputs)
            self._last_rows, self._last_rewards = inputs, self._local_rewards(len(inputs))
            self._last_row_ids = getattr(self, "_rollout_row_ids", None)
            return out
        g = self.num_generations
        need = len(inputs) // g  # groups this process's rollout holds
        prompts, pieces, spare = inputs, [], []
        logged_before = {k: len(v) for k, v in self._metrics["train"].items()}
        self._ds_round_rewards = []  # (all processes' rows, this process's rows) of each round
        round_rows, round_ids = [inputs], [getattr(self, "_rollout_row_ids", None)]  # each round's prompts
        have = seen = signal_seen = rounds = generated = 0
        while True:
            out, zero = self._ds_round(prompts)
            rounds, generated = rounds + 1, generated + len(prompts)
            signal = [i for i, z in enumerate(zero.tolist()) if not z]
            take = signal[:need - have]
            pieces.append((out, take))
            spare.append((out, [i for i, z in enumerate(zero.tolist()) if z]))
            have, seen, signal_seen = have + len(take), seen + len(zero), signal_seen + len(signal)
            (deficit,) = over_processes(self.accelerator, [need - have], "max")
            seen_all, signal_all = over_processes(self.accelerator, [seen, signal_seen])
            if deficit == 0 or rounds == self.args.dynamic_sampling_max_rounds:
                break
            frac = max(signal_all / seen_all, 1.0 / need)
            prompts = self._refill_prompts(min(need, max(int(deficit), math.ceil(deficit / frac))))
            round_rows.append(prompts)
            round_ids.append(self._ds_stream.last_ids)
        filled = need - have
        if filled:  # out of rounds: complete the rollout with zero-variance groups of the first rounds
            for k, (batch, zero_groups) in enumerate(spare):
                use = zero_groups[:need - have]
                pieces[k] = (batch, pieces[k][1] + use)
                have += len(use)
        dropped = sum(len(z) for _, z in spare) - filled
        kept = self._log_reward_metrics(logged_before, pieces)
        chosen = [group_rows(groups, g) for _, groups in pieces]  # each round's kept rows
        self._last_rows = [r[i] for r, rows in zip(round_rows, chosen) for i in rows]
        self._last_rewards = kept
        self._last_row_ids = None if round_ids[0] is None else [ids[i] for ids, rows in zip(round_ids, chosen)
                                                                  for i in rows]
        if len(pieces) == 1 and len(pieces[0][1]) == need:
            merged = out  # one round, every group kept: TRL's rollout untouched
        else:
            merged = merge_rollouts(pieces, g, self._tokenizer.pad_token_id)
            mask = merged["completion_mask"] if "tool_mask" not in merged else \
                merged["completion_mask"] * merged["tool_mask"]
            merged["num_items_in_batch"] = self.accelerator.gather(mask.sum()).sum()
        dropped_all, extra_all, filled_all = over_processes(self.accelerator, [dropped, generated - len(inputs), filled])
        stats = {"rounds": rounds, "dropped_groups": int(dropped_all), "extra_completions": int(extra_all),
                 "filled_zero_var_groups": int(filled_all)}
        for k, v in stats.items():
            self._metrics["train"][f"dynamic_sampling/{k}"].append(float(v))
            self.dynamic_sampling_totals[k] += v
        self.dynamic_sampling_totals["rollouts"] += 1
        return merged

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if not (getattr(self.args, "dynamic_sampling", False) and self.args.should_save):
            return
        folder = checkpoint_folder(self, trial)
        if os.path.isdir(folder):
            with open(os.path.join(folder, STATE_FILE), "w") as f:
                json.dump({"drawn": self._ds_stream.position, "totals": self.dynamic_sampling_totals}, f)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        path = os.path.join(checkpoint, STATE_FILE) if checkpoint else None
        if path and os.path.exists(path):
            with open(path) as f:
                s = json.load(f)
            self._ds_stream.load(s["drawn"])
            self.dynamic_sampling_totals = s["totals"]


@dataclass
class DynamicSamplingGRPOConfig(DynamicSamplingConfig, VLLMLoRAConfig, GRPOConfig):
    """TRL's ``GRPOConfig`` plus ``dynamic_sampling`` / ``dynamic_sampling_max_rounds`` and
    ``vllm_lora_adapter`` (rewardkit.vllm_lora)."""

    def __post_init__(self):
        super().__post_init__()
        problems = self.dynamic_sampling_problems()
        if problems:
            raise ValueError("; ".join(problems))


class DynamicSamplingGRPOTrainer(DynamicSamplingMixin, GRPOTrainer):
    """TRL's ``GRPOTrainer``; with ``dynamic_sampling: true`` its rollouts hold only groups with reward variance.
    With it off, TRL's trainer unchanged, plus the rollout log (``trainer.rollout_log``, when the stage gives one)."""

    rollout_log = None

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        if self.model.training and self.rollout_log is not None:
            self.rollout_log.write(self, self._last_rows, out, self._last_rewards, self._last_row_ids)
        return out
