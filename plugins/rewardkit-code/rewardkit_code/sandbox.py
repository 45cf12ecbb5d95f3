"""Host side of the sandbox: a pool of warm zygotes, each inside bubblewrap and its own cgroups.

Layout of one slot::

    sh (moves itself into the slot's pids+memory cgroups, then exec) -> bwrap (outer, --die-with-parent)
        -> bwrap init (pid 1 of a new PID namespace) -> python -I -S zygote.py (pid 2)
            -> one forked child per test case, uid = the slot's unprivileged uid

Everything a program can start is inside the slot's cgroups (pids.max, memory.limit_in_bytes) and its PID
namespace; the zygote SIGKILLs all of it after each case, and the host kills the cgroup and the namespace when
a slot is retired.
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import queue
import secrets
import select
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

CGROUP_ROOT = "/sys/fs/cgroup"
_HDR = struct.Struct(">I")
ZYGOTE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "zygote.py")
ISOLATION_MODES = ("full", "weak")


class SandboxUnavailable(RuntimeError):
    """The host cannot provide the isolation asked for (a configuration problem: never skip silently)."""


class SandboxError(RuntimeError):
    """An infrastructure failure while running a program (the sample cannot be judged)."""


@dataclass(frozen=True)
class SandboxConfig:
    memory_mb: int = 256        # per program: RLIMIT_AS of each process, and the slot's memory cgroup
    tmpfs_mb: int = 32          # the only writable place (/tmp, the program's cwd is /tmp/w)
    max_processes: int = 32     # pids cgroup of the slot (+ RLIMIT_NPROC of the slot's uid)
    output_limit_kb: int = 64   # stdout, stderr and result channel, each
    file_size_kb: int = 1024    # RLIMIT_FSIZE
    max_open_files: int = 64    # RLIMIT_NOFILE
    isolation: str = "full"     # "full" needs cgroups v1 pids+memory; "weak" runs without them (opt-in)

    def zygote_config(self, uid: int) -> dict:
        return {"uid": uid, "memory": self.memory_mb << 20, "as_slack_mb": 64,
                "output_limit": self.output_limit_kb << 10, "file_size": self.file_size_kb << 10,
                "max_open_files": self.max_open_files, "max_processes": self.max_processes}


# --------------------------------------------------------------------------- host capability checks
def _own_cgroup(controller: str) -> str:
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            if controller in ctrls.split(","):
                return path
    return "/"


def _cgroup_base(controller: str) -> str:
    return os.path.join(CGROUP_ROOT, controller) + _own_cgroup(controller).rstrip("/")


def host_problems(isolation: str = "full") -> list[str]:
    """Why this host cannot run the sandbox in ``isolation`` mode (empty: it can)."""
    problems = []
    if sys.platform != "linux":
        return [f"the code sandbox needs Linux (this is {sys.platform})"]
    if os.geteuid() != 0:
        problems.append("the code sandbox needs root (to give each slot its own unprivileged uid and cgroups); "
                        "CI runs as root")
    if shutil.which("bwrap") is None:
        problems.append("bubblewrap is not installed (`apt-get install bubblewrap`; .ci/setup does it)")
    if isolation == "full":
        for ctrl, knob in (("pids", "pids.max"), ("memory", "memory.limit_in_bytes")):
            base = _cgroup_base(ctrl)
            if not os.path.isdir(base) or not os.access(base, os.W_OK):
                problems.append(f"cgroup v1 '{ctrl}' controller is not mounted writable at {base} "
                                f"(needed for {knob}); pass isolation='weak' to run without cgroups")
    return problems


def _python_binds() -> tuple[str, list[str]]:
    """The interpreter to run inside, and bwrap args exposing (read-only) what it needs and nothing else."""
    exe = os.path.realpath(sys.executable)
    prefix = os.path.realpath(sys.base_prefix)
    args = []
    for top in ("/usr", "/bin", "/lib", "/lib64", "/lib32", "/libx32", "/sbin"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    roots = [] if prefix.startswith("/usr/") or prefix == "/usr" else [prefix]
    if not exe.startswith(prefix + "/") and not exe.startswith("/usr/"):
        roots.append(os.path.dirname(exe))
    for root in roots:
        # Parent dirs are created 0755 explicitly: bwrap would copy the host's mode (e.g. /root is 0700).
        parts = root.strip("/").split("/")
        for i in range(1, len(parts)):
            args += ["--perms", "0755", "--dir", "/" + "/".join(parts[:i])]
        args += ["--ro-bind", root, root]
    return exe, args


# --------------------------------------------------------------------------- one slot
class Slot:
    def __init__(self, config: SandboxConfig, index: int):
        self.config = config
        self.index = index
        self.uid = 1_000_000 + secrets.randbelow(1_000_000_000)  # dedicated, unprivileged, unique per slot
        self.proc: subprocess.Popen | None = None
        self.cgroups: dict[str, str] = {}
        self.ready: dict = {}
        self._oom_seen = 0

    # cgroups ---------------------------------------------------------------
    def _make_cgroups(self) -> None:
        name = f"rewardkit-code-{os.getpid()}-{self.index}-{secrets.token_hex(3)}"
        cfg = self.config
        for ctrl in ("pids", "memory"):
            path = os.path.join(_cgroup_base(ctrl), name)
            os.mkdir(path)
            self.cgroups[ctrl] = path
        with open(os.path.join(self.cgroups["pids"], "pids.max"), "w") as f:
            # bwrap outer + init + zygote + one per case child, plus what the program may start.
            f.write(str(cfg.max_processes + 4))
        mem = self.cgroups["memory"]
        limit = (cfg.memory_mb + cfg.tmpfs_mb + 96) << 20  # program + its tmpfs pages + zygote and bwrap
        with open(os.path.join(mem, "memory.limit_in_bytes"), "w") as f:
            f.write(str(limit))
        try:
            with open(os.path.join(mem, "memory.swappiness"), "w") as f:
                f.write("0")
        except OSError:
            pass

    def oom_kills(self) -> int:
        """The memory cgroup's OOM-kill counter (0 without a memory cgroup)."""
        path = self.cgroups.get("memory")
        if not path:
            return 0
        try:
            with open(os.path.join(path, "memory.oom_control")) as f:
                for line in f:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except OSError:
            pass
        return 0

    def _cgroup_pids(self) -> list[int]:
        out = []
        for path in self.cgroups.values():
            try:
                with open(os.path.join(path, "cgroup.procs")) as f:
                    out += [int(x) for x in f.read().split()]
            except OSError:
                pass
        return sorted(set(out))

    def _remove_cgroups(self) -> None:
        for _ in range(200):
            pids = self._cgroup_pids()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.005)
        for path in self.cgroups.values():
            for _ in range(100):
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)
        self.cgroups = {}

    # lifecycle -------------------------------------------------------------
    def bwrap_argv(self) -> list[str]:
        cfg = self.config
        exe, binds = _python_binds()
        return [
            "bwrap",
            "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--die-with-parent", "--new-session", "--clearenv",
            "--cap-drop", "ALL",
            "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_KILL",
            "--cap-add", "CAP_DAC_OVERRIDE", "--cap-add", "CAP_FOWNER", "--cap-add", "CAP_CHOWN",
            "--hostname", "sandbox",
            *binds,
            "--proc", "/proc", "--dev", "/dev",
            "--perms", "0755", "--size", str(cfg.tmpfs_mb << 20), "--tmpfs", "/tmp",
            "--ro-bind", ZYGOTE, "/opt/rewardkit/zygote.py",
            "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "LANG", "C.UTF-8",
            "--setenv", "MALLOC_ARENA_MAX", "2",
            "--chdir", "/tmp",
            exe, "-I", "-S", "-B", "/opt/rewardkit/zygote.py", json.dumps(cfg.zygote_config(self.uid)),
        ]

    def start(self, timeout: float = 20.0) -> None:
        cfg = self.config
        argv = self.bwrap_argv()
        if cfg.isolation == "full":
            self._make_cgroups()
            # The shell enters the cgroups before exec'ing bwrap, so every descendant is born inside them.
            enter = " && ".join(f'echo $$ > "{p}/cgroup.procs"' for p in self.cgroups.values())
            argv = ["/bin/sh", "-c", enter + ' && exec "$@"', "sh", *argv]
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, close_fds=True, start_new_session=True)
        except OSError as exc:
            self.close()
            raise SandboxUnavailable(f"could not start bubblewrap: {exc}") from exc
        try:
            self.ready = self._recv(time.monotonic() + timeout)
        except SandboxError as exc:
            err = self._stderr()
            self.close()
            raise SandboxUnavailable(f"the sandbox did not start: {exc}; bwrap said: {err.strip()[-500:]}") from exc
        problems = self._verify()
        if problems:
            self.close()
            raise SandboxUnavailable("sandbox isolation check failed: " + "; ".join(problems))
        self._oom_seen = self.oom_kills()

    def _descendants(self) -> list[int]:
        out, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            try:
                for task in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{task}/children") as f:
                        todo += [int(x) for x in f.read().split()]
            except OSError:
                pass
        return out

    def _verify(self) -> list[str]:
        """Check, from the host, that the isolation we asked for is really in force."""
        problems = []
        if self.ready.get("nnp") != "1":
            problems.append("NO_NEW_PRIVS is not set in the sandbox")
        if self.ready.get("others"):
            problems.append(f"unexpected processes in the sandbox: {self.ready['others']}")
        procs = self._descendants()
        if len(procs) < 3:
            problems.append(f"expected bwrap, its init and the zygote, found pids {procs}")
        for ctrl, path in self.cgroups.items():
            members = set(self._cgroup_pids_of(path))
            missing = [p for p in procs if p not in members]
            if missing:
                problems.append(f"processes {missing} are not in the {ctrl} cgroup {path}")
        for pid in procs:  # the program is the OOM killer's victim, never the machinery
            try:
                with open(f"/proc/{pid}/oom_score_adj", "w") as f:
                    f.write("-1000")
            except OSError:
                pass
        return problems

    @staticmethod
    def _cgroup_pids_of(path: str) -> list[int]:
        with open(os.path.join(path, "cgroup.procs")) as f:
            return [int(x) for x in f.read().split()]

    def pids_limit_in_force(self) -> bool:
        """True when the slot's processes are in a pids cgroup with a finite pids.max."""
        path = self.cgroups.get("pids")
        if not path or self.proc is None or self.proc.poll() is not None:
            return False
        with open(os.path.join(path, "pids.max")) as f:
            if f.read().strip() == "max":
                return False
        members = set(self._cgroup_pids_of(path))
        return all(p in members for p in self._descendants())

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _stderr(self) -> str:
        if self.proc is None or self.proc.stderr is None:
            return ""
        try:
            os.set_blocking(self.proc.stderr.fileno(), False)
            return (self.proc.stderr.read() or b"").decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""

    def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # sh/bwrap outer; init dies with it (die-with-parent)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                try:
                    stream.close()
                except OSError:
                    pass
        if self.cgroups:
            self._remove_cgroups()

    # protocol --------------------------------------------------------------
    def _recv(self, deadline: float) -> dict:
        fd = self.proc.stdout.fileno()

        def read(n: int) -> bytes:
            buf = bytearray()
            while len(buf) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SandboxError("the sandbox did not answer in time")
                r, _, _ = select.select([fd], [], [], left)
                if not r:
                    continue
                chunk = os.read(fd, n - len(buf))
                if not chunk:
                    raise SandboxError("the sandbox exited")
                buf += chunk
            return bytes(buf)

        (n,) = _HDR.unpack(read(4))
        return json.loads(read(n))

    def run(self, job: dict) -> dict:
        """Run one case; the zygote's raw observations plus ``oom`` (the memory cgroup killed something)."""
        if not self.alive():
            raise SandboxError("the sandbox slot is not running")
        body = json.dumps(job).encode()
        try:
            self.proc.stdin.write(_HDR.pack(len(body)) + body)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise SandboxError(f"could not send the job: {exc}") from exc
        # The zygote enforces job["timeout"]; its own clean-up is bounded by a few seconds.
        reply = self._recv(time.monotonic() + float(job["timeout"]) + 10.0)
        if "error" in reply:
            raise SandboxError(f"sandbox failure: {reply['error']}")
        oom = self.oom_kills()
        reply["oom"] = oom > self._oom_seen
        self._oom_seen = oom
        reply["stdout"] = base64.b64decode(reply["stdout"])
        reply["result"] = base64.b64decode(reply["result"])
        return reply


# --------------------------------------------------------------------------- the pool
class Pool:
    """``workers`` warm slots; :meth:`run_programs` spreads programs over them with one thread per slot."""

    def __init__(self, config: SandboxConfig, workers: int):
        if config.isolation not in ISOLATION_MODES:
            raise ValueError(f"isolation must be one of {ISOLATION_MODES}, got {config.isolation!r}")
        problems = host_problems(config.isolation)
        if problems:
            raise SandboxUnavailable("cannot sandbox untrusted code on this host: " + "; ".join(problems))
        self.config = config
        self.workers = workers
        self._free: queue.Queue[Slot] = queue.Queue()
        self._slots: list[Slot] = []
        self._lock = threading.Lock()
        self._closed = False
        # bwrap --die-with-parent uses PR_SET_PDEATHSIG, which fires when the *thread* that spawned it exits:
        # every slot is spawned from this one long-lived thread, never from a short-lived worker thread.
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rewardkit-code-spawner")
        try:
            for i in range(workers):
                slot = self._spawn(i)
                self._slots.append(slot)
                self._free.put(slot)
        except BaseException:
            for slot in self._slots:
                slot.close()
            self._spawner.shutdown(wait=False)
            raise
        _live_pools.add(self)

    def _spawn(self, index: int) -> Slot:
        def start():
            slot = Slot(self.config, index)
            slot.start()
            return slot

        return self._spawner.submit(start).result()

    def _replace(self, slot: Slot) -> Slot:
        slot.close()
        fresh = self._spawn(slot.index)  # SandboxUnavailable propagates; the caller puts the dead slot back
        with self._lock:
            self._slots = [fresh if s is slot else s for s in self._slots]
        return fresh

    def run_program(self, cases: list[dict], *, stop_early, total_timeout: float) -> list[dict]:
        """Run one program's cases in one slot, in order. Each result is the zygote's reply, or
        ``{"skipped": "total_timeout"}`` / ``{"sandbox_error": msg}``. ``stop_early(reply)`` ends the run."""
        slot = self._free.get()
        results: list[dict] = []
        try:
            if not slot.alive():  # a slot that died (or failed to restart) earlier gets another chance
                slot = self._replace(slot)
            spent = 0.0
            for case in cases:
                if spent >= total_timeout:
                    results.append({"skipped": "total_timeout"})
                    continue
                job = dict(case, timeout=min(float(case["timeout"]), max(0.01, total_timeout - spent)))
                try:
                    reply = slot.run(job)
                except SandboxError as exc:
                    results.append({"sandbox_error": str(exc)})
                    slot = self._replace(slot)
                    break
                if not reply.get("clean", True):
                    slot = self._replace(slot)  # something survived the clean-up: never reuse that slot
                spent += reply["elapsed"]
                results.append(reply)
                if stop_early(reply):
                    break
        except SandboxUnavailable as exc:  # a replacement could not start: the dead slot goes back,
            results.append({"sandbox_error": str(exc)})  # and the next program tries again
        finally:
            self._free.put(slot)
        return results

    def slots(self) -> list[Slot]:
        return list(self._slots)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for slot in self._slots:
            slot.close()
        self._spawner.shutdown(wait=False)
        _live_pools.discard(self)


_live_pools: "weakref.WeakSet[Pool]" = weakref.WeakSet()
_shared: dict[tuple, Pool] = {}
_shared_lock = threading.Lock()


def shared_pool(config: SandboxConfig, workers: int) -> Pool:
    """One pool per (config, workers) per process, started on first use, closed at exit."""
    key = (tuple(sorted(asdict(config).items())), workers)
    with _shared_lock:
        pool = _shared.get(key)
        if pool is None or pool._closed:
            pool = _shared[key] = Pool(config, workers)
        return pool


@atexit.register
def _close_all() -> None:
    for pool in list(_live_pools):
        pool.close()
