"""Prompt templates for the LLM reasoner and chat, each with the JSON Schema of the answer it asks for.

One task, two files: `<task>.j2` (Jinja, with a `system` and a `user` block) and `<task>.schema.json`.

    prompt = load("diagnose")
    messages = prompt.render(incident=..., candidates=...)   # [{"role": "system", ...}, {"role": "user", ...}]
    prompt.schema                                            # the answer's JSON Schema
    prompt.hash                                              # recorded with every call

`hash` covers the template's bytes and the schema as sent, so a change to either shows up in the audit
log. This package imports nothing from `agent/`: callers bring the context as plain data.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

import jinja2

TASKS = ("diagnose", "propose", "chat")

__all__ = ["TASKS", "Prompt", "PromptError", "load", "prompt_hash"]


class PromptError(ValueError):
    """A template or schema rtem cannot use, named by file."""


@dataclass(frozen=True)
class Prompt:
    """One task's template and the JSON Schema of its answer."""

    task: str
    source: str
    schema: dict[str, Any]
    _template: jinja2.Template = field(repr=False, compare=False)

    @property
    def hash(self) -> str:
        return prompt_hash(self.source, self.schema)

    @property
    def version(self) -> str:
        """`task:hash`, the form recorded in decision records."""
        return f"{self.task}:{self.hash}"

    def render(self, **context: Any) -> list[dict[str, str]]:
        """The chat messages for `context`: the system block, then the user block."""
        ctx = self._template.new_context(context)
        messages = []
        for role in ("system", "user"):
            block = self._template.blocks.get(role)
            if block is None:
                raise PromptError(f"{self.task}.j2: no {{% block {role} %}}")
            messages.append({"role": role, "content": "".join(block(ctx)).strip()})
        return messages


def load(task: str) -> Prompt:
    """The packaged template and schema of `task` (one of TASKS)."""
    if task not in TASKS:
        raise PromptError(f"no prompt {task!r}; known: {', '.join(TASKS)}")
    source, schema = _read(task)
    return Prompt(task, source, copy.deepcopy(schema), _environment().from_string(source))


def prompt_hash(source: str, schema: dict[str, Any]) -> str:
    """sha256 over the template text and the canonical schema JSON, 16 hex digits."""
    body = source.encode() + b"\0" + json.dumps(schema, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(body).hexdigest()[:16]


@lru_cache(maxsize=None)
def _read(task: str) -> tuple[str, dict[str, Any]]:
    root = resources.files(__name__)
    source = (root / f"{task}.j2").read_text("utf-8")
    try:
        schema = json.loads((root / f"{task}.schema.json").read_text("utf-8"))
    except json.JSONDecodeError as exc:
        raise PromptError(f"{task}.schema.json: not JSON: {exc.msg} at line {exc.lineno}") from None
    return source, schema


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    # Plain text, not HTML: no autoescape. StrictUndefined turns a missing context key into an error
    # instead of a silently empty prompt section.
    return jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False, trim_blocks=True,
                              lstrip_blocks=True, keep_trailing_newline=False)
