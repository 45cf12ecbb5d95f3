"""Helpers for the tests that install a third-party package from tests/plugins/ the way a user would (pip, its
entry points) without touching the venv: built into a temporary site folder, put on PYTHONPATH for the CLI."""

import os
import shutil
import subprocess
import sys


def install_site(package_dir: str, root) -> str:
    """``package_dir`` built and installed by pip into ``root/site`` (its .dist-info carries the entry points from
    its pyproject.toml); the build's egg-info and build/ land in a copy under ``root``, not in the repo."""
    src = shutil.copytree(package_dir, root / "src")
    site = root / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(site), str(src)], check=True, timeout=300, capture_output=True)
    return str(site)


def cli(site: str, *args) -> subprocess.CompletedProcess:
    """``rewardkit *args`` in a subprocess that sees the packages installed in ``site``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([site, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    return subprocess.run([sys.executable, "-m", "rewardkit.cli", *args], capture_output=True, text=True,
                          timeout=600, env=env)
