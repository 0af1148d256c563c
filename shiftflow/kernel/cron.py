"""Schedule specs: cron expressions, fixed intervals and one-off times, and their next fire time.

Pure: no clock and no I/O. ``parse`` turns a cron expression into a ``CronSpec``;
``next_fire(spec, after, tz)`` returns the first fire time strictly after ``after``.

Cron expressions have 5 fields (``minute hour day-of-month month day-of-week``) or 6
with ``second`` first. A field is ``*``, a number, a range ``a-b``, a step ``*/n``,
``a-b/n`` or ``a/n`` (``a`` to the end of the range), or a comma list of those.
Months and week days also take English names (``JAN``, ``MON-FRI``); day-of-week 0 and
7 are both Sunday. An item that matches nothing is refused with its field named: the one
such item is ``7/n`` in day-of-week, as ``a/n`` runs from ``a`` to Saturday (6). It is
refused rather than read as Sunday because either reading (Sunday alone, or ``0/n``) is a
guess, and Vixie cron has no ``a/n`` form to follow (it refuses ``a/n`` altogether);
write ``0/n`` or ``SUN/n``. ``@yearly``, ``@annually``, ``@monthly``, ``@weekly``, ``@daily``,
``@midnight`` and ``@hourly`` stand for their usual expressions.

Day-of-month and day-of-week combine like Vixie cron: when both are restricted a day
matches if *either* matches (``0 0 1 * MON`` fires on the 1st and on every Monday);
when one of them starts with ``*`` the day must match both (so ``*/2`` in day-of-month
still combines with AND, as in Vixie cron).

Daylight-saving rule. A cron expression is read as wall-clock time in the schedule's
time zone. What a clock change does depends on the hour field, the split Vixie cron makes
between "wildcard" and "fixed-time" jobs:

* a *fixed hour* (``30 2 * * *``, ``*/15 1 * * *``) names a time of day, and every
  wall-clock slot fires once that day. A slot that does not exist (the clock jumps
  forward, e.g. 02:30 on the night summer time starts in Europe/Berlin) fires once at
  the first instant after the gap (03:00 local time); several slots inside one gap
  collapse into that single fire. A slot that exists twice (the clock falls back) fires
  at its first occurrence only (still in summer time);
* a *wildcard hour* (the hour field starts with ``*``: ``0 * * * *``, ``*/10 */2 * * *``)
  reads the clock as it goes: it fires whenever the clock shows a matching time, so in a
  repeated hour on both passes, and never for times a forward jump skips. An hourly job
  thus runs once per real hour through both changes: ``0 * * * *`` in New York fires at
  01:00 EDT and again at 01:00 EST an hour later, instead of 01:00 EDT then 02:00 EST two
  hours apart; and ``10 * * * *`` in Berlin fires at 01:10 CET then 03:10 CEST, without
  an extra fire at 03:00. Vixie cron also counts a minute starting with ``*`` as wildcard;
  here the hour alone decides, since a fixed hour is a time of day the user named.

Intervals are elapsed time, not wall-clock time: ``every 3600 s`` stays 3600 s apart
across a DST change. Their slots are ``anchor + k * interval`` for every whole ``k``
(the anchor defaults to the Unix epoch, so ``every 60 s`` fires on each UTC minute).
Every instant this module returns is an aware ``datetime`` in UTC.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from bisect import bisect_left
from dataclasses import dataclass, field
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from shiftflow.kernel.errors import PermanentError

UTC = dt.UTC
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)


class ScheduleError(PermanentError):
    """Raised when a cron expression, interval, time or time zone is malformed.

    The message starts with the field it is about, e.g. ``minute: 61 is out of range 0-59``.
    """


#: (name, lowest, highest) of the six cron fields, seconds first.
FIELDS: tuple[tuple[str, int, int], ...] = (
    ("second", 0, 59),
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day-of-month", 1, 31),
    ("month", 1, 12),
    ("day-of-week", 0, 7),
)
MONTH_NAMES = {
    m: i + 1
    for i, m in enumerate(
        ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
    )
}
DAY_NAMES = {d: i for i, d in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"))}
MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
#: Days in each month in the longest year (a leap year), to refuse specs that never fire.
_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
#: How far ahead ``next_fire`` searches, in years. The Gregorian calendar repeats every 400
#: years (146,097 days, a whole number of weeks), so a day pattern that matches no date in
#: 400 years matches none ever: such a spec never fires, and ``parse`` refuses it. Under
#: AND (a day field starting with ``*``) slots can be decades apart: 29 February on a
#: Sunday comes 40 years after the previous one across 2100.
CYCLE_YEARS = 400
#: Bound on candidates tried by one ``next_fire`` (one is the rule; a wildcard hour meeting a gap takes two).
_MAX_CANDIDATES = 100_000
_NUMBER = re.compile(r"^\d+$")
_SECOND = dt.timedelta(seconds=1)
_MINUTE = dt.timedelta(minutes=1)
_HOUR = dt.timedelta(hours=1)
_DAY = dt.timedelta(days=1)


@dataclass(frozen=True)
class CronSpec:
    """A parsed cron expression: the allowed values of each field, sorted.

    ``weekdays`` uses cron numbering (0 = Sunday ... 6 = Saturday). ``dom_star`` and
    ``dow_star`` record whether the day fields started with ``*`` (Vixie's AND/OR rule),
    ``hour_star`` whether the hour field did (the daylight-saving rule).
    """

    expression: str
    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: tuple[int, ...]
    months: tuple[int, ...]
    weekdays: tuple[int, ...]
    dom_star: bool
    dow_star: bool
    has_seconds: bool
    hour_star: bool = False
    _sets: tuple[frozenset[int], ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        sets = tuple(
            frozenset(v)
            for v in (self.seconds, self.minutes, self.hours, self.days, self.months, self.weekdays)
        )
        object.__setattr__(self, "_sets", sets)


@dataclass(frozen=True)
class IntervalSpec:
    """Every ``seconds`` of elapsed time, on the slots ``anchor + k * seconds``."""

    seconds: int
    anchor: dt.datetime = EPOCH


@dataclass(frozen=True)
class OnceSpec:
    """A single fire at ``at`` (aware)."""

    at: dt.datetime


Spec = CronSpec | IntervalSpec | OnceSpec


# --------------------------------------------------------------------------- parsing


def _value(token: str, name: str, lo: int, hi: int, names: dict[str, int]) -> int:
    upper = token.upper()
    if upper in names:
        return names[upper]
    if not _NUMBER.match(token):
        expected = f"a number {lo}-{hi}" + (f" or a name ({', '.join(names)})" if names else "")
        raise ScheduleError(f"{name}: {token!r} is not {expected}")
    value = int(token)
    if not lo <= value <= hi:
        raise ScheduleError(f"{name}: {value} is out of range {lo}-{hi}")
    return value


def _field(text: str, name: str, lo: int, hi: int, names: dict[str, int]) -> tuple[int, ...]:
    values: set[int] = set()
    for part in text.split(","):
        if not part:
            raise ScheduleError(f"{name}: empty item in {text!r}")
        span, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not _NUMBER.match(step_text):
                raise ScheduleError(f"{name}: step {step_text!r} is not a whole number")
            step = int(step_text)
            if step < 1:
                raise ScheduleError(f"{name}: step must be at least 1, got {step}")
        # Open ends (``*``, ``a/n``) stop at Saturday: 7 is only an alias of Sunday.
        top = 6 if name == "day-of-week" else hi
        if span == "*":
            start, end = lo, top
        elif "-" in span:
            first, _, last = span.partition("-")
            start, end = _value(first, name, lo, hi, names), _value(last, name, lo, hi, names)
            if start > end:
                raise ScheduleError(f"{name}: range {span} goes backwards")
        else:
            start = _value(span, name, lo, hi, names)
            end = top if slash else start
        item = range(start, end + 1, step)
        if not item:
            # Only ``7/n`` in day-of-week gets here: ``a/n`` runs from a to Saturday (6).
            raise ScheduleError(
                f"{name}: {part!r} matches no day (a/n runs from a to 6, Saturday; "
                f"for Sunday onwards write 0/{step} or SUN/{step})"
            )
        values.update(item)
    if name == "day-of-week" and 7 in values:  # 7 is Sunday too
        values.discard(7)
        values.add(0)
    return tuple(sorted(values))


@lru_cache(maxsize=4096)
def parse(expression: str) -> CronSpec:
    """Parse a cron expression (5 fields, 6 with seconds first, or an ``@`` macro).

    Parameters:
        expression: e.g. ``"*/15 9-17 * * MON-FRI"`` or ``"30 0 0 * * *"``.

    Returns:
        The parsed spec (cached: parsing the same text twice returns the same object).

    Raises:
        ScheduleError: malformed; the message names the field, e.g.
            ``minute: 61 is out of range 0-59``.
    """
    text = " ".join(expression.split())
    if text.startswith("@"):
        if text.lower() not in MACROS:
            raise ScheduleError(f"cron: unknown macro {text!r}; expected one of {', '.join(MACROS)}")
        text = MACROS[text.lower()]
    parts = text.split(" ") if text else []
    if len(parts) not in (5, 6):
        raise ScheduleError(
            "cron: expected 5 fields (minute hour day-of-month month day-of-week) or 6 (second first), "
            f"got {len(parts)} in {expression!r}"
        )
    has_seconds = len(parts) == 6
    if not has_seconds:
        parts = ["0", *parts]
    parsed = [
        _field(
            part, name, lo, hi, MONTH_NAMES if name == "month" else DAY_NAMES if name == "day-of-week" else {}
        )
        for part, (name, lo, hi) in zip(parts, FIELDS, strict=True)
    ]
    dom_star, dow_star = parts[3].startswith("*"), parts[5].startswith("*")
    seconds, minutes, hours, days, months, weekdays = parsed
    # The only spec that never fires: AND with no listed day in any listed month. Every date
    # that exists meets every week day within CYCLE_YEARS, and a day-of-month starting with
    # '*' holds the 1st; ``_next_naive`` gives up after CYCLE_YEARS exactly when this refuses.
    if dow_star and not any(day <= _MONTH_DAYS[m - 1] for day in days for m in months):
        raise ScheduleError(
            f"day-of-month: day {days[0]} never occurs in month(s) {', '.join(map(str, months))}"
        )
    return CronSpec(
        expression.strip(),
        seconds,
        minutes,
        hours,
        days,
        months,
        weekdays,
        dom_star,
        dow_star,
        has_seconds,
        hour_star=parts[2].startswith("*"),
    )


def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``.

    Raises:
        ScheduleError: ``timezone: 'Mars/Base' is not a known IANA time zone``.
    """
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(
            f"timezone: {name!r} is not a known IANA time zone (e.g. Europe/Berlin)"
        ) from None


_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_duration(text: str, name: str = "every") -> int:
    """Seconds in ``"90"``, ``"90s"``, ``"5m"``, ``"1h30m"`` or ``"2d"``.

    Raises:
        ScheduleError: malformed or not positive; the message names ``name``.
    """
    raw = text.strip().lower()
    if _NUMBER.match(raw):
        seconds = int(raw)
    else:
        match = _DURATION.match(raw)
        if not raw or match is None:
            raise ScheduleError(f"{name}: {text!r} is not a duration like 90, 90s, 5m, 1h30m or 2d")
        d, h, m, s = (int(g) if g else 0 for g in match.groups())
        seconds = ((d * 24 + h) * 60 + m) * 60 + s
    if seconds < 1:
        raise ScheduleError(f"{name}: must be at least 1 second, got {text!r}")
    return seconds


def parse_time(text: str, tz: dt.tzinfo, name: str = "at") -> dt.datetime:
    """An ISO 8601 time; without an offset it is wall-clock time in ``tz`` (first occurrence).

    Returns:
        The instant, aware, in UTC.

    Raises:
        ScheduleError: not an ISO 8601 date-time.
    """
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ScheduleError(f"{name}: {text!r} is not an ISO 8601 time like 2030-01-31T09:00") from None
    if value.tzinfo is None:
        return _resolve(value, tz)
    return value.astimezone(UTC)


# --------------------------------------------------------------------------- next fire


def _day_matches(spec: CronSpec, t: dt.datetime) -> bool:
    sets = spec._sets
    dom = t.day in sets[3]
    dow = (t.weekday() + 1) % 7 in sets[5]  # Python: Monday=0; cron: Sunday=0
    if spec.dom_star or spec.dow_star:
        return dom and dow
    return dom or dow


def _next_day(spec: CronSpec, year: int, month: int, day: int) -> int | None:
    """The first day >= ``day`` of ``year``-``month`` that matches the day fields, or None."""
    length = calendar.monthrange(year, month)[1]
    # Cron week day of day 0 of the month (the day before the 1st): Sunday=0.
    base = dt.date(year, month, 1).isoweekday() - 1
    weekdays = spec._sets[5]
    if spec.dow_star and not spec.dom_star:
        # AND with day-of-month restricted: only its days are candidates.
        for d in spec.days[bisect_left(spec.days, day) :]:
            if d > length:
                return None
            if (base + d) % 7 in weekdays:
                return d
        return None
    days = spec._sets[3]
    both = spec.dom_star or spec.dow_star
    for d in range(day, length + 1):
        by_dom, by_dow = d in days, (base + d) % 7 in weekdays
        if (by_dom and by_dow) if both else (by_dom or by_dow):
            return d
    return None


def _next_naive(spec: CronSpec, t: dt.datetime) -> dt.datetime | None:
    """The first wall-clock time >= ``t`` (naive, whole seconds) matching every field.

    None when no date within ``CYCLE_YEARS`` matches (the spec never fires) or the
    match would lie beyond year 9999, the last one ``datetime`` holds.
    """
    secs, mins, hours, _days, months, _dows = spec._sets
    limit = min(t.year + CYCLE_YEARS, dt.MAXYEAR)
    try:
        while t.year <= limit:
            if t.month not in months:
                i = bisect_left(spec.months, t.month)
                t = (
                    dt.datetime(t.year, spec.months[i], 1)
                    if i < len(spec.months)
                    else dt.datetime(t.year + 1, spec.months[0], 1)
                )
                continue
            if not _day_matches(spec, t):  # (the common case, today matches, stays cheap)
                day = _next_day(spec, t.year, t.month, t.day + 1)
                if day is None:  # on to the 1st of the next month
                    t = dt.datetime(t.year + t.month // 12, t.month % 12 + 1, 1)
                    continue
                t = dt.datetime(t.year, t.month, day)
            if t.hour not in hours:
                i = bisect_left(spec.hours, t.hour)
                if i == len(spec.hours):
                    t = dt.datetime(t.year, t.month, t.day) + _DAY
                    continue
                t = t.replace(hour=spec.hours[i], minute=0, second=0)
            if t.minute not in mins:
                i = bisect_left(spec.minutes, t.minute)
                if i == len(spec.minutes):
                    t = t.replace(minute=0, second=0) + _HOUR
                    continue
                t = t.replace(minute=spec.minutes[i], second=0)
            if t.second not in secs:
                i = bisect_left(spec.seconds, t.second)
                if i == len(spec.seconds):
                    t = t.replace(second=0) + _MINUTE
                    continue
                t = t.replace(second=spec.seconds[i])
            return t
    except (OverflowError, ValueError):  # stepped past 9999-12-31
        return None
    return None


def _offset_at(instant: dt.datetime, tz: dt.tzinfo) -> dt.timedelta:
    offset = instant.astimezone(tz).utcoffset()
    assert offset is not None
    return offset


def _offsets(wall: dt.datetime, tz: dt.tzinfo) -> tuple[dt.timedelta, dt.timedelta]:
    """The offsets PEP 495 reads naive ``wall`` with: before a transition (fold=0) and after (fold=1).

    Equal: an ordinary time. First greater: a repeated time (fall back). First smaller: a
    time in a gap (spring forward).
    """
    early = wall.replace(tzinfo=tz, fold=0).utcoffset()
    late = wall.replace(tzinfo=tz, fold=1).utcoffset()
    assert early is not None and late is not None
    return early, late


def _transition(wall: dt.datetime, early: dt.timedelta, late: dt.timedelta, tz: dt.tzinfo) -> dt.datetime:
    """The transition (aware UTC) next to ``wall``, a repeated or skipped time: the first
    instant with offset ``late``. It lies between ``wall`` read with either offset;
    transitions fall on whole seconds."""
    lo, hi = sorted(
        int(((wall - offset).replace(tzinfo=UTC) - EPOCH).total_seconds()) for offset in (early, late)
    )
    while hi - lo > 1:  # offset `early` at lo, `late` at hi
        mid = (lo + hi) // 2
        if _offset_at(EPOCH + dt.timedelta(seconds=mid), tz) == late:
            hi = mid
        else:
            lo = mid
    return EPOCH + dt.timedelta(seconds=hi)


def _resolve(wall: dt.datetime, tz: dt.tzinfo) -> dt.datetime:
    """The instant (aware UTC) at which wall-clock time ``wall`` (naive) happens in ``tz``.

    Ambiguous (fall back): the first occurrence. Nonexistent (spring forward): the
    first instant after the gap, i.e. the transition itself.
    """
    early, late = _offsets(wall, tz)
    if early >= late:
        return (wall - early).replace(tzinfo=UTC)
    return _transition(wall, early, late, tz)


def _next_cron(spec: CronSpec, after: dt.datetime, tz: dt.tzinfo) -> dt.datetime | None:
    """The module docstring's DST rule: a fixed hour fires each wall-clock slot once (first
    occurrence; a skipped slot at the end of its gap); a wildcard hour fires whenever the
    clock shows a matching time (both passes of a repeated hour; never in a gap)."""
    try:
        here = after.astimezone(tz)
        wall = here.replace(tzinfo=None, microsecond=0)
        t = wall + _SECOND
        second_pass: dt.datetime | None = None
        # `after` lies in a repeated span of walls (on its first or second pass) when its wall
        # reads with two offsets, one of them its own. Only two cases need to know: a second
        # pass (fold=1 says so) and a wildcard hour's first pass (fixed offsets have neither).
        if here.fold or (spec.hour_star and not isinstance(tz, dt.timezone)):
            own, other = here.utcoffset(), here.replace(fold=1 - here.fold).utcoffset()
            assert own is not None and other is not None
            if own != other:
                early, late = max(own, other), min(own, other)
                start = (_transition(wall, early, late, tz) + late).replace(tzinfo=None)
                end = start + (early - late)
                if here.fold and not spec.hour_star:
                    t = max(t, end)  # the span's slots fired on its first pass
                elif not here.fold and spec.hour_star:
                    # The span's slots fire again on its second pass, after every first-pass one.
                    again = _next_naive(spec, start)
                    if again is not None and again < end:
                        second_pass = (again - late).replace(tzinfo=UTC)
        for _ in range(_MAX_CANDIDATES):
            wall_next = _next_naive(spec, t)
            if wall_next is None:
                return second_pass
            early, late = _offsets(wall_next, tz)
            if early < late:  # a gap
                transition = _transition(wall_next, early, late, tz)
                if spec.hour_star:  # the clock never shows it: on to the end of the gap
                    t = (transition + late).replace(tzinfo=None)
                    continue
                instant = transition
            else:
                instant = (wall_next - early).replace(tzinfo=UTC)
                if instant <= after and spec.hour_star:
                    instant = (wall_next - late).replace(tzinfo=UTC)  # its second pass
            if instant > after:
                return instant if second_pass is None else min(instant, second_pass)
            t = wall_next + _SECOND
    except OverflowError:  # a slot at the very end of year 9999, beyond UTC's range
        return None
    return second_pass


def next_fire(spec: Spec, after: dt.datetime, tz: dt.tzinfo = UTC) -> dt.datetime | None:
    """The first fire time of ``spec`` strictly after ``after``.

    Parameters:
        spec: a ``CronSpec`` (from ``parse``), ``IntervalSpec`` or ``OnceSpec``.
        after: an aware datetime.
        tz: the time zone a cron expression's wall-clock times are read in
            (intervals and one-off times ignore it).

    Returns:
        An aware UTC datetime, or None when the spec has no fire time left
        (a one-off time already past, a cron spec that never fires, or a slot
        beyond year 9999).

    Raises:
        ValueError: ``after`` is naive.
    """
    if after.tzinfo is None or after.utcoffset() is None:
        raise ValueError("next_fire needs an aware datetime (naive times are ambiguous)")
    if isinstance(spec, CronSpec):
        return _next_cron(spec, after, tz)
    if isinstance(spec, IntervalSpec):
        step = dt.timedelta(seconds=spec.seconds)
        k = (after - spec.anchor) // step + 1
        return (spec.anchor + k * step).astimezone(UTC)
    return spec.at.astimezone(UTC) if spec.at > after else None


def fires_between(
    spec: Spec, after: dt.datetime, until: dt.datetime, tz: dt.tzinfo = UTC, limit: int = 1000
) -> list[dt.datetime]:
    """The fire times ``t`` with ``after < t <= until``, oldest first, at most ``limit``."""
    out: list[dt.datetime] = []
    current = after
    while len(out) < limit:
        nxt = next_fire(spec, current, tz)
        if nxt is None or nxt > until:
            break
        out.append(nxt)
        current = nxt
    return out
