"""benchmarks/rca_accuracy.py's `insample` mode: the learned model fitted on every case's truth and scored
on the same cases, the ceiling the README's prequential figure is read against."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from tests.helpers import benchmark

T0 = datetime(2022, 3, 20, 1, 0, tzinfo=timezone.utc)
# In every case two instances of different services show one rare anomaly each, at the same minute. The
# cause's is always a write load; the bystander's, threads, and its id sorts first, so the cold start
# (equal evidence: ties by onset, then id) puts the bystander first every time.
PAIRS = [("adservice-0", "shippingservice-1"), ("cartservice-1", "paymentservice-2"),
         ("checkoutservice-2", "recommendationservice-0"), ("currencyservice-0", "shippingservice-2"),
         ("emailservice-1", "frontend-0"), ("adservice-2", "productcatalogservice-1")]


def metric(event_id: str, subject: str, name: str, at: datetime) -> str:
    return json.dumps({"specversion": "1.0", "id": event_id, "source": "/tests/metric", "type": "rtem.metric.anomaly",
                       "time": at.isoformat().replace("+00:00", "Z"), "subject": subject,
                       "data": {"severity": "warning", "message": f"{name} anomalous (up) on {subject}",
                                "attributes": {"metric": name, "direction": "up"}}})


def write_cases(directory) -> None:
    for n, (bystander, cause) in enumerate(PAIRS):
        at = T0 + timedelta(hours=n)
        lines = [metric(f"{n}-b", bystander, "container_threads", at),
                 metric(f"{n}-c", cause, "container_fs_writes", at)]
        (directory / f"{n}.events.jsonl").write_text("\n".join(lines) + "\n", "utf-8")
        truth = {"root_cause_entity": cause, "level": "pod", "fault_type": "container write I/O load"}
        (directory / f"{n}.truth.json").write_text(json.dumps(truth), "utf-8")


def top1(rankings: dict, cases) -> int:
    return sum(bool(rankings[c.number][0]) and rankings[c.number][0][0] == c.truth["root_cause_entity"] for c in cases)


def test_insample_learns_what_marks_the_cause_where_history_cannot(tmp_path, boutique):
    rca = benchmark("rca_accuracy")
    write_cases(tmp_path)
    cases = rca.load_cases(tmp_path)
    assert len(cases) == len(PAIRS)
    assert top1(rca.run_history(cases, boutique, []), cases) == 0
    notes: list[str] = []
    rankings = rca.run_insample(cases, boutique, notes)
    assert top1(rankings, cases) == len(PAIRS)
    assert notes == [f"fitted on {len(PAIRS)} cases and scored on the same ones; 0 had their cause among no candidates"]
    # every candidate is ranked, with the fault type the cold start gave the one now first
    assert all(set(rankings[c.number][0]) >= {c.truth["root_cause_entity"]} for c in cases)
    assert {rankings[c.number][1] for c in cases} == {"disk_io"}
