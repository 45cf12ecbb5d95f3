"""Dataset loading for recipes: registered datasets, local files, hub datasets; then column shaping."""

from __future__ import annotations

import csv
import json
import os

from rewardkit.errors import RecipeError

FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def file_columns(path: str) -> list[str]:
    """Column names of a local data file, read cheaply (first record / header / schema)."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise ValueError(f"unsupported file type '{ext}' ({path}); use {', '.join(FORMATS)}")
    if ext == ".jsonl":
        with open(path) as f:
            for line_no, line in enumerate(f, 1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise ValueError(f"{path}:{line_no}: not valid JSON: {exc}") from None
                    if not isinstance(row, dict):
                        raise ValueError(f"{path}:{line_no}: each line must be a JSON object")
                    return list(row)
        raise ValueError(f"{path} is empty")
    if ext == ".json":
        with open(path) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: not valid JSON: {exc}") from None
        if isinstance(data, list) and data and isinstance(data[0], dict):
            return list(data[0])
        if isinstance(data, dict):
            return list(data)
        raise ValueError(f"{path}: expected a list of objects or a dict of columns")
    if ext == ".csv":
        with open(path, newline="") as f:
            return next(csv.reader(f), [])
    import pyarrow.parquet as pq  # noqa: PLC0415

    return list(pq.read_schema(path).names)


def splits(data: dict, registry) -> list[str] | None:
    """The splits :func:`load_data` returns for a data section, known without loading anything; None when a
    registered dataset does not say (its loader has no ``splits(**params) -> list[str]`` attribute)."""
    if data.get("name"):
        try:
            declared = getattr(registry.load("datasets", data["name"]), "splits", None)
            found = list(declared(**(data.get("params") or {}))) if callable(declared) else None
        except Exception:  # noqa: BLE001 - a bad name or params is reported by validation; unknown here
            return None
    elif data.get("path"):
        found = ["train"] + (["test"] if data.get("test_path") else [])
    elif data.get("hub"):
        found = ["train"] + (["test"] if data.get("test_split") else [])
    else:
        return None
    if found is not None and "test" not in found and data.get("test_size"):
        found = ["train", "test"]  # load_data keeps only the two halves of train
    return found


def missing_split(data: dict, split: str, where: str, registry) -> str | None:
    """Why ``split`` is not among the splits ``data`` loads, or None (also when they are not known)."""
    found = splits(data, registry)
    return None if found is None else split_problem(found, split, where)


def split_problem(found, split: str, where: str) -> str | None:
    """Why ``split`` is not among the splits ``found`` (a DatasetDict or names), or None."""
    if split in found:
        return None
    hint = {"validation": "; add data.params.n_val (built-in arithmetic)",
            "test": "; add data.test_size or data.test_path"}.get(split, "")
    return f"{where}: the dataset has no '{split}' split (it has {', '.join(found)}){hint}"


def _load_file(path: str, where: str):
    from datasets import load_dataset  # noqa: PLC0415

    try:
        return load_dataset(FORMATS[os.path.splitext(path)[1].lower()], data_files=path, split="train")
    except Exception as exc:  # noqa: BLE001 - report which file broke
        raise RecipeError(f"{where}: could not read {path}: {type(exc).__name__}: {exc}") from None


def load_data(recipe, data: dict, registry, where: str = "data"):
    """Return a ``DatasetDict`` with ``train`` (and ``test`` when one is defined), shaped per the recipe."""
    from datasets import DatasetDict, load_dataset  # noqa: PLC0415

    if data.get("name"):
        loader = registry.load("datasets", data["name"])
        try:
            dd = loader(**(data.get("params") or {}))
        except (ValueError, TypeError) as exc:
            raise RecipeError(f"{where}.params: dataset '{data['name']}': {exc}") from None
        dd = DatasetDict(dict(dd))
    elif data.get("path"):
        dd = DatasetDict(train=_load_file(recipe.resolve_path(data["path"]), f"{where}.path"))
        if data.get("test_path"):
            dd["test"] = _load_file(recipe.resolve_path(data["test_path"]), f"{where}.test_path")
    else:
        kwargs = {"name": data["config"]} if data.get("config") else {}
        dd = DatasetDict(train=load_dataset(data["hub"], split=data.get("split", "train"), **kwargs))
        if data.get("test_split"):
            dd["test"] = load_dataset(data["hub"], split=data["test_split"], **kwargs)
    if "test" not in dd and data.get("test_size"):
        size = data["test_size"]
        split = dd["train"].train_test_split(test_size=size, seed=recipe.seed, shuffle=True)
        dd = DatasetDict(train=split["train"], test=split["test"])
    if data.get("limit"):
        dd["train"] = dd["train"].select(range(min(data["limit"], len(dd["train"]))))
    return DatasetDict({k: shape(v, data, where) for k, v in dd.items()})


def shape(ds, data: dict, where: str = "data"):
    """Apply rename, prompt/completion templates and chat formatting to one split."""
    if data.get("rename"):
        ds = ds.rename_columns(dict(data["rename"]))
    p_tmpl, c_tmpl = data.get("prompt_template"), data.get("completion_template")
    chat, system = data.get("chat", False), data.get("system_prompt")

    def fmt(row):
        out = {}
        try:
            if p_tmpl is not None:
                out["prompt"] = p_tmpl.format(**row)
            if c_tmpl is not None:
                out["completion"] = c_tmpl.format(**row)
        except (KeyError, IndexError) as exc:
            raise RecipeError(f"{where}: template field {exc} is not a column") from None
        if chat:
            prompt = out.get("prompt", row.get("prompt"))
            if isinstance(prompt, str):
                msgs = ([{"role": "system", "content": system}] if system else []) + \
                       [{"role": "user", "content": prompt}]
                out["prompt"] = msgs
            completion = out.get("completion", row.get("completion"))
            if isinstance(completion, str):
                out["completion"] = [{"role": "assistant", "content": completion}]
        return out

    if p_tmpl is not None or c_tmpl is not None or chat:
        ds = ds.map(fmt, desc="formatting")
    return ds
