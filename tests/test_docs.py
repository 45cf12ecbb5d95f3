"""Keep the docs honest: the README's commands, the recipe keys, the hooks."""

import os
import re

from rewardkit import hookspecs
from rewardkit import recipe_schema as rs
from rewardkit.values import section_help

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(*parts):
    with open(os.path.join(REPO, *parts)) as f:
        return f.read()


def test_ci_runs_the_readme_test_command():
    readme_commands = re.findall(r"^(bash \.ci/setup && .*?)\s+#", read("README.md"), re.M)
    assert len(readme_commands) == 2 and read("README.md").lstrip().startswith("# rewardkit\n\n```bash")
    assert readme_commands[1] in read(".ci", "run").splitlines()


def test_every_recipe_key_is_documented():
    doc = read("docs", "recipes.md")
    for section in rs.SECTIONS.values():
        for key in section_help(section):
            assert f"`{key}`" in doc, f"docs/recipes.md does not document '{key}'"


def test_every_hook_documents_the_register_call_rewardkit_makes():
    """Each hook's docstring shows the ``register(...)`` call with arguments the real callable accepts, describes
    the registered object, and says when it is called; the trainer contract names what the pipeline uses."""
    import inspect
    import re
    import types

    import rewardkit
    from rewardkit.registry import Registry

    hooks = [n for n in dir(hookspecs) if n.startswith("register_")]
    assert len(hooks) >= 5
    received = {}
    plugin = types.SimpleNamespace(**{h: rewardkit.hookimpl(specname=h)(
        lambda register, _h=h: received.setdefault(_h, register)) for h in hooks})
    reg = Registry(entry_points=False)
    info = reg.add_plugin(plugin, "spy", dist="tests")
    reg.names("rewards")  # loads the pending plugin: its hooks run
    assert info.error is None, info.error
    assert set(received) == set(hooks)
    for name in hooks:
        doc = getattr(hookspecs, name).__doc__ or ""
        call = re.search(r"``register\((\w+), (\w+)(?:, \*, ([^)]*))?\)``", doc)
        assert call, f"{name}: no ``register(name, obj, ...)`` line"
        real = inspect.signature(received[name]).parameters
        documented = [k.split("=")[0].strip() for k in (call.group(3) or "").split(",") if k.strip()]
        assert len([p for p in real.values() if p.kind == p.POSITIONAL_OR_KEYWORD]) == 2, name
        assert set(documented) <= {k for k, p in real.items() if p.kind == p.KEYWORD_ONLY}, (name, documented)
        assert f"``{call.group(2)}" in doc.replace(call.group(0), ""), f"{name} does not describe {call.group(2)}"
        assert "Called" in doc
        assert name in read("README.md")
    trainers = hookspecs.register_trainers.__doc__
    for attr in ("config_class", "column_layouts", "takes_rewards", "produces_policy", "model_class",
                 "build_trainer", "check_args", "result_metrics", "health_report"):
        assert attr in trainers, f"register_trainers does not name Stage.{attr}"


def test_reward_probe_attributes_are_documented_with_the_hooks():
    doc = hookspecs.register_rewards.__doc__
    for name in hookspecs.REWARD_PROBE_ATTRIBUTES:
        assert f"``{name}(" in doc, f"hookspecs.register_rewards does not document the reward attribute {name}"
    assert "rewardkit probe" in read("README.md") and "rewardkit probe" in read("docs", "safety.md")


def test_every_monitor_alarm_is_documented():
    from rewardkit import monitor  # noqa: PLC0415

    for doc in (read("docs", "safety.md"), read("docs", "recipes.md"), monitor.__doc__):
        for alarm in monitor.ALARMS:
            assert f"{alarm}" in doc, f"alarm {alarm} is not documented"


_TREE_NAME = r"(?:[\w.]+\.py|\w+/(?:\w+/)?)"


def _architecture_tree_paths() -> set[str]:
    """Paths the tree in docs/architecture.md names: an entry's indentation says which folder it is in; a line may
    name several (``ppo.py, ppo_config.py``); continuation lines name nothing."""
    block = read("docs", "architecture.md").split("## The tree", 1)[1].split("```")[1]
    folders: list[tuple[int, str]] = []
    paths = set()
    for line in block.splitlines():
        m = re.match(rf"^( *)({_TREE_NAME}(?:, {_TREE_NAME})*)(?:\s|$)", line)
        if not m:
            continue
        indent = len(m.group(1))
        while folders and folders[-1][0] >= indent:
            folders.pop()
        prefix = "".join(name for _, name in folders)
        for name in m.group(2).split(", "):
            paths.add(prefix + name)
            if name.endswith("/"):
                folders.append((indent, name))
    return paths


def test_architecture_tree_names_every_module_and_only_modules_that_exist():
    named = _architecture_tree_paths()
    modules = set()
    for folder, _, files in os.walk(os.path.join(REPO, "rewardkit")):
        rel = os.path.relpath(folder, REPO).replace(os.sep, "/")
        if "__pycache__" in rel or "/templates" in rel:
            continue
        modules.update(f"{rel}/{f}" for f in files if f.endswith(".py"))
    missing = sorted(m for m in modules if m not in named)
    assert not missing, f"docs/architecture.md's tree does not name: {', '.join(missing)}"
    stale = sorted(p for p in named if p.startswith("rewardkit/") and p.endswith(".py") and p not in modules)
    assert not stale, f"docs/architecture.md's tree names modules that do not exist: {', '.join(stale)}"
