"""Checker worker: a separate Python process that parses, verifies and stringifies with math-verify.

Started by :mod:`rewardkit_math.pool` as ``python -m rewardkit_math.worker FD`` where FD is its end of a
socketpair wrapped in a ``multiprocessing.connection.Connection``. Protocol:

- worker -> parent ``("ready", pid)`` once math-verify is imported (or ``("fatal", traceback)``);
- parent -> worker ``(job_id, timeout_s, opts, items)`` with ``items = [(gold_latex, answer), ...]`` and
  ``opts = (rel_tol, precision, partial_credit)``;
- worker -> parent ``(job_id, k, result)`` after each item, ``result = (status, score, gold_str, pred_str)``.

Each item runs under a soft ``setitimer`` alarm (``SOFT_FRACTION`` of the deadline) that raises
:class:`Overrun`, so Python-level stalls end here without killing the process. Stalls inside C code
(a huge integer power holds the GIL and never runs a signal handler) are ended by the parent, which kills
this process at the hard deadline. ``RLIMIT_CPU`` makes an orphaned, stuck worker die on its own.
"""

from __future__ import annotations

import functools
import logging
import os
import resource
import signal
import sys
import traceback

SOFT_FRACTION = 0.8
MAX_STR = 200


class Overrun(BaseException):
    """Raised by the soft alarm. BaseException, so math-verify's ``except Exception`` cannot swallow it."""


def _on_alarm(signum, frame):
    raise Overrun()


def _short(obj) -> str:
    s = str(obj)
    return s if len(s) <= MAX_STR else s[:MAX_STR] + "..."


class Checker:
    """parse + verify + str, with math-verify's own signal-based timeouts switched off (we own the clock) and
    its number comparison replaced by :func:`rewardkit_math.numeric.numeric_eq` (exact at every magnitude;
    math-verify's rounds to decimal places, so all tiny numbers were equal)."""

    def __init__(self):
        from latex2sympy2_extended import NormalizationConfig
        from math_verify import LatexExtractionConfig, grader, parse, verify

        from rewardkit_math.numeric import numeric_eq

        grader.sympy_numeric_eq = numeric_eq  # this process only: it exists to run math-verify for us
        logging.getLogger("math_verify").setLevel(logging.CRITICAL)
        self._parse, self._verify = parse, verify
        self._config = [LatexExtractionConfig(
            boxed_match_priority=0, try_extract_without_anchor=False,
            normalization_config=NormalizationConfig(basic_latex=True, units=True, malformed_operators=True,
                                                     nits=True, boxed="last", equations=False))]
        self.gold = functools.lru_cache(maxsize=8192)(self._parse_gold)

    def parse(self, latex: str, fallback: str = "first_match") -> list:
        return self._parse(latex, extraction_config=self._config, fallback_mode=fallback, parsing_timeout=None)

    def _parse_gold(self, latex: str):
        # No string fallback: a gold that does not parse into math (e.g. "\frac{") cannot judge anything.
        try:
            parsed = self.parse(latex, fallback="no_fallback")
        except Exception:  # noqa: BLE001 - an unparseable gold is a verdict, not a crash
            return None
        return (parsed, _short(parsed[0])) if parsed else None

    def equal(self, gold, pred, tol) -> bool:
        # float_rounding is only passed on to sympy_numeric_eq, now numeric_eq, which takes a Tolerance there
        return self._verify(gold, pred, float_rounding=tol, timeout_seconds=None, raise_on_error=True)

    def partial(self, gold: list, pred: list, tol) -> float:
        """Share of gold elements matched one-to-one by predicted elements, over max(#gold, #pred)."""
        g_elems, p_elems = _elements(gold[0]), _elements(pred[0])
        if len(g_elems) < 2:
            return 0.0
        unmatched = list(p_elems)
        hits = 0
        for g in g_elems:
            for j, p in enumerate(unmatched):
                if self.equal([g], [p], tol):
                    hits += 1
                    del unmatched[j]
                    break
        return hits / max(len(g_elems), len(p_elems))

    def judge(self, gold_latex: str, answer: str, rel_tol: float = 0.0, precision: int | None = None,
              partial: bool = False) -> tuple:
        from rewardkit_math.numeric import tolerance

        tol = tolerance(rel_tol, precision)
        gold = self.gold(gold_latex)
        if gold is None:
            return ("gold_unparseable", None, "", "")
        gold_parsed, gold_str = gold
        pred = self.parse("\\boxed{" + answer + "}")
        if not pred:
            return ("wrong", 0.0, gold_str, "[unparseable]")
        if self.equal(gold_parsed, pred, tol):
            return ("correct", 1.0, gold_str, _short(pred[0]))
        score = self.partial(gold_parsed, pred, tol) if partial else 0.0
        return ("partial" if score > 0 else "wrong", score, gold_str, _short(pred[0]))


def _elements(expr) -> list:
    from sympy import FiniteSet

    return list(expr.args) if isinstance(expr, FiniteSet) else [expr]


def run_item(checker: Checker, timeout: float, item, opts) -> tuple:
    signal.setitimer(signal.ITIMER_REAL, max(0.01, timeout * SOFT_FRACTION))
    try:
        return checker.judge(item[0], item[1], *opts)
    except Overrun:
        return ("timeout", None, "", "")
    except Exception as exc:  # noqa: BLE001 - the checker crashed on this sample: could not judge
        return ("error", None, "", _short(f"{type(exc).__name__}: {exc}"))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _limit_cpu(seconds: float) -> None:
    """Die (SIGXCPU) if this batch burns more CPU than its deadlines allow, even if the parent is gone."""
    used = resource.getrusage(resource.RUSAGE_SELF)
    now = used.ru_utime + used.ru_stime
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = int(now + seconds) + 2
    if hard == resource.RLIM_INFINITY or soft <= hard:
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def main(fd: int) -> None:
    from multiprocessing.connection import Connection

    conn = Connection(fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's business; the parent kills us
    try:
        checker = Checker()
        signal.signal(signal.SIGALRM, _on_alarm)
    except BaseException:  # noqa: BLE001 - report why we cannot work, then exit
        conn.send(("fatal", traceback.format_exc()))
        return
    conn.send(("ready", os.getpid()))
    while True:
        try:
            job_id, timeout, opts, items = conn.recv()
        except (EOFError, OSError):
            return  # parent gone or closed us
        _limit_cpu(len(items) * timeout * 2 + 5)
        for k, item in enumerate(items):
            try:
                result = run_item(checker, timeout, item, opts)
            except Overrun:  # the alarm fired between the item's end and its cancellation
                result = ("timeout", None, "", "")
            conn.send((job_id, k, result))


if __name__ == "__main__":
    main(int(sys.argv[1]))
