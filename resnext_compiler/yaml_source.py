"""Read YAML into plain Python data while remembering where every value came from.

PyYAML's composer keeps a mark (line, column) on each node; we walk the node tree once and
record a `Location` for every field path, so any later error (schema, lowering, shapes) can
point at the spec line that caused it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from resnext_compiler.errors import Diagnostic, Location, SpecError, format_field_path

FieldPath = tuple[str | int, ...]


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-4` as a float (YAML 1.2 style; PyYAML wants `1.0e-4`)."""


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
        n = len(path)
        for key in [k for k in self.locations if len(k) > n and k[:n] == path]:
            del self.locations[key]


def _mark(filename: str, mark: yaml.Mark | None) -> Location | None:
    if mark is None:
        return None
    return Location(filename, mark.line + 1, mark.column + 1)


def read_yaml(text: str, filename: str) -> tuple[Any, SourceMap]:
    """Parse one YAML document into plain data plus a source map; raise SpecError if invalid."""
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        raise SpecError(
            [Diagnostic(f"YAML syntax error: {problem}", "", _mark(filename, mark))]
        ) from None
    except yaml.YAMLError as exc:
        raise SpecError([Diagnostic(f"YAML error: {exc}", "", Location(filename, 1, 1))]) from None
    finally:
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
    data = _convert(root, (), filename, source, problems, loader)
    if problems:
        raise SpecError(problems)
    return data, source


def _problem(message: str, path: FieldPath, filename: str, mark: yaml.Mark) -> Diagnostic:
    """A diagnostic for the field at `path`, located at a YAML mark."""
    return Diagnostic(message, format_field_path(path), _mark(filename, mark))


def _convert(
    node: yaml.Node,
    path: FieldPath,
    filename: str,
    source: SourceMap,
    problems: list[Diagnostic],
    loader: yaml.SafeLoader,
) -> Any:
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
            source.drop_under(path + (key,))
            source.locations[path + (key,)] = key_loc
            out[key] = _convert(value_node, path + (key,), filename, source, problems, loader)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [
            _convert(item, path + (i,), filename, source, problems, loader)
            for i, item in enumerate(node.value)
        ]
    try:
        return loader.construct_object(node, deep=True)
    except yaml.YAMLError as exc:
        problems.append(_problem(f"cannot read value: {exc}", path, filename, node.start_mark))
        return None


def read_yaml_file(path: Path) -> tuple[Any, SourceMap]:
    display = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([Diagnostic(f"spec file not found: {display}")]) from None
    except IsADirectoryError:
        raise SpecError([Diagnostic(f"expected a YAML file, got a directory: {display}")]) from None
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
    except OSError as exc:
        raise SpecError([Diagnostic(f"cannot read {display}: {exc.strerror}")]) from None
    return read_yaml(text, display)
