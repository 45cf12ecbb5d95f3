"""Every file a user can point ``rewardkit validate/run`` at is one RecipeError naming it, never a traceback."""

from __future__ import annotations

import os
import time

import pytest

from rewardkit import RecipeError
from rewardkit.recipe import load_recipe
from rewardkit.recipe_file import MAX_BYTES, load_yaml, parse_yaml

GOOD = b"""model: {name: tiny-llama}
data: {name: arithmetic, params: {n_train: 100, n_test: 10}}
trainer: {type: sft, max_steps: 2}
"""


def _error(path) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe(str(path))
    message = str(info.value)
    assert str(path) in message, message
    return message


def _file(tmp_path, data: bytes, name="r.yaml"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("data, expected", [
    (b"\x80\x81 not utf-8\n", "not UTF-8 text: byte 0x80 at line 1"),
    (b"model: {name: tiny-llama}\n\xc3(\n", "not UTF-8 text: byte 0xc3 at line 2"),
    ("model: {name: tiny-llama}\n".encode("utf-16"), "UTF-16 text (it starts with a byte-order mark)"),
    ("model: {name: tiny-llama}\n".encode("utf-32"), "UTF-32 text"),
    (b"model: {name: tiny-llama}\x00\n", "contains a NUL byte at line 1"),
    (b"seed: 1\nseed: 2\n", "duplicate key 'seed' (first given on line 1)"),
    (b"model: {name: a, name: b}\n", "duplicate key 'name'"),
    (b"seed: !!python/object/apply:os.system [echo pwned]\n", "tag !!python/object/apply:os.system is not allowed"),
    (b"seed: !!binary aGVsbG8=\n", "tag !!binary is not allowed"),
    (b"seed: !!set {a, b}\n", "tag !!set is not allowed"),
    (b"seed: !custom 3\n", "tag !custom is not allowed"),
    (b"a: &x [*x]\n", "alias *x refers to a node that contains it"),
    (b"a: " + b"[" * 10_000 + b"]" * 10_000 + b"\n", "nested more than 50 levels deep"),
    (b"a:\n" + b"".join(b"  " * i + b"k:\n" for i in range(1, 200)), "nested more than 50 levels deep"),
    (b"seed: " + b"9" * 5000 + b"\n", "cannot read integer"),
    (b"- just\n- a list\n", "a recipe must be a mapping"),
])
def test_malformed_files_are_one_clear_error(tmp_path, data, expected):
    message = _error(_file(tmp_path, data))
    assert expected in message, message


def test_alias_bomb_is_refused_in_bounded_time(tmp_path):
    lines = [b"a: &a [x, x, x, x, x, x, x, x, x]"]
    for prev, cur in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{cur}: &{cur} [{', '.join(['*' + prev] * 9)}]".encode())  # 9**9 leaves once expanded
    start = time.perf_counter()
    message = _error(_file(tmp_path, b"\n".join(lines) + b"\n"))
    assert "more than 100000 values once aliases are expanded" in message
    assert time.perf_counter() - start < 10


def test_small_anchors_and_merge_keys_still_work(tmp_path):
    path = _file(tmp_path, b"""base: &base {type: sft, max_steps: 2}
model: {name: tiny-llama}
data: {name: arithmetic, params: {n_train: 100, n_test: 10}}
trainer: {<<: *base, max_steps: 3}
""")
    raw = load_yaml(str(path))
    assert raw["trainer"] == {"type": "sft", "max_steps": 3}


def test_dates_stay_strings_and_yaml_1_2_floats():
    assert parse_yaml("d: 2024-01-01\nlr: 1e-5\n") == {"d": "2024-01-01", "lr": 1e-5}


def test_utf8_bom_is_accepted(tmp_path, builtin_registry):
    recipe = load_recipe(str(_file(tmp_path, b"\xef\xbb\xbf" + GOOD)))
    assert recipe.stages[0].trainer_type == "sft"


def test_oversized_file_is_refused_before_reading(tmp_path):
    path = tmp_path / "big.yaml"
    with open(path, "wb") as f:  # 100 MB, sparse: refused from its size alone
        f.truncate(100 * 1024 * 1024)
    message = _error(path)
    assert f"is {100 * 1024 * 1024} bytes; a recipe is at most {MAX_BYTES} bytes" in message


def test_directory_fifo_and_device_are_refused_without_blocking(tmp_path):
    assert "is a directory, not a recipe file" in _error(tmp_path)
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)  # nobody writes to it: opening it for reading would block forever
    start = time.perf_counter()
    assert "is a named pipe (FIFO), not a recipe file" in _error(fifo)
    assert time.perf_counter() - start < 5
    assert "is a character device" in _error("/dev/null")


def test_missing_and_unreadable(tmp_path):
    assert "recipe file not found" in _error(tmp_path / "nope.yaml")
    assert "recipe file not found" in _error(_file(tmp_path, GOOD) / "below-a-file.yaml")
    if os.geteuid() != 0:  # root reads anything
        path = _file(tmp_path, GOOD, "locked.yaml")
        path.chmod(0)
        assert "cannot read: Permission denied" in _error(path)


def test_wrongly_shaped_sections_are_errors_not_crashes(tmp_path):
    """Found by the fuzz test: each of these raised AttributeError/TypeError inside normalize/validate."""
    cases = {
        "stages: {sft: {trainer: '{x}'}}\n": "stages.sft.trainer: expected a mapping, got str",
        "stages: {sft: {trainer: {type: sft}, model: .nan}}\n": "stages.sft.model: expected a mapping, got float nan",
        "stages: {sft: {trainer: {type: {a: 1}}}}\n": "stages.sft.trainer.type: expected a trainer name",
        "trainer: {type: sft}\neval: 9999\n": "recipe.eval: expected a mapping, got int 9999",
        "trainer: {type: sft}\neval: {reward: {name: [1]}}\n": "eval.reward.name: expected a string, got list",
        "trainer: {type: sft}\neval: {reward: {name: exact_match, params: .inf}}\n": "eval.reward.params: expected",
        "trainer: {type: sft}\ndata: {path: [a], rename: {a: [b]}}\n": "data.path: expected a string, got list",
    }
    for body, expected in cases.items():
        path = _file(tmp_path, b"model: {name: tiny-llama}\ndata: {name: arithmetic}\n" + body.encode()
                     if "data:" not in body else b"model: {name: tiny-llama}\n" + body.encode())
        message = _error(path)
        assert expected in message, (body, message)


@pytest.mark.parametrize("name, make, expected", [
    ("fifo.jsonl", os.mkfifo, "is a named pipe (FIFO), not a data file"),
    ("dir.jsonl", os.mkdir, "is a directory, not a data file"),
    ("bytes.jsonl", lambda p: open(p, "wb").write(b"\xff\xfe\x80{}\n"), "codec can't decode byte 0xff"),
    ("nul.csv", lambda p: open(p, "wb").write(b"prompt,completion\n" + b"a\x00b,c\n" * 3), None),
    ("junk.parquet", lambda p: open(p, "wb").write(b"not parquet at all"), "Parquet magic bytes not found"),
])
def test_data_files_that_cannot_be_read_are_errors(tmp_path, builtin_registry, name, make, expected):
    make(str(tmp_path / name))
    path = _file(tmp_path, f"model: {{name: tiny-llama}}\ndata: {{path: {name}}}\ntrainer: {{type: sft}}\n".encode())
    if expected is None:  # a header is all validation reads: fine
        load_recipe(str(path))
        return
    message = _error(path)  # the FIFO: returns at once (opening it would wait for a writer forever)
    assert "data.path: " in message and expected in message, message
