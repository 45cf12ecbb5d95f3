"""Fuzzing ``rewardkit validate``: random bytes, mutated bundled recipes and random overrides.

The contract under test is the CLI's: every input ends with exit code 0 (valid) or 2 (one message naming the
file), never a traceback. Cases run in-process through ``load_recipe``, the function ``validate`` calls, and
catch what the CLI catches (a subprocess per case would cost a second each);
``test_cli_contract_in_a_subprocess`` checks the same contract end to end for a few hostile files. Seeded: a
failure names the case so it can be replayed.
"""

from __future__ import annotations

import glob
import os
import random
import subprocess
import sys
import time

import pytest
import yaml

from rewardkit.cli import EXIT_USER_ERROR
from rewardkit.errors import RewardkitError
from rewardkit.recipe import load_recipe

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = sorted(glob.glob(os.path.join(REPO, "recipes", "**", "*.yaml"), recursive=True))
SEED = 16
N_RANDOM, N_BYTE_MUTATIONS, N_VALUE_MUTATIONS = 2000, 6000, 2000
TOKENS = [b": ", b"- ", b"[", b"]", b"{", b"}", b", ", b"&a ", b"*a", b"<<: *a", b"!!python/object/apply:os.system",
          b"!!set ", b"!!binary ", b"!!timestamp ", b"!foo ", b"\t", b"~", b"null", b".nan", b".inf", b"-.inf",
          b"1e999", b'"', b"'", b"\x00", b"\xff\xfe", b"\xc3(", b"\n  ", b"\n", b"#", b"? ", b"|", b">",
          b"%YAML 1.2\n---\n", b"---\n", b"...\n", b"9" * 5000, b"0x1F", b"1:30", b"true", b"yes", b"2024-01-01",
          b"-1", b"0", b"1e-300", b"\xef\xbb\xbf", "\u00e9\u2212".encode(), b"\\u0000", b"@", b"`", b"{output_dir}"]
VALUES = ["abc", "'1e-5'", ".nan", ".inf", "-.inf", "-1", "0", "1", "2.5", "1e999", "true", "null", "[]", "[1, a]",
          "{}", "{a: 1}", "9" * 30, "'{x}'", "no", "steps", "epoch", "-0.0", "1e-300", "[[[[1]]]]"]


def _run(path: str, overrides: list[str]) -> tuple[int, str]:
    """What ``rewardkit validate PATH OVERRIDES...`` does, less argument parsing (3 ms a case)."""
    try:
        load_recipe(path, overrides)
    except RewardkitError as exc:
        return EXIT_USER_ERROR, f"rewardkit: error: {exc}"
    return 0, ""


def _mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    for _ in range(rng.randint(1, 3)):
        n = len(data)
        i, j = sorted((rng.randrange(n + 1), rng.randrange(n + 1)))
        op = rng.randrange(7)
        if op == 0 and n:
            data = data[:i] + bytes([rng.randrange(256)]) + data[i + 1:]
        elif op == 1:
            data = data[:i] + data[j:]
        elif op == 2:
            data = data[:j] + data[i:j] + data[j:]
        elif op == 3:
            data = data[:i] + rng.choice(TOKENS) + data[i:]
        elif op == 4:
            lines = data.split(b"\n")
            a, b = rng.randrange(len(lines)), rng.randrange(len(lines))
            lines[a], lines[b] = lines[b], lines[a]
            data = b"\n".join(lines)
        elif op == 5:
            data = data[:i]
        else:
            lines = data.split(b"\n")
            k = rng.randrange(len(lines))
            lines[k] = b"  " + lines[k] if rng.random() < 0.5 else lines[k].lstrip()
            data = b"\n".join(lines)
    return data


def _key_paths(node, prefix=()):
    if isinstance(node, dict):
        for k, v in node.items():
            if isinstance(k, str) and "." not in k and "=" not in k:
                yield (*prefix, k)
                yield from _key_paths(v, (*prefix, k))


def _random_bytes(rng: random.Random) -> bytes:
    n = rng.choice((0, 1, 5, 50, 500, 3000))
    if rng.random() < 0.5:
        return bytes(rng.randrange(256) for _ in range(n))
    alphabet = b"abcz019 :-[]{},&*!|>'\"#?\n\t.~%@"
    return bytes(rng.choice(alphabet) for _ in range(n))


def _cases(rng: random.Random, sources: dict[str, bytes]):
    """Yield (label, recipe name, bytes, overrides)."""
    names = sorted(sources)
    for k in range(N_RANDOM):
        yield f"random#{k}", "random.yaml", _random_bytes(rng), []
    for k in range(N_BYTE_MUTATIONS):
        name = names[k % len(names)]
        yield f"bytes#{k}:{name}", name, _mutate_bytes(rng, sources[name]), []
    parsed = {n: yaml.safe_load(sources[n]) for n in names}
    for k in range(N_VALUE_MUTATIONS):
        name = names[k % len(names)]
        paths = list(_key_paths(parsed[name]))
        overrides = [f"{'.'.join(rng.choice(paths))}={rng.choice(VALUES)}" for _ in range(rng.randint(1, 2))]
        if rng.random() < 0.1:
            overrides.append(f"~{'.'.join(rng.choice(paths))}")
        yield f"override#{k}:{name} {overrides}", name, sources[name], overrides


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A tree that mirrors the repo's, so a recipe's relative data paths still resolve."""
    root = tmp_path_factory.mktemp("fuzz")
    os.symlink(os.path.join(REPO, "plugins"), root / "plugins")
    return root


def test_fuzz_validate_never_tracebacks(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    rng = random.Random(SEED)
    sources = {os.path.relpath(p, REPO): open(p, "rb").read() for p in RECIPES}
    assert len(sources) >= 10, sorted(sources)
    for path in RECIPES:  # imports TRL & co. once, so the timings below are per case
        load_recipe(path)
    failures, codes, slowest = [], {0: 0, 2: 0}, (0.0, "")
    n = 0
    for label, name, data, overrides in _cases(rng, sources):
        path = workdir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        start = time.perf_counter()
        try:
            rc, err = _run(str(path), overrides)
        except BaseException as exc:  # noqa: BLE001 - a traceback is exactly what this test looks for
            failures.append(f"{label}: {type(exc).__name__}: {exc!s:.300}")
            continue
        finally:
            n += 1
            slowest = max(slowest, (time.perf_counter() - start, label))
        if rc not in codes:
            failures.append(f"{label}: exit code {rc}")
        elif rc == 2 and (str(path) not in err or not err.startswith("rewardkit: error: ")):
            failures.append(f"{label}: message does not name the file: {err!r:.300}")
        else:
            codes[rc] += 1
    assert n >= 10_000
    assert not failures, f"{len(failures)} of {n} cases broke the contract; first ones:\n" + "\n".join(failures[:10])
    # The mutations must reach deep validation, not only break the YAML: some still validate
    assert codes[0] >= 100, codes
    assert slowest[0] < 10, f"slowest case {slowest[1]} took {slowest[0]:.1f} s"


HOSTILE = {
    "random": bytes(random.Random(1).randrange(256) for _ in range(4096)),
    "utf16": "model: {name: tiny-llama}\n".encode("utf-16"),
    "nul": b"model: {name: tiny-llama}\x00\n",
    "deep": b"a: " + b"[" * 100_000 + b"]" * 100_000 + b"\n",
    "bomb": b"a: &a [x, x, x, x, x, x, x, x, x]\n" + b"".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n".encode() for p, c in zip("abcdefgh", "bcdefghi")),
    "dup": b"seed: 1\nseed: 2\n",
    "tag": b"seed: !!python/object/apply:os.system [echo pwned]\n",
}


def _make(tmp_path, kind: str) -> str:
    path = tmp_path / f"{kind}.yaml"
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)  # no writer: opening it for reading would block forever
    elif kind == "100mb":
        with open(path, "wb") as f:
            f.truncate(100 * 1024 * 1024)
    elif kind == "device":
        return "/dev/zero"  # reading it never ends
    else:
        path.write_bytes(HOSTILE[kind])
    return str(path)


@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize("kind", [*sorted(HOSTILE), "directory", "fifo", "100mb", "device"])
def test_cli_contract_in_a_subprocess(tmp_path, kind, command):
    path = _make(tmp_path, kind)
    proc = subprocess.run([sys.executable, "-m", "rewardkit.cli", command, path], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"rewardkit: error: {path}: ") and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") <= 8, proc.stderr  # one message (a YAML error quotes its line and a caret)
