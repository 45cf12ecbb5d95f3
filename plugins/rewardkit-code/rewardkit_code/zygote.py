"""The warm worker that runs *inside* the sandbox (bwrap + cgroups). Standard library only.

Started once per slot as ``python -I -S zygote.py CONFIG_JSON``. It reads jobs from the host over its original
stdin/stdout (moved to high fds first), and for every job forks a fresh child that drops to an unprivileged
uid, sets rlimits and runs the untrusted program. The zygote itself never executes untrusted code; it keeps
only the capabilities bwrap was told to leave it (SETUID/SETGID to drop, KILL to clean up, DAC_OVERRIDE and
FOWNER to empty the work dir), which the program's uid cannot reach: it cannot signal, ptrace or write to it.

After every job *every* other process in the sandbox's PID namespace except init (pid 1) and the zygote is
SIGKILLed with ``kill(-1)`` (atomic against fork), the work dir is emptied and SysV IPC objects are removed,
so no process, file or shared memory survives into the next program.

The reply carries raw observations only (exit status, signal, stdout bytes, the raw result channel); the host
decides the verdict. Nothing the program writes is interpreted here.
"""

import base64
import ctypes
import fcntl
import gc
import json
import os
import resource
import select
import shutil
import signal
import struct
import sys
import time
import traceback

CTRL_IN, CTRL_OUT = 100, 101
WORKDIR = "/tmp/w"
RESULT_FD = 3
_HDR = struct.Struct(">I")


def _read_exact(fd, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _recv():
    hdr = _read_exact(CTRL_IN, 4)
    if hdr is None:
        return None
    body = _read_exact(CTRL_IN, _HDR.unpack(hdr)[0])
    return None if body is None else json.loads(body)


def _send(obj):
    body = json.dumps(obj).encode()
    data = _HDR.pack(len(body)) + body
    while data:
        data = data[os.write(CTRL_OUT, data):]


# --------------------------------------------------------------------------- the child (untrusted side)
def _plain(v, depth=0):
    """A copy of ``v`` made only of exact plain types, or TypeError. Subclasses (int with a rigged __eq__,
    str subclasses, ...) and arbitrary objects are refused: the host compares values it decoded itself."""
    if depth > 64:
        raise TypeError("return value nested too deeply")
    t = type(v)
    if v is None or t is bool or t is int or t is float or t is str:
        return v
    if t is list or t is tuple:
        return [_plain(x, depth + 1) for x in v]
    if t is dict:
        out = {}
        for k, x in v.items():
            if type(k) is not str:
                raise TypeError("dict keys must be str in a returned value, got " + t.__name__)
            out[k] = _plain(x, depth + 1)
        return out
    raise TypeError("return value of type %s is not a plain value (None/bool/int/float/str/list/tuple/dict)"
                    % t.__name__)


def _child(cfg, job, fds, w_setup):
    """Runs in the forked child: confine, then execute. Never returns."""
    try:
        r_in, w_out, w_err, w_res = fds
        w_setup = fcntl.fcntl(w_setup, fcntl.F_DUPFD, 64)  # kept apart from the fds closed below; closed once confinement is done
        os.dup2(r_in, 0)
        os.dup2(w_out, 1)
        os.dup2(w_err, 2)
        os.dup2(w_res, RESULT_FD)
        os.closerange(RESULT_FD + 1, w_setup)
        os.closerange(w_setup + 1, 1 << 16)
        if not job.get("call"):
            os.close(RESULT_FD)  # stdin/stdout cases have no result channel
        for sig in (signal.SIGPIPE, signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        with open("/proc/self/oom_score_adj", "w") as f:  # the OOM killer takes the program, not the zygote
            f.write("1000")
        mb = 1 << 20
        limits = [
            (resource.RLIMIT_CPU, int(job["timeout"]) + 1),
            (resource.RLIMIT_FSIZE, cfg["file_size"]),
            (resource.RLIMIT_NOFILE, cfg["max_open_files"]),
            (resource.RLIMIT_CORE, 0),
            (resource.RLIMIT_MSGQUEUE, 0),
            (resource.RLIMIT_NPROC, cfg["max_processes"]),  # effective: a dedicated non-root uid per slot
        ]
        if cfg["memory"]:
            limits.append((resource.RLIMIT_AS, cfg["memory"] + cfg["as_slack_mb"] * mb))
        for which, value in limits:
            resource.setrlimit(which, (value, value))
        uid = cfg["uid"]
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)  # drops every capability (no keep-caps); NO_NEW_PRIVS is set by bwrap
        os.chdir(WORKDIR)
        os.umask(0o077)
        os.environ.clear()
        os.environ.update({"PATH": "/usr/bin:/bin", "HOME": WORKDIR, "TMPDIR": WORKDIR, "LANG": "C.UTF-8",
                           "PYTHONIOENCODING": "utf-8"})
        sys.stdin = open(0, "r", encoding="utf-8", errors="replace", closefd=False)
        sys.stdout = out = open(1, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
        sys.stderr = err = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False,
                                buffering=1)
        sys.argv = ["solution.py"]
        # Tell the zygote confinement is complete: from here on, every outcome is the program's.
        os.write(w_setup, b"k")
        os.close(w_setup)
    except BaseException as exc:  # noqa: BLE001 - confinement failed: never run the program
        try:
            os.write(2, ("rewardkit sandbox setup failed: %r\n" % (exc,)).encode())
        finally:
            os._exit(121)
    status = 0
    payload = None
    try:
        code = compile(job["code"], "solution.py", "exec")
        g = {"__name__": "__main__", "__builtins__": __builtins__, "__file__": "solution.py"}
        exec(code, g)
        if job.get("call"):
            value = eval(compile(job["call"], "<test>", "eval"), g)
            try:
                payload = json.dumps({"value": _plain(value)}, allow_nan=True)
            except TypeError as exc:
                payload = json.dumps({"unsupported": str(exc)})
    except SystemExit as exc:
        c = exc.code
        status = c if type(c) is int else (0 if c is None else 1)
        if type(c) is not int and c is not None:
            try:
                print(c, file=sys.stderr)
            except BaseException:  # noqa: BLE001
                pass
        payload = None  # a call that exits returned nothing
    except BaseException:  # noqa: BLE001 - the program's own failure: show it on its stderr
        status = 1
        payload = None
        try:
            traceback.print_exc()
        except BaseException:  # noqa: BLE001
            pass
    for stream in (sys.stdout, out, sys.stderr, err):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001
            pass
    if payload is not None and status == 0:
        try:
            data = payload.encode("utf-8", "surrogatepass")
            data = struct.pack(">Q", len(data)) + data
            while data:
                data = data[os.write(RESULT_FD, data):]
        except BaseException:  # noqa: BLE001
            status = 1
    os._exit(status & 0xFF)  # no atexit handlers, no thread joins: the harness decides when it ends


# --------------------------------------------------------------------------- the zygote (trusted side)
def _others():
    me = os.getpid()
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            pid = int(name)
            if pid != 1 and pid != me:
                out.append(pid)
    return out


_statuses = {}  # wait statuses of our children reaped while cleaning up


def _reap():
    while True:
        try:
            pid, wstatus = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _statuses[pid] = wstatus


def _wait(pid):
    if pid in _statuses:
        return _statuses.pop(pid)
    return os.waitpid(pid, 0)[1]


def _kill_everything(deadline_s=3.0):
    """SIGKILL every process in the namespace but init and us; True once /proc shows none left."""
    end = time.monotonic() + deadline_s
    delay = 0.0005
    while True:
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _reap()
        if not _others():
            return True
        if time.monotonic() > end:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.02)


_IPC = (("/proc/sysvipc/shm", "shmctl"), ("/proc/sysvipc/msg", "msgctl"), ("/proc/sysvipc/sem", "semctl"))


def _ipc_ids():
    found = []
    for path, fn in _IPC:
        try:
            with open(path) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 1:
                found.append((fn, int(parts[1])))
    return found


def _clean_ipc(uid):
    """Remove SysV IPC objects left by the program (only its uid, their creator, may)."""
    ids = _ipc_ids()
    if not ids:
        return True
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            libc = ctypes.CDLL(None, use_errno=True)
            for fn, ident in ids:
                if fn == "semctl":
                    libc.semctl(ident, 0, 0)  # IPC_RMID == 0
                else:
                    getattr(libc, fn)(ident, 0, None)
        finally:
            os._exit(0)
    _wait(pid)
    return not _ipc_ids()


def _reset_workdir():
    if os.path.lexists(WORKDIR):
        shutil.rmtree(WORKDIR, ignore_errors=True)
    if os.path.lexists(WORKDIR):
        return False
    os.mkdir(WORKDIR, 0o700)
    return True


def _run(cfg, job):
    uid = cfg["uid"]
    if not _reset_workdir():
        return {"error": "could not reset the work dir"}
    os.chown(WORKDIR, uid, uid)
    r_in, w_in = os.pipe()
    r_out, w_out = os.pipe()
    r_err, w_err = os.pipe()
    r_res, w_res = os.pipe()
    r_setup, w_setup = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.close(CTRL_IN)
        os.close(CTRL_OUT)
        for fd in (w_in, r_out, r_err, r_res, r_setup):
            os.close(fd)
        _child(cfg, job, (r_in, w_out, w_err, w_res), w_setup)
    for fd in (r_in, w_out, w_err, w_res, w_setup):
        os.close(fd)
    pidfd = os.pidfd_open(pid)
    stdin = job.get("stdin") or ""
    pending = stdin.encode("utf-8")
    if not pending:
        os.close(w_in)
        w_in = -1
    else:
        os.set_blocking(w_in, False)
    limit = cfg["output_limit"]
    bufs = {r_out: bytearray(), r_err: bytearray(), r_res: bytearray(), r_setup: bytearray()}
    caps = {r_out: limit, r_err: limit, r_res: limit + 64, r_setup: 1}
    poller = select.poll()
    for fd in bufs:
        poller.register(fd, select.POLLIN)
    poller.register(pidfd, select.POLLIN)
    if w_in >= 0:
        poller.register(w_in, select.POLLOUT)
    deadline = start + float(job["timeout"])
    killed = None
    exited = False
    open_fds = set(bufs)
    while not exited:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            killed = "timeout"
            break
        for fd, ev in poller.poll(max(1, int(remaining * 1000) + 1)):
            if fd == pidfd:
                exited = True
            elif fd == w_in:
                try:
                    n = os.write(w_in, pending[:65536])
                    pending = pending[n:]
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:  # the program closed its stdin
                    pending = b""
                if not pending:
                    poller.unregister(w_in)
                    os.close(w_in)
                    w_in = -1
            elif fd in open_fds:
                chunk = os.read(fd, 65536)
                if not chunk:
                    poller.unregister(fd)
                    open_fds.discard(fd)
                    continue
                buf = bufs[fd]
                buf += chunk
                if len(buf) > caps[fd]:
                    del buf[caps[fd]:]
                    if fd != r_setup:
                        killed = "output_limit"
        if killed:
            break
    elapsed = time.monotonic() - start
    # Whatever happened, nothing of this program outlives this point.
    clean = _kill_everything()
    wstatus = _wait(pid)
    # The writers are dead now: drain what is left in the pipes (bounded by the caps).
    for fd in list(open_fds):
        os.set_blocking(fd, False)
        while True:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            buf = bufs[fd]
            buf += chunk
            if len(buf) > caps[fd]:
                del buf[caps[fd]:]
                if killed is None and fd not in (r_err, r_setup):
                    killed = "output_limit"
                break
    for fd in list(bufs) + [pidfd] + ([w_in] if w_in >= 0 else []):
        os.close(fd)
    clean = _clean_ipc(uid) and clean
    clean = _reset_workdir() and clean
    reply = {
        "elapsed": elapsed,
        "killed": killed,
        "exit": os.WEXITSTATUS(wstatus) if os.WIFEXITED(wstatus) else None,
        "signal": os.WTERMSIG(wstatus) if os.WIFSIGNALED(wstatus) else None,
        "stdout": base64.b64encode(bytes(bufs[r_out])).decode(),
        "stderr": bytes(bufs[r_err][-2000:]).decode("utf-8", "replace"),
        "result": base64.b64encode(bytes(bufs[r_res])).decode(),
        "clean": clean,
        "setup_ok": bytes(bufs[r_setup]) == b"k",
    }
    return reply


def _warm_up():
    """Pay once, here, for what every child would otherwise pay after fork: the first compile() initialises
    the parser, the first traceback loads linecache; then freeze the heap so the children's garbage
    collections do not touch (and copy) the zygote's pages."""
    g = {"__name__": "__main__"}
    exec(compile("def f(x):\n    return [i * 2 for i in range(x)]\ny = f(3)\n", "warm.py", "exec"), g)
    json.dumps({"value": _plain(eval(compile("f(2)", "<test>", "eval"), g))})
    try:
        raise ValueError("warm")
    except ValueError:
        traceback.format_exc()
    gc.collect()
    gc.freeze()


def main():
    cfg = json.loads(sys.argv[1])
    os.dup2(0, CTRL_IN)
    os.dup2(1, CTRL_OUT)
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1):
        os.dup2(null, fd)
    os.close(null)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    _warm_up()
    # Self-check, reported to the host before any job: who we are and what the child will be.
    with open("/proc/self/status") as f:
        status = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
    _send({"ready": True, "pid": os.getpid(), "nnp": status.get("NoNewPrivs", "").strip(),
           "cap_eff": status.get("CapEff", "").strip(), "others": _others()})
    while True:
        job = _recv()
        if job is None:
            return
        try:
            reply = _run(cfg, job)
        except Exception as exc:  # noqa: BLE001 - a zygote failure is an infrastructure failure
            reply = {"error": "%s: %s" % (type(exc).__name__, exc)}
        _send(reply)


if __name__ == "__main__":
    main()
