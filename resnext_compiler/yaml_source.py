"""Read YAML into plain Python data while remembering where every value came from.

PyYAML's composer keeps a mark (line, column) on each node; we walk the node tree once and
record a `Location` for every field path, so any later error (schema, lowering, shapes) can
point at the spec line that caused it.

Every cost is bounded before the work: a spec file is a regular file of at most
`MAX_SPEC_BYTES`, checked before it is read (so `/dev/zero` or a FIFO is refused, not read
forever); the composer refuses nesting deeper than `MAX_DEPTH` (PyYAML composes recursively)
and the conversion refuses more than `MAX_NODES` nodes counting every alias expansion (a
"billion laughs" document is refused after `MAX_NODES` steps, not expanded). The source map
is built in one pass, linear in the document's size.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from resnext_compiler.errors import Diagnostic, Location, SpecError, format_field_path
from resnext_compiler.named_files import SPEC, FileKind, NamedFileError, read_named_bytes

FieldPath = tuple[str | int, ...]

MAX_SPEC_BYTES = SPEC.max_bytes  # 64 explicit stages need 6 KB
MAX_DEPTH = 64  # nesting of mappings and sequences; a spec needs 4
MAX_NODES = 20_000  # YAML nodes after alias expansion (64 stages with every field: ~2,000)


class _TooDeep(Exception):
    def __init__(self, mark: yaml.Mark | None):
        self.mark = mark


class _TooLarge(Exception):
    def __init__(self, mark: yaml.Mark | None):
        self.mark = mark


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-4` as a float (YAML 1.2 style; PyYAML wants `1.0e-4`)
    and refuses documents nested deeper than `MAX_DEPTH` while composing them."""

    _depth = 0

    def compose_node(self, parent, index):  # noqa: ANN001, ANN201 - PyYAML's signature
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _TooDeep(self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


@dataclass
class SourceMap:
    """Field path -> location, for one spec and everything it extends."""

    locations: dict[FieldPath, Location] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    def locate(self, path: FieldPath) -> Location | None:
        """The location of `path`, or of its nearest ancestor that has one."""
        for end in range(len(path), -1, -1):
            loc = self.locations.get(tuple(path[:end]))
            if loc is not None:
                return loc
        return None

    def drop_under(self, path: FieldPath) -> None:
        """Forget the locations strictly below `path` (O(size of the map); use sparingly)."""
        self.replace_under({path}, None)

    def replace_under(self, paths: set[FieldPath], other: SourceMap | None) -> None:
        """For every path in `paths`: forget what lies below it here, then take `other`'s
        locations at and below it. One pass over each map, whatever the number of paths."""
        if not paths:
            return
        depths = sorted({len(p) for p in paths})

        def covered(key: FieldPath, strict: bool) -> bool:
            return any(key[:n] in paths for n in depths if n < len(key) or (not strict
                                                                             and n == len(key)))

        self.locations = {k: v for k, v in self.locations.items() if not covered(k, True)}
        if other is not None:
            self.locations.update(
                (k, v) for k, v in other.locations.items() if covered(k, False))


def _mark(filename: str, mark: yaml.Mark | None) -> Location | None:
    if mark is None:
        return None
    return Location(filename, mark.line + 1, mark.column + 1)


def read_yaml(text: str, filename: str) -> tuple[Any, SourceMap]:
    """Parse one YAML document into plain data plus a source map; raise SpecError if invalid."""
    if len(text) > MAX_SPEC_BYTES:
        raise SpecError([Diagnostic(f"spec is {len(text)} characters, more than the "
                                    f"{MAX_SPEC_BYTES}-byte limit", "", Location(filename, 1, 1))])
    _check_flow_depth(text, filename)
    loader = None
    try:
        loader = _Loader(text)  # the reader checks every character here
        root = loader.get_single_node()
    except _TooDeep as exc:
        raise SpecError([Diagnostic(f"nested more than {MAX_DEPTH} levels deep", "",
                                    _mark(filename, exc.mark))]) from None
    except yaml.reader.ReaderError as exc:
        raise SpecError([Diagnostic(f"YAML error: character {_char(exc.character)} is not "
                                    f"allowed ({exc.reason})", "",
                                    _position(text, filename, exc.position))]) from None
    except RecursionError:
        raise SpecError([Diagnostic(f"nested more than {MAX_DEPTH} levels deep", "",
                                    Location(filename, 1, 1))]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        raise SpecError(
            [Diagnostic(f"YAML syntax error: {problem}", "", _mark(filename, mark))]
        ) from None
    except yaml.YAMLError as exc:
        raise SpecError([Diagnostic(f"YAML error: {exc}", "", Location(filename, 1, 1))]) from None
    finally:
        if loader is not None:
            loader.dispose()
    source = SourceMap(files=[filename])
    if root is None:
        raise SpecError(
            [
                Diagnostic(
                    "the file is empty; a spec is a YAML mapping", "", Location(filename, 1, 1)
                )
            ]
        )
    problems: list[Diagnostic] = []
    budget = [MAX_NODES]
    try:
        _check_expanded_size(root)
        data = _convert(root, (), filename, source, problems, loader, budget)
    except _TooLarge as exc:
        raise SpecError([Diagnostic(f"more than {MAX_NODES} YAML nodes (counting every alias "
                                    "expansion)", "", _mark(filename, exc.mark))]) from None
    if problems:
        raise SpecError(problems)
    return data, source


def _problem(message: str, path: FieldPath, filename: str, mark: yaml.Mark) -> Diagnostic:
    """A diagnostic for the field at `path`, located at a YAML mark."""
    return Diagnostic(message, format_field_path(path), _mark(filename, mark))


# Quoted scalars and comments (skipped), and flow brackets (counted). Possessive, with optional
# closing quotes: an unterminated quote costs one pass, not one pass per quote character.
_FLOW_TOKENS = re.compile(
    r"\"(?:\\.|[^\"\\])*+\"?|'(?:''|[^'])*+'?|(?<!\S)#[^\n]*+|[\[\]{}]", re.S)


def _check_flow_depth(text: str, filename: str) -> None:
    """Refuse flow collections (`[[[...`) nested deeper than `MAX_DEPTH`, in one regex pass.

    PyYAML's scanner keeps every unclosed `[` as a possible simple key and rescans them for
    each token, so 20,000 brackets cost a second before the composer sees the first node."""
    depth = 0
    for match in _FLOW_TOKENS.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise SpecError([Diagnostic(f"nested more than {MAX_DEPTH} levels deep", "",
                                            _position(text, filename, match.start()))])
        elif token in "]}":
            depth = max(0, depth - 1)


def _check_expanded_size(root: yaml.Node) -> None:
    """Refuse a document whose alias and merge-key expansion exceeds `MAX_NODES`, in time
    linear in the composed node count (sizes are memoised per node), before anything is
    expanded; a node that contains itself through an alias is refused too."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise _TooLarge(node.start_mark)  # a recursive alias expands without end
        active.add(key)
        total = 1
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                total += size(key_node) + size(value_node)
                if total > MAX_NODES:
                    raise _TooLarge(node.start_mark)
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                total += size(item)
                if total > MAX_NODES:
                    raise _TooLarge(node.start_mark)
        active.discard(key)
        sizes[key] = total
        return total

    size(root)


def _convert(
    node: yaml.Node,
    path: FieldPath,
    filename: str,
    source: SourceMap,
    problems: list[Diagnostic],
    loader: yaml.SafeLoader,
    budget: list[int],
) -> Any:
    budget[0] -= 1
    if budget[0] < 0:
        raise _TooLarge(node.start_mark)
    source.locations.setdefault(path, _mark(filename, node.start_mark))
    if isinstance(node, yaml.MappingNode):
        explicit = sum(1 for key, _ in node.value if key.tag != "tag:yaml.org,2002:merge")
        try:
            loader.flatten_mapping(node)  # YAML merge keys (`<<: *defaults`) come first
        except yaml.YAMLError as exc:
            problems.append(_problem(f"bad merge key: {exc}", path, filename, node.start_mark))
        merged = len(node.value) - explicit
        out: dict[str, Any] = {}
        from_merge: set[str] = set()
        for index, (key_node, value_node) in enumerate(node.value):
            key = loader.construct_object(key_node, deep=True)
            key_loc = _mark(filename, key_node.start_mark)
            if not isinstance(key, str):
                message = f"keys must be strings, got {key!r}"
                problems.append(_problem(message, path, filename, key_node.start_mark))
                continue
            if key in out and key not in from_merge:
                problems.append(
                    _problem(f"duplicate key {key!r}", path + (key,), filename, key_node.start_mark)
                )
                continue
            if index < merged:
                from_merge.add(key)
            else:
                from_merge.discard(key)
            if key in out:  # a merged-in value being overridden: forget where it came from
                source.drop_under(path + (key,))
            source.locations[path + (key,)] = key_loc
            out[key] = _convert(value_node, path + (key,), filename, source, problems, loader,
                                budget)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [
            _convert(item, path + (i,), filename, source, problems, loader, budget)
            for i, item in enumerate(node.value)
        ]
    try:
        return loader.construct_object(node, deep=True)
    except yaml.YAMLError as exc:
        problems.append(_problem(f"cannot read value: {exc}", path, filename, node.start_mark))
        return None


def _char(code: int) -> str:
    return f"U+{code:04X}"


def _position(text: str, filename: str, offset: int) -> Location:
    line = text.count("\n", 0, offset)
    column = offset - (text.rfind("\n", 0, offset) + 1)
    return Location(filename, line + 1, column + 1)


def read_spec_bytes(path: Path, kind: FileKind = SPEC, root: Path | None = None) -> bytes:
    """The bytes of a spec file, read through the one opener for named files (regular file,
    at most 64 KiB, checked with fstat before a byte is read; under `root` when given).
    Anything else is a SpecError."""
    try:
        return read_named_bytes(path, kind, root)
    except NamedFileError as exc:
        location = Location(str(path), 1, 1) if exc.too_large else None
        raise SpecError([Diagnostic(str(exc), "", location)]) from None


def read_yaml_file(path: Path, kind: FileKind = SPEC, root: Path | None = None
                   ) -> tuple[Any, SourceMap]:
    display = str(path)
    data = read_spec_bytes(path, kind, root)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(
            [
                Diagnostic(
                    f"not UTF-8 text ({exc.reason} at byte {exc.start})",
                    "",
                    Location(display, 1, 1),
                )
            ]
        ) from None
    return read_yaml(text, display)
