"""``rewardkit new-plugin NAME``: write a ready ``rewardkit-NAME`` package from ``rewardkit/templates/plugin``.

The package has a pyproject declaring the ``rewardkit`` entry point, a hook module registering one reward
(``NAME.contains``) and one environment (``NAME.scratchpad``, docs/environments.md), both, and tests using
:mod:`rewardkit.testing`. ``pip install -e`` it and
``rewardkit plugins`` lists it.
"""

from __future__ import annotations

import os
import re
from importlib import resources
from string import Template

from rewardkit.errors import RewardkitError

_NAME = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")
# template file -> path in the package ({module} is the import name)
LAYOUT = {
    "pyproject.toml.tmpl": "pyproject.toml",
    "README.md.tmpl": "README.md",
    "__init__.py.tmpl": "{module}/__init__.py",
    "plugin.py.tmpl": "{module}/plugin.py",
    "rewards.py.tmpl": "{module}/rewards.py",
    "environment.py.tmpl": "{module}/environment.py",
    "test_rewards.py.tmpl": "tests/test_rewards.py",
    "test_environment.py.tmpl": "tests/test_environment.py",
}


def names(name: str) -> dict[str, str]:
    """``{"name", "module", "dist"}`` for a plugin name; RewardkitError when it cannot be one."""
    if name.startswith("rewardkit-") or name.startswith("rewardkit_"):
        name = name[len("rewardkit-"):]
    if not _NAME.match(name):
        raise RewardkitError(f"plugin name {name!r}: use lowercase letters and digits, words joined by '-' or "
                             f"'_' (e.g. 'brevity', 'math-extra')")
    return {"name": name, "module": "rewardkit_" + name.replace("-", "_"), "dist": f"rewardkit-{name}"}


def render(name: str) -> dict[str, str]:
    """``{relative path: text}`` of the package for plugin ``name``."""
    n = names(name)
    root = resources.files("rewardkit") / "templates" / "plugin"
    out = {}
    for tmpl, rel in LAYOUT.items():
        text = (root / tmpl).read_text()
        out[rel.format(module=n["module"])] = Template(text).substitute(name=n["name"], module=n["module"])
    return out


def new_plugin(name: str, directory: str = ".") -> tuple[str, list[str]]:
    """Write ``<directory>/rewardkit-NAME``; returns its path and the files written. Never overwrites."""
    files = render(name)
    path = os.path.join(directory, names(name)["dist"])
    if os.path.exists(path):
        raise RewardkitError(f"{path} already exists; choose another name or --dir")
    for rel, text in files.items():
        target = os.path.join(path, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "w") as f:
            f.write(text)
    return path, sorted(files)
