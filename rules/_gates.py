"""Gates: the parts of a guardrail that look beyond the proposal itself.

A guardrail's `match` is a stateless condition on the proposal's context fact; durable-rules matches
all of them at once. A rule may add gates, which the guard checks only for rules whose `match`
already held, cheapest first:

  during / outside   the decision's event time is inside one of these windows (or in none of them):
                     one-off ranges (change freezes) and recurring weekly/daily windows (maintenance)
  state              a condition on the target's latest observed state (`replica_lag_s: {gt: 30}`),
                     compiled through the same adapter as `match`
  limit              at most `max` earlier actions of the proposal's type on this target (its service,
                     or any target) within `window`; the rule fires when this action would exceed it
  cap                at most `percent` of the target's service's instances acted on (this action
                     included) within `window`

A rule fires when its `match` and every gate hold. Gates read the action history and the system state
through the two small protocols below, which `agent/` implements over SQLite; `MemoryHistory` and
`StaticState` serve rule tests and benchmarks. Everything is in event time, so a recording, a rule
test or a replay judges the same way every time.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta, timezone
from typing import Any, Literal, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from rules._schema_errors import did_you_mean

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
LimitScope = Literal["target", "service", "any"]


class ActionHistory(Protocol):
    """Actions rtem let through, in event time. Windows are half-open: `since < at <= until`."""

    def count(self, action: str, *, since: datetime, until: datetime,
              targets: Collection[str] | None = None) -> int:
        """How many `action`s on any of `targets` (None: on any target) in the window."""
        ...

    def targets(self, action: str, *, since: datetime, until: datetime, among: Collection[str]) -> set[str]:
        """Which of `among` had an `action` in the window."""
        ...


class SystemState(Protocol):
    """What rtem last observed about an entity: attribute name → latest value, as of event time `at`."""

    def latest(self, entity: str, at: datetime) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class RecordedAction:
    at: datetime
    action: str
    target: str
    incident_id: str | None = None


class MemoryHistory:
    """An ActionHistory in memory: rule tests, benchmarks, and callers without a store."""

    def __init__(self, actions: Collection[RecordedAction] = ()):
        self._actions: list[RecordedAction] = []
        self._times: list[float] = []
        for action in actions:
            self.add(action)

    def add(self, action: RecordedAction) -> None:
        ts = action.at.timestamp()
        index = bisect.bisect_right(self._times, ts)
        self._times.insert(index, ts)
        self._actions.insert(index, action)

    def record(self, action: str, target: str, at: datetime, *, incident_id: str | None = None,
               key: str | None = None) -> bool:
        self.add(RecordedAction(at, action, target, incident_id))
        return True

    def _window(self, action: str, since: datetime, until: datetime):
        lo = bisect.bisect_right(self._times, since.timestamp())
        hi = bisect.bisect_right(self._times, until.timestamp())
        return (a for a in self._actions[lo:hi] if a.action == action)

    def count(self, action: str, *, since: datetime, until: datetime,
              targets: Collection[str] | None = None) -> int:
        return sum(1 for a in self._window(action, since, until) if targets is None or a.target in targets)

    def targets(self, action: str, *, since: datetime, until: datetime, among: Collection[str]) -> set[str]:
        return {a.target for a in self._window(action, since, until) if a.target in among}

    def __len__(self) -> int:
        return len(self._actions)


class StaticState:
    """A SystemState from a fixed mapping entity → attributes (rule tests, benchmarks)."""

    def __init__(self, states: Mapping[str, Mapping[str, Any]] | None = None):
        self.states = {k: dict(v) for k, v in (states or {}).items()}

    def latest(self, entity: str, at: datetime) -> Mapping[str, Any]:
        return self.states.get(entity, {})


EMPTY_HISTORY = MemoryHistory()
NO_STATE = StaticState()


# -- the gates ----------------------------------------------------------------------------------------

class GateError(ValueError):
    """A gate that cannot work; `path` is where inside the rule (e.g. `("during", 0, "from")`)."""

    def __init__(self, message: str, path: tuple = (), hint: str = ""):
        super().__init__(message)
        self.path = path
        self.hint = hint


@dataclass(frozen=True)
class Limit:
    max: int
    window_s: float
    per: LimitScope = "target"

    def check(self, action: str, target: str, service: str, instances: Collection[str], at: datetime,
              history: ActionHistory) -> tuple[bool, str]:
        since = at - timedelta(seconds=self.window_s)
        if self.per == "any":
            scope, where = None, "any target"
        elif self.per == "service":
            scope, where = {service, *instances}, f"{service} or its instances"
        else:
            scope, where = {target}, target
        earlier = history.count(action, since=since, until=at, targets=scope)
        fired = earlier >= self.max
        return fired, (f"{earlier} earlier {action} on {where} within {format_duration(self.window_s)}; "
                       f"at most {self.max} allowed")


@dataclass(frozen=True)
class Cap:
    percent: float
    window_s: float

    def check(self, action: str, target: str, service: str, instances: Collection[str], at: datetime,
              history: ActionHistory) -> tuple[bool, str]:
        if not instances:
            return False, f"{service} has no instances in the topology"
        since = at - timedelta(seconds=self.window_s)
        affected = history.targets(action, since=since, until=at, among=set(instances))
        if target in instances:
            affected.add(target)
        share = 100.0 * len(affected) / len(instances)
        fired = share > self.percent
        return fired, (f"{action} on {len(affected)} of {len(instances)} {service} instances within "
                       f"{format_duration(self.window_s)} ({share:.0f}%, at most {self.percent:g}%)")


@dataclass(frozen=True)
class Window:
    """A one-off range (`start`/`end`, absolute) or a recurring one (`days`, `start_time`/`end_time`)."""

    text: str
    tz: Any = timezone.utc
    start: datetime | None = None
    end: datetime | None = None
    days: frozenset[int] = frozenset(range(7))
    start_time: time = time(0)
    end_time: time | None = None  # None: until the end of the day

    @property
    def one_off(self) -> bool:
        return self.start is not None

    def contains(self, at: datetime) -> bool:
        if self.one_off:
            return self.start <= at < self.end
        local = at.astimezone(self.tz)
        now, day = local.time().replace(tzinfo=None), local.weekday()
        end = self.end_time
        if end is None:
            return day in self.days and now >= self.start_time
        if self.start_time < end:
            return day in self.days and self.start_time <= now < end
        # crosses midnight: it belongs to the day it starts on
        return (day in self.days and now >= self.start_time) or ((day - 1) % 7 in self.days and now < end)


@dataclass(frozen=True)
class Gates:
    during: tuple[Window, ...] = ()
    outside: tuple[Window, ...] = ()
    state: Mapping[str, Any] | None = None
    limit: Limit | None = None
    cap: Cap | None = None
    notes: tuple[str, ...] = field(default=(), compare=False)

    def __bool__(self) -> bool:
        return bool(self.during or self.outside or self.state is not None or self.limit or self.cap)

    @property
    def needs_history(self) -> bool:
        return self.limit is not None or self.cap is not None


def parse_gates(rule: Mapping[str, Any]) -> Gates:
    """The gates of one rule (already schema-valid); GateError names the offending key."""
    problems: list[GateError] = []
    gates = _gates(rule, problems)
    if problems:
        raise problems[0]
    return gates


def gate_problems(rule: Mapping[str, Any]) -> list[GateError]:
    """Every problem with a rule's gates, not only the first: `rules check` shows them all in one run.
    Tolerates a rule the schema refused (a part of the wrong type is skipped; the schema reports it)."""
    problems: list[GateError] = []
    _gates(rule, problems)
    return problems


def _gates(rule: Mapping[str, Any], problems: list[GateError]) -> Gates:
    windows: dict[str, tuple[Window, ...]] = {}
    for key in ("during", "outside"):
        specs = rule.get(key) or ()
        found = [_window(w, (key, i), problems) for i, w in enumerate(specs if isinstance(specs, list) else ())
                 if isinstance(w, Mapping)]
        windows[key] = tuple(w for w in found if w is not None)
    limit = cap = None
    spec = rule.get("limit")
    if isinstance(spec, Mapping) and "window" in spec:
        window_s = _duration(spec["window"], ("limit", "window"), problems)
        if window_s is not None and isinstance(spec.get("max"), int):
            limit = Limit(max=int(spec["max"]), window_s=window_s, per=spec.get("per", "target"))
    spec = rule.get("cap")
    if isinstance(spec, Mapping) and "window" in spec:
        window_s = _duration(spec["window"], ("cap", "window"), problems)
        if window_s is not None and isinstance(spec.get("percent"), int | float):
            cap = Cap(percent=float(spec["percent"]), window_s=window_s)
    return Gates(during=windows["during"], outside=windows["outside"], state=rule.get("state"), limit=limit, cap=cap)


def parse_window(spec: Mapping[str, Any], path: tuple) -> Window:
    problems: list[GateError] = []
    window = _window(spec, path, problems)
    if problems or window is None:
        raise problems[0]
    return window


def _window(spec: Mapping[str, Any], path: tuple, problems: list[GateError]) -> Window | None:
    """One window, or None with every problem of it added to `problems` (time zone, from, to, days)."""
    before = len(problems)
    tz_name = spec.get("timezone", "UTC")
    tz: Any = timezone.utc
    try:
        tz = timezone.utc if tz_name == "UTC" else ZoneInfo(str(tz_name))
    except (ZoneInfoNotFoundError, ValueError, OSError):
        problems.append(GateError(f"unknown time zone {tz_name!r}", path + ("timezone",), _zone_hint(tz_name)))
    start, end = spec.get("from"), spec.get("to")
    if _is_date(start) or _is_date(end):
        if not (_is_date(start) and _is_date(end)):
            problems.append(GateError("a one-off window needs both 'from' and 'to' as dates or date-times",
                                      path + ("to" if _is_date(start) else "from",),
                                      "e.g. from: '2024-12-20T00:00:00Z', to: '2025-01-02T00:00:00Z'"))
            return None
        if "days" in spec:
            problems.append(GateError("'days' goes with recurring windows (times of day), not with dates",
                                      path + ("days",), "remove days, or use times of day ('HH:MM') in from/to"))
        first, last = _moment(start, tz, path + ("from",), problems), _moment(end, tz, path + ("to",), problems)
        if first is not None and last is not None and last <= first:
            problems.append(GateError("the window ends before it starts", path + ("to",), "'to' must be after 'from'"))
        if len(problems) > before:
            return None
        return Window(text=_describe(spec), tz=tz, start=first, end=last)
    days = spec.get("days", DAYS)
    begin = _clock(start, path + ("from",), problems) if start is not None else time(0)
    finish = _clock(end, path + ("to",), problems) if end is not None else None
    if begin is not None and finish is not None and finish == begin:
        problems.append(GateError("the window is empty: 'from' equals 'to'", path + ("to",),
                                  "leave out 'from' and 'to' for whole days"))
    if len(problems) > before or begin is None or not isinstance(days, list | tuple) or \
            not all(d in DAYS for d in days):
        return None
    if finish == time(0):
        finish = None  # until midnight
    return Window(text=_describe(spec), tz=tz, days=frozenset(DAYS.index(d) for d in days), start_time=begin,
                  end_time=finish)


def _zone_hint(name: Any) -> str:
    """Suggest the IANA zone a mistyped name probably meant (Europe/Berlinn → Europe/Berlin)."""
    guess = did_you_mean(name, sorted(available_timezones()))
    usage = "use an IANA name such as Europe/Berlin or America/New_York, or UTC"
    return f"did you mean {guess!r}? {usage}" if guess else usage


def format_duration(seconds: float) -> str:
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)$")
_CLOCK = re.compile(r"^([01]?[0-9]|2[0-4]):([0-5][0-9])(?::([0-5][0-9]))?$")


def _duration(value: Any, path: tuple, problems: list[GateError]) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        found = _DURATION.match(str(value))
        if not found:
            problems.append(GateError(f"{value!r} is not a duration", path, "write seconds, or e.g. 90s, 15m, 1h, 7d"))
            return None
        seconds = float(found[1]) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[found[2]]
    if seconds <= 0:
        problems.append(GateError("a window must be longer than zero", path, "e.g. 90s, 15m, 1h"))
        return None
    return seconds


def _is_date(value: Any) -> bool:
    return isinstance(value, str) and bool(re.match(r"^\d{4}-\d{2}-\d{2}", value))


def _moment(text: str, tz, path: tuple, problems: list[GateError]) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        problems.append(GateError(f"{text!r} is not an ISO 8601 date or date-time", path,
                                  "e.g. 2024-12-20 or 2024-12-20T18:00:00Z"))
        return None
    return moment.replace(tzinfo=tz) if moment.tzinfo is None else moment


def _clock(value: Any, path: tuple, problems: list[GateError]) -> time | None:
    found = _CLOCK.match(str(value)) if isinstance(value, str) else None
    if not found or (found[1] == "24" and (found[2] != "00" or found[3] not in (None, "00"))):
        hint = "write times of day as quoted 'HH:MM'"
        if isinstance(value, int) and not isinstance(value, bool):
            hours, minutes = divmod(value, 60)
            hint = (f"quote times of day: '{hours:02d}:{minutes:02d}' (YAML reads an unquoted {hours}:{minutes:02d} "
                    f"as the number {value}, in minutes)")
        problems.append(GateError(f"{value!r} is not a time of day", path, hint))
        return None
    hour = int(found[1])
    return time(0) if hour == 24 else time(hour, int(found[2]), int(found[3] or 0))


def _describe(spec: Mapping[str, Any]) -> str:
    parts = []
    if "days" in spec:
        parts.append(",".join(map(str, spec["days"])))
    if "from" in spec or "to" in spec:
        parts.append(f"{spec.get('from', '00:00')}–{spec.get('to', '24:00')}")
    parts.append(spec.get("timezone", "UTC"))
    return " ".join(parts) if len(parts) > 1 else "every day " + parts[0]
