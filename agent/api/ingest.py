"""Events over HTTP: CloudEvents (one, or a batch) and Prometheus Alertmanager webhooks.

Every event is checked against the envelope schema before anything is published, so a client learns
at once what is wrong with which event (400, per index); a batch with one bad event publishes nothing.
Accepted events go to the EVENTS stream exactly like `rtem ingest` sends them: the event id becomes
`Nats-Msg-Id`, so a client that retries after a timeout does not create a second event.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Any

from fastapi import APIRouter, Depends, Request

from bus import InvalidEvent, event_from_dict

from ..tokens import Principal
from .auth import ApiError, context, require

router = APIRouter(prefix="/api/v1")
Ingester = Depends(require("ingest"))

SINGLE = ("application/cloudevents+json", "application/json")
BATCH = "application/cloudevents-batch+json"
ALERT_SEVERITY = {"critical": "critical", "page": "critical", "high": "error", "error": "error",
                  "warning": "warning", "warn": "warning", "medium": "warning", "info": "info", "low": "info",
                  "none": "info"}
SUBJECT_LABELS = ("rtem_entity", "entity", "pod", "service", "instance", "job")


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
    labels = {**payload.get("commonLabels", {}), **alert.get("labels", {})}
    annotations = {**payload.get("commonAnnotations", {}), **alert.get("annotations", {})}
    status = alert.get("status") or payload.get("status") or "firing"
    fingerprint = alert.get("fingerprint") or _fingerprint(labels)
    when = alert.get("endsAt") if status == "resolved" else alert.get("startsAt")
    if not when or when.startswith("0001-"):
        when = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
    severity = "info" if status == "resolved" else ALERT_SEVERITY.get(str(labels.get("severity", "")).lower(), "warning")
    return {
        "specversion": "1.0", "id": f"am-{fingerprint}-{alert.get('startsAt', '')}-{status}", "type": "rtem.alert",
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
    return {"accepted": report.published, "duplicates": report.duplicates, "ids": [d["id"] for d in docs]}


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _json(request: Request) -> Any:
    body = await request.body()
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = f" at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise ApiError(400, f"the body is not JSON{where}") from None


def _alertmanager_problems(payload: Any) -> list[str]:
    if not isinstance(payload, dict):
        return [f"the body is a {type(payload).__name__}, not an object"]
    problems = []
    if payload.get("version") not in ("4", 4):
        problems.append(f"version {payload.get('version')!r}: only version 4 is understood")
    alerts = payload.get("alerts")
    if not isinstance(alerts, list):
        return problems + ["alerts: missing or not a list"]
    for i, alert in enumerate(alerts):
        if not isinstance(alert, dict):
            problems.append(f"alerts[{i}]: not an object")
        elif not isinstance(alert.get("labels"), dict) or not alert["labels"]:
            problems.append(f"alerts[{i}].labels: missing or empty")
        elif alert.get("status", "firing") not in ("firing", "resolved"):
            problems.append(f"alerts[{i}].status {alert.get('status')!r}: firing or resolved")
        elif not isinstance(alert.get("startsAt", ""), str):
            problems.append(f"alerts[{i}].startsAt: not a string")
    return problems


def _subject(labels: dict[str, Any]) -> str:
    for key in SUBJECT_LABELS:
        value = labels.get(key)
        if value:
            return str(value).rsplit(":", 1)[0] if key == "instance" else str(value)
    return str(labels.get("alertname") or "unknown")


def _fingerprint(labels: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(labels, sort_keys=True).encode()).hexdigest()[:16]
