"""The HTTP executor's terms in a contract: templated URL, headers and body, secrets, HMAC signing.

Templates are Jinja in a sandbox with strict undefined variables, so a typo fails when the contract
loads (`rtem rules check`), not when an incident needs the action. They see the step (`action`,
`target`, `params`, `incident_id`, `idempotency_key`, `kind`) and `secrets.<name>`, each secret read at
send time from an environment variable or a file the contract names. A secret may not appear in the
URL: HTTP libraries and proxies log URLs. A URL without `{{` keeps the older `{action}`/`{target}`
placeholders. agent/http_executor.py renders what this module checks.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import Literal

from jinja2 import StrictUndefined, TemplateSyntaxError, meta, nodes
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, model_validator

STEP_VARIABLES = frozenset({"action", "target", "params", "incident_id", "idempotency_key", "kind"})
TEMPLATE_VARIABLES = STEP_VARIABLES | {"secrets"}


class SecretRef(BaseModel):
    """Where a secret's value is read from: exactly one of an environment variable or a file."""

    model_config = ConfigDict(frozen=True)

    env: str | None = None
    file: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("a secret is read from exactly one of env or file")
        return self

    def describe(self) -> str:
        """Where it lives, for an error: never the value."""
        return f"environment variable {self.env}" if self.env else f"file {self.file}"


class Signing(BaseModel):
    model_config = ConfigDict(frozen=True)

    secret: str = Field(description="name of the secret (under `secrets`) that keys the HMAC-SHA256 signature")


class HttpExecutor(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: Literal["http"] = "http"
    method: Literal["POST", "PUT", "PATCH", "DELETE"]
    url: str
    headers: dict[str, str] = Field(default_factory=dict, description="header name → template")
    body: str | None = Field(None, description="template; unset: the step as JSON (action, target, params, "
                                               "incident_id)")
    secrets: dict[str, SecretRef] = Field(default_factory=dict)
    sign: Signing | None = None


@lru_cache(maxsize=1)
def environment() -> SandboxedEnvironment:
    """The one template environment: sandboxed (no attribute tricks on values), strict (an unknown name
    is an error, not an empty string), no HTML escaping (bodies are JSON or text: use `tojson`)."""
    return SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


def is_template(text: str) -> bool:
    return "{{" in text or "{%" in text


def template_problems(executor: Mapping) -> Iterator[tuple[str, str]]:
    """(JSON path under `$.x-rtem.executor`, reason) for every template or secret reference rtem could
    not use; `executor` is the contract file's (schema-valid) executor block."""
    declared = set(executor.get("secrets") or {})
    fields: list[tuple[str, str]] = []
    if is_template(executor["url"]):
        fields.append(("url", executor["url"]))
    fields += [(f'headers["{name}"]', value) for name, value in (executor.get("headers") or {}).items()]
    if executor.get("body") is not None:
        fields.append(("body", executor["body"]))
    for where, source in fields:
        problem = _problem(source, declared, secrets_allowed=where != "url")
        if problem:
            yield where, problem
    signing = (executor.get("sign") or {}).get("secret")
    if signing is not None and signing not in declared:
        yield "sign.secret", f"names the secret {signing!r}, which `secrets` does not declare"


def _problem(source: str, declared: set[str], secrets_allowed: bool) -> str | None:
    try:
        tree = environment().parse(source)
    except TemplateSyntaxError as exc:
        return f"the template does not compile: {exc.message} (template line {exc.lineno})"
    unknown = meta.find_undeclared_variables(tree) - TEMPLATE_VARIABLES
    if unknown:
        return (f"the template uses {sorted(unknown)[0]!r}, which is not defined; "
                f"use {', '.join(sorted(TEMPLATE_VARIABLES))}")
    named = [node.attr if isinstance(node, nodes.Getattr) else node.arg.value
             for node in tree.find_all((nodes.Getattr, nodes.Getitem))
             if isinstance(node.node, nodes.Name) and node.node.name == "secrets"
             and (isinstance(node, nodes.Getattr) or isinstance(node.arg, nodes.Const))]
    uses = sum(1 for node in tree.find_all(nodes.Name) if node.name == "secrets")
    if uses and not secrets_allowed:
        return "a secret may not be used in the URL (URLs end up in logs); send it in a header"
    if uses > len(named):
        return "use one secret at a time, as secrets.<name>"
    for name in named:
        if name not in declared:
            return f"uses secrets.{name}, which `secrets` does not declare"
    return None
