"""The recipe's schema: every key rewardkit itself reads, with its type(s) and a one-line help (docs/recipes.md
lists them all; tests/test_docs.py checks it does). Trainer fields are not here: they belong to TRL's configs."""

from __future__ import annotations

from rewardkit import monitor as _monitor

# key -> (type(s), help). The schema of everything except trainer fields, which belong to TRL.
TOP_KEYS = {
    "description": (str, "free text"),
    "output_dir": (str, "where stages write checkpoints, models and the summary"),
    "seed": (int, "seed for data order, sampling and initialisation"),
    "model": (dict, "the model to start from"),
    "data": (dict, "the dataset"),
    "stages": (dict, "ordered mapping of stage name -> stage"),
    "trainer": (dict, "single-stage shorthand: the trainer section"),
    "rewards": (list, "single-stage shorthand: the reward blocks"),
    "eval": (dict, "held-out evaluation before training and after each stage"),
    "reward_faults": (dict, "what a reward that raises or returns NaN/non-numbers does: fail or skip"),
    "monitor": (dict, "training health monitor of the RL stages (docs/monitor.md)"),
    "rollout_log": (dict, "what RL stages write to <stage>/rollouts.jsonl: {enabled, every, groups, max_mb}"),
}
MODEL_KEYS = {
    "name": (str, "registered model (rewardkit plugins), local directory, or hub id"),
    "dtype": (str, "float32 | bfloat16 | float16 | auto"),
    "revision": (str, "hub revision"),
    "trust_remote_code": (bool, "passed to from_pretrained"),
    "attn_implementation": (str, "eager | sdpa | flash_attention_2 ..."),
    "lora": (dict, "peft LoraConfig fields (r, lora_alpha, lora_dropout, target_modules, ...)"),
    "quantization": (dict, "bitsandbytes: {bits: 4|8, quant_type: nf4|fp4, double_quant, compute_dtype}"),
}
QUANT_KEYS = {
    "bits": (int, "4 or 8"),
    "quant_type": (str, "nf4 | fp4 (4-bit only)"),
    "double_quant": (bool, "nested quantization of the 4-bit constants"),
    "compute_dtype": (str, "dtype of 4-bit matmuls: float32 | bfloat16 | float16"),
}
DATA_KEYS = {
    "name": (str, "a registered dataset (rewardkit plugins)"),
    "params": (dict, "arguments of the registered dataset's loader"),
    "path": (str, "local .jsonl/.json/.csv/.parquet file, relative to the recipe"),
    "test_path": (str, "held-out file, relative to the recipe"),
    "test_size": ((int, float), "held out from `path`/hub split when no test file/split: count or fraction"),
    "hub": (str, "hub dataset id (needs network)"),
    "config": (str, "hub dataset config name"),
    "split": (str, "hub training split (default train)"),
    "test_split": (str, "hub held-out split"),
    "rename": (dict, "columns to rename, {old: new}"),
    "prompt_template": (str, "builds the `prompt` column, e.g. '{question}\\n'"),
    "completion_template": (str, "builds the `completion` column (SFT), e.g. '{answer}'"),
    "system_prompt": (str, "with chat: true, a system message before each prompt"),
    "chat": (bool, "turn string prompts into conversations (applies the tokenizer's chat template)"),
    "limit": (int, "use only the first N training rows"),
}
STAGE_KEYS = {
    "trainer": (dict, "the trainer: {type: <registered trainer>, <TRL config field>: value, ...}"),
    "rewards": (list, "reward blocks {name, alias, weight, params}"),
    "model": (dict, "model keys overriding the recipe's for this stage (e.g. lora)"),
    "data": (dict, "data keys overriding the recipe's for this stage"),
    "eval": (bool, "evaluate after this stage (default true when the recipe has eval)"),
    "reward_faults": (dict, "overrides the recipe's reward_faults for this stage"),
    "early_stop": (dict, "stop on a held-out criterion: {every, split, n, target, patience, min_delta}"),
    "monitor": (dict, "overrides the recipe's monitor for this stage"),
    "rollout_log": (dict, "overrides the recipe's rollout_log for this stage"),
}
FAULT_KEYS = {
    "policy": (str, "fail (default): stop at the first fault | skip: the sample gets None, counted"),
    "max_rate": ((int, float), "skip: stop once this share of a stage's samples was skipped (default 0.1)"),
    "fail_fast_first_step": (bool, "skip: faults in the first reward call still fail (default true)"),
}
REWARD_KEYS = {
    "name": (str, "registered reward name"),
    "alias": (str, "this instance's name in logs (default: name); needed to use one reward twice"),
    "weight": ((int, float), "weight in the summed reward (default 1.0)"),
    "params": (dict, "arguments bound to the reward factory's signature"),
}
EVAL_KEYS = {
    "reward": ((str, dict), "reward name or block {name, params} scoring greedy completions"),
    "split": (str, "split to evaluate (default test)"),
    "n": (int, "evaluate the first N rows (default all)"),
    "max_new_tokens": (int, "generation length (default 16)"),
    "batch_size": (int, "generation batch size (default 64)"),
    "samples": (int, "also score this many sampled completions per prompt (default 0: greedy only)"),
    "temperature": ((int, float), "sampling temperature for `samples` (default 1.0, as GRPO samples)"),
    "pass_k": (list, "pass@k for these k, each <= samples (default [1, samples]; []: none)"),
    "maj_k": (list, "maj@k (majority vote of extracted answers) for these k, each <= samples (default [samples])"),
    "correct_at": ((int, float), "a sample is correct when its score is at least this (default: the top of the "
                                 "reward's score_range)"),
}
MONITOR_KEYS = {k: (types, help_) for k, (types, help_, _) in _monitor.MONITOR_KEYS.items()}

# key -> (test, what the value must be): the ranges of the numbers above, checked with the types. Those of
# monitor, reward_faults and early_stop are checked by the modules that use them (monitor.check_config,
# reward_checks.FaultPolicy.problems, stopping.check), quantization.bits by recipe._check_model.
AT_LEAST_1 = (lambda v: v >= 1, "must be at least 1")
TOP_RANGES = {"seed": (lambda v: 0 <= v < 2**32, "must be between 0 and 2**32 - 1 (numpy's seed range)")}
DATA_RANGES = {
    "limit": AT_LEAST_1,
    "test_size": (lambda v: v >= 1 if isinstance(v, int) else 0 < v < 1,
                  "must be a count of rows (at least 1) or a fraction between 0 and 1"),
}
EVAL_RANGES = {
    "n": AT_LEAST_1,
    "max_new_tokens": AT_LEAST_1,
    "batch_size": AT_LEAST_1,
    "samples": (lambda v: v >= 0, "must be at least 0 (0: greedy only)"),
    "temperature": (lambda v: v > 0, "must be above 0 (sampling at temperature 0 is greedy decoding)"),
}
