"""A cache of finished stages shared between runs: ``REWARDKIT_STAGE_CACHE=<dir>``.

Many runs start from the same warm start (a sweep of RL settings, the seeds of a benchmark, a test suite): the
SFT stage they share is trained once, stored, and copied into every later run's output directory, where it is
reused exactly as a stage a previous run of that recipe finished (``rewardkit run`` prints "from the stage
cache").

A stage is found only under a key made of what decides what it trains:

- the stage's fingerprint (``run_state.stage_config``: trainer, its arguments, rewards, model, data, seed, and
  the fingerprint of the stage before it, so a stage is cached only with the chain that produced it);
- rewardkit's own source (a hash of its ``.py`` files) and the versions of the libraries that train
  (torch, transformers, trl, peft, accelerate) and of every installed rewardkit plugin distribution;
- the machine's arithmetic: CPU model, torch's thread count and the CUDA device, since floating-point results
  differ between them (a cache copied to another machine misses rather than returns another machine's model).

What the key does not see: a local data file or model directory is named by its path, not its contents, and a
plugin by its version, not its source (an editable plugin edited in place keeps its version). Empty the cache
after changing either. A stage resumed from a checkpoint is stored like one trained in one go (on one machine a
resumed run reproduces an uninterrupted one bit for bit; tests/test_resume.py).

Runs on one machine may share the directory: a run about to train a cacheable stage holds that stage's lock
file, so another run that needs the same stage waits and then copies it instead of training it a second time.
Only single-process runs read or write the cache; ``--fresh`` runs write it but do not read it. Each key keeps an empty
``<key>.lock`` file beside its entry. ``checkpoint-*`` directories are not stored (a finished stage
never resumes). Entries are written to a temporary name and renamed, so a killed run leaves no half entry.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import warnings

from rewardkit import run_state as state

ENV = "REWARDKIT_STAGE_CACHE"
HEALTH_FILE = "health.json"  # the stored stage's monitor report (it lives in summary.json, not the stage dir)


def cache_dir() -> str | None:
    """The cache directory, or None when caching is off (unset, a multi-process run, or not POSIX)."""
    path = os.environ.get(ENV)
    if not path or int(os.environ.get("WORLD_SIZE", "1")) > 1 or os.name != "posix":
        return None
    return os.path.abspath(os.path.expanduser(path))


@functools.lru_cache(maxsize=1)
def _source_hash() -> str:
    root = os.path.dirname(os.path.abspath(__file__))
    h = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(folder, name)
            h.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()[:16]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        import platform  # noqa: PLC0415

        return platform.processor()


def environment() -> dict:
    """What besides the recipe decides a stage's result on this machine."""
    from importlib import metadata  # noqa: PLC0415

    import torch  # noqa: PLC0415

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    plugins = sorted({d.metadata["Name"]: d.version for d in metadata.distributions()
                      if any(ep.group.startswith("rewardkit") for ep in d.entry_points)}.items())
    return {"rewardkit_source": _source_hash(), "plugins": plugins,
            **{lib: version(lib) for lib in ("torch", "transformers", "trl", "peft", "accelerate")},
            "cpu": cpu_model(), "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def key(fingerprint: str) -> str:
    return state.fingerprint({"stage": fingerprint, "environment": environment()})


@contextlib.contextmanager
def claim(plan, root: str | None):
    """Hold the stage's lock (``<key>.lock``, released when the process ends, however it ends) while this run
    restores or trains it; no-op when caching is off."""
    if root is None:
        yield
        return
    import fcntl  # noqa: PLC0415 - POSIX; the cache is off where it is missing (cache_dir)

    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, f"{key(plan.fingerprint)}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def restore(plan, root: str) -> bool:
    """Copy the cached stage of ``plan`` into its (absent) stage directory; True if it was there. Paths in the
    copy's ``stage.json`` that pointed into the stored stage point into the copy; ``plan.state`` is re-read."""
    entry = os.path.join(root, key(plan.fingerprint))
    stored = state.read_json(os.path.join(entry, state.STAGE_FILE)) or {}
    if stored.get("status") != "done" or stored.get("fingerprint") != plan.fingerprint or os.path.lexists(plan.dir):
        return False
    tmp = f"{plan.dir}.tmp-{os.getpid()}"
    try:
        # a copy, not links: a stage trained again later rewrites its files in place
        shutil.copytree(entry, tmp, ignore=lambda folder, names: [HEALTH_FILE] if folder == entry else [])
        old_dir = stored.pop("stage_dir")
        stored = _moved(stored, old_dir, os.path.abspath(plan.dir))
        state.write_json(os.path.join(tmp, state.STAGE_FILE), stored)
        os.replace(tmp, plan.dir)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        warnings.warn(f"{ENV}: could not copy {entry} to {plan.dir} ({exc}); the stage is trained instead",
                      stacklevel=2)
        return False
    plan.state = stored
    return True


def _moved(value, old: str, new: str):
    """``value`` with every path string inside ``old`` rewritten to the same place inside ``new``."""
    if isinstance(value, dict):
        return {k: _moved(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_moved(v, old, new) for v in value]
    if isinstance(value, str) and (value == old or value.startswith(old + os.sep)):
        return new + value[len(old):]
    return value


def health(plan, root: str) -> dict | None:
    return state.read_json(os.path.join(root, key(plan.fingerprint), HEALTH_FILE))


def store(plan, root: str, health_report: dict | None) -> None:
    """Store a stage this run finished (without its checkpoints). An entry already there is kept. A failure to
    store (a full disk) is a warning: the stage itself is finished and stays in the run's output directory."""
    entry = os.path.join(root, key(plan.fingerprint))
    if os.path.exists(entry):
        return
    tmp = f"{entry}.tmp-{os.getpid()}"
    try:
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(plan.dir, tmp, ignore=lambda folder, names: [n for n in names if n.startswith("checkpoint-")])
        stored = state.read_json(os.path.join(tmp, state.STAGE_FILE))
        state.write_json(os.path.join(tmp, state.STAGE_FILE), {**stored, "stage_dir": os.path.abspath(plan.dir)})
        if health_report is not None:
            with open(os.path.join(tmp, HEALTH_FILE), "w") as f:
                json.dump(health_report, f)
        os.replace(tmp, entry)
    except OSError as exc:  # another run stored it meanwhile (the rename fails on a non-empty entry), or a disk
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.exists(entry):
            warnings.warn(f"{ENV}: could not store stage '{plan.spec.name}' in {root} ({exc})", stacklevel=2)
