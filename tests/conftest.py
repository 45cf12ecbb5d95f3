# fresh_registry / builtin_registry come from rewardkit.testing, rewardkit's pytest plugin (pytest11 entry point).
import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Embedded models are built once per test session into a private cache."""
    monkeypatch.setenv("REWARDKIT_CACHE", str(tmp_path_factory.getbasetemp() / "rk-cache"))
