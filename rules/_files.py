"""Reading rule files so that every error can point at a file, a line and a column.

YAML is composed into nodes first so each path inside the document (`("rules", 3, "match")`) keeps
the line it came from; schema and compile errors are then reported at that line, not "somewhere in
the file".
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator

Path_ = tuple[str | int, ...]


class RulesError(ValueError):
    """A rule file that cannot be used: where it is wrong, why, and what to do about it."""

    def __init__(self, file: str | Path, line: int, column: int, reason: str, hint: str = ""):
        self.file = str(file)
        self.line = line
        self.column = column
        self.reason = reason
        self.hint = hint
        super().__init__(f"{self.file}:{line}:{column}: {reason}" + (f" ({hint})" if hint else ""))

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "column": self.column, "reason": self.reason,
                "hint": self.hint}


@dataclass
class RuleFile:
    """A parsed YAML document and the line/column of every path inside it."""

    path: Path
    text: str
    doc: Any
    marks: dict[Path_, tuple[int, int]]

    def locate(self, path: Sequence[str | int]) -> tuple[int, int]:
        """Line and column (1-based) of the deepest known prefix of `path`."""
        path = tuple(path)
        while path:
            if path in self.marks:
                return self.marks[path]
            path = path[:-1]
        return self.marks.get((), (1, 1))

    def error(self, path: Sequence[str | int], reason: str, hint: str = "") -> RulesError:
        line, column = self.locate(path)
        return RulesError(self.path, line, column, reason, hint)

    def validate(self, validator: Draft202012Validator) -> None:
        """Raise the first schema error (in document order) at its line."""
        errors = sorted(validator.iter_errors(self.doc), key=lambda e: self.locate(_where(e)))
        if errors:
            raise self.error(_where(errors[0]), *_explain(errors[0]))


def read_rule_file(path: str | Path) -> RuleFile:
    path = Path(path)
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError(path, 1, 1, f"cannot read the file: {exc}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise RulesError(path, line, column, f"YAML syntax: {exc.problem or exc.context}") from None
    except yaml.reader.ReaderError as exc:  # a control character: a position in the text, not a mark
        before = text[:exc.position]
        line, column = before.count("\n") + 1, exc.position - before.rfind("\n")
        raise RulesError(path, line, column, f"YAML: character #x{exc.character:04x} is not allowed in YAML",
                         "remove it, or write it as an escape inside double quotes") from None
    except RecursionError:
        raise RulesError(path, 1, 1, "YAML nested too deeply") from None
    if node is None:
        return RuleFile(path, text, None, {(): (1, 1)})
    marks = node_marks(node, path)  # before constructing: it refuses recursive aliases, which would hang that
    loader = yaml.SafeLoader(text)
    try:
        doc = loader.construct_document(node)
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        raise RulesError(path, mark.line + 1 if mark else 1, mark.column + 1 if mark else 1,
                         f"YAML: {exc.problem}") from None
    except ValueError:
        # A scalar whose tag does not fit its text (2024-02-30, a 5000-digit integer, !!int abc): the
        # constructor does not say which, so find it.
        raise _bad_scalar(path, node) from None
    finally:
        loader.dispose()
    if "<<" in text:  # constructing expanded merge keys into the nodes: record where the merged keys came from
        marks = node_marks(node, path)
    return RuleFile(path, text, doc, marks)


MAX_ALIAS_EXPANSION = 100_000  # values reached again through aliases; a billion-laughs file stops here


def node_marks(node: yaml.Node, path: str | Path) -> dict[Path_, tuple[int, int]]:
    """The line and column of every path in the document. Raises RulesError on an alias that contains
    itself, and on aliases that expand the document past MAX_ALIAS_EXPANSION values."""
    marks: dict[Path_, tuple[int, int]] = {}
    walked: set[int] = set()
    inside: set[int] = set()  # the collections on the way down to the current node
    repeats = 0

    def walk(node: yaml.Node, at: Path_) -> None:
        nonlocal repeats
        if id(node) in inside:
            raise RulesError(path, node.start_mark.line + 1, node.start_mark.column + 1,
                             "YAML alias refers to a value that contains it", "an anchor cannot be used inside itself")
        if id(node) in walked:
            repeats += 1
            if repeats > MAX_ALIAS_EXPANSION:
                raise RulesError(path, node.start_mark.line + 1, node.start_mark.column + 1,
                                 f"YAML aliases expand the file to over {MAX_ALIAS_EXPANSION} values",
                                 "use fewer aliases, or write the values out")
        walked.add(id(node))
        marks.setdefault(at, (node.start_mark.line + 1, node.start_mark.column + 1))
        if isinstance(node, yaml.ScalarNode):
            return
        inside.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                child = at + (key_node.value if isinstance(key_node, yaml.ScalarNode) else repr(key_node.value),)
                marks[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                walk(value_node, child)
        else:
            for index, item in enumerate(node.value):
                walk(item, at + (index,))
        inside.discard(id(node))

    try:
        walk(node, ())
    except RecursionError:
        raise RulesError(path, 1, 1, "YAML nested too deeply") from None
    return marks


def _bad_scalar(path: Path, root: yaml.Node) -> RulesError:
    """A RulesError at the first scalar that cannot be constructed (document order)."""
    loader = yaml.SafeLoader("")
    try:
        stack, seen = [root], set()
        while stack:
            node = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if isinstance(node, yaml.ScalarNode):
                try:
                    loader.construct_object(node)
                except (ValueError, yaml.YAMLError) as exc:
                    return RulesError(path, node.start_mark.line + 1, node.start_mark.column + 1,
                                      f"YAML: {node.value[:40]!r} is not a valid {node.tag.rsplit(':', 1)[-1]} ({exc})",
                                      "quote it to keep it a string")
            elif isinstance(node, yaml.MappingNode):
                stack.extend(n for pair in reversed(node.value) for n in reversed(pair))
            elif isinstance(node, yaml.SequenceNode):
                stack.extend(reversed(node.value))
    finally:
        loader.dispose()
    return RulesError(path, 1, 1, "YAML: a value cannot be read")


def _where(error) -> tuple[str | int, ...]:
    """The path of the offending part: for an unknown field, the field itself, not its parent."""
    path = tuple(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        # key=str: YAML keys may be null or numbers as well as strings
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})), key=str)
        if extra:
            path += (extra[0],)
    return path


def _explain(error) -> tuple[str, str]:
    """A schema error in words a rule author can act on, with a hint where one helps."""
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})), key=str)
        allowed = ", ".join(sorted(error.schema.get("properties", {})))
        return f"unknown field {', '.join(repr(e) for e in extra)}", f"allowed here: {allowed}"
    if error.validator == "enum":
        return (f"{error.instance!r} is not one of {', '.join(map(str, error.validator_value))}", "")
    if error.validator in ("anyOf", "oneOf") and error.schema.get("description"):
        return f"{error.instance!r} is not valid here", f"expected {error.schema['description']}"
    return error.message, ""


def content_digest(files: Iterable[RuleFile | tuple[str, str]]) -> str:
    """sha256 over (name, text) pairs in name order: the version of a rule set."""
    pairs = sorted((f.path.name, f.text) if isinstance(f, RuleFile) else f for f in files)
    digest = hashlib.sha256()
    for name, text in pairs:
        digest.update(name.encode() + b"\0" + text.encode() + b"\0")
    return digest.hexdigest()[:16]
