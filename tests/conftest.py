import pytest

from rewardkit import registry as reg

@pytest.fixture
def fresh_registry():
    """An empty registry installed as the process default, restored afterwards."""
    r = reg.Registry(entry_points=False)
    previous = reg.set_registry(r)
    yield r
    reg.set_registry(previous)


@pytest.fixture
def builtin_registry():
    """A registry holding only rewardkit's built-in plugin (nothing else that happens to be installed)."""
    from rewardkit import builtin

    r = reg.Registry(entry_points=False)
    r.add_plugin(builtin, "builtin", dist="rewardkit")
    previous = reg.set_registry(r)
    yield r
    reg.set_registry(previous)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Embedded models are built once per test session into a private cache."""
    monkeypatch.setenv("REWARDKIT_CACHE", str(tmp_path_factory.getbasetemp() / "rk-cache"))
