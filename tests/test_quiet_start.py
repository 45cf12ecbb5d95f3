"""A command prints what rewardkit has to say: no third-party notice a user can do nothing with (bitsandbytes'
"Failed to load CPU gemm_4bit_forward from kernels-community", logged on every start by an import transformers
makes through peft, was the first line of every command)."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(os.path.dirname(sys.executable), "rewardkit")
COMMAND = [SCRIPT] if os.path.exists(SCRIPT) else [sys.executable, "-m", "rewardkit.cli"]


@pytest.mark.parametrize("args", [["--help"], ["plugins"], ["validate", "recipes/quickstart.yaml"],
                                  ["probe", "recipes/quickstart.yaml"]], ids=lambda a: a[0])
def test_a_command_prints_no_third_party_notice(args):
    proc = subprocess.run(COMMAND + args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr == "", proc.stderr[-2000:]
    assert "kernels" not in proc.stdout and "Failed to load" not in proc.stdout


def test_only_that_notice_is_dropped():
    # The filter is on bitsandbytes' one record; the same logger's other warnings still reach the user.
    code = ("import logging; from rewardkit.cli import _quiet_third_party; _quiet_third_party(); "
            "log = logging.getLogger('bitsandbytes.backends.cpu.ops'); "
            "log.warning('Failed to load CPU gemm_4bit_forward from kernels-community: %s. ...', 'x'); "
            "log.warning('something else')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stderr == "something else\n", proc.stderr
