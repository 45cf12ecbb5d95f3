"""The worker pool's promises: hard deadline, recovery from dead workers, threads, fork, caller's alarm."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from rewardkit_math.accuracy import MathAccuracy
from rewardkit_math.pool import get_pool

GOLD = [str(i) for i in range(12)]
GOOD = [rf"\boxed{{\frac{{{2 * i}}}{{2}}}}" for i in range(12)]  # LaTeX: no plain-number shortcut


def _fresh_pool():
    pool = get_pool(2)
    pool.close()  # start from freshly booted workers
    pool.warmup()
    return pool


def test_stuck_worker_is_killed_and_replaced():
    pool = _fresh_pool()
    stuck = pool._workers[0].proc.pid
    os.kill(stuck, signal.SIGSTOP)  # never answers again: only the hard deadline can free it
    killed = pool.stats["killed"]
    reward = MathAccuracy(timeout=1.0)
    t0 = time.monotonic()
    scores = reward(completions=GOOD, answer=GOLD)
    elapsed = time.monotonic() - t0
    assert scores.count(None) == 1 and scores.count(1.0) == 11, scores
    assert reward.stats()["timeout"] == 1
    assert pool.stats["killed"] == killed + 1
    assert stuck not in [w.proc.pid for w in pool._workers]
    with pytest.raises(ProcessLookupError):
        os.kill(stuck, 0)  # killed and reaped
    assert elapsed < 1.0 + 5.0  # one deadline, then the other worker finishes the rest


def test_worker_dead_while_idle_costs_no_verdict():
    pool = _fresh_pool()
    os.kill(pool._workers[1].proc.pid, signal.SIGKILL)
    pool._workers[1].proc.wait()
    reward = MathAccuracy(timeout=5.0)
    crashed = pool.stats["crashed"]
    assert reward(completions=GOOD, answer=GOLD) == [1.0] * 12  # died idle: its chunk goes elsewhere
    assert pool.stats["crashed"] == crashed + 1 and len(pool._workers) == 2
    assert MathAccuracy()(completions=GOOD, answer=GOLD) == [1.0] * 12  # the replacement works


def test_threads_get_the_same_verdicts_as_the_main_thread():
    reward = MathAccuracy(timeout=5.0)
    comps = [rf"\boxed{{{i}/4}}" for i in range(40)]
    golds = [str(i / 4) for i in range(40)]
    expected = reward(completions=comps, answer=golds)
    assert expected == [1.0] * 40
    rewards = [MathAccuracy(timeout=5.0) for _ in range(4)]
    with ThreadPoolExecutor(4) as ex:
        futures = [ex.submit(r, completions=comps, answer=golds) for r in rewards]
        results = [f.result(timeout=120) for f in futures]
    assert results == [expected] * 4, [r.stats() for r in rewards]


def test_callers_alarm_survives():
    fired = []
    old = signal.signal(signal.SIGALRM, lambda *_: fired.append(1))
    try:
        signal.alarm(30)
        MathAccuracy()(completions=[r"\boxed{\frac{1}{2}}"], answer=["0.5"])
        remaining = signal.alarm(0)
        assert 0 < remaining <= 30 and not fired  # math-verify in-process would have cancelled it
    finally:
        signal.signal(signal.SIGALRM, old)


def _child(queue):
    pool = get_pool(2)
    scores = MathAccuracy()(completions=[r"\boxed{3}", r"\boxed{4}"], answer=["3", "3"])
    queue.put((os.getpid(), pool.pid, [w.proc.pid for w in pool._workers], scores))


def test_forked_child_starts_its_own_pool():
    parent_pool = get_pool(2)
    MathAccuracy()(completions=[r"\boxed{1}"], answer=["1"])
    parent_workers = [w.proc.pid for w in parent_pool._workers]
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue,))
    proc.start()
    pid, pool_pid, child_workers, scores = queue.get(timeout=120)
    proc.join(30)
    assert scores == [1.0, 0.0]
    assert pool_pid == pid != os.getpid()
    assert not set(child_workers) & set(parent_workers)
    # the parent's workers were neither used nor killed by the child
    assert [w.proc.pid for w in parent_pool._workers] == parent_workers
    assert MathAccuracy()(completions=[r"\boxed{2}"], answer=["2"]) == [1.0]
