"""Reading rule files so that every error can point at a file, a line and a column.

YAML is composed into nodes first so each path inside the document (`("rules", 3, "match")`) keeps
the line it came from; schema and compile errors are then reported at that line, not "somewhere in
the file".
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator

from rules._schema_errors import explain_all, key_of

Path_ = tuple[str | int, ...]


class RulesError(ValueError):
    """A rule file that cannot be used: where it is wrong, why, and what to do about it. `kind` groups
    problems in `rules check` (RuleProblem sets its own)."""

    kind: str = "invalid"

    def __init__(self, file: str | Path, line: int, column: int, reason: str, hint: str = "",
                 key: str | None = None):
        self.file = str(file)
        self.line = line
        self.column = column
        self.reason = reason
        self.hint = hint
        self.key = key  # the offending key (`outcom`, `timezone`), when the problem sits at one
        super().__init__(f"{self.file}:{line}:{column}: {reason}" + (f" ({hint})" if hint else ""))

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "column": self.column, "key": self.key,
                "reason": self.reason, "hint": self.hint}


@dataclass
class RuleFile:
    """A parsed YAML document and the line/column of every path inside it."""

    path: Path
    text: str
    doc: Any
    marks: dict[Path_, tuple[int, int]]
    # keys written twice in one mapping: (path, first (line, column), again (line, column)). YAML keeps
    # the last silently, so a second `outcome:` would change a rule without anyone seeing it.
    duplicates: tuple[tuple[Path_, tuple[int, int], tuple[int, int]], ...] = ()

    def duplicate_problems(self) -> list[RulesError]:
        """A RulesError at each repeated key (`rules check` and the loaders refuse them)."""
        return [RulesError(self.path, again[0], again[1], f"duplicate key {path[-1]!r}",
                           f"already set at line {first[0]}; YAML keeps only the last one: remove one of them",
                           key_of(path)) for path, first, again in self.duplicates]

    def locate(self, path: Sequence[str | int]) -> tuple[int, int]:
        """Line and column (1-based) of the deepest known prefix of `path`."""
        path = tuple(path)
        while path:
            if path in self.marks:
                return self.marks[path]
            path = path[:-1]
        return self.marks.get((), (1, 1))

    def error(self, path: Sequence[str | int], reason: str, hint: str = "", key: str | None = None) -> RulesError:
        line, column = self.locate(path)
        return RulesError(self.path, line, column, reason, hint, key if key is not None else key_of(path))

    def validate(self, validator: Draft202012Validator) -> None:
        """Raise the first schema error (in document order) at its line."""
        problems = self.schema_problems(validator)
        if problems:
            raise problems[0]

    def schema_problems(self, validator: Draft202012Validator) -> list[RulesError]:
        """Every schema error, in document order, each at its key: an unknown key that is a typo of a
        missing required one (`cont` for `count`) is one problem at the typo, not two."""
        found = []
        for where, reason, hint in explain_all(list(validator.iter_errors(self.doc))):
            found.append(self.error(where, reason, hint))
        return sorted(found, key=lambda p: (p.line, p.column))


def read_rule_file(path: str | Path) -> RuleFile:
    path = Path(path)
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError(path, 1, 1, f"cannot read the file: {exc}") from None
    reader = None
    try:
        reader = yaml.SafeLoader(text)  # yaml.compose, with the reader kept to say where it stopped
        node = reader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        raise syntax_error(path, text, exc) from None
    except ValueError as exc:  # a double-quoted escape past the last character, \U00110000: chr() refuses it
        mark = reader.get_mark() if reader is not None else yaml.Mark("", 0, 0, 0, None, None)
        raise RulesError(path, mark.line + 1, mark.column + 1, f"YAML: an escape that is no character ({exc})",
                         "a \\U escape goes up to \\U0010FFFF") from None
    except yaml.reader.ReaderError as exc:  # a control character: a position in the text, not a mark
        before = text[:exc.position]
        line, column = before.count("\n") + 1, exc.position - before.rfind("\n")
        raise RulesError(path, line, column, f"YAML: character #x{exc.character:04x} is not allowed in YAML",
                         "remove it, or write it as an escape inside double quotes") from None
    except RecursionError:
        raise RulesError(path, 1, 1, "YAML nested too deeply") from None
    finally:
        if reader is not None:
            reader.dispose()
    if node is None:
        return RuleFile(path, text, None, {(): (1, 1)})
    duplicates: list = []
    marks = node_marks(node, path, duplicates)  # before constructing: it refuses recursive aliases, which would hang that
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
    return RuleFile(path, text, doc, marks, tuple(duplicates))


def read_fast(path: str | Path) -> RuleFile:
    """read_rule_file with libyaml when it is there (10x faster on large files); the pure-Python reader
    runs again on a syntax error, so error messages and positions are the same either way."""
    loader = getattr(yaml, "CSafeLoader", None)
    path = Path(path)
    if loader is None:
        return read_rule_file(path)
    try:
        text = path.read_text("utf-8")
        node = yaml.compose(text, Loader=loader)
        if node is None:
            return read_rule_file(path)
        duplicates: list = []
        marks = node_marks(node, path, duplicates)
        constructor = loader(text)
        try:
            doc = constructor.construct_document(node)
        finally:
            constructor.dispose()
        if "<<" in text:  # as in read_rule_file: merged keys are in the nodes now
            marks = node_marks(node, path)
    except RulesError:
        raise
    except (OSError, UnicodeDecodeError, ValueError, RecursionError, yaml.YAMLError):
        return read_rule_file(path)
    return RuleFile(path, text, doc, marks, tuple(duplicates))


MAX_ALIAS_EXPANSION = 100_000  # values reached again through aliases; a billion-laughs file stops here


def node_marks(node: yaml.Node, path: str | Path, duplicates: list | None = None) -> dict[Path_, tuple[int, int]]:
    """The line and column of every path in the document. Raises RulesError on an alias that contains
    itself, and on aliases that expand the document past MAX_ALIAS_EXPANSION values. `duplicates`, when
    given, receives each key repeated within one mapping (see RuleFile.duplicates)."""
    marks: dict[Path_, tuple[int, int]] = {}
    repeated: set[Path_] = set()
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
            here: dict[Any, tuple[int, int]] | None = {} if duplicates is not None else None
            for key_node, value_node in node.value:
                child = at + (key_node.value if isinstance(key_node, yaml.ScalarNode) else repr(key_node.value),)
                mark = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                if here is not None:
                    if child[-1] in here and child[-1] != "<<" and child not in repeated:
                        repeated.add(child)  # once, even when an alias walks this mapping again
                        duplicates.append((child, here[child[-1]], mark))
                    here.setdefault(child[-1], mark)
                marks[child] = mark
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


# What usually causes each YAML parser complaint, in the words of someone editing a rule file.
_YAML_HINTS: tuple[tuple[str, str], ...] = (
    ("mapping values are not allowed", "a value that contains ': ' must be quoted ('a: b'), or a key is "
                                       "indented under a value; check this line and the one above"),
    ("found character '\\t'", "YAML indents with spaces, not tabs: replace the tab with spaces"),
    ("found character '@'", "'@' and '`' cannot start a plain value: quote the value"),
    ("found character '`'", "'@' and '`' cannot start a plain value: quote the value"),
    ("found character '%'", "'%' cannot start a plain value: quote the value"),
    ("found character", "quote the value"),
    ("found '<block mapping start>'", "this line is indented differently from the keys beside it: line "
                                      "keys of one mapping up in the same column"),
    ("found '<block sequence start>'", "this list item is indented differently from the others: line the "
                                       "'-' of one list up in the same column"),
    ("but found '-'", "a list item ('- …') where a key was expected: indent the list under its key"),
    ("expected ',' or '}'", "a {…} mapping is missing a ',' between entries or its closing '}', or a value in "
                            "it holds ': ' or ',' (quote that value)"),
    ("expected ',' or ']'", "a […] list is missing a ',' between items or its closing ']', or an item holds ': ' "
                            "or ',' (quote that item)"),
    ("could not find expected ':'", "a key is missing its ':', or a long value continues on a line that "
                                    "is not indented further: quote it"),
    ("found unexpected end of stream", "a quote or bracket opened here is never closed"),
    ("found undefined alias", "an alias (*name) needs an anchor (&name) defined earlier in the file"),
    ("duplicate anchor", "anchor names (&name) must be unique within a file"),
    ("could not determine a constructor for the tag", "rule files use plain YAML: remove the !tag, or quote "
                                                      "the value"),
)


def syntax_error(path: str | Path, text: str, exc: yaml.MarkedYAMLError) -> RulesError:
    """A YAML parser error as a RulesError at its place, with what probably caused it and what to do."""
    problem = exc.problem or exc.context or "cannot be parsed"
    mark = exc.problem_mark or exc.context_mark
    # An unclosed quote or bracket fails at the end of the file; where it was opened is what to fix.
    if exc.context_mark is not None and "end of stream" in problem:
        mark = exc.context_mark
    line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    hint = next((h for needle, h in _YAML_HINTS if needle in problem), "")
    if exc.context and exc.context_mark is not None and mark is not exc.context_mark and "flow" in exc.context:
        hint += f"; it opens at line {exc.context_mark.line + 1}"
    lines = text.splitlines()
    # the key written on that line, if any: what the author will look for
    found = re.match(r"\s*-?\s*([^\s:#'\"{}\[\],][^:#]*?)\s*:(\s|$)", lines[line - 1]) if 0 < line <= len(lines) \
        else None
    error = RulesError(path, line, column, f"YAML syntax: {problem}", hint or "fix the YAML syntax at this place",
                       found.group(1) if found else None)
    error.kind = "yaml_syntax"
    return error


def content_digest(files: Iterable[RuleFile | tuple[str, str]]) -> str:
    """sha256 over (name, text) pairs in name order: the version of a rule set."""
    pairs = sorted((f.path.name, f.text) if isinstance(f, RuleFile) else f for f in files)
    digest = hashlib.sha256()
    for name, text in pairs:
        digest.update(name.encode() + b"\0" + text.encode() + b"\0")
    return digest.hexdigest()[:16]
