"""What may import what (docs/architecture.md): algorithms/ is pure tensor code, and core modules reach
rewardkit's built-in plugin only through the registry, like any third-party plugin."""

import ast
import pathlib

import rewardkit

ROOT = pathlib.Path(rewardkit.__file__).parent


def imported(path: pathlib.Path) -> list[str]:
    """Absolute module names a file imports (relative imports count as their package's)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            package = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts[:-node.level or None])
            base = f"{package}.{node.module}" if node.level and node.module else package if node.level else node.module
            names += [base] + [f"{base}.{a.name}" for a in node.names]
    return names


def test_algorithms_import_nothing_from_rewardkit_outside_algorithms():
    """Pure functions: the registry and trainers import algorithms/, never the reverse."""
    for path in (ROOT / "algorithms").glob("*.py"):
        outside = [n for n in imported(path) if n.startswith("rewardkit") and not n.startswith("rewardkit.algorithms")]
        assert outside == [], (path.name, outside)


def test_core_does_not_import_the_builtin_plugin():
    """builtin/ is a plugin like any other; only the fixtures that build a registry of it name it."""
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("builtin/") or rel == "testing.py":
            continue
        reached = [n for n in imported(path) if n == "rewardkit.builtin" or n.startswith("rewardkit.builtin.")]
        assert reached == [], (rel, reached)
