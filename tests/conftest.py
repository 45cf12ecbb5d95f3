# fresh_registry / builtin_registry come from rewardkit.testing, rewardkit's pytest plugin (pytest11 entry point).
import os

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # CI runs the suite on 2 xdist workers (README's test command). Two torch processes with a thread per core
    # each oversubscribe the cores and run several times slower; one thread each keeps both cores busy instead.
    # The environment variables reach the runs tests start as subprocesses.
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Embedded models are built once per test session into a private cache."""
    monkeypatch.setenv("REWARDKIT_CACHE", str(tmp_path_factory.getbasetemp() / "rk-cache"))


@pytest.fixture(scope="session")
def stage_cache_path(tmp_path_factory):
    """One stage-cache directory for the session and all its xdist workers (their base temp dirs share a parent)."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "rk-stages"


@pytest.fixture
def stage_cache(stage_cache_path, monkeypatch):
    """Finished stages shared between this session's runs (rewardkit.stage_cache): recipe tests that start from
    the same SFT warm start train it once; the cache's lock makes a worker that needs a stage the other worker is
    training wait for it and copy it."""
    monkeypatch.setenv("REWARDKIT_STAGE_CACHE", str(stage_cache_path))
    return stage_cache_path


@pytest.fixture(scope="module")
def registry():
    """rewardkit's built-ins only, for a module of trainer tests (not installed as the process default)."""
    import rewardkit.builtin
    from rewardkit.registry import Registry

    reg = Registry(entry_points=False)
    reg.add_plugin(rewardkit.builtin, "builtin", dist="rewardkit")
    return reg


@pytest.fixture(scope="module")
def tiny(registry):
    """(model path, tokenizer, a small arithmetic DatasetDict) of the embedded tiny-llama."""
    from transformers import AutoTokenizer

    from rewardkit import models
    from rewardkit.builtin.datasets import arithmetic

    path = models.resolve("tiny-llama", registry)
    return path, AutoTokenizer.from_pretrained(path), arithmetic(n_train=64, n_test=8, max_operand=10)


# --- vLLM (tests/test_vllm*.py): they run in .venv-vllm, the second command of README's test line ---

VLLM_TEST_SECONDS = 240  # per test; an engine that hangs ends the whole pytest process (it is in-process)


def pytest_configure(config):
    config.addinivalue_line("markers", "vllm: needs vLLM (.venv-vllm); skipped where vLLM is not installed")


@pytest.fixture(autouse=True)
def _vllm_deadline(request):
    """A ``vllm`` test that runs past VLLM_TEST_SECONDS fails (SIGALRM), and one stuck where no Python runs (inside
    the engine's C++) ends the process 30 s later with every thread's traceback (faulthandler), so CI never hangs."""
    if request.node.get_closest_marker("vllm") is None:
        yield
        return
    import faulthandler
    import signal

    def _timeout(signum, frame):
        raise TimeoutError(f"{request.node.nodeid} ran past {VLLM_TEST_SECONDS} s")

    previous = signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(VLLM_TEST_SECONDS)
    faulthandler.dump_traceback_later(VLLM_TEST_SECONDS + 30, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="session")
def vllm_engine(tmp_path_factory):
    """(engine, model dir): one in-process vLLM engine on the tiny-llama in float32 for the whole session, shut down
    at its end, with LoRA enabled (adapters up to rank 8) as rewardkit builds it for a LoRA policy. Tests that change
    its weights put the original ones back, those that add an adapter remove it."""
    import faulthandler

    from rewardkit import vllm_sync
    from rewardkit.builtin.models import build

    path = str(tmp_path_factory.mktemp("vllm-model"))
    build("tiny-llama", path)
    faulthandler.dump_traceback_later(VLLM_TEST_SECONDS, exit=True)  # a start that never returns ends the run
    try:
        llm = vllm_sync.start_engine(path, max_model_len=128, enable_lora=True, max_loras=1, max_lora_rank=8)
    finally:
        faulthandler.cancel_dump_traceback_later()
    try:
        yield llm, path
    finally:
        vllm_sync.shutdown(llm)


def pytest_collection_modifyitems(config, items):
    """Modules with slow tests first, the longest first: CI hands whole modules to its 2 xdist workers in this
    order (``--dist loadfile --no-loadscope-reorder``), one at a time as a worker frees up, so the long runs start
    early and short modules fill the gaps at the end; a module's tests stay on one worker, in order, so its
    module-scoped fixtures are set up once. (xdist's default ``load`` sends each worker a quarter of the list up
    front, which put every slow test on one worker.)"""
    slow_modules = {item.module for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: (item.module not in slow_modules, _rank(item)))


# The modules holding the longest runs (CI's --durations on a fresh clone, 2026-12-07: the annealed quick start
# 107 s, DeepSpeed ZeRO 105 s, the RLHF recipe 89 s, the GPU recipes' --smoke 70 s, the QLoRA grpo_is recipe 66 s),
# first: started last, one of them alone kept one worker busy for the suite's final two minutes.
LONGEST_FIRST = ("test_quickstart.py", "test_accelerate.py", "test_ppo_recipes_slow.py", "test_smoke.py",
                 "test_grpo_is_recipe.py")


def _rank(item) -> int:
    name = os.path.basename(str(item.path))
    return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)
