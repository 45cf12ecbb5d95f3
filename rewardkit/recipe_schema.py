"""The recipe's schema: every section rewardkit itself reads, declared once as a frozen dataclass whose fields carry
their type, their default (written nowhere else), a one-line help and the values they may hold (``values.option``).
``values.check_section`` checks a recipe's YAML against them; docs/recipes.md lists every key (tests/test_docs.py
checks it does). Trainer fields are not here: they belong to TRL's config dataclasses (``Stage.check_args``).

The model and data sections stay plain mappings at run time (``models.py`` and ``data.py`` read them, and a stage's
merge over the recipe's); they are declared here for their keys, types and ranges only (no defaults: those are
where the keys are read). The other sections are used as these objects: validation, ``--smoke`` and the run read
the same ``Eval``, ``EarlyStop``, ``Monitor``, ``RolloutLog`` and ``FaultPolicy``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rewardkit.values import Range, above, at_least, option

SEED_RANGE = (lambda v: 0 <= v < 2**32, "must be between 0 and 2**32 - 1 (numpy's seed range)")
TEST_SIZE = (lambda v: v >= 1 if isinstance(v, int) else 0 < v < 1,
             "must be a count of rows (at least 1) or a fraction between 0 and 1")
DTYPES = ("float32", "bfloat16", "float16", "auto")
ALARMS = ("length_drift", "reward_dominance", "kl_acceleration", "entropy_collapse", "zero_variance_groups",
          "reward_up_eval_down", "tool_errors", "tool_calls_drift")  # rewardkit.monitor's checks
FAULT_POLICIES = ("fail", "skip")


# --------------------------------------------------------------------------- the recipe's shape
@dataclass(frozen=True, kw_only=True)
class Top:
    """The top level of a recipe."""

    description: str | None = option(None, "free text")
    output_dir: str | None = option(None, "where stages write checkpoints, models and the summary "
                                          "(default runs/<recipe file name>)")
    seed: int = option(42, "seed for data order, sampling and initialisation", check=SEED_RANGE)
    model: dict | None = option(None, "the model to start from")
    data: dict | None = option(None, "the dataset")
    stages: dict | None = option(None, "ordered mapping of stage name -> stage")
    trainer: dict | None = option(None, "single-stage shorthand: the trainer section")
    rewards: list | None = option(None, "single-stage shorthand: the reward blocks")
    eval: dict | None = option(None, "held-out evaluation before training and after each stage")
    reward_faults: dict | None = option(None, "what a reward that raises or returns NaN/non-numbers does: fail or "
                                              "skip")
    monitor: dict | None = option(None, "training health monitor of the RL stages (docs/monitor.md)")
    rollout_log: dict | None = option(None, "what RL stages write to <stage>/rollouts.jsonl: {enabled, every, "
                                            "groups, max_mb}")


@dataclass(frozen=True, kw_only=True)
class Stage:
    """One entry of ``stages:`` (the recipe-wide model, data, reward_faults, monitor and rollout_log sections are
    merged under its own)."""

    trainer: dict | None = option(None, "the trainer: {type: <registered trainer>, <TRL config field>: value, ...}")
    rewards: list | None = option(None, "reward blocks {name, alias, weight, params}")
    model: dict | None = option(None, "model keys overriding the recipe's for this stage (e.g. lora)")
    data: dict | None = option(None, "data keys overriding the recipe's for this stage")
    eval: bool = option(True, "evaluate after this stage (when the recipe has eval)")
    reward_faults: dict | None = option(None, "overrides the recipe's reward_faults for this stage")
    early_stop: dict | None = option(None, "stop on a held-out criterion: {every, split, n, target, patience, "
                                           "min_delta, anneal_steps}")
    monitor: dict | None = option(None, "overrides the recipe's monitor for this stage")
    rollout_log: dict | None = option(None, "overrides the recipe's rollout_log for this stage")
    environment: dict | None = option(None, "grpo/grpo_is: a registered environment whose tools the model calls in "
                                            "multi-turn episodes: {name, params, max_output_chars} "
                                            "(docs/environments.md)")
    tools: list | None = option(None, "grpo/grpo_is: plain tool functions, 'module:function' strings "
                                      "(docs/environments.md)")


@dataclass(frozen=True, kw_only=True)
class Model:
    name: str | None = option(None, "registered model (rewardkit plugins), local directory, or hub id")
    dtype: Literal[DTYPES] | None = option(None, " | ".join(DTYPES))
    revision: str | None = option(None, "hub revision")
    trust_remote_code: bool | None = option(None, "passed to from_pretrained")
    attn_implementation: str | None = option(None, "eager | sdpa | flash_attention_2 ...")
    lora: dict | None = option(None, "peft LoraConfig fields (r, lora_alpha, lora_dropout, target_modules, ...)")
    quantization: dict | None = option(None, "bitsandbytes: {bits: 4|8, quant_type: nf4|fp4, double_quant, "
                                             "compute_dtype}")


@dataclass(frozen=True, kw_only=True)
class Quantization:
    bits: Literal[4, 8] | None = option(None, "4 or 8 (default 4)")
    quant_type: Literal["nf4", "fp4"] | None = option(None, "nf4 | fp4 (4-bit only; default nf4)")
    double_quant: bool | None = option(None, "nested quantization of the 4-bit constants")
    compute_dtype: Literal["float32", "bfloat16", "float16"] | None = option(
        None, "dtype of 4-bit matmuls: float32 | bfloat16 | float16")


@dataclass(frozen=True, kw_only=True)
class Data:
    name: str | None = option(None, "a registered dataset (rewardkit plugins)")
    params: dict | None = option(None, "arguments of the registered dataset's loader")
    path: str | None = option(None, "local .jsonl/.json/.csv/.parquet file, relative to the recipe")
    test_path: str | None = option(None, "held-out file, relative to the recipe")
    test_size: float | None = option(None, "held out from `path`/hub split when no test file/split: count or "
                                                 "fraction", check=TEST_SIZE)
    hub: str | None = option(None, "hub dataset id (needs network)")
    config: str | None = option(None, "hub dataset config name")
    split: str | None = option(None, "hub training split (default train)")
    test_split: str | None = option(None, "hub held-out split")
    rename: dict[str, str] | None = option(None, "columns to rename, {old: new}",
                                           check=(lambda m: all(isinstance(k, str) and isinstance(v, str)
                                                                for k, v in m.items()),
                                                  "expected {old column: new column} names"))
    prompt_template: str | None = option(None, "builds the `prompt` column, e.g. '{question}\\n'")
    completion_template: str | None = option(None, "builds the `completion` column (SFT), e.g. '{answer}'")
    system_prompt: str | None = option(None, "with chat: true, a system message before each prompt")
    chat: bool | None = option(None, "turn string prompts into conversations (applies the tokenizer's chat "
                                     "template)")
    limit: int | None = option(None, "use only the first N training rows", range=at_least(1))


@dataclass(frozen=True, kw_only=True)
class Reward:
    """A reward block of a stage (``rewards:``); a bare name is the block ``{name: ...}``."""

    name: str | None = option(None, "registered reward name", required=True)
    alias: str | None = option(None, "this instance's name in logs (default: name); needed to use one reward twice")
    weight: float = option(1.0, "weight in the summed reward")
    params: dict = option({}, "arguments bound to the reward factory's signature")


# --------------------------------------------------------------------------- sections used as objects
@dataclass(frozen=True, kw_only=True)
class EvalReward:
    """``eval.reward``: a reward name or ``{name, params}``."""

    name: str | None = option(None, "registered reward name", required=True)
    params: dict = option({}, "arguments bound to the reward factory's signature")


@dataclass(frozen=True, kw_only=True)
class Eval:
    """``eval:``: held-out evaluation by generation before training and after each stage (rewardkit.evaluate)."""

    reward: EvalReward | None = option(None, "the reward that scores greedy completions: a name or {name, params}",
                                       required=True)
    split: str = option("test", "split to evaluate")
    n: int | None = option(None, "evaluate the first N rows (default all)", range=at_least(1))
    max_new_tokens: int = option(16, "generation length", range=at_least(1))
    batch_size: int = option(64, "generation batch size", range=at_least(1))
    samples: int = option(0, "also score this many sampled completions per prompt (0: greedy only)",
                          range=at_least(0, "0: greedy only"))
    temperature: float = option(1.0, "sampling temperature for `samples` (as GRPO samples)",
                                range=above(0, "sampling at temperature 0 is greedy decoding"))
    pass_k: tuple[int, ...] | None = option(None, "pass@k for these k, each <= samples (default [1, samples]; []: "
                                                  "none)", each=at_least(1))
    maj_k: tuple[int, ...] | None = option(None, "maj@k (majority vote of extracted answers) for these k, each <= "
                                                 "samples (default [samples])", each=at_least(1))
    correct_at: float | None = option(None, "a sample is correct when its score is at least this (default: the top "
                                            "of the reward's score_range)")

    def problems(self, left_out: frozenset = frozenset()) -> list[str]:
        """pass_k and maj_k: distinct, each at most ``samples`` (not judged against a refused ``samples``)."""
        out = []
        for key in () if "samples" in left_out else ("pass_k", "maj_k"):
            ks = getattr(self, key) or ()
            if len(set(ks)) != len(ks):
                out.append(f"{key}: {sorted(k for k in set(ks) if ks.count(k) > 1)} listed twice")
            elif ks and max(ks) > self.samples:
                out.append(f"{key}: {max(ks)} is more than eval.samples ({self.samples}); {key.replace('_k', '@k')} "
                           f"needs at least k sampled completions per prompt (set eval.samples: {max(ks)} or more)")
        return out


@dataclass(frozen=True, kw_only=True)
class EarlyStop:
    """A stage's ``early_stop:`` (rewardkit.stopping): stop, or anneal, on a held-out criterion."""

    every: int | None = option(None, "evaluate every N optimizer steps", range=at_least(1), required=True)
    split: str = option("validation", "split scored for the decision (never the eval split)")
    n: int | None = option(None, "score the first N rows of that split (default all)", range=at_least(1))
    target: float | None = option(None, "stop once the greedy score is >= this")
    patience: int | None = option(None, "stop after this many evaluations without improving by min_delta",
                                  range=at_least(1))
    min_delta: float = option(0.0, "smallest change that counts as an improvement", range=at_least(0))
    anneal_steps: int | None = option(None, "on the criterion, decay the learning rate linearly to 0 over N more "
                                            "steps, then stop", range=at_least(1))

    def problems(self, left_out: frozenset = frozenset()) -> list[str]:
        if self.target is None and self.patience is None and not left_out & {"target", "patience"}:
            return ["target: give target (stop at a score) or patience (stop when it stops improving)"]
        return []


@dataclass(frozen=True, kw_only=True)
class Monitor:
    """``monitor:`` (top level, or per stage): the training health monitor of RL stages (rewardkit.monitor)."""

    enabled: bool = option(True, "watch this stage (RL stages)")
    window: int = option(2, "logged records averaged for 'at the start' and 'now'", range=at_least(1))
    length_ratio: float = option(2.0, "length_drift: now/start at or beyond this factor either way",
                                 range=above(1, "a factor of change"))
    dominance: float = option(0.9, "reward_dominance: a component's share of the weighted total",
                              range=Range(0.5, 1, low_open=True))
    kl_growth: float = option(2.0, "kl_acceleration: growth factor of KL over one window",
                              range=above(1, "a growth factor"))
    kl_min: float = option(0.01, "kl_acceleration: only once KL is at least this", range=at_least(0))
    entropy_ratio: float = option(0.1, "entropy_collapse: entropy now / at the start at most this",
                                  range=Range(0, 1, low_open=True, high_open=True))
    zero_std_rise: float = option(0.5, "zero_variance_groups: rise of their share since the start",
                                  range=Range(0, 1, low_open=True))
    tool_error_rise: float = option(0.3, "tool_errors: rise of the share of tool calls that failed since the start",
                                    range=Range(0, 1, low_open=True))
    tool_calls_ratio: float = option(2.0, "tool_calls_drift: tool calls per episode now/start at or beyond this "
                                          "factor either way", range=above(1, "a factor of change"))
    eval_every: int | None = option(None, "steps between held-out evaluations while training (default: max_steps/10 "
                                          "when the recipe has eval; 0: off)", range=at_least(0, "0: off"))
    eval_n: int = option(128, "held-out rows per evaluation while training", range=at_least(1))
    eval_drop: float = option(0.1, "reward_up_eval_down: drop of the held-out score from its best",
                              range=Range(0, 1, low_open=True))
    stop_on: tuple[Literal[ALARMS], ...] = option((), "alarms that stop the run, checkpoint kept (default: none)")


@dataclass(frozen=True, kw_only=True)
class RolloutLog:
    """``rollout_log:`` (top level, or per stage): what RL stages write to <stage>/rollouts.jsonl."""

    enabled: bool = option(True, "write <stage>/rollouts.jsonl in RL stages")
    every: int = option(1, "log every N-th rollout (1: each)", range=at_least(1))
    groups: int = option(2, "whole groups (all completions of one prompt) logged per logged rollout",
                         range=at_least(1))
    max_mb: float = option(50, "stop writing once the file reaches this size in MB", range=above(0))


@dataclass(frozen=True)
class FaultPolicy:
    """``reward_faults:`` (top level, or per stage): what a reward fault (raise, NaN/inf, non-number, wrong length)
    does to training (rewardkit.reward_checks).

    ``policy="fail"`` stops at the first fault. ``policy="skip"`` turns the faulty samples into ``None`` (TRL
    leaves them out of that reward), counts them, and stops once the stage's share of skipped samples exceeds
    ``max_rate``. With ``fail_fast_first_step`` the first reward call of a run fails even under ``skip``: a
    reward broken from the start is reported at once rather than skipped for a whole run.
    """

    policy: Literal["fail", "skip"] = option("fail", "fail: stop at the first fault | skip: the sample gets None, "
                                                     "counted")
    max_rate: float = option(0.1, "skip: stop once this share of a stage's samples was skipped",
                             range=Range(0, 1))
    fail_fast_first_step: bool = option(True, "skip: faults in the first reward call still fail")


# Every declared section, by where it sits in a recipe (docs/recipes.md documents each key).
SECTIONS = {"recipe": Top, "stages.<name>": Stage, "model": Model, "model.quantization": Quantization,
            "data": Data, "rewards[i]": Reward, "eval": Eval, "eval.reward": EvalReward, "early_stop": EarlyStop,
            "monitor": Monitor, "rollout_log": RolloutLog, "reward_faults": FaultPolicy}
