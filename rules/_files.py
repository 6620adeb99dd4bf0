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
    if node is None:
        return RuleFile(path, text, None, {(): (1, 1)})
    loader = yaml.SafeLoader(text)
    try:
        doc = loader.construct_document(node)
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        raise RulesError(path, mark.line + 1 if mark else 1, mark.column + 1 if mark else 1,
                         f"YAML: {exc.problem}") from None
    finally:
        loader.dispose()
    marks: dict[Path_, tuple[int, int]] = {}
    _walk(node, (), marks)
    return RuleFile(path, text, doc, marks)


def _walk(node: yaml.Node, path: Path_, marks: dict[Path_, tuple[int, int]]) -> None:
    marks.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = path + (key_node.value,)
            marks[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            _walk(value_node, child, marks)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, path + (index,), marks)


def _where(error) -> tuple[str | int, ...]:
    """The path of the offending part: for an unknown field, the field itself, not its parent."""
    path = tuple(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        if extra:
            path += (extra[0],)
    return path


def _explain(error) -> tuple[str, str]:
    """A schema error in words a rule author can act on, with a hint where one helps."""
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
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
