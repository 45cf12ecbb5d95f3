"""What each engine can run, checked before anything loads: FSDP on CPU, DeepSpeed ZeRO-3 with the work rewardkit
does on the main process alone, vLLM generation where vLLM is not installed. docs/operations.md has what was
measured, engine by engine; README ("Generation with vLLM") the vLLM environment."""

from __future__ import annotations

import json
import os


def problems(recipe) -> list[str]:
    return cpu_fsdp_problems(recipe) + zero3_problems(recipe) + vllm_problems(recipe)


def vllm_problems(recipe) -> list[str]:
    """A stage that asks for vLLM generation (``use_vllm``) in a Python environment without vLLM: refused before the
    run starts, not when TRL builds the trainer after the evaluations and the model load."""
    from rewardkit import vllm_sync  # noqa: PLC0415

    asking = [s.name for s in recipe.stages if s.trainer_args.get("use_vllm")]
    if not asking or vllm_sync.available():
        return []
    return [f"stages.{name}.trainer.use_vllm: {vllm_sync.NOT_INSTALLED}" for name in asking]


def deepspeed() -> bool:
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def zero3_problems(recipe) -> list[str]:
    """What rewardkit does on the main process alone, which ZeRO-3's sharded weights turn into a hang: the held-out
    evaluation and early stopping generate there (generation gathers each layer's shards from every process), and a
    LoRA stage's merge loads the base under ZeRO-3's sharded init (a collective broadcast). Measured 2026-12-03 on 2
    CPU processes, deepspeed 0.19.8 (docs/operations.md); the same code runs on GPUs."""
    launched = deepspeed() and os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3"
    staged = [s for s in recipe.stages if _ds_stage(s.trainer_args.get("deepspeed")) == 3]
    if not launched and not staged:
        return []
    why = "under DeepSpeed ZeRO-3 {what} runs on the main process alone and waits forever for the other processes' "\
          "weight shards; {fix}, or use ZeRO-2"
    where = "accelerate launch (ACCELERATE_DEEPSPEED_ZERO_STAGE=3)" if launched else \
        f"stages.{staged[0].name}.trainer.deepspeed (zero stage 3)"
    found = []
    if recipe.eval:  # the base model is scored too, before any stage
        found.append(f"eval: {where}: " + why.format(what="the held-out evaluation",
                                                        fix="drop it (~eval) and evaluate the saved model/ apart"))
    for s in recipe.stages:
        if s.early_stop:
            found.append(f"stages.{s.name}.early_stop: {where}: " + why.format(
                what="early stopping's evaluation", fix=f"drop it (~stages.{s.name}.early_stop)"))
        if s.model.get("lora"):
            found.append(f"stages.{s.name}.model.lora: {where}: " + why.format(
                what="merging the LoRA adapter into the base", fix="train without LoRA"))
    return found


def _ds_stage(config) -> int | None:
    """The ZeRO stage of a trainer's ``deepspeed`` field (a JSON file or a dict), when it says one."""
    if isinstance(config, str) and os.path.isfile(config):
        try:
            with open(config) as f:
                config = json.load(f)
        except (OSError, ValueError):
            return None
    stage = (config or {}).get("zero_optimization", {}).get("stage") if isinstance(config, dict) else None
    return stage if isinstance(stage, int) else None


def cpu_fsdp_problems(recipe) -> list[str]:
    """FSDP asked for on a machine without CUDA. accelerate 1.15 switches a run to FSDP only for GPU-type
    backends (``AcceleratorState.__init__``: ``MULTI_CPU`` is not among them), so ``accelerate launch --use_fsdp``
    on CPU trains with plain DDP and says nothing, and a trainer's ``fsdp`` field makes transformers refuse the run
    after the model has loaded. Measured 2026-12-03 with torch 2.13 (docs/operations.md)."""
    import torch  # noqa: PLC0415

    if torch.cuda.is_available():
        return []
    why = ("FSDP does not run on CPU with accelerate 1.15 (it enables FSDP for GPU backends only; a CPU run "
           "would silently train with DDP instead). Use accelerate launch --multi_gpu (DDP over gloo) on CPU, "
           "or run FSDP on GPUs")
    problems = [f"stages.{spec.name}.trainer.fsdp: {why}" for spec in recipe.stages if spec.trainer_args.get("fsdp")]
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        problems.append(f"accelerate launch --use_fsdp (ACCELERATE_USE_FSDP=true): {why}")
    return problems
