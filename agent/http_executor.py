"""The HTTP executor's request: its contract's templates rendered for one step, its secrets read, its
body signed; and the scrubbing that keeps a secret's value out of errors and results.

Pure apart from reading secrets (environment, files), so each decision is testable without a target;
agent/executors.py `HttpTransport` sends what `render_request` builds. The templates were checked when
the contract loaded (rules/_http_executor.py), so what fails here is what only the step can break: a
missing secret, a body that renders to something that is not JSON, a header with a line break.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import TemplateError

from rules._http_executor import HttpExecutor, SecretRef, environment, is_template

from .redact import redact_known
from .signing import sign

SCRUBBED = "[secret]"


class RequestError(Exception):
    """The request cannot be made as the contract says; retrying will not help. Never holds a secret's value."""


@dataclass(frozen=True)
class HttpRequest:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes


def read_secrets(refs: Mapping[str, SecretRef], environ: Mapping[str, str]) -> dict[str, str]:
    """Each secret's value by name, read now (a rotated secret is used at the next step)."""
    values: dict[str, str] = {}
    for name, ref in refs.items():
        if ref.env is not None:
            value = environ.get(ref.env)
            if not value:
                raise RequestError(f"secret {name!r}: the {ref.describe()} is not set; set it in rtem's environment")
        else:
            try:
                with open(ref.file, encoding="utf-8") as file:
                    value = file.read().rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
                raise RequestError(f"secret {name!r}: cannot read the {ref.describe()}: {reason}") from None
            if not value:
                raise RequestError(f"secret {name!r}: the {ref.describe()} is empty")
        values[name] = value
    return values


def step_variables(action: str, target: str, params: Mapping[str, Any], incident_id: str, key: str,
                   kind: str) -> dict[str, Any]:
    return {"action": action, "target": target, "params": dict(params), "incident_id": incident_id,
            "idempotency_key": key, "kind": kind}


def render_request(spec: HttpExecutor, variables: Mapping[str, Any], secrets: Mapping[str, str],
                   now: float) -> HttpRequest:
    """The request for one step; `now` (Unix seconds) stamps the signature."""
    context = {**variables, "secrets": dict(secrets)}
    if is_template(spec.url):
        url = _render("url", spec.url, context)
    else:
        url = spec.url.format(action=variables["action"], target=variables["target"])
    headers = {name: _render(f"header {name}", value, context) for name, value in spec.headers.items()}
    for name, value in headers.items():
        if "\r" in value or "\n" in value:
            raise RequestError(f"header {name} rendered with a line break; a header value is one line")
    content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), None)
    if content_type is None:
        content_type = headers["Content-Type"] = "application/json"
    if spec.body is None:
        body = json.dumps({key: variables[key] for key in ("action", "target", "params", "incident_id")},
                          separators=(",", ":")).encode()
    else:
        body = _render("body", spec.body, context).encode()
        if "json" in content_type.lower():
            try:
                json.loads(body)
            except ValueError as exc:  # the message names a position, never the text
                raise RequestError(f"the body rendered is not JSON ({exc}); write values with the tojson "
                                   "filter, e.g. {{ target | tojson }}") from None
    if spec.sign is not None:
        headers.update(sign(secrets[spec.sign.secret].encode(), body, int(now)))
    return HttpRequest(spec.method, url, headers, body)


def _render(what: str, source: str, context: Mapping[str, Any]) -> str:
    try:
        return environment().from_string(source).render(context)
    except TemplateError as exc:
        message = scrub(str(exc.message or type(exc).__name__), context["secrets"])
        raise RequestError(f"the {what} template failed: {message}") from None


def scrub(value: Any, secrets: Mapping[str, str]) -> Any:
    """`value` with every secret's value replaced by SCRUBBED, through dicts, lists and strings."""
    if not secrets:
        return value
    if isinstance(value, str):
        return redact_known(value, secrets.values(), SCRUBBED)
    if isinstance(value, Mapping):
        return {scrub(k, secrets): scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v, secrets) for v in value]
    return value
