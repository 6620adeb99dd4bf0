"""Schema errors of rule files in words a rule author can act on: the offending key's path, what is wrong,
and a suggestion (the key or value it probably meant, what is allowed there)."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def key_of(path: Sequence[str | int]) -> str | None:
    """The innermost key of a document path (`("rules", 0, "outcom")` → `outcom`)."""
    return next((str(part) for part in reversed(tuple(path)) if isinstance(part, str)), None)


def did_you_mean(word: Any, choices: Iterable[Any]) -> str | None:
    """The closest of `choices` to a mistyped `word` (`outcom` → `outcome`), or None."""
    if not isinstance(word, str):
        return None
    names = [c for c in choices if isinstance(c, str)]
    by_lower = {c.lower(): c for c in names}
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[close[0]] if close else None


def unknown_key_hint(word: Any, allowed: Iterable[Any], required: Iterable[str] = ()) -> str:
    """The suggestion for an unknown key: the key it probably meant, then what is allowed here."""
    allowed = list(allowed)
    listed = f"allowed here: {', '.join(map(str, allowed))}"
    guess = did_you_mean(word, allowed)
    if guess is None:
        return listed
    why = f" ({guess!r} is required)" if guess in set(required) else ""
    return f"did you mean {guess!r}?{why} {listed}"


def _where(error) -> tuple[str | int, ...]:
    """The path of the offending part: for an unknown field, the field itself, not its parent."""
    path = tuple(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        # key=str: YAML keys may be null or numbers as well as strings
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})), key=str)
        if extra:
            path += (extra[0],)
    return path


def explain_all(errors: list) -> list[tuple[tuple[str | int, ...], str, str]]:
    """Schema errors as (path of the offending key, reason, suggestion): one per unknown key, and a
    missing required key dropped when an unknown key beside it is its typo (`cont` for `count`)."""
    typos = misspelt_required(errors)
    found = []
    for error in errors:
        path = tuple(error.absolute_path)
        if error.validator == "required" and isinstance(error.instance, dict):
            name = missing_key(error)
            if (path, name) in typos:
                continue
            found.append((path, error.message, f"add {name}: to this mapping" if name else ""))
        elif error.validator == "additionalProperties" and isinstance(error.instance, dict):
            properties = list(error.schema.get("properties", {}))
            required = [r for r in error.schema.get("required", []) if r not in error.instance]
            for extra in _extras(error):
                found.append((path + (extra,), f"unknown field {extra!r}",
                              unknown_key_hint(extra, sorted(properties), required)))
        else:
            found.append((_where(error), *_explain(error)))
    return found


def misspelt_required(errors: list) -> set[tuple[tuple, str]]:
    """(path of the mapping, required key) for each missing required key that an unknown key beside it
    misspells: reported once, at the typo, not again as "'count' is a required property"."""
    typos: set[tuple[tuple, str]] = set()
    for error in errors:
        if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
            required = [r for r in error.schema.get("required", []) if r not in error.instance]
            for extra in _extras(error):
                guess = did_you_mean(extra, required)
                if guess is not None:
                    typos.add((tuple(error.absolute_path), guess))
    return typos


def missing_key(error) -> str | None:
    """The key a jsonschema `required` error is about: each missing key is an error of its own."""
    named = re.match(r"'(.+)' is a required property", error.message)
    if named:
        return named.group(1)
    return next((r for r in error.validator_value if r not in error.instance), None)


def _extras(error) -> list:
    return sorted(set(error.instance) - set(error.schema.get("properties", {})), key=str)


def _explain(error) -> tuple[str, str]:
    """A schema error in words a rule author can act on, with a hint where one helps."""
    if error.validator == "additionalProperties":
        extra = _extras(error)
        properties = sorted(error.schema.get("properties", {}))
        return f"unknown field {', '.join(repr(e) for e in extra)}", unknown_key_hint(extra[0] if extra else None,
                                                                                        properties)
    if error.validator == "enum" and isinstance(error.instance, str):
        guess = did_you_mean(error.instance, error.validator_value)
        return (f"{error.instance!r} is not one of {', '.join(map(str, error.validator_value))}",
                f"did you mean {guess!r}?" if guess else "")
    if error.validator == "enum":
        return (f"{error.instance!r} is not one of {', '.join(map(str, error.validator_value))}", "")
    if error.validator in ("anyOf", "oneOf") and error.schema.get("description"):
        return f"{error.instance!r} is not valid here", f"expected {error.schema['description']}"
    return error.message, ""
