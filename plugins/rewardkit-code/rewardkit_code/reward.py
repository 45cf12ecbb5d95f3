"""``code.tests``: run the completion's program against the example's tests in the sandbox."""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from rewardkit import completion_text
from rewardkit_code.extract import BLOCK_CHOICES, extract_code
from rewardkit_code.sandbox import ISOLATION_MODES, SandboxConfig, shared_pool
from rewardkit_code.verdict import CLASSES, COMPARE_CHOICES, classify, parse_tests

MODES = ("fraction", "all")


def tests_columns(params: dict) -> list[str]:
    return [params.get("tests_column", "tests")]


def bounded_number(name: str, value, kind=float, minimum=None, maximum=None, owner: str = "code.tests"):
    """``value`` of parameter ``name`` of ``owner`` (a reward or environment) as ``kind``; a ValueError naming both
    when it is not a number of that kind between ``minimum`` and ``maximum``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        raise ValueError(f"{owner} param '{name}' must be a{'n integer' if kind is int else ' number'}, "
                         f"got {value!r}")
    if minimum is not None and value < minimum or maximum is not None and value > maximum:
        raise ValueError(f"{owner} param '{name}' must be between {minimum} and {maximum}, got {value!r}")
    return kind(value)


class CodeTests:
    """Reward = fraction of test cases passed (``mode="fraction"``) or 1.0 only if all pass (``"all"``).

    ``None`` (TRL skips the sample) only when the sandbox itself failed; a program that cannot be found,
    does not compile, crashes, times out or exceeds a limit scores 0 for that case.
    """

    def __init__(self, mode: str = "fraction", timeout: float = 2.0, total_timeout: float = 10.0,
                 memory_mb: int = 256, output_limit_kb: int = 64, file_size_kb: int = 1024,
                 tmpfs_mb: int = 32, max_processes: int = 32, max_open_files: int = 64,
                 language: str = "python", block: str = "last", require_fence: bool = False,
                 compare: str = "lines", tests_column: str = "tests", workers: int | None = None,
                 isolation: str = "full"):
        if mode not in MODES:
            raise ValueError(f"code.tests param 'mode' must be one of {MODES}, got {mode!r}")
        if block not in BLOCK_CHOICES:
            raise ValueError(f"code.tests param 'block' must be one of {BLOCK_CHOICES}, got {block!r}")
        if compare not in COMPARE_CHOICES:
            raise ValueError(f"code.tests param 'compare' must be one of {COMPARE_CHOICES}, got {compare!r}")
        if isolation not in ISOLATION_MODES:
            raise ValueError(f"code.tests param 'isolation' must be one of {ISOLATION_MODES} "
                             f"('weak' runs without cgroups and must be chosen explicitly), got {isolation!r}")
        if language.lower() not in ("python", "py", "python3"):
            raise ValueError(f"code.tests param 'language' must be 'python' (the only language the sandbox "
                             f"runs), got {language!r}")
        if not isinstance(tests_column, str) or not tests_column:
            raise ValueError(f"code.tests param 'tests_column' must be a column name, got {tests_column!r}")
        self.mode = mode
        self.timeout = bounded_number("timeout", timeout, float, 0.01, 60)
        self.total_timeout = bounded_number("total_timeout", total_timeout, float, 0.01, 600)
        self.language, self.block, self.require_fence = language, block, bool(require_fence)
        self.compare, self.tests_column = compare, tests_column
        self.workers = (bounded_number("workers", workers, int, 1, 64) if workers is not None
                        else max(1, min(4, os.cpu_count() or 1)))
        self.config = SandboxConfig(
            memory_mb=bounded_number("memory_mb", memory_mb, int, 16, 1 << 16),
            tmpfs_mb=bounded_number("tmpfs_mb", tmpfs_mb, int, 1, 1 << 14),
            max_processes=bounded_number("max_processes", max_processes, int, 1, 4096),
            output_limit_kb=bounded_number("output_limit_kb", output_limit_kb, int, 1, 1 << 20),
            file_size_kb=bounded_number("file_size_kb", file_size_kb, int, 1, 1 << 22),
            max_open_files=bounded_number("max_open_files", max_open_files, int, 16, 1 << 16),
            isolation=isolation,
        )
        self.__name__ = "code.tests"
        self.last_details: list[list[tuple[str, str]]] = []

    def _score(self, pool, code: str | None, tests) -> tuple[float | None, list[tuple[str, str]]]:
        cases = parse_tests(tests)
        if code is None:
            return 0.0, [("runtime_error", "no program found in the completion")] * len(cases)
        jobs = [{"code": code, "stdin": c.stdin if not c.is_call else (c.stdin or ""), "call": c.call,
                 "timeout": self.timeout} for c in cases]
        verdicts: list[tuple[str, str]] = []

        def stop_early(reply):
            verdict = classify(cases[len(verdicts)], reply, compare=self.compare)
            verdicts.append(verdict)
            return self.mode == "all" and verdict[0] != "passed"

        replies = pool.run_program(jobs, stop_early=stop_early, total_timeout=self.total_timeout)
        for case, reply in zip(cases[len(verdicts):], replies[len(verdicts):]):  # skipped / sandbox errors
            verdicts.append(classify(case, reply, compare=self.compare))
        if any(v[0] == "sandbox_error" for v in verdicts):
            return None, verdicts
        passed = sum(v[0] == "passed" for v in verdicts)
        if self.mode == "all":
            return (1.0 if passed == len(cases) else 0.0), verdicts
        return passed / len(cases), verdicts

    # -- rewardkit probe (rewardkit.hookspecs: reward probes) ----------------------------------------------
    def probe_gold(self, row: dict) -> str | None:
        """A lookup-table program that passes every test of ``row``: the full-marks control."""
        from rewardkit_code.probes import gold_program  # noqa: PLC0415

        return gold_program(row[self.tests_column])

    def probe_completions(self, rows: list[dict]) -> dict[str, list[str]]:
        """Programs that fooled other sandboxes: exit 0 early, success markers, raising, always-equal."""
        from rewardkit_code.probes import attack_programs  # noqa: PLC0415

        per_row = [attack_programs(r[self.tests_column]) for r in rows]
        return {name: [p[name] for p in per_row] for name in per_row[0]} if per_row else {}

    def __call__(self, prompts=None, completions=None, **kwargs):
        if self.tests_column not in kwargs:
            raise ValueError(f"code.tests needs the dataset column '{self.tests_column}' (param 'tests_column'); "
                             f"got columns {sorted(k for k in kwargs if k not in ('trainer_state', 'log_extra', 'log_metric'))}")
        tests = kwargs[self.tests_column]
        codes = [extract_code(completion_text(c), language=self.language, block=self.block,
                              require_fence=self.require_fence) for c in completions]
        pool = shared_pool(self.config, self.workers)  # started on first call, shared by the process
        with ThreadPoolExecutor(max_workers=self.workers) as ex:
            results = list(ex.map(lambda a: self._score(pool, *a), zip(codes, tests)))
        self.last_details = [v for _, v in results]
        log_metric = kwargs.get("log_metric")
        if callable(log_metric):
            counts = Counter(cls for _, verdicts in results for cls, _ in verdicts)
            for cls in CLASSES:
                log_metric(f"code_tests/{cls}", float(counts.get(cls, 0)))
        return [score for score, _ in results]
