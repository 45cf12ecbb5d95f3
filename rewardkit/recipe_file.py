"""Reading a recipe file: whatever the path points at, the result is a mapping or one :class:`RecipeError`.

Bounded in time and memory before anything is parsed: the path is checked with ``os.stat`` (a FIFO is never
opened, so nothing blocks; directories and devices are refused), the size is capped before reading, and the
bytes must be UTF-8 text without NUL bytes. The YAML is read by a safe loader that also refuses:

- nesting deeper than ``MAX_DEPTH`` (PyYAML's composer is recursive and would hit Python's recursion limit);
- more than ``MAX_NODES`` nodes counted *after* alias expansion (a billion-laughs anchor bomb), and an alias
  inside the node it names (a self-referencing structure);
- a key given twice in one mapping (YAML says keys are unique; PyYAML silently keeps the last one);
- every tag except plain null/bool/int/float/str/list/mapping (and the ``<<`` merge key): no binary, set,
  timestamp or custom/python tags. Dates stay strings.

Recipes have no include mechanism, so there is no include cycle to guard against.
"""

from __future__ import annotations

import copy
import io
import os
import re
import stat

import yaml
from yaml.composer import Composer, ComposerError
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.resolver import Resolver

try:  # libyaml scans and parses in C, several times faster; composing stays in Python (the limits live there)
    from yaml._yaml import CParser as _CParser
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    _CParser = None

from rewardkit.errors import RecipeError

MAX_BYTES = 1 << 20  # 1 MiB; the bundled recipes are 1-3 kB each
MAX_DEPTH = 50  # the bundled recipes nest 5 levels deep
MAX_NODES = 100_000  # YAML nodes after expanding aliases
_TAG = "tag:yaml.org,2002:"
ALLOWED_TAGS = {_TAG + t for t in ("null", "bool", "int", "float", "str", "seq", "map", "merge")}
_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe", "UTF-16"),
         (b"\xfe\xff", "UTF-16"))


_BASES = (Composer, _CParser, SafeConstructor, Resolver) if _CParser else (yaml.SafeLoader,)


class Loader(*_BASES):
    """A safe loader with YAML 1.2 floats (PyYAML's YAML 1.1 reads ``1e-5`` as a string), no timestamps, and
    the limits above. Python's ``Composer`` comes first, so composing (and so every limit) runs here."""

    def __init__(self, stream):
        if _CParser:
            _CParser.__init__(self, stream)
            Composer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)
        else:
            yaml.SafeLoader.__init__(self, stream)
        self._depth = 0
        self._nodes = 0
        self._sizes: dict[int, int] = {}  # id(node) -> nodes it expands to; absent while being composed

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = self.anchors.get(event.anchor)
            if node is not None:
                if id(node) not in self._sizes:
                    raise ComposerError(None, None, f"alias *{event.anchor} refers to a node that contains it",
                                        event.start_mark)
                self._count(self._sizes[id(node)], event.start_mark)
            return super().compose_node(parent, index)
        mark = self.peek_event().start_mark
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep", mark)
        before = self._nodes
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if node.tag not in ALLOWED_TAGS:
            raise ComposerError(None, None, f"tag {node.tag.replace(_TAG, '!!')} is not allowed in a recipe "
                                            "(only plain scalars, lists and mappings)", node.start_mark)
        self._count(1, mark)
        self._sizes[id(node)] = self._nodes - before
        return node

    def _count(self, n: int, mark) -> None:
        self._nodes += n
        if self._nodes > MAX_NODES:
            raise ComposerError(None, None, f"more than {MAX_NODES} values once aliases are expanded", mark)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == _TAG + "merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:
                    continue  # unhashable: PyYAML reports it below
                if first is not key_node:
                    raise ConstructorError("while reading a mapping", node.start_mark,
                                           f"duplicate key {key!r} (first given on line {first.start_mark.line + 1})",
                                           key_node.start_mark)
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node):
        try:
            return super().construct_yaml_int(node)
        except ValueError as exc:  # e.g. more digits than Python converts (sys.get_int_max_str_digits)
            raise ConstructorError(None, None, f"cannot read integer: {exc}", node.start_mark) from None


Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != _TAG + "timestamp"]
    for ch, resolvers in Resolver.yaml_implicit_resolvers.items()}
Loader.add_implicit_resolver(
    _TAG + "float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                               |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                               |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                               |[-+]?\.(?:inf|Inf|INF)
                               |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))
Loader.add_constructor(_TAG + "int", Loader.construct_yaml_int)


def parse_yaml(text: str, name: str | None = None):
    """Parse YAML text with :class:`Loader`; errors are ``yaml.YAMLError`` (their marks say ``name``)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a command-line value holding undecodable bytes (lone surrogates)
        raise yaml.YAMLError(f"not UTF-8 text: {exc}") from None
    stream = io.StringIO(text)
    stream.name = name or "<text>"
    loader = Loader(stream)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _file_kind(mode: int) -> str | None:
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return None if stat.S_ISREG(mode) else "not a regular file"


def not_a_file(path: str) -> str | None:
    """Why ``path`` cannot be read as a data file without blocking ("is a named pipe (FIFO)", ...), or None."""
    try:
        kind = _file_kind(os.stat(path).st_mode)
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror}"
    return f"{path} is {kind}, not a data file" if kind else None


def read_bytes(path: str) -> bytes:
    """The file's bytes, after checking it is a regular file of at most ``MAX_BYTES`` (never blocks)."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise RecipeError(f"recipe file not found: {path}") from None
    except (OSError, ValueError) as exc:  # permission, name too long, symlink loop, NUL in the path
        raise RecipeError(f"cannot read: {getattr(exc, 'strerror', None) or exc}", source=path) from None
    kind = _file_kind(st.st_mode)
    if kind:
        raise RecipeError(f"is {kind}, not a recipe file", source=path)
    if st.st_size > MAX_BYTES:
        raise RecipeError(f"is {st.st_size} bytes; a recipe is at most {MAX_BYTES} bytes", source=path)
    try:  # O_NONBLOCK: should the path become a FIFO after the stat, opening it still does not wait
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise RecipeError(f"cannot read: {exc.strerror}", source=path) from None
    with os.fdopen(fd, "rb") as f:
        kind = _file_kind(os.fstat(fd).st_mode)
        if kind:
            raise RecipeError(f"is {kind}, not a recipe file", source=path)
        data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise RecipeError(f"is over {MAX_BYTES} bytes; a recipe is at most {MAX_BYTES} bytes", source=path)
    return data


def decode(data: bytes, path: str) -> str:
    """UTF-8 text (a UTF-8 byte-order mark is dropped); anything else is a RecipeError naming the offset."""
    for bom, name in _BOMS:
        if data.startswith(bom):
            raise RecipeError(f"is {name} text (it starts with a byte-order mark); save it as UTF-8", source=path)
    nul = data.find(b"\0")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise RecipeError(f"contains a NUL byte at line {line} (byte {nul}): a binary file, not YAML text",
                          source=path)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise RecipeError(f"is not UTF-8 text: byte 0x{data[exc.start]:02x} at line {line} (byte {exc.start})",
                          source=path) from None


def load_yaml(path: str) -> dict:
    """Read ``path`` as a recipe mapping, or raise one RecipeError naming the file and the problem."""
    text = decode(read_bytes(path), path)
    try:
        data = parse_yaml(text, path)
    except yaml.YAMLError as exc:
        raise RecipeError(f"not valid YAML: {exc}", source=path) from None
    if not isinstance(data, dict):
        raise RecipeError("a recipe must be a mapping of keys (model, data, stages, ...)", source=path)
    return data


def apply_overrides(raw: dict, overrides: list[str], source: str | None = None) -> dict:
    """Apply ``a.b.c=value`` (value parsed as YAML) and ``~a.b`` (delete) to a copy of ``raw``."""
    data = copy.deepcopy(raw)
    problems = []
    for item in overrides:
        delete = item.startswith("~")
        key, sep, value = item.lstrip("~").partition("=")
        if not key or (not delete and not sep) or (delete and sep):
            problems.append(f"override {item!r}: expected key.path=value or ~key.path")
            continue
        parts = key.split(".")
        node = data
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part) if isinstance(node, dict) else None
            if nxt is None and not delete:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                problems.append(f"override {item!r}: '{'.'.join(parts[:i + 1])}' is not a section")
                break
            node = nxt
        else:
            if delete:
                if parts[-1] not in node:
                    problems.append(f"override {item!r}: '{key}' is not in the recipe")
                else:
                    del node[parts[-1]]
            else:
                try:
                    node[parts[-1]] = parse_yaml(value) if value != "" else ""
                except yaml.YAMLError:
                    node[parts[-1]] = value
    if problems:
        raise RecipeError(problems, source=source)
    return data
