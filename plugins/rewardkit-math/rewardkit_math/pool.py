"""A small pool of persistent checker processes with a hard wall-clock deadline per item.

Why not ``ProcessPoolExecutor`` / ``multiprocessing.Pool``: neither can free a worker stuck in C code (a
stuck task holds its worker forever). Why not ``multiprocessing.Process``: under spawn/forkserver the child
re-imports the trainer's ``__main__`` script (torch and all), and fork copies a threaded trainer. So each
worker is a fresh ``python -m rewardkit_math.worker`` talking over a socketpair wrapped in a
``multiprocessing.connection.Connection``; it inherits nothing but the environment and ``sys.path``.

Deadline management is one ``connection.wait`` in the calling thread, with the earliest deadline as its
timeout: no timer threads. Items go out in chunks (a few per worker per call) and come back one message per
item, so each item's clock starts when the previous one's result arrives. A worker past its item's deadline
is SIGKILLed and replaced (the new one boots while the others keep working); that item gets ``timeout``,
the rest of its chunk goes back to the queue. A worker that dies gives its current item ``error``.

One pool per process (:func:`get_pool`): after ``fork`` the child forgets the parent's pool and starts its
own on first use. Calls from several threads take turns on a lock.
"""

from __future__ import annotations

import atexit
import itertools
import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from multiprocessing.connection import Connection, wait

BOOT_TIMEOUT = 120.0  # seconds a new worker may take to import math-verify (a loaded CI box is slow)
MAX_CHUNK = 16  # small chunks: a slow item delays only the rest of its own chunk
MAX_BOOT_FAILURES = 3


class WorkerStartError(RuntimeError):
    """A checker worker could not start (e.g. math-verify is not importable)."""


class _Worker:
    def __init__(self):
        parent_sock, child_sock = socket.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "rewardkit_math.worker", str(child_sock.fileno())],
                pass_fds=(child_sock.fileno(),), stdin=subprocess.DEVNULL, env=env)
        finally:
            child_sock.close()
        self.conn = Connection(parent_sock.detach())
        self.started = time.monotonic()
        self.ready = False
        self.job: list[int] | None = None  # item indices of the chunk in flight
        self.pos = 0  # index in job of the item being worked on
        self.item_start = 0.0

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=10)
        except Exception:  # noqa: BLE001 - already gone
            pass
        self.conn.close()


class Pool:
    """``run(items, timeout, opts)`` -> one ``(result, seconds)`` per item, in order."""

    def __init__(self, workers: int):
        self.size = max(1, int(workers))
        self.pid = os.getpid()
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._jobs = itertools.count()
        self._boot_failures = 0
        self.stats = {"spawned": 0, "killed": 0, "crashed": 0, "max_item_seconds": 0.0}

    def resize(self, workers: int) -> None:
        self.size = max(self.size, int(workers))

    def _spawn(self) -> _Worker:
        w = _Worker()
        self.stats["spawned"] += 1
        self._workers.append(w)
        return w

    def _replace(self, w: _Worker, why: str) -> None:
        w.kill()
        self._workers.remove(w)
        self.stats[why] += 1
        self._spawn()

    def warmup(self) -> None:
        """Start the workers now and wait until they are ready (they otherwise start on first use)."""
        self.run([], 1.0, ())

    def run(self, items: list, timeout: float, opts: tuple) -> list:
        if os.getpid() != self.pid:
            raise RuntimeError("rewardkit_math Pool used after fork; call rewardkit_math.pool.get_pool()")
        with self._lock:
            try:
                return self._run(items, timeout, opts)
            except BaseException:
                self.close()  # leave no worker half-way through a chunk nobody will read
                raise

    def _run(self, items, timeout, opts):
        while len(self._workers) < self.size:
            self._spawn()
        pending = deque(range(len(items)))
        results: list = [None] * len(items)
        left = len(items)
        job_id = next(self._jobs)
        while left or not all(w.ready for w in self._workers) and not items:
            now = time.monotonic()
            for w in list(self._workers):
                if w.ready and w.job is None and pending:
                    size = min(MAX_CHUNK, len(pending), math.ceil(len(pending) / (4 * len(self._workers))))
                    w.job, w.pos, w.item_start = [pending.popleft() for _ in range(size)], 0, now
                    try:
                        w.conn.send((job_id, timeout, opts, [items[i] for i in w.job]))
                    except OSError:  # died while idle: nothing of this chunk was tried, queue it all again
                        pending.extendleft(reversed(w.job))
                        self._replace(w, "crashed")
            busy = [w for w in self._workers if w.job is not None or not w.ready]
            deadlines = [w.item_start + timeout if w.job is not None else w.started + BOOT_TIMEOUT for w in busy]
            if not busy:
                continue
            for conn in wait([w.conn for w in busy], timeout=max(0.0, min(deadlines) - time.monotonic())):
                w = next(w for w in busy if w.conn is conn)
                left -= self._drain(w, job_id, results, pending)
            now = time.monotonic()
            for w in list(self._workers):
                if w.job is not None and now >= w.item_start + timeout:
                    left -= self._fail(w, results, pending, "timeout", "killed", now)
                elif not w.ready and now >= w.started + BOOT_TIMEOUT:
                    raise WorkerStartError(f"math checker worker did not start within {BOOT_TIMEOUT:.0f}s")
        return results

    def _drain(self, w: _Worker, job_id: int, results: list, pending: deque) -> int:
        """Read every message waiting on ``w``; returns how many items completed."""
        done = 0
        try:
            while w.conn.poll():
                msg = w.conn.recv()
                now = time.monotonic()
                if msg[0] == "ready":
                    w.ready, self._boot_failures = True, 0
                elif msg[0] == "fatal":
                    raise WorkerStartError(f"math checker worker failed to start:\n{msg[1]}")
                elif msg[0] == job_id and w.job is not None:
                    seconds = now - w.item_start
                    results[w.job[msg[1]]] = (msg[2], seconds)
                    self.stats["max_item_seconds"] = max(self.stats["max_item_seconds"], seconds)
                    done += 1
                    w.pos, w.item_start = msg[1] + 1, now
                    if w.pos == len(w.job):
                        w.job = None
        except (EOFError, OSError):
            if not w.ready:
                self._boot_failures += 1
                if self._boot_failures > MAX_BOOT_FAILURES:
                    raise WorkerStartError("math checker workers keep dying while starting") from None
            done += self._fail(w, results, pending, "error", "crashed", time.monotonic())
        return done

    def _fail(self, w: _Worker, results, pending: deque, status: str, why: str, now: float) -> int:
        """Kill ``w``; its current item gets ``status``, the rest of its chunk is queued again."""
        done = 0
        if w.job is not None and w.pos < len(w.job):
            seconds = now - w.item_start
            results[w.job[w.pos]] = ((status, None, "", f"worker {why}"), seconds)
            self.stats["max_item_seconds"] = max(self.stats["max_item_seconds"], seconds)
            pending.extendleft(reversed(w.job[w.pos + 1:]))
            done = 1
        self._replace(w, why)
        return done

    def close(self) -> None:
        for w in self._workers:
            w.kill()
        self._workers.clear()


_POOL: Pool | None = None
_POOL_GUARD = threading.Lock()


def get_pool(workers: int) -> Pool:
    """This process's pool, created (empty: workers start on first use) on first call."""
    global _POOL
    with _POOL_GUARD:
        if _POOL is None or _POOL.pid != os.getpid():
            _POOL = Pool(workers)
        else:
            _POOL.resize(workers)
        return _POOL


def _forget_after_fork() -> None:
    # The child must neither use nor kill the parent's workers; it starts its own pool when needed.
    global _POOL, _POOL_GUARD
    _POOL, _POOL_GUARD = None, threading.Lock()


def _close_at_exit() -> None:
    if _POOL is not None and _POOL.pid == os.getpid():
        _POOL.close()


os.register_at_fork(after_in_child=_forget_after_fork)
atexit.register(_close_at_exit)
