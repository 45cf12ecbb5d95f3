"""Peak GPU memory and step time of QLoRA ``grpo_is`` against TRL GRPO in bf16 with a reference model (issue 26).

**Not run yet.** No GPU was lent to the session that wrote it, so no figure from it is claimed anywhere; it is
prepared for a session with a GPU to run in one device call (below).

    python benchmarks/gpu_memory.py                      # CUDA, Qwen2.5-1.5B shape
    python benchmarks/gpu_memory.py --device cpu --tiny  # the same code at a toy shape on CPU (its test)

Model: a randomly initialised Qwen2.5-1.5B-shaped model built on the device from a config (no hub): hidden 1536,
28 layers, 12 heads, 2 KV heads, intermediate 8960, vocab 151,936, tied embeddings, rope theta 1e6, 32,768
positions (1.54B parameters), saved once in bf16 under ``--cache``. Prompts: the arithmetic task through the
embedded character tokenizer (ids < 110; a sampled id above that decodes to nothing, so the random model's
completions run to full length and every step generates the same number of tokens). Generation: HF ``generate``.

Each configuration runs in its own subprocess for ``--warmup`` + ``--steps`` optimizer steps on the same batch
(``--batch`` completions per step, ``--num-generations`` per prompt, ``--completion-len`` new tokens), beta 0.04,
learning rate 1e-5, TRL's defaults otherwise (gradient checkpointing on):

- ``grpo_is_qlora``: GRPOISTrainer (rollout_epochs 2, early_stop_kl 0.1, k3), 4-bit NF4 base (double quant, bf16
  compute) + LoRA r=16 on all linear layers, the quantization and LoRA of
  recipes/gpu/arithmetic_grpo_is_qwen2.5-1.5b_qlora.yaml; the reference is the base with the adapter disabled.
  With rollout_epochs 2 a rollout is generated every second step: compare generated tokens per second, and keep
  ``--warmup`` and ``--steps`` even.
- ``trl_bf16``: TRL GRPOTrainer, bf16 weights, AdamW over all parameters, a separate bf16 reference model.

Recorded per configuration: peak allocated and reserved CUDA memory (``torch.cuda.max_memory_allocated`` /
``max_memory_reserved``) over loading and over training, allocated after loading, trainable parameters, each
step's wall time (``torch.cuda.synchronize`` at both ends), the seconds it spent in ``generate`` and the tokens it
generated, and their means over the steps after the warm-up. The JSON goes to ``$OUT/gpu_memory.json`` when
``OUT`` is set (the device tool's output folder), else to ``runs/bench_memory/gpu_memory.json``; a table is
printed. With ``--device cpu`` the memory figure is peak RSS. ``--device cuda`` without CUDA exits with status 2.

The one device call (the wheels are downloaded here into the git-ignored ``.whl/``, docs/grpo_is.md says which;
run it with ``carry: [".whl"]`` and ``timeout_s: 600``; estimated 3-5 minutes of the command, 5-7 of device time
with the machine's start):

    set -o pipefail; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:. || exit; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; PYTHONUNBUFFERED=1 timeout 540 python3 benchmarks/gpu_memory.py 2>&1 | tee $OUT/gpu_memory.log
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import warnings

if __name__ == "__main__":  # as a script (the benchmark and its children), not when a test imports it
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the GPU machine has no network: never wait on the hub
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")

from transformers import TrainerCallback  # noqa: E402  (after the environment above)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

KINDS = ("grpo_is_qlora", "trl_bf16")
QWEN25_15B = dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                  intermediate_size=8960, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=32768,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, rms_norm_eps=1e-6)
TINY = dict(QWEN25_15B, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
# rewardkit model sections (rewardkit.models), as in recipes/gpu/arithmetic_grpo_is_qwen2.5-1.5b_qlora.yaml
QLORA = {"dtype": "bfloat16", "quantization": {"bits": 4, "quant_type": "nf4", "double_quant": True,
                                               "compute_dtype": "bfloat16"},
         "lora": {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear"}}
BETA, LR = 0.04, 1e-5
SIZES = {"full": dict(batch=16, num_generations=8, completion_len=256, warmup=2, steps=4),
         "tiny": dict(batch=4, num_generations=2, completion_len=4, warmup=2, steps=2)}


def reward(prompts, completions, answer, **kwargs):
    """Exact answer plus a little per character (a random model's completions are mostly empty)."""
    return [float(c.strip() == x) + 0.01 * len(c) for c, x in zip(completions, answer)]


def model_config(shape: dict, tok):
    from transformers import AutoConfig

    return AutoConfig.for_model("qwen2", pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                eos_token_id=tok.eos_token_id, **shape)


def parameter_count(shape: dict) -> int:
    import torch
    from transformers import AutoModelForCausalLM

    from rewardkit.builtin.models import build_tokenizer

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config(shape, build_tokenizer()))
    return sum(p.numel() for p in model.parameters())


def build_model(path: str, shape: dict, device: str) -> str:
    """A random model of ``shape`` with the embedded tokenizer, in bf16, built on ``device`` and saved at ``path``
    (once: an existing one is reused)."""
    if os.path.exists(os.path.join(path, "config.json")):
        return path
    import torch
    from transformers import AutoModelForCausalLM

    from rewardkit.builtin.models import build_tokenizer

    tok = build_tokenizer()
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(model_config(shape, tok), dtype=torch.bfloat16)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    os.replace(tmp, path)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return path


class StepClock(TrainerCallback):
    """Each optimizer step's wall time (generation included; ``sync`` waits for the device at both ends), and the
    seconds spent in and tokens returned by TRL's ``_generate_single_turn`` during it (wrapped by ``watch``)."""

    def __init__(self, sync):
        self.sync, self.steps, self.tokens, self.gen_s = sync, [], 0, 0.0
        self._start = (0.0, 0, 0.0)

    def watch(self, trainer) -> None:
        inner = trainer._generate_single_turn

        def counted(*args, **kwargs):
            self.sync()
            t = time.perf_counter()
            completion_ids, logprobs = inner(*args, **kwargs)
            self.sync()
            self.gen_s += time.perf_counter() - t
            self.tokens += sum(len(c) for c in completion_ids)
            return completion_ids, logprobs

        trainer._generate_single_turn = counted

    def on_step_begin(self, args, state, control, **kwargs):
        self.sync()
        self._start = (time.perf_counter(), self.tokens, self.gen_s)

    def on_step_end(self, args, state, control, **kwargs):
        self.sync()
        t, tokens, gen_s = self._start
        self.steps.append({"seconds": time.perf_counter() - t, "generated_tokens": self.tokens - tokens,
                           "generate_seconds": self.gen_s - gen_s})


def make_trainer(kind: str, path: str, a, clock: StepClock):
    import torch
    from transformers import AutoTokenizer

    from rewardkit import models
    from rewardkit.builtin.datasets import arithmetic

    tok = AutoTokenizer.from_pretrained(path)
    ds = arithmetic(n_train=256, n_test=8)["train"]
    out = os.path.join(os.path.dirname(os.path.abspath(a.cache)), "bench_memory", f"gpu_{kind}")
    common = dict(output_dir=out, seed=0,
                  per_device_train_batch_size=a.batch, num_generations=a.num_generations,
                  max_completion_length=a.completion_len, max_steps=a.warmup + a.steps, learning_rate=LR, beta=BETA,
                  bf16=True, model_init_kwargs={"dtype": torch.bfloat16}, use_cpu=a.device == "cpu",
                  report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True)
    if kind == "grpo_is_qlora":
        from rewardkit.trainers.grpo_is import GRPOISConfig, GRPOISTrainer

        cfg = GRPOISConfig(rollout_epochs=2, early_stop_kl=0.1, kl_estimator="k3", **common)
        tr = GRPOISTrainer(model=path, args=cfg, train_dataset=ds, processing_class=tok, reward_funcs=[reward],
                           quantization_config=models.quantization_config(QLORA),
                           peft_config=models.peft_config(QLORA), callbacks=[clock])
        models.keep_4bit_trainable(tr.model)
    elif kind == "trl_bf16":
        from trl import GRPOConfig, GRPOTrainer

        tr = GRPOTrainer(model=path, args=GRPOConfig(**common), train_dataset=ds, processing_class=tok,
                         reward_funcs=[reward], callbacks=[clock])
    else:
        raise ValueError(kind)
    return tr


def mib(n: float) -> int:
    return round(n / 2 ** 20)


def memory(device: str) -> dict:
    """Peak memory so far: CUDA allocator figures, or the process's peak RSS on CPU."""
    if device == "cuda":
        import torch

        return {"allocated_mib": mib(torch.cuda.memory_allocated()),
                "peak_allocated_mib": mib(torch.cuda.max_memory_allocated()),
                "peak_reserved_mib": mib(torch.cuda.max_memory_reserved())}
    return {"peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def measure(kind: str, path: str, a) -> dict:
    """Build ``kind``'s trainer, train it ``warmup + steps`` steps, and return its memory and timings."""
    import torch

    cuda = a.device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    clock = StepClock(torch.cuda.synchronize if cuda else (lambda: None))
    t0 = time.perf_counter()
    tr = make_trainer(kind, path, a, clock)
    clock.watch(tr)
    loaded, load_s = memory(a.device), time.perf_counter() - t0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    tr.train()
    trained = memory(a.device)
    timed = clock.steps[a.warmup:]
    mean = {k: sum(s[k] for s in timed) / len(timed) for k in ("seconds", "generate_seconds", "generated_tokens")}
    peaks = {k: max(loaded[k], trained[k]) for k in trained if k.startswith("peak")}
    return {"kind": kind, **peaks, "loading": loaded, "training": trained, "load_seconds": round(load_s, 1),
            "trainable_params": sum(p.numel() for p in tr.model.parameters() if p.requires_grad),
            "separate_reference_model": tr.ref_model is not None, "optimizer_steps": tr.state.global_step,
            "gradient_checkpointing": tr.args.gradient_checkpointing,
            "mean_step_seconds": round(mean["seconds"], 3), "mean_generate_seconds": round(mean["generate_seconds"], 3),
            "generated_tokens_per_step": mean["generated_tokens"],
            "generated_tokens_per_second": round(sum(s["generated_tokens"] for s in timed)
                                                 / sum(s["seconds"] for s in timed), 1),
            "steps": [{k: round(v, 3) for k, v in s.items()} for s in clock.steps]}


def run_child(kind: str, a) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), *a.argv, "--child", kind]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=a.child_timeout)
    except subprocess.TimeoutExpired as e:
        return {"kind": kind, "error": f"timed out after {a.child_timeout} s", "tail": str(e.stderr or "")[-3000:]}
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        return {"kind": kind, "error": f"exit status {proc.returncode}",
                "tail": proc.stdout[-1000:] + "\n" + proc.stderr[-3000:]}
    return json.loads(line[len("RESULT "):])


def environment(device: str) -> dict:
    import importlib.metadata as md

    import torch

    def version(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    env = {name: version(name) for name in ("transformers", "trl", "peft", "bitsandbytes", "accelerate", "datasets",
                                            "pyarrow", "fsspec", "huggingface_hub")}
    env.update(torch=torch.__version__, torch_cuda=torch.version.cuda, python=sys.version.split()[0])
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=p.name, gpu_memory_mib=mib(p.total_memory))
    return env


def table(results: dict, device: str) -> str:
    mem = ("peak alloc MiB", "peak resv MiB") if device == "cuda" else ("peak RSS MiB", "")
    head = f"{'run':<14}{mem[0]:>15}{mem[1]:>15}{'trainable':>12}{'s/step':>8}{'gen s/step':>11}{'gen tok/s':>10}"
    rows = [head]
    for kind, r in results.items():
        if "error" in r:
            rows.append(f"{kind:<14}  FAILED: {r['error']}")
            continue
        m = (r["peak_allocated_mib"], r["peak_reserved_mib"]) if device == "cuda" else (r["peak_rss_mib"], "")
        rows.append(f"{kind:<14}{m[0]:>15}{m[1]:>15}{r['trainable_params']:>12}{r['mean_step_seconds']:>8}"
                    f"{r['mean_generate_seconds']:>11}{r['generated_tokens_per_second']:>10}")
    return "\n".join(rows)


def parse(argv: list[str]):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--tiny", action="store_true", help="a 2-layer toy of the same shape family (tests, CPU)")
    for name, kind in (("batch", int), ("num-generations", int), ("completion-len", int), ("warmup", int),
                       ("steps", int)):
        p.add_argument(f"--{name}", type=kind, help=f"default {SIZES['full'][name.replace('-', '_')]} "
                                                    f"({SIZES['tiny'][name.replace('-', '_')]} with --tiny)")
    p.add_argument("--cache", default=os.path.join(ROOT, "runs", "bench_cache"))
    p.add_argument("--out", help="JSON path; default $OUT/gpu_memory.json or runs/bench_memory/gpu_memory.json")
    p.add_argument("--child-timeout", type=int, default=200, help="seconds per configuration")
    p.add_argument("--in-process", action="store_true", help="CPU only: both runs in this process (tests)")
    p.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    for k, v in SIZES["tiny" if a.tiny else "full"].items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.argv = list(argv)
    if a.in_process and a.device != "cpu":
        p.error("--in-process is for --device cpu: CUDA peaks are read per process")
    if a.device == "cuda" and not a.child:
        import torch

        if not torch.cuda.is_available():
            p.error(f"--device cuda: torch {torch.__version__} sees no CUDA device; run this on a GPU machine, or "
                    f"check the logic on CPU with --device cpu --tiny")
    return a


def summarise(a, shape: dict, build_s: float, results: dict) -> dict:
    ok = all("error" not in r for r in results.values())
    key = "peak_allocated_mib" if a.device == "cuda" else "peak_rss_mib"
    settings = {k: getattr(a, k) for k in ("device", "batch", "num_generations", "completion_len", "warmup", "steps",
                                           "in_process")}
    return {"model": {"arch": "qwen2", **shape, "parameters": parameter_count(shape), "init": "random, bf16",
                      "build_seconds": round(build_s, 1)},
            "settings": {**settings, "beta": BETA, "learning_rate": LR, "qlora": QLORA,
                         "grpo_is": "rollout_epochs 2, early_stop_kl 0.1, kl_estimator k3"},
            "environment": environment(a.device), "results": results,
            "peak_ratio_qlora_vs_trl": round(results["grpo_is_qlora"][key] / results["trl_bf16"][key], 3) if ok
            else None}


def main(argv: list[str] | None = None) -> dict:
    a = parse(sys.argv[1:] if argv is None else argv)
    shape, name = (TINY, "qwen2-tiny-shape-random") if a.tiny else (QWEN25_15B, "qwen2.5-1.5b-shape-random")
    path = os.path.join(a.cache, name)
    if a.child:
        print("RESULT " + json.dumps(measure(a.child, path, a)), flush=True)
        return {}
    t0 = time.perf_counter()
    build_model(path, shape, a.device)
    build_s = time.perf_counter() - t0
    results = {}
    for kind in KINDS:
        results[kind] = measure(kind, path, a) if a.in_process else run_child(kind, a)
        print(json.dumps({k: v for k, v in results[kind].items() if k != "steps"}), flush=True)
    summary = summarise(a, shape, build_s, results)
    out = a.out or os.path.join(os.environ["OUT"] if os.environ.get("OUT") else
                                os.path.join(ROOT, "runs", "bench_memory"), "gpu_memory.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(summary, f, indent=1)
    print(table(results, a.device))
    print(f"peak ratio grpo_is QLoRA / TRL bf16: {summary['peak_ratio_qlora_vs_trl']}\nwrote {out}", flush=True)
    if summary["peak_ratio_qlora_vs_trl"] is None:
        sys.exit(1)  # a configuration failed: its error and output tail are in the JSON
    return summary


if __name__ == "__main__":
    main()
