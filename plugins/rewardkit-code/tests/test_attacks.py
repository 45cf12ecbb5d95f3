"""Attack suite: hostile programs, each with its expected classification and host-unchanged checks.

After every attack: no process of the slot's uid exists on the host, the slot's cgroup holds only the
sandbox machinery, the host's canaries are intact, and the next (honest) program still passes.

The fork bombs run only after checking, on the host, that the slot's pids cgroup is in force.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
import threading

import pytest

from rewardkit_code.reward import CodeTests
from rewardkit_code.sandbox import ZYGOTE, host_problems, shared_pool

PROBLEMS = host_problems("full")
pytestmark = pytest.mark.skipif(bool(PROBLEMS), reason="SANDBOX UNAVAILABLE, attack suite NOT run: "
                                + "; ".join(PROBLEMS))

SECRET = "rk-host-secret-7f3a"
TIMEOUT = 1.0
ADD_TESTS = [{"call": "add(1, 2)", "expected": 3}, {"call": "add(-5, 5)", "expected": 0},
             {"call": "add(100, 23)", "expected": 123}]
SUM_TESTS = [{"stdin": "1 2\n", "stdout": "3\n"}, {"stdin": "10 -4\n", "stdout": "6\n"}]
SUM_OK = "a, b = map(int, input().split())\nprint(a + b)\n"
FRAME = "import struct\ndef frame(b):\n    return struct.pack('>Q', len(b)) + b\n"


class Host:
    """Canaries on the host that no program may see or touch."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="rk-canary-")
        self.file = os.path.join(self.dir, "keep.txt")
        with open(self.file, "w") as f:
            f.write("canary")
        self.zygote_hash = self._hash(ZYGOTE)
        self.tmp_listing = set(os.listdir("/tmp"))
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(8)
        self.server.settimeout(0.05)
        self.port = self.server.getsockname()[1]
        self.connections = 0

    @staticmethod
    def _hash(path):
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()

    def check(self):
        assert os.path.exists(self.file) and open(self.file).read() == "canary", "host canary file touched"
        assert self._hash(ZYGOTE) == self.zygote_hash, "the zygote on the host was modified"
        new = {n for n in set(os.listdir("/tmp")) - self.tmp_listing if n.startswith("rk-evil")}
        assert not new, f"program wrote into the host /tmp: {new}"
        try:
            conn, _ = self.server.accept()
            conn.close()
            self.connections += 1
        except (socket.timeout, BlockingIOError):
            pass
        assert self.connections == 0, "a sandboxed program reached a host socket"


@pytest.fixture(scope="module")
def env():
    os.environ["RK_CANARY_SECRET"] = SECRET  # in the host environment before the pool starts
    host = Host()
    reward = CodeTests(timeout=TIMEOUT, total_timeout=10, memory_mb=128, tmpfs_mb=16, max_processes=16,
                       output_limit_kb=64, file_size_kb=256, max_open_files=64, workers=1)
    reward(prompts=[""], completions=[SUM_OK], tests=[json.dumps(SUM_TESTS)])  # start the pool
    pool = shared_pool(reward.config, reward.workers)
    yield reward, pool, host
    host.server.close()
    os.environ.pop("RK_CANARY_SECRET", None)


def host_pids_of_uid(uid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/status") as f:
                    for line in f:
                        if line.startswith("Uid:"):
                            if int(line.split()[1]) == uid:
                                out.append(int(name))
                            break
            except OSError:
                pass
    return out


def run(reward, code, tests):
    out = reward(prompts=[""], completions=["```python\n" + code + "\n```"], tests=[json.dumps(tests)])
    return out[0], reward.last_details[0]


def after_checks(reward, pool, host):
    slot = pool.slots()[0]
    assert slot.alive(), "the sandbox slot died"
    assert host_pids_of_uid(slot.uid) == [], "a program process survived on the host"
    procs = slot._cgroup_pids()
    assert len(procs) == 3, f"slot cgroup should hold bwrap, init and the zygote only, has {procs}"
    host.check()
    score, details = run(reward, SUM_OK, SUM_TESTS)
    assert score == 1.0, f"the next honest program was affected: {details}"


STDIO, CALL = SUM_TESTS, ADD_TESTS

# (name, program, tests, expected classes (any of), extra check on (score, details, stdout-less info))
ATTACKS = [
    ("infinite_loop", "while True:\n    pass", STDIO, {"timeout"}),
    ("sleep", "import time\ntime.sleep(100)", STDIO, {"timeout"}),
    ("ignored_sigterm", "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True:\n    pass",
     STDIO, {"timeout"}),
    ("disabled_alarm", "import signal, time\nsignal.alarm(0)\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
     "time.sleep(100)", STDIO, {"timeout"}),
    ("blocked_signals_busy", "import signal\nfor s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, "
     "signal.SIGXCPU):\n    signal.signal(s, signal.SIG_IGN)\nx = 0\nwhile True:\n    x += 1", STDIO, {"timeout"}),
    ("setsid_escape_holding_stdout",
     "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(100)\n    os._exit(0)\n" + SUM_OK,
     STDIO, {"passed"}),
    ("double_fork_daemon",
     "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(0.5)\n"
     "        open('/tmp/w/late', 'w').write('x')\n        time.sleep(100)\n    os._exit(0)\n" + SUM_OK,
     STDIO, {"passed"}),
    ("threads_left_running",
     "import threading\nthreading.Thread(target=lambda: [0 for _ in iter(int, 1)]).start()\n" + SUM_OK,
     STDIO, {"passed"}),
    ("memory_bomb", "x = bytearray(1 << 32)", STDIO, {"memory_limit"}),
    ("memory_bomb_gradual", "l = []\nwhile True:\n    l.append(bytearray(8 << 20))", STDIO, {"memory_limit"}),
    ("memory_bomb_many_processes",
     "import os, time\nfor _ in range(6):\n    if os.fork() == 0:\n        b = bytearray(100 << 20)\n"
     "        time.sleep(5)\n        os._exit(0)\nfor _ in range(6):\n    os.wait()\n" + SUM_OK,
     STDIO, {"memory_limit", "timeout"}),
    ("unbounded_output", "while True:\n    print('x' * 1000)", STDIO, {"output_limit"}),
    ("unbounded_stderr", "import sys\nwhile True:\n    sys.stderr.write('y' * 1000)", STDIO, {"output_limit"}),
    ("one_huge_write", "import sys\nsys.stdout.write('z' * 10**7)", STDIO, {"output_limit"}),
    ("huge_file", "with open('big', 'wb') as f:\n    f.write(b'0' * (64 << 20))", STDIO, {"output_limit"}),
    ("fill_tmp", "i = 0\nwhile True:\n    open('f%d' % i, 'wb').write(b'0' * (200 << 10))\n    i += 1",
     STDIO, {"output_limit"}),
    ("fd_exhaustion", "fs = [open('/dev/null') for _ in range(100000)]", STDIO, {"runtime_error"}),
    ("blocking_on_stdin", "import sys\nsys.stdin.read()\ninput()", STDIO, {"runtime_error"}),
    ("closed_stdout", "import os\nos.close(1)\nprint(3)", STDIO, {"wrong_answer", "runtime_error"}),
    ("deep_recursion", "import sys\nsys.setrecursionlimit(10**7)\ndef f(n):\n    return f(n + 1) + 1\nf(0)",
     STDIO, {"runtime_error", "memory_limit", "timeout"}),
    ("segfault_ctypes", "import ctypes\nctypes.string_at(0)", STDIO, {"runtime_error"}),
    ("kill_parent", "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n" + SUM_OK, STDIO,
     {"runtime_error"}),
    ("kill_init", "import os, signal\nos.kill(1, signal.SIGKILL)\n" + SUM_OK, STDIO, {"runtime_error"}),
    ("kill_everyone", "import os, signal\ntry:\n    os.kill(-1, signal.SIGKILL)\nexcept OSError:\n    pass\n"
     + SUM_OK, STDIO, {"passed"}),
    ("setuid_root", "import os\nos.setuid(0)", STDIO, {"runtime_error"}),
    ("spoofed_success_marker", "print('All tests passed')\nprint('PASSED')\nimport sys\nsys.exit(0)", STDIO,
     {"wrong_answer"}),
    ("exit_zero_before_output", "import os\nos._exit(0)", STDIO, {"wrong_answer"}),
    ("atexit_prints_answer", "import atexit\natexit.register(print, 3)", STDIO, {"wrong_answer"}),
    ("os_exit_in_function", "import os\ndef add(a, b):\n    os._exit(0)", CALL, {"wrong_answer"}),
    ("os_exit_at_import", "import os\nos._exit(0)", CALL, {"wrong_answer"}),
    ("sys_exit_in_function", "import sys\ndef add(a, b):\n    sys.exit(0)", CALL, {"wrong_answer"}),
    ("always_equal_object", "class Any:\n    def __eq__(self, o):\n        return True\n"
     "def add(a, b):\n    return Any()", CALL, {"wrong_answer"}),
    ("int_subclass_always_equal", "class I(int):\n    def __eq__(self, o):\n        return True\n"
     "    __hash__ = int.__hash__\ndef add(a, b):\n    return I(0)", CALL, {"wrong_answer"}),
    ("atexit_forges_result", FRAME + "import atexit, os\natexit.register(lambda: os.write(3, frame(b'"
     '{"value": 3}' "')))\ndef add(a, b):\n    return -1", CALL, {"wrong_answer"}),
    ("forged_frame_plus_harness_frame", FRAME + "import os\nos.write(3, frame(b'{\"value\": 3}'))\n"
     "def add(a, b):\n    return -1", CALL, {"wrong_answer"}),
    ("garbage_on_result_channel", "import os\nos.write(3, b'\\xff' * 100)\ndef add(a, b):\n    return a + b",
     CALL, {"wrong_answer"}),
    ("patched_serializer", "import sys, json\nmain = sys.modules['__main__']\n"
     "main._plain = lambda v, depth=0: 999\ndef add(a, b):\n    return None", CALL, {"wrong_answer"}),
]


@pytest.mark.parametrize("name,code,tests,expected", ATTACKS, ids=[a[0] for a in ATTACKS])
def test_attack(env, name, code, tests, expected):
    reward, pool, host = env
    if "fork" in code and "bomb" in name or name.startswith("memory_bomb_many"):
        assert pool.slots()[0].pids_limit_in_force(), "pids cgroup not in force: refusing to run a fork bomb"
    score, details = run(reward, code, tests)
    classes = {cls for cls, _ in details}
    assert classes <= expected, f"{name}: got {details}, expected {expected}"
    if "passed" not in expected:
        assert score == 0.0, f"{name} earned reward {score}: {details}"
    after_checks(reward, pool, host)


def test_patched_serializer_cannot_pass_every_case(env):
    """Replacing the in-sandbox serializer forges at most a claim; the host compares it to each hidden value."""
    reward, pool, host = env
    code = "import sys\nsys.modules['__main__']._plain = lambda v, depth=0: 3\ndef add(a, b):\n    return 0"
    score, details = run(reward, code, ADD_TESTS)
    assert score < 1.0, details


def test_fork_bomb(env):
    reward, pool, host = env
    slot = pool.slots()[0]
    if not slot.pids_limit_in_force():
        pytest.skip("PIDS CGROUP NOT IN FORCE: fork bomb NOT run (it could freeze the machine)")
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    score, details = run(reward, code, STDIO[:1])
    assert [c for c, _ in details] == ["timeout"], details
    assert score == 0.0
    after_checks(reward, pool, host)


def test_fork_bomb_with_setsid(env):
    reward, pool, host = env
    if not pool.slots()[0].pids_limit_in_force():
        pytest.skip("PIDS CGROUP NOT IN FORCE: fork bomb NOT run (it could freeze the machine)")
    code = ("import os, time\nwhile True:\n    try:\n        if os.fork() == 0:\n            os.setsid()\n"
            "    except OSError:\n        time.sleep(0.01)")
    score, details = run(reward, code, STDIO[:1])
    assert [c for c, _ in details] == ["timeout"], details
    after_checks(reward, pool, host)


def test_no_network(env):
    reward, pool, host = env
    code = ("import socket\nfor addr in [('127.0.0.1', %d), ('1.1.1.1', 53), ('10.0.0.1', 80)]:\n"
            "    try:\n        socket.create_connection(addr, timeout=0.3)\n        print('connected', addr)\n"
            "    except OSError:\n        pass\nprint(3)") % host.port
    score, details = run(reward, code, STDIO[:1])
    assert score == 1.0, details  # printed only "3": nothing connected
    after_checks(reward, pool, host)


def test_no_writes_outside_workdir(env):
    reward, pool, host = env
    targets = [host.file, host.dir + "/new", "/tmp/rk-evil-x", "/usr/rk-evil", "/opt/rewardkit/zygote.py",
               "/etc/passwd", "/root/rk-evil", "/dev/shm/rk-evil", "/proc/sys/kernel/hostname"]
    code = ("import os, shutil\nok = 0\nfor t in %r:\n    try:\n        open(t, 'w').write('pwned')\n"
            "        print('wrote', t)\n    except OSError:\n        ok += 1\n"
            "for t in %r:\n    try:\n        os.remove(t)\n        print('removed', t)\n    except OSError:\n"
            "        ok += 1\ntry:\n    shutil.rmtree('/opt/rewardkit')\n    print('rmtree')\nexcept OSError:\n"
            "    ok += 1\nprint(3 if ok == %d else ok)") % (targets, targets, 2 * len(targets) + 1)
    score, details = run(reward, code, STDIO[:1])
    assert score == 1.0, details
    after_checks(reward, pool, host)


def test_environment_and_host_proc_not_visible(env):
    reward, pool, host = env
    code = ("import os\nleak = []\nfor pid in os.listdir('/proc'):\n    if pid.isdigit():\n"
            "        for what in ('environ', 'cmdline'):\n            try:\n"
            "                leak.append(open('/proc/%s/%s' % (pid, what), 'rb').read())\n"
            "            except OSError:\n                pass\nleak.append(repr(dict(os.environ)).encode())\n"
            "pids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
            "blob = b' '.join(leak)\n"
            "print(3 if b'SECRET_HERE' not in blob and b'pytest' not in blob and len(pids) <= 3 else ('LEAK', pids))")
    code = code.replace("SECRET_HERE", SECRET)
    score, details = run(reward, code, STDIO[:1])
    assert score == 1.0, details
    after_checks(reward, pool, host)


def test_no_state_between_programs(env):
    """Files, SysV shared memory and processes of one program are gone for the next."""
    reward, pool, host = env
    first = ("import ctypes, os\nopen('left', 'w').write('x')\nlibc = ctypes.CDLL(None)\n"
             "shmid = libc.shmget(0x5eed, 4096, 0o1600)\nprint(3 if shmid >= 0 else 'noshm')")
    score, details = run(reward, first, STDIO[:1])
    assert score == 1.0, details
    second = ("import ctypes, os\nlibc = ctypes.CDLL(None)\nleft = os.listdir('.') + os.listdir('/tmp')\n"
              "shm = open('/proc/sysvipc/shm').read().splitlines()[1:]\n"
              "print(3 if left == ['w'] and not shm and libc.shmget(0x5eed, 0, 0) < 0 else (left, shm))")
    score, details = run(reward, second, STDIO[:1])
    assert score == 1.0, details
    after_checks(reward, pool, host)


def test_result_channel_not_a_success_signal(env):
    """A correct value forged by the program counts exactly as much as returning it: case by case."""
    reward, pool, host = env
    code = FRAME + "import os\nos.write(3, frame(b'{\"value\": 3}'))\nos._exit(0)"
    score, details = run(reward, code, ADD_TESTS)
    assert [c for c, _ in details] == ["passed", "wrong_answer", "wrong_answer"], details
    assert score == pytest.approx(1 / 3)
    after_checks(reward, pool, host)


def test_concurrent_attacks_do_not_cross(env):
    """Two slots at once: a timeout in one does not disturb the other."""
    reward, pool, host = env
    two = CodeTests(timeout=TIMEOUT, memory_mb=128, tmpfs_mb=16, max_processes=16, workers=2)
    results = {}

    def go(key, code):
        results[key] = two(prompts=[""], completions=[code], tests=[json.dumps(STDIO[:1])])[0]

    ts = [threading.Thread(target=go, args=("loop", "while True: pass")), threading.Thread(
        target=go, args=("ok", SUM_OK))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert results == {"loop": 0.0, "ok": 1.0}
    host.check()
