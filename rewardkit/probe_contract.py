"""The reward contract, checked by ``rewardkit probe`` (:mod:`rewardkit.probe`): metamorphic checks on one batch
of a reward's gold, wrong and empty completions — the same scores on a repeated call, in a split batch, in another
order and in a fresh interpreter, and lower scores for the gold once the columns it reads come from other rows —
and whether it judges correctness at all. ``None`` ("could not judge") is compared as ``None``, never as 0."""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Callable

CHECK_ROWS = 8  # rows whose gold, wrong and empty completions the contract checks score
CHECK_LABELS = ("gold", "wrong", "empty")
PROCESS_ROWS = 4  # of those, the rows a fresh interpreter scores again
PROCESS_TIMEOUT = 15.0  # seconds it may take from its start; it runs while the probes are scored
TOL = 1e-4  # scores closer than this (absolute or relative) are the same score


def earns_gold(score: float | None, gold: float | None) -> bool:
    """At least half the gold control's mean; as much as the gold's where that is not positive (0 or a penalty).

    Undecidable (False) without a score or a gold score.
    """
    return score is not None and gold is not None and score >= min(gold, gold / 2)


def check_batch(texts: dict[str, list[str | None]]) -> list[tuple[int, str, str]]:
    """(row, label, completion) scored by the contract checks: the gold, wrong and empty completions of the first
    :data:`CHECK_ROWS` rows, row by row (so the first :data:`PROCESS_ROWS` rows' are a prefix)."""
    n = min(CHECK_ROWS, len(texts["gold"]))
    return [(i, label, texts[label][i]) for i in range(n) for label in CHECK_LABELS if texts[label][i] is not None]


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None  # "could not judge" is never the same as a number
    return math.isclose(a, b, rel_tol=TOL, abs_tol=TOL)


def _show(x: float | None) -> str:
    return "None" if x is None else f"{x:.6g}"


def _differ(ref: list, got: list, batch) -> str | None:
    """None when ``got`` holds ``ref``'s scores, None where it has None; else what differs."""
    bad = [k for k, (a, b) in enumerate(zip(ref, got, strict=True)) if not _same(a, b)]
    if not bad:
        return None
    i, label, _ = batch[bad[0]]
    return (f"{len(bad)} of {len(ref)} scores differ (first: row {i} {label}, {_show(ref[bad[0]])} then "
            f"{_show(got[bad[0]])})")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def _mean(values: list) -> float | None:
    judged = [v for v in values if v is not None]
    return sum(judged) / len(judged) if judged else None


_CHILD = "import sys; from rewardkit.probe_contract import _score_in_child; _score_in_child(sys.argv[1])"


class Child:
    """The batch's first :data:`PROCESS_ROWS` rows scored by a fresh copy of the reward in a new interpreter with
    another hash seed: started before the probes are scored, read after them, killed (its process group) after
    :data:`PROCESS_TIMEOUT` seconds."""

    def __init__(self, fresh: Callable, rows: list[dict], batch: list[tuple[int, str, str]]):
        self.proc, self.note, self.dir = None, None, tempfile.mkdtemp(prefix="rewardkit-probe-")
        pairs = [(i, t) for i, _, t in batch if i < PROCESS_ROWS]
        if not pairs:
            self.note = "not run: no completion to score"
            return
        try:
            blob = pickle.dumps(sys.path + [os.getcwd()]) + pickle.dumps((fresh(), rows[:PROCESS_ROWS], pairs))
        except Exception as exc:  # noqa: BLE001 - a local function or an open resource: reported, not fatal
            self.note = f"not compared: the reward could not be copied to another process ({_describe(exc)})"
            return
        with open(os.path.join(self.dir, "in"), "wb") as f:
            f.write(blob)
        seed = os.environ.get("PYTHONHASHSEED", "")
        env = {**os.environ, "PYTHONHASHSEED": str((int(seed) + 1) % 2**32) if seed.isdigit() else "0"}
        self.start = time.monotonic()
        try:
            with open(os.path.join(self.dir, "err"), "wb") as err:
                self.proc = subprocess.Popen([sys.executable, "-c", _CHILD, self.dir], stdin=subprocess.DEVNULL,
                                             stdout=err, stderr=err, env=env, start_new_session=True)
        except OSError as exc:
            self.note = f"not run: no new interpreter ({_describe(exc)})"

    def result(self) -> tuple[list | None, str | None]:
        """(the scores, None) or (None, why there are none)."""
        if self.proc is None:
            return None, self.note
        exited = self._exited(self.start + PROCESS_TIMEOUT)
        self.close()
        if not exited:
            return None, f"not compared: the fresh process gave no scores within {PROCESS_TIMEOUT:.0f} s"
        try:
            with open(os.path.join(self.dir, "out")) as f:
                return json.load(f), None
        except OSError:
            with open(os.path.join(self.dir, "err"), errors="replace") as f:
                tail = (f.read().strip().splitlines() or ["no output"])[-1]
            return None, f"not compared: the fresh process failed ({tail[:200]})"

    def _exited(self, deadline: float) -> bool:
        """Wait until the interpreter exits or ``deadline``; it stays unreaped, holding its process group."""
        if not hasattr(os, "waitid"):  # macOS: reaped here, so what it started is left to end by itself
            try:
                return self.proc.wait(timeout=max(0.0, deadline - time.monotonic())) is not None
            except subprocess.TimeoutExpired:
                return False
        while not os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def close(self) -> None:
        """End the interpreter and whatever it started (its process group, held until it is reaped here)."""
        if self.proc is not None and self.proc.returncode is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()

    def remove(self) -> None:
        self.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _score_in_child(folder: str) -> None:
    """The fresh interpreter of :class:`Child`: unpickle the reward and its batch, score it, write the scores."""
    with open(os.path.join(folder, "in"), "rb") as f:
        sys.path[:] = pickle.load(f)
        reward, rows, pairs = pickle.load(f)
    from rewardkit.probe import _Probe  # noqa: PLC0415 - the probe's way of calling a reward

    values = _Probe(reward, rows, None)._call(pairs)
    with open(os.path.join(folder, "out"), "w") as f:
        json.dump([None if v is None else float(v) for v in values], f)


def _attempt(fn: Callable) -> tuple[list | None, str | None]:
    try:
        return fn(), None
    except Exception as exc:  # noqa: BLE001 - the reward raised: the check is reported as not run
        return None, f"not run: the reward raised ({_describe(exc)})"


def _judges_correctness(judges: str, gold: float | None, wrong: float | None) -> tuple[str | None, str | None]:
    """(finding, note) of ``check: judges correctness``."""
    if judges != "correctness":
        return None, f"not required: declared judges_only = {judges!r} (held to the probes of that rule)"
    if gold is None or wrong is None:
        return None, "not compared: the gold or the wrong control was not judged"
    if earns_gold(wrong, gold):
        return (f"a wrong answer earns {wrong:.3f} against the gold's {gold:.3f}: this reward does not judge "
                f"correctness (a format or length term declares judges_only; a reward whose gold format the probe "
                f"does not find declares probe_gold)"), None
    return None, None


def _invariance(p: "_Probe", batch, child: Child) -> tuple[list[tuple[str, str | None, str | None]], list | None]:
    """(check, finding, note) of the same scores on a repeated call, split, in another order, in a fresh process;
    and the first call's scores (None if the reward raised)."""
    pairs = [(i, t) for i, _, t in batch]
    ref, why = _attempt(lambda: p._call(pairs)) if pairs else (None, "not run: no completion to score")
    again, why = (None, why) if why else _attempt(lambda: p._call(pairs))
    if why:
        return [(name, None, why) for name in ("repeated call", "batch split", "batch order", "fresh process")], None
    differ = _differ(ref, again, batch)
    out = [("repeated call", differ and f"not deterministic: {differ}", None)]
    if differ:
        note = "not compared: a repeated call already scores differently"
        return out + [(name, None, note) for name in ("batch split", "batch order", "fresh process")], ref
    cuts = sorted({0, 1, len(pairs) // 2, len(pairs)})
    got, why = _attempt(lambda: [v for a, b in zip(cuts, cuts[1:]) for v in p._call(pairs[a:b])])
    split = None if why else _differ(ref, got, batch)
    out.append(("batch split", split and (
        f"depends on how the batch is split ({len(pairs)} in one call, then {len(cuts) - 1} calls): {split}"), why))
    back, why = _attempt(lambda: p._call(pairs[::-1])[::-1])
    order = None if why else _differ(ref, back, batch)
    out.append(("batch order", order and f"depends on the order of the batch (reversed): {order}", why))
    values, why = child.result()
    if why is None and (split or order):
        why = "not compared: the scores already depend on the batch"
    differ = None if why else _differ(ref[:len(values)], values, batch)
    out.append(("fresh process", differ and f"scores differently in a new interpreter (another hash seed): {differ}",
                why))
    return out, ref


def _shuffled_golds(p: "_Probe", batch, ref: list | None, columns: list[str]) -> tuple[float | None, str | None,
                                                                                       str | None]:
    """(shuffled mean, finding, note) of ``check: shuffled golds``: the gold completions scored again with the
    columns the reward declares taken from a row whose gold differs; the mean must drop."""
    if not columns:
        return None, None, "not required: the reward declares no dataset column"
    if ref is None:
        return None, None, "not run: the checks' batch was not scored"
    swaps = [(k, i, p.wrong_rows(i, 1)) for k, (i, label, _) in enumerate(batch) if label == "gold"]
    swaps = [(k, i, js[0]) for k, i, js in swaps if js]
    if not swaps:
        return None, None, "not compared: every row has the same gold"
    rows = [{**p.rows[i], **{c: p.rows[j][c] for c in columns if c in p.rows[j]}} for _, i, j in swaps]
    got, why = _attempt(lambda: type(p)(p.reward, rows, None)._call([(m, batch[k][2]) for m, (k, _, _) in
                                                                     enumerate(swaps)]))
    if why:
        return None, None, why
    own, other = _mean([ref[k] for k, _, _ in swaps]), _mean(got)
    if own is None or other is None:
        return other, None, "not compared: the gold completions were not judged"
    if other < own and not _same(other, own):
        return other, None, None
    return other, (f"the gold completions score {other:.3f} with another row's {', '.join(columns)} against "
                   f"{own:.3f} with their own: the score ignores the gold it reads"), None


def contract_checks(p: "_Probe", batch, child: Child, judges: str, gold: float | None, wrong: float | None,
                    columns: list[str]) -> list[tuple[str, float | None, str | None, str | None]]:
    """(check, score, finding, note) of every check of the reward as a whole (see the module's docstring)."""
    finding, note = _judges_correctness(judges, gold, wrong)
    out = [("judges correctness", wrong, finding, note)]
    invariance, ref = _invariance(p, batch, child)
    out += [(name, None, finding, note) for name, finding, note in invariance]
    if judges != "correctness":
        shuffled = None, None, f"not required: declared judges_only = {judges!r}"
    elif finding:
        shuffled = None, None, "not compared: a wrong answer already earns the gold"
    else:
        shuffled = _shuffled_golds(p, batch, ref, columns)
    return out + [("shuffled golds", *shuffled)]
