# fresh_registry / builtin_registry come from rewardkit.testing, rewardkit's pytest plugin (pytest11 entry point).
import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Embedded models are built once per test session into a private cache."""
    monkeypatch.setenv("REWARDKIT_CACHE", str(tmp_path_factory.getbasetemp() / "rk-cache"))


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
