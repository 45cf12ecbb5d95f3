"""The quick-start recipe (shrunk) under `accelerate launch` with 2 CPU processes (gloo)."""

import glob
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The CLI with one extra reward that stands for a plugin with a worker pool: the pool is opened lazily, in the
# process that calls the reward, and every call is recorded per process.
DRIVER = '''
import os, sys
from rewardkit.cli import main
from rewardkit.registry import get_registry


class PoolProbe:
    def __init__(self):
        self.pool_pid = None

    def __call__(self, prompts, completions, **kwargs):
        if self.pool_pid is None:
            self.pool_pid = os.getpid()  # "open the pool" on first use
        path = os.path.join(os.environ["PROBE_DIR"], f"rank{os.environ['RANK']}.txt")
        with open(path, "a") as f:
            f.write(f"{os.getpid()} {self.pool_pid} {len(completions)}\\n")
        return [0.0] * len(completions)


get_registry().add("rewards", "pool_probe", PoolProbe, dist="tests")
sys.exit(main(sys.argv[1:]))
'''


def free_port() -> int:
    with socket.socket() as s:  # other test runs on this machine may hold accelerate's default port
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_quickstart_grpo_with_two_cpu_processes(tmp_path):
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    assert accelerate, "accelerate's launcher is not installed"
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    probe = tmp_path / "probe"
    probe.mkdir()
    out = tmp_path / "out"
    overrides = [
        f"output_dir={out}", "data.params.n_train=256", "data.params.n_test=16", "eval.n=16",
        "stages.sft.trainer.max_steps=2", "stages.sft.trainer.per_device_train_batch_size=16",
        "~stages.sft.early_stop",  # a 2-step SFT: its held-out criterion (every 20 steps) could never be checked
        "stages.grpo.trainer.max_steps=3", "stages.grpo.trainer.per_device_train_batch_size=8",
        "stages.grpo.trainer.num_generations=4", "stages.grpo.trainer.logging_steps=1",
        "stages.grpo.rewards=[{name: exact_match, alias: correct}, {name: pool_probe, weight: 0.0}]",
    ]
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           str(driver), "run", os.path.join(REPO, "recipes", "quickstart.yaml"), *overrides]
    env = {**os.environ, "PROBE_DIR": str(probe), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=540, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    # One summary, printed and written by the main process only.
    assert proc.stdout.count("rewardkit: finished") == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and [(s["name"], s["steps"]) for s in summary["stages"]] == [("sft", 2),
                                                                                            ("grpo", 3)]
    assert [r["after"] for r in summary["eval"]] == ["base", "sft", "grpo"]
    assert all(r["n"] == 16 for r in summary["eval"])
    # Logs written once (rank 0), not once per process.
    rows = [json.loads(line) for line in open(out / "grpo" / "log.jsonl")]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
    assert os.path.exists(out / "grpo" / "model" / "model.safetensors")

    # One reward instance (and pool) per process, each scoring its own share of every batch.
    calls = {}
    for rank in (0, 1):
        lines = (probe / f"rank{rank}.txt").read_text().split()
        calls[rank] = [tuple(map(int, lines[i:i + 3])) for i in range(0, len(lines), 3)]
        assert len(calls[rank]) == 3  # one generation batch per step
        assert all(pid == pool_pid and n == 8 for pid, pool_pid, n in calls[rank])
    assert calls[0][0][0] != calls[1][0][0]  # two processes


def test_fsdp_on_cpu_is_refused_before_anything_loads(tmp_path, registry, monkeypatch):
    """accelerate 1.15 enables FSDP for GPU backends only; on CPU a run would silently train with DDP. The
    trainer field and the launcher's flag are both refused with the reason, before a model loads."""
    import torch

    from rewardkit.errors import RecipeError
    from rewardkit.pipeline import run
    from rewardkit.recipe import load_recipe

    if torch.cuda.is_available():
        pytest.skip("FSDP is available on this machine")
    path = tmp_path / "fsdp.yaml"
    path.write_text(f"""
model: {{name: tiny-llama}}
data: {{name: arithmetic, params: {{n_train: 16, n_test: 4}}}}
output_dir: {tmp_path / "run"}
trainer: {{type: sft, max_steps: 1, fsdp: "full_shard auto_wrap"}}
""")
    recipe = load_recipe(str(path), registry=registry)  # a GPU recipe still validates on CPU
    with pytest.raises(RecipeError, match=r"stages\.sft\.trainer\.fsdp: FSDP does not run on CPU"):
        run(recipe, registry)
    assert not (tmp_path / "run" / "sft").exists()
    path.write_text(path.read_text().replace(', fsdp: "full_shard auto_wrap"', ""))
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(RecipeError, match=r"accelerate launch --use_fsdp .*silently train with DDP"):
        run(load_recipe(str(path), registry=registry), registry)


@pytest.mark.slow
def test_accelerate_launch_use_fsdp_on_cpu_exits_2_with_the_reason(tmp_path):
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    cmd = [accelerate, "launch", "--use_fsdp", "--fsdp_version", "2", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           "-m", "rewardkit.cli", "run", os.path.join(REPO, "recipes", "quickstart.yaml"),
           f"output_dir={tmp_path / 'out'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "exitcode: 2" in out, out[-3000:]
    assert "FSDP does not run on CPU with accelerate" in out
    assert not (tmp_path / "out" / "sft").exists()


@pytest.mark.slow
def test_dynamic_sampling_with_two_cpu_processes_counts_globally(tmp_path):
    """Refill rounds are collective (every process generates in every round) and the logged totals are sums
    over both processes. A 2-step SFT model gets nothing right, so every group has zero variance: each rollout
    runs all 4 rounds, refills 2 groups per process per round and is completed with 2 zero-variance groups per
    process."""
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    out = tmp_path / "out"
    overrides = [f"output_dir={out}", "data.params.n_train=256", "data.params.n_test=16", "~eval",
                 "stages.sft.trainer.max_steps=2", "stages.sft.trainer.per_device_train_batch_size=16",
                 "~stages.sft.early_stop", "stages.grpo.trainer.max_steps=4",
                 "stages.grpo.trainer.per_device_train_batch_size=8", "stages.grpo.trainer.num_generations=4",
                 "stages.grpo.trainer.dynamic_sampling=true", "stages.grpo.trainer.logging_steps=1"]
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           "-m", "rewardkit.cli", "run", os.path.join(REPO, "recipes", "quickstart.yaml"), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    ds = json.loads((out / "summary.json").read_text())["stages"][-1]["dynamic_sampling"]
    assert ds == {"rollouts": 4, "rounds": 16, "dropped_groups": 4 * 2 * (8 - 2), "extra_completions": 4 * 2 * 3 * 8,
                  "filled_zero_var_groups": 4 * 2 * 2}


# exact_match with partial credit, recording each process's scores (one line per call) before returning them.
SCORING_DRIVER = '''
import json, os, sys
from rewardkit.builtin.rewards import ExactMatch
from rewardkit.cli import main
from rewardkit.registry import get_registry


class RecordedMatch(ExactMatch):
    def __call__(self, prompts, completions, **kwargs):
        scores = super().__call__(prompts, completions, **kwargs)
        with open(os.path.join(os.environ["PROBE_DIR"], f"rank{os.environ.get('RANK', '0')}.jsonl"), "a") as f:
            f.write(json.dumps(scores) + "\\n")
        return scores


get_registry().add("rewards", "recorded_match", lambda: RecordedMatch(partial_credit=0.5), dist="tests")
sys.exit(main(sys.argv[1:]))
'''


@pytest.fixture(scope="module")
def sft_model(tmp_path_factory) -> str:
    """The quick start's SFT stage, 60 steps on 1 process: a model that writes digits, so partial credit varies
    and some answers are right."""
    tmp_path = tmp_path_factory.mktemp("sft")
    out = tmp_path / "sft"
    cmd = [sys.executable, "-m", "rewardkit.cli", "run", os.path.join(REPO, "recipes", "quickstart.yaml"),
           f"output_dir={out}", "~stages.grpo", "~stages.sft.early_stop", "~eval", "data.params.n_train=4000",
           "stages.sft.trainer.max_steps=60"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return str(out / "sft" / "model")


def _grpo_run(tmp_path, name: str, processes: int, model: str) -> tuple[dict, list[dict], dict]:
    """The quick start's GRPO stage alone from ``model``, 3 steps of 16 completions (4 prompts x 4) with top_k 1, so
    generation is deterministic and two runs with the same global batch generate the same completions, and a LoRA
    adapter initialised at random (seeded), so the policy differs from the reference (the base without the
    adapter) from the first step and the logged KL is not 0. Returns (summary, logged rows by step,
    {rank: [scores of each call]})."""
    out, probe = tmp_path / name, tmp_path / f"{name}-probe"
    probe.mkdir()
    driver = tmp_path / "scoring_driver.py"
    driver.write_text(SCORING_DRIVER)
    t = "stages.grpo.trainer"
    overrides = [f"output_dir={out}", f"model.name={model}", "model.lora={r: 8, lora_alpha: 2, init_lora_weights: false}",
                 "~stages.sft", "data.params.n_train=256", "data.params.n_test=16", "eval.n=16", "eval.samples=0",
                 f"{t}.max_steps=3", f"{t}.num_generations=4", f"{t}.logging_steps=1",
                 f"{t}.per_device_train_batch_size={16 // processes}", f"{t}.top_k=1", f"{t}.beta=0.1",
                 f"{t}.learning_rate=0.01", "stages.grpo.rewards=[{name: recorded_match, alias: correct}]"]
    recipe = os.path.join(REPO, "recipes", "quickstart.yaml")
    if processes == 1:
        cmd = [sys.executable, str(driver), "run", recipe, *overrides]
    else:
        accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
        cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
               str(driver), "run", recipe, *overrides]
    env = {**os.environ, "PROBE_DIR": str(probe), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.stdout.count("base model: held-out score") == 1 and proc.stdout.count("after 'grpo'") == 1
    logged = {r["step"]: r for r in map(json.loads, open(out / "grpo" / "log.jsonl")) if "reward" in r}
    scores = {int(p.stem[4:]): [json.loads(line) for line in open(p)] for p in probe.glob("rank*.jsonl")}
    return json.loads((out / "summary.json").read_text()), logged, scores


@pytest.mark.slow
def test_two_processes_log_global_means_and_match_one_process(tmp_path, sft_model):
    """Each of 2 processes scores its own 8 completions of a step; the logged reward statistics are means over
    all 16 (not the main process's 8) and equal what 1 process logs for the same global batch; KL is logged the
    same way; the held-out evaluation runs once, on the main process, and scores the same base model alike."""
    model = sft_model
    one_summary, one_log, one_scores = _grpo_run(tmp_path, "one", 1, model)
    two_summary, two_log, two_scores = _grpo_run(tmp_path, "two", 2, model)
    assert sorted(one_scores) == [0] and sorted(two_scores) == [0, 1]
    assert [len(c) for c in one_scores[0]] == [16] * 3
    assert all([len(c) for c in two_scores[r]] == [8] * 3 for r in (0, 1))
    assert sorted(one_log) == sorted(two_log) == [1, 2, 3]
    for step in (1, 2, 3):
        both = two_scores[0][step - 1] + two_scores[1][step - 1]
        mean = sum(both) / 16
        assert two_log[step]["reward"] == pytest.approx(mean, abs=1e-6)  # the global mean ...
        assert one_log[step]["reward"] == pytest.approx(sum(one_scores[0][step - 1]) / 16, abs=1e-6)
    # ... which is not what the main process saw alone (the test would not tell them apart if it were)
    assert any(abs(sum(two_scores[0][s]) / 8 - two_log[s + 1]["reward"]) > 1e-3 for s in range(3))
    # Step 1: the same model and prompts, deterministic generation: the same 16 scores and statistics.
    assert sorted(one_scores[0][0]) == pytest.approx(sorted(two_scores[0][0] + two_scores[1][0]), abs=1e-6)
    for key in ("reward", "reward_std", "rewards/correct/mean", "completions/mean_length"):
        assert two_log[1][key] == pytest.approx(one_log[1][key], abs=1e-6), key
    assert one_log[1]["kl"] > 1e-5  # the random adapter: policy and reference differ from the start ...
    assert two_log[1]["kl"] == pytest.approx(one_log[1]["kl"], rel=1e-3)  # ... and the KL mean is global
    # Steps 2-3 start from models updated by a 2-process all-reduce instead of one backward pass: equal up to
    # float rounding, so the statistics agree closely (one completion flipping between near-tied tokens moves the
    # mean reward by at most 1/16, hence the tolerance).
    for step in (2, 3):
        assert two_log[step]["kl"] == pytest.approx(one_log[step]["kl"], rel=0.05, abs=1e-4)
        assert two_log[step]["reward"] == pytest.approx(one_log[step]["reward"], abs=1 / 16 + 1e-6)
    # The held-out evaluation: once per model, by the main process, on all 16 test prompts.
    for summary in (one_summary, two_summary):
        assert [(r["after"], r["n"]) for r in summary["eval"]] == [("base", 16), ("grpo", 16)]
    assert two_summary["eval"][0]["score"] == one_summary["eval"][0]["score"]



# --------------------------------------------------------------------------- DeepSpeed ZeRO on 2 CPU processes
ZERO_CONFIG = """compute_environment: LOCAL_MACHINE
distributed_type: DEEPSPEED
deepspeed_config: {{zero_stage: {stage}, offload_optimizer_device: none, offload_param_device: none,
                   gradient_accumulation_steps: 1, zero3_init_flag: {init}}}
mixed_precision: 'no'
num_machines: 1
num_processes: 2
machine_rank: 0
rdzv_backend: static
same_network: true
use_cpu: false
"""
RECIPES = {  # trainer -> (recipe, stage, overrides): 2-4 steps from the SFT model, no eval
    "grpo": ("quickstart.yaml", "grpo", ["~stages.sft", "data.params.n_train=256",
                                         "stages.grpo.trainer.per_device_train_batch_size=16",
                                         "stages.grpo.trainer.num_generations=4"]),
    "ppo": ("cpu/arithmetic_ppo.yaml", "ppo", ["~stages.sft", "data.params.n_train=256",
                                               "stages.ppo.trainer.per_device_train_batch_size=8",
                                               "stages.ppo.trainer.steps_per_generation=1",
                                               "stages.ppo.trainer.rollout_epochs=1",
                                               "stages.ppo.trainer.critic_warmup_steps=1"]),
    "grpo_is": ("cpu/arithmetic_grpo_is_qlora.yaml", "grpo_is", [
        "~stages.sft", "~stages.grpo_is.model.quantization", "data.params.format=reversed",
        "data.params.n_train=256", "stages.grpo_is.trainer.per_device_train_batch_size=16",
        "stages.grpo_is.trainer.num_generations=4"]),
}


def _engine_run(tmp_path, engine: str, trainer: str, model: str, steps: int, out=None, extra=()):
    """Train ``trainer`` for ``steps`` steps on 2 CPU processes under ``engine`` (ddp, zero2, zero3); returns
    (output_dir, logged rows by step, summary)."""
    recipe, stage, overrides = RECIPES[trainer]
    out = out or tmp_path / f"{trainer}-{engine}"
    t = f"stages.{stage}.trainer"
    args = [f"output_dir={out}", f"model.name={model}", "~eval", f"{t}.max_steps={steps}", f"{t}.logging_steps=1",
            f"{t}.save_steps={steps}", *overrides, *extra]
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    if engine == "ddp":
        launch = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                  "--dynamo_backend", "no"]
    else:
        config = tmp_path / f"{engine}.yaml"
        config.write_text(ZERO_CONFIG.format(stage=engine[-1], init="true" if engine == "zero3" else "false"))
        launch = ["--config_file", str(config)]
    cmd = [accelerate, "launch", *launch, "--main_process_port", str(free_port()), "-m", "rewardkit.cli", "run",
           os.path.join(REPO, "recipes", recipe), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    logged = {r["step"]: r for r in map(json.loads, open(out / stage / "log.jsonl")) if "loss" in r}
    return out, logged, json.loads((out / "summary.json").read_text())


def _zero_checkpoint(out, stage: str, step: int) -> list[str]:
    """The DeepSpeed shard files of a checkpoint (a DDP checkpoint has none: proof the engine was DeepSpeed)."""
    return sorted(os.path.basename(p) for p in glob.glob(str(out / stage / f"checkpoint-{step}" / f"global_step{step}"
                                                               / "*")))


@pytest.fixture(scope="module")
def ddp_logs(tmp_path_factory, sft_model):
    """The logged rows of each trainer's 3-step DDP run, the reference the DeepSpeed runs must match (run once)."""
    runs = {}

    def get(trainer: str) -> dict:
        if trainer not in runs:
            runs[trainer] = _engine_run(tmp_path_factory.mktemp(f"ddp-{trainer}"), "ddp", trainer, sft_model, 3)[1]
        return runs[trainer]

    return get


def _assert_like_ddp(zero: dict, ddp: dict, engine: str):
    assert sorted(zero) == sorted(ddp) == [1, 2, 3]
    for step in (1, 2, 3):
        for key in ("loss", "grad_norm", "reward"):
            if key in ddp[step]:
                assert zero[step][key] == pytest.approx(ddp[step][key], rel=1e-3, abs=1e-5), (engine, step, key)


@pytest.mark.slow
@pytest.mark.parametrize("trainer,engine", [("grpo", "zero3"), ("ppo", "zero3"), ("grpo_is", "zero2")])
def test_deepspeed_zero_on_cpu_trains_like_ddp(tmp_path, sft_model, ddp_logs, trainer, engine):
    """Under DeepSpeed the same seeds give every process the same sampling stream as under DDP, so the logged loss,
    reward and gradient norm of each step agree with DDP's up to float rounding; the checkpoint is DeepSpeed's
    (ZeRO shards per process), which is how a silent fallback to DDP would show. (grpo under ZeRO-2: the resume
    test below.)"""
    out, zero, summary = _engine_run(tmp_path, engine, trainer, sft_model, 3)
    assert summary["complete"] and summary["stages"][-1]["steps"] == 3
    _assert_like_ddp(zero, ddp_logs(trainer), engine)
    shards = _zero_checkpoint(out, RECIPES[trainer][1], 3)
    assert any(f.startswith("zero_pp_rank_1") for f in shards), shards  # both processes hold a shard


@pytest.mark.slow
def test_deepspeed_zero2_trains_grpo_like_ddp_and_its_checkpoint_resumes(tmp_path, sft_model, ddp_logs):
    """grpo under ZeRO-2 matches DDP step by step; stopped after its step-2 checkpoint (simulated: the step-3
    checkpoint and the done mark removed) it resumes from DeepSpeed's shards and trains step 3 to the same loss as
    the uninterrupted run."""
    every = ["stages.grpo.trainer.save_steps=1", "stages.grpo.trainer.save_total_limit=3"]
    out, full, _ = _engine_run(tmp_path, "zero2", "grpo", sft_model, 3, extra=every)
    _assert_like_ddp(full, ddp_logs("grpo"), "zero2")
    assert any(f.startswith("zero_pp_rank_1") for f in _zero_checkpoint(out, "grpo", 3))
    assert _zero_checkpoint(out, "grpo", 2)
    shutil.rmtree(out / "grpo" / "checkpoint-3")
    stage_file = out / "grpo" / "stage.json"
    stage_file.write_text(json.dumps({**json.loads(stage_file.read_text()), "status": "running"}))
    out, resumed, summary = _engine_run(tmp_path, "zero2", "grpo", sft_model, 3, out=out, extra=every)
    info = summary["stages"][-1]
    assert info["resumed_from_step"] == 2 and info["steps"] == 3
    assert resumed[3]["loss"] == pytest.approx(full[3]["loss"], rel=1e-4, abs=1e-6)


def test_zero3_refuses_main_process_work_before_anything_loads(tmp_path, registry, monkeypatch):
    from rewardkit.errors import RecipeError
    from rewardkit.pipeline import run
    from rewardkit.recipe import load_recipe

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    recipe = load_recipe(os.path.join(REPO, "recipes", "cpu", "arithmetic_grpo_is_qlora.yaml"),
                         [f"output_dir={tmp_path / 'out'}", "stages.sft.early_stop={every: 10, target: 0.5}", "data.params.n_val=20"], registry)
    with pytest.raises(RecipeError) as err:
        run(recipe, registry)
    text = str(err.value)
    for field in ("eval:", "stages.sft.early_stop:", "stages.grpo_is.model.lora:"):
        assert field in text and "ZeRO-3" in text, text
    assert not (tmp_path / "out").exists()
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")  # ZeRO-2 keeps the parameters whole
    from rewardkit import engines

    assert engines.problems(recipe) == []
