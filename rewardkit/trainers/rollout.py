"""The rollout layer every trainer that reuses a rollout stands on (``trainer: ppo``, ``trainer: grpo_is``).

SB3's ``OnPolicyAlgorithm`` + ``RolloutBuffer`` in TRL's terms: a *rollout* is the generation batch of one
TRL generation (prompts × ``num_generations``, this process's share), trained on for ``rollout_epochs`` epochs of
``steps_per_generation`` minibatches. Everything about holding, serving, retiring, measuring and checkpointing it is
here, once:

- :class:`PromptStream`: prompts in TRL's ``RepeatSampler`` order, advanced once per rollout (not per optimizer
  step), so a rollout retired early moves on to fresh prompts, and its position is a number a checkpoint keeps.
  Dynamic sampling's refill prompts are a second stream of the same kind.
- :class:`RolloutBuffer`: the rollout, its epoch/minibatch cursor, the epoch-0 order (TRL's own shuffle, so
  ``reshuffle: false`` replays TRL's ``num_iterations`` exactly) and a seeded permutation for every later epoch
  (:func:`rewardkit.algorithms.grpo_is.epoch_permutation`: a resumed run reshuffles as the uninterrupted one did).
- :class:`ReplayStore`: the last K rollouts with their behaviour log-probs, for a trainer that replays them
  (grpo_is's ``replay_rollouts``); a rollout served with replayed ones has more minibatches per epoch
  (``_rollout_minibatches``), and the epoch/rollout bookkeeping follows the buffer's own count.
- :class:`RolloutReuseMixin`: the trainer side: ``_prepare_inputs`` serves minibatches, one stale-rollout check
  (``early_stop_kl`` against KL(π_old‖π_θ), k3, the **global token mean** over every process's tokens of the
  minibatch that opens an optimizer step; ``early_stop_ess``, where the trainer's config has it, against the
  normalised ESS of the same minibatch's sequence importance weights), ``training_step`` retaking a step on a fresh rollout after an early
  stop, per-epoch and per-rollout statistics, and the checkpoint state (``rollout_state.pt``, one per process),
  so a resumed run continues the same rollout from the same minibatch, in both trainers.

Metrics, logged under one set of names by both trainers (``<output_dir>/rollout_epochs.jsonl`` has one record
per epoch, ``trainer.epoch_history`` / ``trainer.rollout_history`` the same in memory):

================================ ==========================================================================
``rollout/approx_kl``            KL(π_old‖π_θ), k3, nats per token: global token mean over an epoch's minibatches
``rollout/clip_fraction``        share of tokens (sequences, at sequence-level ratios) where the clip zeroed the
                                 gradient, over an epoch
``rollout/ratio_min``, ``_max``  range of the importance ratio π_θ/π_old over an epoch's tokens, all processes
``rollout/epochs_used``          epochs a rollout was trained for (fractional when stopped mid-epoch), per rollout
``rollout/early_stop``           1 when a stale check (``early_stop_kl`` or ``early_stop_ess``) retired the
                                 rollout, else 0, per rollout; ``rollout/early_stop_ess`` 1 when it was the ESS
``rollout/ess``                  normalised effective sample size (Σw)²/(n·Σw²) of the sequence weights
                                 w = π_θ(y|x)/π_old(y|x) of a minibatch over every process (the value
                                 ``early_stop_ess`` is compared with), averaged over an epoch's minibatches
``rollout/count``                rollouts generated so far
================================ ==========================================================================

A trainer using it provides ``_make_rollout(prompts) -> dict`` (generate, score, advantages) and calls
``_stale_check`` and ``_record_minibatch`` from its loss; ``_rollout_extra_state`` / ``_load_rollout_extra_state``
carry what else it adapts (β, PPO's penalty and score statistics) in the same checkpoint file.
"""

from __future__ import annotations

import json
import math
import os

import torch

from rewardkit.algorithms import grpo_is as core
from rewardkit.algorithms.masked import kl_old_new
from rewardkit.trainers.base import over_processes

STATE_FILE = "rollout_state.pt"
EPOCH_LOG = "rollout_epochs.jsonl"


def checkpoint_folder(trainer, trial) -> str:
    """The folder TRL's ``_save_checkpoint`` has just written for the current step."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR  # noqa: PLC0415

    return os.path.join(trainer._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}")


def state_file(folder: str, accelerator, name: str = STATE_FILE) -> str:
    """A process's own side file in a checkpoint folder (``rank<i>_<name>`` when there are several processes)."""
    return os.path.join(folder, name if accelerator.num_processes == 1 else f"rank{accelerator.process_index}_{name}")


class PromptStream:
    """Dataset indices in the order of TRL's ``RepeatSampler`` (each prompt ``num_generations`` times in a row),
    cycling over the dataset, drawn in global chunks; ``position`` (indices drawn) is all a checkpoint needs."""

    def __init__(self, dataset, num_generations: int, prompts_per_batch: int, seed: int, shuffle: bool = True):
        self.dataset, self.position = dataset, 0
        self.last_ids: list[int] = []  # dataset indices of this process's rows of the last draw
        self._kwargs = dict(data_source=dataset, mini_repeat_count=num_generations, batch_size=prompts_per_batch,
                            repeat_count=1, shuffle=shuffle, seed=seed)
        self._it = None

    def _next(self) -> int:
        if self._it is None:
            from trl.trainer.utils import RepeatSampler  # noqa: PLC0415

            self._sampler = RepeatSampler(**self._kwargs)
            self._it, skip, self.position = iter(self._sampler), self.position, 0
            for _ in range(skip):  # resume: replay the order up to where it was
                self._next()
        self.position += 1
        try:
            return next(self._it)
        except StopIteration:
            self._it = iter(self._sampler)
            return next(self._it)

    def draw(self, n: int, accelerator) -> list:
        """The next ``n`` indices of all processes together; this process's rows (its contiguous share)."""
        idx = [self._next() for _ in range(n)]
        local = n // accelerator.num_processes
        start = accelerator.process_index * local
        self.last_ids = idx[start:start + local]
        return [self.dataset[i] for i in self.last_ids]

    def load(self, position: int) -> None:
        self.position, self._it = int(position), None


class RolloutBuffer:
    """One rollout served as ``epochs`` epochs of ``minibatches`` minibatches (module docstring)."""

    def __init__(self, minibatches: int, epochs: int, reshuffle: bool, seed: int):
        self.minibatches, self.epochs, self.reshuffle, self.seed = minibatches, epochs, reshuffle, seed
        self.base_minibatches = minibatches
        self.batch, self.index = None, 0  # the rollout (epoch-0 order) and its number, 1-based
        self.epoch = self.mb = 0  # epoch being served, next minibatch of it
        self.cursor = (0, 0)  # (epoch, minibatch) last served
        self.retired = True
        self._split = None

    @property
    def needs_rollout(self) -> bool:
        return self.batch is None or self.retired or self.finished

    @property
    def finished(self) -> bool:
        """Every minibatch of every epoch has been served."""
        return self.batch is not None and self.epoch == self.epochs - 1 and self.mb == self.minibatches

    def start(self, batch: dict, index: int, minibatches: int | None = None) -> None:
        """Serve ``batch`` as rollout number ``index``; ``minibatches`` per epoch (default: the configured number;
        more when replayed rollouts ride along with the fresh one)."""
        from trl.trainer.utils import shuffle_sequence_dict  # noqa: PLC0415

        self.minibatches = minibatches or self.base_minibatches
        self.batch, self.index = shuffle_sequence_dict(batch), index  # TRL's own (global-RNG) shuffle: epoch 0
        self.epoch, self.mb, self.retired = 0, 0, False
        self._split_epoch()

    def _split_epoch(self) -> None:
        from trl.trainer.utils import split_tensor_dict, unsplit_pixel_values_by_grid  # noqa: PLC0415

        batch = self.batch
        if self.reshuffle and self.epoch > 0:
            n = len(next(v for v in batch.values() if isinstance(v, (list, torch.Tensor)) and getattr(v, "ndim", 1)))
            batch = core.permute_rows(batch, core.epoch_permutation(n, self.seed, self.index, self.epoch))
        self._split = [unsplit_pixel_values_by_grid(b) for b in split_tensor_dict(batch, self.minibatches)]

    def next(self) -> dict:
        if self.mb == self.minibatches:
            self.epoch, self.mb = self.epoch + 1, 0
            self._split_epoch()
        self.cursor = (self.epoch, self.mb)
        self.mb += 1
        return self._split[self.cursor[1]]

    def state_dict(self) -> dict:
        return {"batch": self.batch, "index": self.index, "epoch": self.epoch, "mb": self.mb,
                "cursor": self.cursor, "retired": self.retired, "minibatches": self.minibatches}

    def load_state_dict(self, s: dict) -> None:
        self.batch, self.index, self.epoch, self.mb = s["batch"], s["index"], s["epoch"], s["mb"]
        self.cursor, self.retired = tuple(s["cursor"]), s["retired"]
        self.minibatches = s.get("minibatches", self.base_minibatches)
        if self.batch is not None and not self.retired:
            self._split_epoch()


class ReplayStore:
    """The last ``capacity`` rollouts (this process's rows, with the log-probs of the policy that generated them,
    ``behaviour_logps``), newest first, for training them again beside a fresh rollout (``replay_rollouts``)."""

    def __init__(self, capacity: int):
        self.capacity, self.rollouts = capacity, []  # list of (rollout index, rows)

    def add(self, index: int, rows: dict) -> None:
        self.rollouts = [(index, rows)] + self.rollouts[:max(self.capacity - 1, 0)] if self.capacity else []

    def drop(self, indices: set) -> None:
        self.rollouts = [(i, r) for i, r in self.rollouts if i not in indices]

    def state_dict(self) -> dict:
        return {"capacity": self.capacity, "rollouts": self.rollouts}

    def load_state_dict(self, s: dict) -> None:
        self.capacity, self.rollouts = s["capacity"], [tuple(x) for x in s["rollouts"]]


class _StaleRollout(Exception):
    """Raised in the loss before any backward pass: the rollout drifted past ``early_stop_kl``."""


def _new_acc() -> dict:
    return {"kl_sum": 0.0, "tokens": 0.0, "clipped": 0.0, "clip_n": 0.0, "ratio_min": math.inf,
            "ratio_max": -math.inf, "minibatches": 0, "ess_sum": 0.0}


class RolloutReuseMixin:
    """Rollout reuse for a ``trl.GRPOTrainer`` subclass whose config is a ``RolloutKLConfig`` (module docstring).
    Call ``_init_rollout_reuse()`` at the end of ``__init__``."""

    def _init_rollout_reuse(self) -> None:
        a = self.args
        if not hasattr(self.train_dataset, "__getitem__") or isinstance(self.train_dataset,
                                                                          torch.utils.data.IterableDataset):
            raise ValueError(f"{type(self).__name__} draws prompts per rollout and needs a map-style (indexable) "
                             f"train dataset")
        # TRL reads num_iterations for the dataloader length (the step clock) and for whether to compute old
        # log-probs at generation (it does exactly when a rollout spans more than one optimizer step).
        self.num_iterations = a.rollout_epochs
        self.prompts = PromptStream(self.train_dataset, self.num_generations,
                                    a.generation_batch_size // self.num_generations, a.seed, self.shuffle_dataset)
        self.buffer = RolloutBuffer(a.steps_per_generation, a.rollout_epochs, a.reshuffle, a.seed)
        self._acc = _new_acc()
        self.rollout_history: list[dict] = []  # one record per finished rollout
        self.epoch_history: list[dict] = []  # one record per finished (possibly partial) epoch

    @property
    def windows_per_epoch(self) -> int:
        """Optimizer steps in one epoch of the rollout being served."""
        return self.buffer.minibatches // self.args.gradient_accumulation_steps

    @property
    def rollouts(self) -> int:
        """Rollouts generated so far (= the prompt stream's position in generation batches)."""
        return self.buffer.index

    def _all_reduce(self):
        """A sum over processes for ``rewardkit.algorithms``' global statistics (None with one process)."""
        if self.accelerator.num_processes == 1:
            return None
        return lambda t: self.accelerator.reduce(t, reduction="sum")

    # ------------------------------------------------------------------ serving
    def _make_rollout(self, prompts: list[dict]) -> dict:  # pragma: no cover - interface
        raise NotImplementedError

    def _prepare_inputs(self, generation_batch):
        """Train: the next minibatch of the rollout buffer (the dataloader's batch only ticks the step clock).
        Eval: TRL's behaviour."""
        if not self.model.training:
            return super()._prepare_inputs(generation_batch)
        if self.buffer.needs_rollout:
            self._start_rollout()
        return self.buffer.next()

    def _start_rollout(self) -> None:
        from trl.trainer.utils import split_pixel_values_by_grid  # noqa: PLC0415

        prompts = self.prompts.draw(self.args.generation_batch_size, self.accelerator)
        self._rollout_row_ids = self.prompts.last_ids
        batch = self._make_rollout(prompts)
        log = getattr(self, "rollout_log", None)
        if log is not None:  # what _make_rollout's generation left in _last_rows / _last_rewards / _last_row_ids
            log.write(self, self._last_rows, batch, self._last_rewards, self._last_row_ids)
        self.buffer.start(split_pixel_values_by_grid(batch), self.buffer.index + 1, self._rollout_minibatches(batch))
        self._acc = _new_acc()

    def _rollout_minibatches(self, batch: dict) -> int | None:
        """Minibatches per epoch of ``batch`` when it is not the configured ``steps_per_generation`` (a trainer that
        trains replayed rollouts with the fresh one says so here)."""
        return None

    def training_step(self, model, inputs, num_items_in_batch=None):
        """TRL's step; if its first minibatch finds the rollout stale (KL(old‖new) > early_stop_kl), the rollout is
        retired before any backward pass and the same optimizer step is taken on a fresh rollout."""
        try:
            return super().training_step(model, inputs, num_items_in_batch)
        except _StaleRollout:
            return super().training_step(model, inputs, num_items_in_batch)

    # ------------------------------------------------------------------ measuring
    def _ess(self, logp, old, mask) -> float:
        """Normalised ESS of this minibatch's sequence importance weights π_θ/π_old, over every process."""
        acc = self.accelerator
        several = acc.num_processes > 1
        return core.ess_fraction(
            core.sequence_log_weights(logp.detach(), old, mask),
            reduce_sum=(lambda t: torch.tensor(over_processes(acc, t.tolist()))) if several else None,
            reduce_max=(lambda t: torch.tensor(over_processes(acc, [t.item()], "max")[0])) if several else None,
        ).item()

    def _stale_reason(self, logp, old, mask) -> str | None:
        """'kl' when KL(π_old‖π_θ) (k3, global token mean) exceeds ``early_stop_kl``, 'ess' when the normalised
        ESS of the sequence weights is below ``early_stop_ess`` (a config field of grpo_is only), else None."""
        if self.args.early_stop_kl is not None:
            if kl_old_new(logp, old, mask, self._all_reduce()).item() > self.args.early_stop_kl:
                return "kl"
        min_ess = getattr(self.args, "early_stop_ess", None)
        if min_ess is not None and self._ess(logp, old, mask) < min_ess:
            return "ess"
        return None

    def _stale_check(self, logp, old, mask, metrics: dict | None = None, logged: dict | None = None) -> None:
        """On the minibatch that opens a reuse step (any optimizer step after a rollout's first), retire the rollout
        and raise ``_StaleRollout`` when it is stale (``_stale_reason``); what ``metrics`` got since ``logged`` is
        then dropped (not trained on)."""
        epoch, mb = self.buffer.cursor
        opens_reuse_step = mb % self.args.gradient_accumulation_steps == 0 and (epoch, mb) != (0, 0)
        if not self.model.training or not opens_reuse_step:
            return
        reason = self._stale_reason(logp, old, mask)
        if reason is None:
            return
        if metrics is not None:
            for k, v in metrics.items():
                del v[(logged or {}).get(k, 0):]
        if self._acc["minibatches"]:
            self._finish_epoch(partial=True)
        self._finish_rollout(epoch * self.windows_per_epoch + mb // self.args.gradient_accumulation_steps, early=True,
                             reason=reason)
        raise _StaleRollout

    def _record_minibatch(self, logp: torch.Tensor, old: torch.Tensor, region: torch.Tensor, coef: torch.Tensor,
                          mask: torch.Tensor) -> None:
        """Add a trained minibatch's statistics (``region`` where the clip is active, ``coef`` the importance
        ratio, token or sequence level); closes the epoch and the rollout on their last minibatch."""
        acc = self._acc
        tokens = mask.sum().item()
        acc["kl_sum"] += kl_old_new(logp, old, mask).item() * tokens  # this process's tokens; summed at epoch end
        acc["tokens"] += tokens
        seq_level = region.shape[-1] == 1 and mask.shape[-1] != 1
        acc["clipped"] += region.float().sum().item() if seq_level else (region.float() * mask).sum().item()
        acc["clip_n"] += region.numel() if seq_level else tokens
        rmin, rmax = core.ratio_range(coef.detach(), mask)
        if not math.isnan(rmin):
            acc["ratio_min"], acc["ratio_max"] = min(acc["ratio_min"], rmin), max(acc["ratio_max"], rmax)
        # the stop rule's ESS (all processes' sequences): every process adds the same value, so the epoch's sum
        # over processes divided by the minibatches summed over processes is its mean over minibatches
        acc["ess_sum"] += self._ess(logp, old, mask)
        acc["minibatches"] += 1
        epoch, mb = self.buffer.cursor
        if mb == self.buffer.minibatches - 1:
            self._finish_epoch(partial=False)
            if epoch == self.args.rollout_epochs - 1:
                self._finish_rollout(self.args.rollout_epochs * self.windows_per_epoch, early=False)

    def _finish_epoch(self, partial: bool) -> None:
        acc = self._acc
        kl_sum, tokens, clipped, clip_n, ess_sum, n_mb = over_processes(
            self.accelerator, [acc["kl_sum"], acc["tokens"], acc["clipped"], acc["clip_n"], acc["ess_sum"],
                               acc["minibatches"]])
        (rmin,) = over_processes(self.accelerator, [acc["ratio_min"]], "min")
        (rmax,) = over_processes(self.accelerator, [acc["ratio_max"]], "max")
        rec = {"rollout": self.rollouts, "epoch": self.buffer.epoch, "global_step": self.state.global_step,
               "minibatches": acc["minibatches"], "partial": partial,
               "approx_kl": kl_sum / max(tokens, 1.0), "clip_fraction": clipped / max(clip_n, 1.0),
               "ratio_min": rmin, "ratio_max": rmax, "tokens": tokens, "ess": ess_sum / max(n_mb, 1.0)}
        self.epoch_history.append(rec)
        m = self._metrics["train"]
        for key in ("approx_kl", "clip_fraction", "ratio_min", "ratio_max", "ess"):
            m[f"rollout/{key}"].append(rec[key])
        if self.args.should_save:
            os.makedirs(self.args.output_dir, exist_ok=True)
            with open(os.path.join(self.args.output_dir, EPOCH_LOG), "a") as f:
                f.write(json.dumps(rec) + "\n")
        self._acc = _new_acc()

    def _finish_rollout(self, windows_done: int, early: bool, reason: str | None = None) -> None:
        used = core.rollout_epochs_used(windows_done, self.windows_per_epoch)
        record = {"rollout": self.rollouts, "epochs_used": used, "early_stop": early, "optimizer_steps": windows_done,
                  "global_step": self.state.global_step, "stop_reason": reason}
        record.update(self._on_rollout_finished())
        self.rollout_history.append(record)
        m = self._metrics["train"]
        m["rollout/epochs_used"].append(used)
        m["rollout/early_stop"].append(float(early))
        m["rollout/early_stop_ess"].append(float(reason == "ess"))
        m["rollout/count"].append(float(self.rollouts))
        self.buffer.retired = True

    def _on_rollout_finished(self) -> dict:
        """What a trainer adapts once per rollout (e.g. β); returns fields for the rollout's record."""
        return {}

    # ------------------------------------------------------------------ checkpoints
    def _rollout_extra_state(self) -> dict:
        return {}

    def _load_rollout_extra_state(self, s: dict) -> None:
        pass

    def _save_checkpoint(self, model, trial):
        """TRL's checkpoint plus this process's rollout state (buffer, cursor, prompt-stream position, statistics)
        and what the trainer adapts, so a resumed run continues the same rollout from the same minibatch."""
        super()._save_checkpoint(model, trial)
        folder = checkpoint_folder(self, trial)
        state = {"buffer": self.buffer.state_dict(), "prompts": self.prompts.position, "acc": self._acc,
                 "rollout_history": self.rollout_history, "epoch_history": self.epoch_history,
                 "extra": self._rollout_extra_state()}
        if os.path.isdir(folder):
            torch.save(state, state_file(folder, self.accelerator))

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        path = state_file(checkpoint, self.accelerator) if checkpoint else None
        if not path or not os.path.exists(path):
            return
        s = torch.load(path, map_location=self.accelerator.device, weights_only=False)
        self.buffer.load_state_dict(s["buffer"])
        self.prompts.load(s["prompts"])
        self._acc, self.rollout_history, self.epoch_history = ({**_new_acc(), **s["acc"]}, s["rollout_history"],
                                                               s["epoch_history"])
        self._load_rollout_extra_state(s["extra"])
