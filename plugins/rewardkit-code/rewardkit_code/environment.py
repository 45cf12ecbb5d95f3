"""``python``: an environment whose one tool runs the model's Python in the code sandbox and returns its output.

The program runs in the same bubblewrap + cgroups sandbox as ``code.tests`` (sandbox.py): no network, a private
read-only filesystem view with a small tmpfs, bounded time, memory, processes and output. What the *program* does
wrong (an exception, a non-zero exit, the time/memory/output limit) reaches the model as the tool's error text; what
the *sandbox* does wrong (bubblewrap or cgroups missing, a worker that died twice) is an
:class:`rewardkit.environments.EnvironmentFault`: never shown to the model, the episode is left unjudged and the
recipe's fault policy decides (rewardkit.environments).
"""

from __future__ import annotations

import functools
import os

from rewardkit.environments import Environment, EnvironmentFault
from rewardkit_code.reward import bounded_number
from rewardkit_code.sandbox import ISOLATION_MODES, SandboxConfig, SandboxUnavailable, shared_pool

ATTEMPTS = 2  # a job the sandbox failed on is run once more on a fresh worker before it counts as a fault


class ProgramError(Exception):
    """The model's program failed (shown to the model as the tool's error)."""


def _tail(text: str, n: int = 300) -> str:
    text = text.strip()
    return text if len(text) <= n else "..." + text[-n:]


def describe_failure(reply: dict, timeout: float) -> str | None:
    """What went wrong with the program in zygote ``reply`` (None: it ran and exited 0). Sandbox failures are
    not decided here (the caller has checked them)."""
    stdout = reply.get("stdout", b"").decode("utf-8", "replace")
    shown = f"\noutput before it stopped:\n{_tail(stdout)}" if stdout.strip() else ""
    killed, sig, stderr = reply.get("killed"), reply.get("signal"), reply.get("stderr", "")
    if killed == "timeout" or sig == 24:  # SIGXCPU
        return f"time limit: the program ran longer than {timeout:g}s and was stopped{shown}"
    if killed == "output_limit" or sig == 25:  # SIGXFSZ
        return f"output limit: the program wrote more than the sandbox keeps and was stopped{shown}"
    if reply.get("oom"):
        return f"memory limit: the program was killed for using too much memory{shown}"
    if sig is not None:
        return f"the program was killed by signal {sig}{shown}"
    if reply.get("exit") != 0:
        return f"exit status {reply.get('exit')}:\n{_tail(stderr)}{shown}"
    return None


class PythonEnvironment(Environment):
    """One tool, ``python(code)``: run a Python program in the sandbox and read what it printed.

    Params: ``timeout`` (seconds per program), ``memory_mb``, ``output_limit_kb`` (what the sandbox keeps of
    stdout; the model reads at most the stage's ``environment.max_output_chars``), ``max_processes``, ``workers``
    (warm sandbox slots shared by the process), ``isolation`` (``full``: cgroups; ``weak`` must be chosen).
    """

    def __init__(self, timeout: float = 2.0, memory_mb: int = 256, output_limit_kb: int = 16,
                 max_processes: int = 16, workers: int | None = None, isolation: str = "full"):
        super().__init__()
        if isolation not in ISOLATION_MODES:
            raise ValueError(f"python param 'isolation' must be one of {ISOLATION_MODES}, got {isolation!r}")
        number = functools.partial(bounded_number, owner="python")
        self.timeout = number("timeout", timeout, float, 0.01, 60)
        self.workers = (number("workers", workers, int, 1, 64) if workers is not None
                        else max(1, min(2, os.cpu_count() or 1)))
        self.config = SandboxConfig(memory_mb=number("memory_mb", memory_mb, int, 16, 1 << 16),
                                    output_limit_kb=number("output_limit_kb", output_limit_kb, int, 1, 1 << 14),
                                    max_processes=number("max_processes", max_processes, int, 1, 4096),
                                    tmpfs_mb=8, isolation=isolation)

    def reset(self, **row) -> str | None:
        return None

    def _run(self, code: str) -> dict:
        job = {"code": code, "stdin": "", "call": None, "timeout": self.timeout}
        why = "no reply"
        for _ in range(ATTEMPTS):
            try:
                pool = shared_pool(self.config, self.workers)
            except SandboxUnavailable as exc:
                raise EnvironmentFault(f"the code sandbox is unavailable: {exc}") from exc
            reply = pool.run_program([job], stop_early=lambda r: True, total_timeout=self.timeout)[0]
            if "sandbox_error" in reply:
                why = reply["sandbox_error"]
            elif not reply.get("setup_ok"):
                why = "sandbox setup failed: " + _tail(reply.get("stderr", ""))
            else:
                return reply
        raise EnvironmentFault(f"the code sandbox failed twice: {why}")

    def python(self, code: str) -> str:
        """Run a Python program in a sandbox without network access and return what it printed.

        Args:
            code: The complete Python program to run; print what you want to read back.
        """
        if not isinstance(code, str):
            raise ProgramError(f"code must be a string, got {type(code).__name__}")
        reply = self._run(code)
        failure = describe_failure(reply, self.timeout)
        if failure is not None:
            raise ProgramError(failure)
        return reply.get("stdout", b"").decode("utf-8", "replace")
