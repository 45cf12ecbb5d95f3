"""A third-party environment package (tests/plugins/rewardkit-toyenv), installed by pip through its entry point:
listed by ``rewardkit plugins``, validated in a recipe (did-you-mean, bad params) and trained in a GRPO stage."""

from __future__ import annotations

import ast
import json
import os

import pytest
import yaml

import rewardkit
from tests.plugin_packages import cli, install_site

TOY = os.path.join(os.path.dirname(__file__), "plugins", "rewardkit-toyenv")


@pytest.fixture(scope="module")
def toy_site(tmp_path_factory):
    """rewardkit-toyenv installed by pip into a temporary folder (the venv is untouched)."""
    return install_site(TOY, tmp_path_factory.mktemp("toyenv"))


def _stage(**environment) -> dict:
    return {"trainer": {"type": "grpo", "max_steps": 2, "per_device_train_batch_size": 4, "num_generations": 2,
                        "max_completion_length": 24, "logging_steps": 1},
            "environment": {"name": "toy.lookup"} | environment, "rewards": [{"name": "exact_match"}]}


def _recipe(tmp_path, **stages) -> str:
    rows = [{"prompt": f"value of k{i}?", "table": f"k{i}={i * 7};z=0", "answer": str(i * 7)} for i in range(12)]
    data = tmp_path / "lookup.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump({
        "output_dir": str(tmp_path / "out"), "seed": 0, "model": {"name": "tiny-llama-tools"},
        "data": {"path": str(data), "test_size": 4, "chat": True}, "stages": stages or {"grpo": _stage()}},
        sort_keys=False))
    return str(path)


def test_toy_package_imports_only_public_rewardkit_names():
    for folder, _, files in os.walk(os.path.join(TOY, "rewardkit_toyenv")):
        for name in files:
            tree = ast.parse(open(os.path.join(folder, name)).read())
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rewardkit"):
                    assert node.module == "rewardkit" and {a.name for a in node.names} <= set(rewardkit.__all__)


def test_installed_environment_is_listed_and_validated(toy_site, tmp_path):
    listed = cli(toy_site, "plugins", "--json")
    (toy,) = [p for p in json.loads(listed.stdout)["plugins"] if "toy.lookup" in p["registered"].get("environments", [])]
    assert toy["name"] == "toyenv" and toy["distribution"] == "rewardkit-toyenv", toy
    # one validate call, every problem at once: the good stage has none, the two bad ones one each
    out = cli(toy_site, "validate", _recipe(tmp_path, good=_stage(params={"case_sensitive": False}),
                                             typo=_stage(params={"case_sensitve": False}),
                                             missing=_stage(name="toy.lookpu")))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "stages.good" not in out.stderr and "2 problems" in out.stderr, out.stderr
    assert "stages.typo.environment:" in out.stderr and "did you mean 'case_sensitive' for 'case_sensitve'" in out.stderr
    assert "stages.missing.environment: unknown environment 'toy.lookpu' (did you mean 'toy.lookup'?)" in out.stderr


@pytest.mark.slow
def test_installed_environment_trains_in_a_grpo_stage(toy_site, tmp_path):
    out = cli(toy_site, "run", _recipe(tmp_path))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    (stage,) = json.loads((tmp_path / "out" / "summary.json").read_text())["stages"]
    assert stage["trainer"] == "grpo" and stage["steps"] == 2
    log = [json.loads(line) for line in open(tmp_path / "out" / "grpo" / "log.jsonl")]
    assert any("tools/call_frequency" in r for r in log)  # TRL ran its tool loop with the environment's tool
