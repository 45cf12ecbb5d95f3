"""``math.accuracy``: extract the final answer, check it against the gold with math-verify, under a deadline.

Verdicts (``status`` -> reward):

==================  ==============================================================================
correct             1.0
partial             matched share of a multi-element gold (only with ``partial_credit=True``)
wrong               0.0 (including an answer math-verify cannot parse: the model's fault)
no_answer           0.0: no extraction mode found an answer (or it is over 1000 characters)
rejected            0.0: ``multiple="reject"`` and the boxed answers disagree
gold_unparseable    None: the gold cannot be parsed, so nothing can be judged
error               None: the checker raised, or its worker process died
timeout             ``timeout_verdict`` (default None): the item overran its ``timeout`` deadline
==================  ==============================================================================
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections import Counter, OrderedDict, deque
from fractions import Fraction

from rewardkit import completion_text
from rewardkit_math.checks import ChecksParams
from rewardkit_math.extract import DEFAULT_MODES, MAX_ANSWER_CHARS, REJECTED, check_modes, extract_answer, \
    normalize_gold
from rewardkit_math.numeric import Tolerance, close, tolerance
from rewardkit_math.pool import get_pool

log = logging.getLogger("rewardkit_math")
STATUSES = ("correct", "partial", "wrong", "no_answer", "rejected", "gold_unparseable", "error", "timeout")
UNCHECKED = ("gold_unparseable", "error", "timeout")
RESULT_CACHE = 65536
PLAIN_NUMBER = re.compile(r"^-?\d{1,50}(?:\.\d{1,50})?$")
WINDOW = 2000  # samples over which the unchecked rate is watched
MIN_WINDOW = 200


def plain_verdict(gold_latex: str, answer: str, tol: Tolerance = Tolerance()):
    """The verdict for two plain decimal numbers, decided here without math-verify, else None (any LaTeX).

    The decimals are compared as the exact fractions they denote (``18`` = ``18.0``; ``0.333333`` is not
    ``0.3333333``), with the reward's tolerance (none by default). GSM8K-style answers are mostly plain
    numbers, so most verdicts cost microseconds and no IPC.
    """
    gold = gold_latex[len("\\boxed{"):-1]
    if not (PLAIN_NUMBER.match(gold) and PLAIN_NUMBER.match(answer)):
        return None
    if close(Fraction(gold), Fraction(answer), tol):
        return ("correct", 1.0, gold, answer)
    return ("wrong", 0.0, gold, answer)


def accuracy_columns(params: dict) -> list[str]:
    return [params.get("gold_column", "answer")]


class MathAccuracy(ChecksParams):
    """Reward factory for ``math.accuracy``; every param is checked here, errors name the param.

    ``extract_answer`` gives held-out maj@k the answer each completion gives (rewardkit's hookspecs).
    """

    score_range = (0.0, 1.0)  # per instance: None with a timeout_verdict outside it (then no range is declared)

    def __init__(self, gold_column: str = "answer", extract=DEFAULT_MODES, multiple: str = "last",
                 rel_tol: float = 0.0, precision: int | None = None, partial_credit: bool = False,
                 timeout: float = 5.0,
                 timeout_verdict: float | None = None, workers: int | None = None,
                 warn_unchecked: float = 0.1, metric_prefix: str = "math"):
        if not isinstance(gold_column, str) or not gold_column:
            raise ValueError(f"gold_column: must be a column name, got {gold_column!r}")
        self.modes = check_modes(extract, multiple)
        if isinstance(rel_tol, bool) or not isinstance(rel_tol, (int, float)) or not 0 <= rel_tol < 1:
            raise ValueError(f"rel_tol: relative tolerance for numbers, in [0, 1) (0: exact), got {rel_tol!r}")
        if precision is not None and (isinstance(precision, bool) or not isinstance(precision, int)
                                      or not 0 <= precision <= 15):
            raise ValueError(f"precision: decimal places that must agree (absolute tolerance of half a unit "
                             f"there), an int in 0..15 or null, got {precision!r}")
        if not isinstance(partial_credit, bool):
            raise ValueError(f"partial_credit: must be true or false, got {partial_credit!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 600:
            raise ValueError(f"timeout: seconds per answer, in (0, 600], got {timeout!r}")
        if timeout_verdict is not None and (isinstance(timeout_verdict, bool)
                                            or not isinstance(timeout_verdict, (int, float))):
            raise ValueError(f"timeout_verdict: a number or null (could not judge), got {timeout_verdict!r}")
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise ValueError(f"workers: a positive int or null (min(4, CPUs)), got {workers!r}")
        if not isinstance(warn_unchecked, (int, float)) or not 0 < warn_unchecked <= 1:
            raise ValueError(f"warn_unchecked: a rate in (0, 1], got {warn_unchecked!r}")
        self.gold_column, self.multiple, self.precision = gold_column, multiple, precision
        self.rel_tol = float(rel_tol)
        self.tolerance = tolerance(self.rel_tol, precision)
        self.partial_credit, self.timeout, self.timeout_verdict = partial_credit, float(timeout), timeout_verdict
        self.workers = workers or min(4, os.cpu_count() or 1)
        self.warn_unchecked, self.metric_prefix = float(warn_unchecked), metric_prefix
        self.__name__ = "math.accuracy"
        if timeout_verdict is not None and not 0.0 <= timeout_verdict <= 1.0:
            self.score_range = None
        self._setup()

    def _setup(self) -> None:
        self.counts: Counter = Counter()
        self._gold: dict[str, str] = {}
        self._results: OrderedDict = OrderedDict()
        self._window: deque = deque(maxlen=WINDOW)
        self._warned_rate = 0.0
        self._lock = threading.Lock()

    def __getstate__(self):  # picklable: counters and caches stay with this process
        return {k: v for k, v in self.__dict__.items()
                if k not in ("counts", "_gold", "_results", "_window", "_warned_rate", "_lock")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._setup()

    # ------------------------------------------------------------------ judging
    def judge(self, completions, golds) -> list[tuple]:
        """One ``(status, score, answer, gold_str, pred_str)`` per completion."""
        answers = [extract_answer(completion_text(c), self.modes, self.multiple) for c in completions]
        keys, out = [], []
        for answer, gold in zip(answers, golds, strict=True):
            if answer is None or answer is REJECTED or len(answer) > MAX_ANSWER_CHARS:
                status = "rejected" if answer is REJECTED else "no_answer"
                keys.append(None)
                out.append((status, 0.0, "" if answer is REJECTED else answer or "", "", ""))
                continue
            key = (self._gold_latex(gold), answer)
            plain = plain_verdict(*key, self.tolerance)
            if plain is not None:
                keys.append(None)
                out.append((plain[0], plain[1], answer, plain[2], plain[3]))
                continue
            keys.append(key)
            out.append(None)
        todo = list(dict.fromkeys(k for k in keys if k is not None and k not in self._results))
        fresh = {}
        if todo:
            opts = (self.rel_tol, self.precision, self.partial_credit)
            results = get_pool(self.workers).run(todo, self.timeout, opts)
            fresh = {key: result for key, (result, _) in zip(todo, results)}
            with self._lock:  # timeouts and crashes may be load or luck: checked again next time
                for key, result in fresh.items():
                    if result[0] not in ("timeout", "error"):
                        self._results[key] = result
                while len(self._results) > RESULT_CACHE:
                    self._results.popitem(last=False)
        for i, key in enumerate(keys):
            if key is not None:
                result = fresh.get(key) or self._results.get(key) or ("error", None, "", "evicted")
                status, score, gold_str, pred_str = result
                out[i] = (status, score, key[1], gold_str, pred_str)
        return out

    def extract_answer(self, completion: str) -> str | None:
        """The answer this reward checks (its extraction modes), canonical for plain numbers (``18.0`` -> ``18``,
        ``0.50`` -> ``1/2``); None for no answer, disagreeing boxed answers under ``multiple="reject"``, or an
        answer over 1000 characters (each a 0.0, as ``judge`` scores them)."""
        answer = extract_answer(completion_text(completion), self.modes, self.multiple)
        if answer is None or answer is REJECTED or len(answer) > MAX_ANSWER_CHARS:
            return None
        return str(Fraction(answer)) if PLAIN_NUMBER.match(answer) else answer

    def _gold_latex(self, gold) -> str:
        raw = str(gold)
        latex = self._gold.get(raw)
        if latex is None:
            latex = self._gold[raw] = normalize_gold(raw)
        return latex

    def __call__(self, prompts=None, completions=None, **kwargs) -> list[float | None]:
        if self.gold_column not in kwargs:
            raise KeyError(f"math.accuracy: gold column {self.gold_column!r} is not in the batch; columns: "
                           f"{', '.join(sorted(k for k in kwargs if k != 'log_metric')) or 'none'} "
                           f"(set the gold_column param)")
        verdicts = self.judge(completions, kwargs[self.gold_column])
        rewards = []
        for status, score, *_ in verdicts:
            rewards.append(self.timeout_verdict if status == "timeout" else score)
        self._record([v[0] for v in verdicts], kwargs.get("log_metric"))
        log_extra = kwargs.get("log_extra")
        if log_extra is not None:
            log_extra("answer_extracted", [v[2] for v in verdicts])
            log_extra("verdict", [v[0] for v in verdicts])
        return rewards

    # ------------------------------------------------------------------ metrics
    def _record(self, statuses: list[str], log_metric) -> None:
        batch = Counter(statuses)
        with self._lock:
            self.counts.update(batch)
            self.counts["samples"] += len(statuses)
            self.counts["calls"] += 1
            self._window.extend(s in UNCHECKED for s in statuses)
            rate = sum(self._window) / len(self._window) if self._window else 0.0
            warn = (len(self._window) >= MIN_WINDOW and rate > self.warn_unchecked
                    and rate >= 1.5 * self._warned_rate)
            if warn:
                self._warned_rate = rate
        if warn:
            log.warning("math.accuracy could not check %.1f%% of the last %d answers (%s); see stats()",
                        100 * rate, len(self._window),
                        ", ".join(f"{s}={self.counts[s]}" for s in UNCHECKED if self.counts[s]))
        if log_metric is not None and statuses:
            n, p = len(statuses), self.metric_prefix
            log_metric(f"{p}/unchecked_frac", sum(batch[s] for s in UNCHECKED) / n)
            log_metric(f"{p}/no_answer_frac", batch["no_answer"] / n)
            for s in UNCHECKED:
                log_metric(f"{p}/{s}", float(batch[s]))

    def stats(self) -> dict:
        """Counts of every status since creation, the unchecked rate, and the process pool's counters."""
        with self._lock:
            out = {s: self.counts[s] for s in STATUSES}
            out["samples"], out["calls"] = self.counts["samples"], self.counts["calls"]
        out["unchecked"] = sum(out[s] for s in UNCHECKED)
        out["unchecked_rate"] = out["unchecked"] / out["samples"] if out["samples"] else 0.0
        out["pool"] = dict(get_pool(self.workers).stats)
        return out
