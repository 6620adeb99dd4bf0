"""Events over HTTP: CloudEvents (one, or a batch) and Prometheus Alertmanager webhooks.

Every event is checked against the envelope schema before anything is published, so a client learns
at once what is wrong with which event (400, per index); a batch with one bad event publishes nothing.
Accepted events go to the EVENTS stream exactly like `rtem ingest` sends them: the event id becomes
`Nats-Msg-Id`, so a client that retries after a timeout does not create a second event. When EVENTS is
full (rtem is behind) a request none of whose events was taken gets 503 with Retry-After; one some of
whose events were taken gets 202 naming the others (`refused_ids`).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Any

from fastapi import APIRouter, Depends, Request

from bus import InvalidEvent, InvalidJSON, event_from_dict, loads_json

from ..tokens import Principal
from .auth import ApiError, context, require
from .body import StrictJsonRoute

router = APIRouter(prefix="/api/v1", route_class=StrictJsonRoute)
Ingester = Depends(require("ingest"))

SINGLE = ("application/cloudevents+json", "application/json")
BATCH = "application/cloudevents-batch+json"
ALERT_SEVERITY = {"critical": "critical", "page": "critical", "high": "error", "error": "error",
                  "warning": "warning", "warn": "warning", "medium": "warning", "info": "info", "low": "info",
                  "none": "info"}
SUBJECT_LABELS = ("rtem_entity", "entity", "pod", "service", "instance", "job")
# Retry-After when the EVENTS stream is full: `rtem run` trims it every RTEM_EVENTS_TRIM_EVERY_S (30 s by default).
FULL_RETRY_AFTER_S = 30


@router.post("/events", status_code=202)
async def events(request: Request, who: Principal = Ingester) -> dict[str, Any]:
    kind = _content_type(request)
    if kind not in (*SINGLE, BATCH):
        raise ApiError(415, f"content type {kind or 'missing'!r}: send {', '.join(SINGLE)} (one event) or {BATCH}")
    doc = await _json(request)
    if kind == BATCH:
        if not isinstance(doc, list):
            raise ApiError(400, f"a {BATCH} body is a JSON array of events, not a {type(doc).__name__}")
        docs = doc
    else:
        if not isinstance(doc, dict):
            raise ApiError(400, f"a {kind} body is one JSON object; send arrays as {BATCH}")
        docs = [doc]
    return await _publish(request, docs)


@router.post("/alertmanager", status_code=202)
async def alertmanager(request: Request, who: Principal = Ingester) -> dict[str, Any]:
    if _content_type(request) != "application/json":
        raise ApiError(415, "Alertmanager sends application/json")
    payload = await _json(request)
    problems = _alertmanager_problems(payload)
    if problems:
        raise ApiError(400, "not an Alertmanager webhook payload (version 4)", detail=problems)
    docs = [alert_event(alert, payload) for alert in payload["alerts"]]
    return await _publish(request, docs)


def alert_event(alert: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
    """One Alertmanager alert as an `rtem.alert` CloudEvent. Its id is the alert's fingerprint with its
    start and status: Alertmanager's repeated notifications of one firing alert dedupe to one event."""
    labels = {**(payload.get("commonLabels") or {}), **(alert.get("labels") or {})}
    annotations = {**(payload.get("commonAnnotations") or {}), **(alert.get("annotations") or {})}
    status = alert.get("status") or payload.get("status") or "firing"
    fingerprint = alert.get("fingerprint") or _fingerprint(labels)
    when = alert.get("endsAt") if status == "resolved" else alert.get("startsAt")
    if not when or when.startswith("0001-"):
        when = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
    severity = "info" if status == "resolved" else ALERT_SEVERITY.get(str(labels.get("severity", "")).lower(), "warning")
    return {
        "specversion": "1.0", "id": f"am-{fingerprint}-{alert.get('startsAt') or ''}-{status}", "type": "rtem.alert",
        "source": payload.get("externalURL") or "alertmanager", "time": when, "subject": _subject(labels),
        "data": {"severity": severity,
                 "message": annotations.get("summary") or annotations.get("description") or labels.get("alertname", ""),
                 "attributes": {"alertname": labels.get("alertname"), "status": status, "fingerprint": fingerprint,
                                "labels": labels, "annotations": annotations,
                                "generator_url": alert.get("generatorURL"), "receiver": payload.get("receiver"),
                                "group_key": payload.get("groupKey")}},
    }


# -- helpers --------------------------------------------------------------------------------------

async def _publish(request: Request, docs: list[Any]) -> dict[str, Any]:
    rejected = []
    for index, doc in enumerate(docs):
        try:
            if not isinstance(doc, dict):
                raise InvalidEvent(f"not a JSON object but a {type(doc).__name__}")
            event_from_dict(doc)
        except InvalidEvent as exc:
            rejected.append({"index": index, "id": doc.get("id") if isinstance(doc, dict) else None,
                             "reason": str(exc)})
    if rejected:
        raise ApiError(400, f"{len(rejected)} of {len(docs)} events are invalid; none was published",
                       detail=rejected)
    if not docs:
        return {"accepted": 0, "duplicates": 0, "ids": []}
    if not context(request).ready():  # say so at once rather than hang in the bus client's retries
        raise ApiError(503, "the event bus is not connected; nothing was accepted, retry", headers={"Retry-After": "5"})
    report = await context(request).publish([json.dumps(d, separators=(",", ":")).encode() for d in docs])
    if report.full and report.full == report.lines:  # nothing taken: the client retries, as after a 503
        raise ApiError(503, f"none of the {report.lines} event(s) was accepted: {report.full_reason}",
                       headers={"Retry-After": str(FULL_RETRY_AFTER_S)})
    answer = {"accepted": report.published, "duplicates": report.duplicates, "ids": [d["id"] for d in docs]}
    if report.full:  # some taken: say which were not; sending the whole batch again is safe (ids dedupe)
        answer.update(refused=report.full, refused_ids=report.full_ids, reason=report.full_reason)
    return answer


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _json(request: Request) -> Any:
    """The body as JSON the bus will take as it is: NaN, infinities, lone surrogates, huge integers and
    deep nesting are refused here (400 naming the problem), not republished."""
    try:
        return loads_json(await request.body())
    except InvalidJSON as exc:
        raise ApiError(400, f"the body is {exc}") from None


def _alertmanager_problems(payload: Any) -> list[str]:
    if not isinstance(payload, dict):
        return [f"the body is a {type(payload).__name__}, not an object"]
    problems = []
    if payload.get("version") not in ("4", 4):
        problems.append(f"version {payload.get('version')!r}: only version 4 is understood")
    alerts = payload.get("alerts")
    if not isinstance(alerts, list):
        return problems + ["alerts: missing or not a list"]
    problems += _typed(payload, "", PAYLOAD_STRINGS, PAYLOAD_MAPS)
    if payload.get("status", "firing") not in ("firing", "resolved", None):
        problems.append(f"status {payload.get('status')!r}: firing or resolved")
    for i, alert in enumerate(alerts):
        if not isinstance(alert, dict):
            problems.append(f"alerts[{i}]: not an object")
            continue
        if not isinstance(alert.get("labels"), dict) or not alert["labels"]:
            problems.append(f"alerts[{i}].labels: missing or empty")
        elif alert.get("status", "firing") not in ("firing", "resolved"):
            problems.append(f"alerts[{i}].status {alert.get('status')!r}: firing or resolved")
        problems += _typed(alert, f"alerts[{i}].", ALERT_STRINGS, ALERT_MAPS)
    return problems


# Alertmanager's webhook fields by type (https://prometheus.io/docs/alerting/latest/configuration/#webhook_config);
# null is taken as absent. Label and annotation values are strings there too.
PAYLOAD_STRINGS = ("status", "receiver", "groupKey", "externalURL")
PAYLOAD_MAPS = ("groupLabels", "commonLabels", "commonAnnotations")
ALERT_STRINGS = ("status", "startsAt", "endsAt", "generatorURL", "fingerprint")
ALERT_MAPS = ("labels", "annotations")


def _typed(doc: dict[str, Any], prefix: str, strings: tuple[str, ...], maps: tuple[str, ...]) -> list[str]:
    problems = []
    for key in strings:
        if doc.get(key) is not None and not isinstance(doc[key], str):
            problems.append(f"{prefix}{key}: {_json_type(doc[key])}, not a string")
    for key in maps:
        value = doc.get(key)
        if value is None:
            continue
        if not isinstance(value, dict):
            problems.append(f"{prefix}{key}: {_json_type(value)}, not an object of strings")
            continue
        problems += [f"{prefix}{key}.{name}: {_json_type(v)}, not a string"
                     for name, v in value.items() if not isinstance(v, str)]
    return problems


def _json_type(value: Any) -> str:
    """'an array', 'a number': what a JSON value is, for a problem's text."""
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _subject(labels: dict[str, Any]) -> str:
    for key in SUBJECT_LABELS:
        value = str(labels.get(key) or "")
        if key == "instance":  # host:port names the host; a bare ":9100" names nothing
            value = value.rsplit(":", 1)[0]
        if value:
            return value
    return str(labels.get("alertname") or "unknown")


def _fingerprint(labels: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(labels, sort_keys=True).encode()).hexdigest()[:16]
