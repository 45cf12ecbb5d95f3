"""Model options of a recipe -> what TRL trainers take (path, init kwargs, quantization, LoRA)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time

from rewardkit.errors import RecipeError

BUILD_VERSION = "v1"  # bump when an embedded builder changes, so caches are rebuilt


def cache_dir() -> str:
    return os.environ.get("REWARDKIT_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "rewardkit"))


def build_once(path: str, build, wait_s: float = 3600.0) -> str:
    """The cache directory ``path``, written by ``build(tmp_dir)`` on first use and moved into place atomically.

    Under a launcher (``RANK`` set) only process 0 builds and the others wait for the directory: transformers 5
    writes model files on rank 0 only once torch.distributed is up, so a directory built by another process would
    hold a tokenizer and no weights. Concurrent builders on one rank-less machine race harmlessly."""
    if os.path.isdir(path):
        return path
    if os.environ.get("RANK", "0") != "0":
        deadline = time.time() + wait_s
        while not os.path.isdir(path):
            if time.time() > deadline:
                raise RuntimeError(f"process {os.environ['RANK']} waited {wait_s:.0f}s for process 0 to build {path}")
            time.sleep(0.5)
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}-", dir=os.path.dirname(path))
    try:
        build(tmp)
        os.replace(tmp, path)
    except OSError:
        if not os.path.isdir(path):
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def resolve(name: str, registry, recipe=None) -> str:
    """A registered model's cached directory (built on first use), a local directory, or the hub id."""
    if name in registry.names("models"):
        return build_once(cached_path(name, registry), registry.get("models", name).load())
    if recipe is not None and os.path.isdir(recipe.resolve_path(name)):
        return recipe.resolve_path(name)
    return name


def cached_path(name: str, registry) -> str:
    """Where registered model ``name`` is built (once) in the cache."""
    return os.path.join(cache_dir(), "models", f"{name}-{registry.get('models', name).version}-{BUILD_VERSION}")


def _dtype(name: str | None):
    import torch  # noqa: PLC0415

    return {None: None, "auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16,
            "float16": torch.float16}[name]


def quantization_config(model: dict):
    q = model.get("quantization")
    if not q:
        return None
    from transformers import BitsAndBytesConfig  # noqa: PLC0415

    try:
        import bitsandbytes  # noqa: F401, PLC0415
    except ImportError:
        raise RecipeError("model.quantization needs bitsandbytes: pip install 'rewardkit[quant]'") from None
    if q.get("bits", 4) == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=q.get("quant_type", "nf4"),
        bnb_4bit_use_double_quant=q.get("double_quant", True),
        bnb_4bit_compute_dtype=_dtype(q.get("compute_dtype") or model.get("dtype") or "float32"),
    )


def peft_config(model: dict, task_type: str = "CAUSAL_LM"):
    lora = model.get("lora")
    if not lora:
        return None
    from peft import LoraConfig  # noqa: PLC0415

    kwargs = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear",
              "task_type": task_type, **lora}
    try:
        return LoraConfig(**kwargs)
    except (TypeError, ValueError) as exc:
        raise RecipeError(f"model.lora: {exc}") from None


def init_kwargs(model: dict) -> dict:
    """``from_pretrained`` keyword arguments (TRL's ``model_init_kwargs``)."""
    kw = {"dtype": model.get("dtype") or "float32"}
    for key in ("revision", "trust_remote_code", "attn_implementation"):
        if model.get(key) is not None:
            kw[key] = model[key]
    return kw


def load_for_inference(path: str, model: dict, cls=None):
    """Load a model the way its stage will train it (quantized if configured), for evaluation."""
    from transformers import AutoModelForCausalLM  # noqa: PLC0415

    cls = cls or AutoModelForCausalLM
    kw = init_kwargs(model)
    kw["dtype"] = _dtype(kw["dtype"])
    q = quantization_config(model)
    if q is not None:
        kw["quantization_config"] = q
    return cls.from_pretrained(path, **kw)


def save_merged(trainer, base_path: str, model: dict, out_dir: str, cls=None) -> str:
    """Write the stage's result as a full model directory, so the next stage can start from it.

    Without LoRA this is ``trainer.save_model``. With LoRA the adapter is saved next to it (``adapter/``) and
    merged into a freshly loaded *unquantized* copy of the base (merging into 4-bit weights would round the
    update away), the usual way QLoRA results are exported.
    """
    from transformers import AutoModelForCausalLM  # noqa: PLC0415

    cls = cls or AutoModelForCausalLM
    tok = trainer.processing_class
    if not model.get("lora"):
        trainer.save_model(out_dir)
        return out_dir
    adapter_dir = os.path.join(out_dir, "adapter")
    trainer.model.save_pretrained(adapter_dir)
    from peft import PeftModel  # noqa: PLC0415

    dtype = _dtype(model.get("dtype") or "float32")
    base = cls.from_pretrained(base_path, dtype=None if dtype == "auto" else dtype)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.save_pretrained(out_dir)
    if tok is not None:
        getattr(tok, "tokenizer", tok).save_pretrained(out_dir)
    return out_dir


def keep_4bit_trainable(model) -> int:
    """Stop bitsandbytes from repacking the 4-bit layers of a model that trains; returns how many layers.

    bitsandbytes 0.50 on a CPU with AVX512-BF16 repacks a ``Linear4bit`` weight into an inference layout on the
    layer's first forward in eval mode without gradients (as during generation) and from then on computes the layer
    with ``gemv_4bit``, which has no autograd kernel: torch warns once and the gradients that flow back through the
    frozen base layer are wrong, so every LoRA adapter below the top layer gets a wrong update (measured once on
    tiny-llama without this: a LoRA gradient off by 0.15 after one generation; tests/test_models.py checks equality). RL trainers generate
    between updates, so each one would train on wrong gradients on such CPUs and correctly on others.
    """
    n = 0
    for m in model.modules():
        if hasattr(m, "support_avx512bf16_for_cpu"):
            m.support_avx512bf16_for_cpu = False
            n += 1
    return n


def describe(model) -> dict:
    """What a trainer trained: the architecture class, parameter counts, 4-bit linear layers, LoRA modules."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    modules = list(model.modules())
    return {"architecture": type(base).__name__,
            "parameters": sum(p.numel() for p in model.parameters()),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "linear_4bit": sum(type(m).__module__.startswith("bitsandbytes") and type(m).__name__ == "Linear4bit"
                               for m in modules),
            "lora_modules": sum(hasattr(m, "lora_A") for m in modules)}
