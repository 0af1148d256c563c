"""kernel.cron against a reference: a brute-force oracle that reads the clock.

The oracle knows nothing of ``kernel.cron``'s search. For each local date whose day
fields match (day-of-month and day-of-week by Vixie's AND/OR rule, computed from the
sets the generator meant, not from ``parse``) it lists every matching wall-clock time and
keeps each instant at which the zone's clock really shows it: both instants of a
repeated time, none for a skipped one (a PEP 495 reading that does not convert back to
the same wall time does not exist). That is plain cron reading the clock, and it is what
``kernel.cron`` does for a wildcard hour.

For a fixed hour ``kernel.cron`` departs from the clock on purpose (README, "Schedules and
polling"). Those departures are listed in ``DIVERGENCES`` with their reason and a rule
that recognises them; every other difference fails the test, and each listed divergence
must show up in the seeded cases, so the list cannot outlive its reason.

A few thousand seeded cases: nine time zones (30- and 45-minute offsets, Lord Howe's
30-minute DST, southern-hemisphere and midnight transitions), starts near each zone's
transitions, at month and year ends and around 29 February, and anywhere up to 2060;
specs mixing lists, ranges, steps, names, Sunday as 7 and both day-field rules. Each case
compares the next ``N_FIRES`` fires.
"""

from __future__ import annotations

import datetime as dt
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import pytest

from shiftflow.kernel.cron import CronSpec, ScheduleError, next_fire, parse

UTC = dt.UTC
ZONES = [
    "UTC",
    "America/New_York",
    "Europe/London",
    "Europe/Berlin",
    "Australia/Lord_Howe",  # +10:30 / +11: a 30-minute change
    "Asia/Kolkata",  # +05:30, no DST
    "America/Santiago",  # changes at midnight, southern hemisphere
    "Pacific/Chatham",  # +12:45 / +13:45
    "America/St_Johns",  # -03:30 / -02:30
]
N_FIRES = 5
CASES_PER_SEED = 300
SEEDS = range(10)
#: Offsets in these zones differ by at most an hour, so a wall time more than this before
#: (after) another maps to an earlier (later) instant.
SLACK = dt.timedelta(hours=2)
MINUTE = dt.timedelta(minutes=1)


# --------------------------------------------------------------------------- the oracle


@dataclass(frozen=True)
class Case:
    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    dom_star: bool
    dow_star: bool
    tz: ZoneInfo
    start: dt.datetime
    empty_item: bool = False  # an item matches nothing (7/n in day-of-week): parse must refuse

    @property
    def hour_star(self) -> bool:
        return self.text.split()[1].startswith("*")

    def day_matches(self, day: dt.date) -> bool:
        if day.month not in self.months:
            return False
        by_dom, by_dow = day.day in self.days, day.isoweekday() % 7 in self.weekdays
        return (by_dom and by_dow) if (self.dom_star or self.dow_star) else (by_dom or by_dow)

    def wall_matches(self, wall: dt.datetime) -> bool:
        return wall.minute in self.minutes and wall.hour in self.hours and self.day_matches(wall.date())


def _wall(instant: dt.datetime, tz: ZoneInfo) -> dt.datetime:
    return instant.astimezone(tz).replace(tzinfo=None)


def oracle(case: Case, n: int, years: int = 60) -> list[dt.datetime]:
    """The first ``n`` instants after ``case.start`` at which the clock shows a matching time."""
    tz, start = case.tz, case.start
    lowest_wall = _wall(start, tz) - SLACK
    found: list[dt.datetime] = []
    enough_after: dt.datetime | None = None  # walls beyond this cannot beat the n-th fire
    day = lowest_wall.date()
    last_day = day + dt.timedelta(days=366 * years)
    hours, minutes = sorted(case.hours), sorted(case.minutes)
    while day <= last_day:
        if case.day_matches(day):
            for h in hours:
                for m in minutes:
                    wall = dt.datetime(day.year, day.month, day.day, h, m)
                    if wall < lowest_wall:
                        continue
                    if enough_after is not None and wall > enough_after:
                        return sorted(found)[:n]
                    for fold in (0, 1):
                        instant = wall.replace(tzinfo=tz, fold=fold).astimezone(UTC)
                        if _wall(instant, tz) == wall and instant > start and instant not in found:
                            found.append(instant)
                    if len(found) >= n:
                        enough_after = _wall(sorted(found)[n - 1], tz) + SLACK
        day += dt.timedelta(days=1)
    return sorted(found)[:n]


def project(spec: CronSpec, case: Case, n: int) -> list[dt.datetime]:
    out: list[dt.datetime] = []
    current = case.start
    while len(out) < n:
        nxt = next_fire(spec, current, case.tz)
        if nxt is None:
            break
        out.append(nxt)
        current = nxt
    return out


# --------------------------------------------------------------------------- documented divergences


def _skipped_walls(instant: dt.datetime, tz: ZoneInfo) -> list[dt.datetime]:
    """The whole-minute wall times the clock jumped over just before ``instant``."""
    before, at = _wall(instant - dt.timedelta(seconds=1), tz), _wall(instant, tz)
    first = before.replace(second=0) + MINUTE
    return [first + k * MINUTE for k in range(int((at - first) / MINUTE))]


def _gap_fire(case: Case, instant: dt.datetime, project_fires: list[dt.datetime]) -> bool:
    """An extra fire: at the end of a spring-forward gap holding a matching wall time."""
    return not case.hour_star and any(case.wall_matches(w) for w in _skipped_walls(instant, case.tz))


def _second_pass(case: Case, instant: dt.datetime, project_fires: list[dt.datetime]) -> bool:
    """A missing fire: the second pass of a repeated wall time whose first pass fired."""
    local = instant.astimezone(case.tz)
    first = local.replace(tzinfo=None).replace(tzinfo=case.tz, fold=0).astimezone(UTC)
    return not case.hour_star and local.fold == 1 and (first in project_fires or first <= case.start)


@dataclass(frozen=True)
class Divergence:
    name: str
    side: str  # "extra": kernel.cron fires where the oracle does not; "missing": the reverse
    reason: str
    applies: Callable[[Case, dt.datetime, list[dt.datetime]], bool]


DIVERGENCES = (
    Divergence(
        "fixed hour, spring forward",
        "extra",
        "a fixed-hour slot the clock skips fires once at the end of the gap (02:30 -> 03:00), "
        "so a nightly job still runs that night; the clock never shows 02:30",
        _gap_fire,
    ),
    Divergence(
        "fixed hour, fall back",
        "missing",
        "a fixed-hour slot the clock shows twice fires at its first occurrence only, so a "
        "nightly job runs once that night; the clock shows 01:30 twice",
        _second_pass,
    ),
)


def explain(case: Case, got: list[dt.datetime], want: list[dt.datetime]) -> tuple[list[str], list[str]]:
    """The listed divergences behind each difference, and the differences none explains."""
    horizon = min(got[-1], want[-1]) if got and want else None
    seen, unexplained = [], []
    for side, instants in (("extra", set(got) - set(want)), ("missing", set(want) - set(got))):
        for instant in sorted(instants):
            if horizon is not None and instant > horizon:
                continue  # beyond the shorter list: not compared
            names = [d.name for d in DIVERGENCES if d.side == side and d.applies(case, instant, got)]
            if names:
                seen.extend(names)
            else:
                unexplained.append(f"{side} {instant.astimezone(case.tz).isoformat()}")
    return seen, unexplained


# --------------------------------------------------------------------------- seeded cases

MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
DAYS = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]


def _item(rng: random.Random, lo: int, hi: int, names: list[str] | None) -> tuple[str, set[int]]:
    """One item of a field and the values it means, worked out here, not by ``parse``."""

    def show(v: int) -> str:
        if names and v != 7 and rng.random() < 0.3:  # 7 (Sunday) has no name of its own
            return names[v - lo] if lo == 1 else names[v % 7]
        return str(v)

    top = 6 if names is DAYS else hi  # open ends of day-of-week stop at Saturday
    form = rng.choice(["a", "a", "a-b", "a-b/n", "a/n", "*/n"])
    if form == "a":
        a = rng.randint(lo, hi)
        return show(a), {a}
    if form in ("a-b", "a-b/n"):
        a = rng.randint(lo, hi)
        b = rng.randint(a, hi)
        n = rng.randint(1, 6) if form == "a-b/n" else 1
        return f"{show(a)}-{show(b)}" + (f"/{n}" if n > 1 else ""), set(range(a, b + 1, n))
    if form == "a/n":
        a, n = rng.randint(lo, hi if rng.random() < 0.1 else top), rng.randint(1, 8)
        return f"{show(a)}/{n}", set(range(a, top + 1, n))  # 7/n in day-of-week: nothing
    n = rng.randint(1, max(2, (top - lo) // 2))
    return f"*/{n}", set(range(lo, top + 1, n))


def _field(
    rng: random.Random, lo: int, hi: int, names: list[str] | None, star: float
) -> tuple[str, set[int], bool]:
    """A field's text, its values, and whether one of its items matches nothing."""
    top = 6 if names is DAYS else hi
    if rng.random() < star:
        return "*", set(range(lo, top + 1)), False
    texts, values, empty = [], set(), False
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        text, got = _item(rng, lo, hi, names)
        texts.append(text)
        values |= got
        empty = empty or not got
    if names is DAYS and 7 in values:  # 7 is Sunday too
        values = (values - {7}) | {0}
    return ",".join(texts), values, empty


def _transitions(tz: ZoneInfo) -> list[dt.datetime]:
    """The zone's offset changes, 2024-2031, to the hour."""
    out = []
    day = dt.datetime(2024, 1, 1, 12, tzinfo=UTC)
    while day.year < 2031:
        nxt = day + dt.timedelta(days=1)
        if day.astimezone(tz).utcoffset() != nxt.astimezone(tz).utcoffset():
            hour = day
            while hour.astimezone(tz).utcoffset() == day.astimezone(tz).utcoffset():
                hour += dt.timedelta(minutes=15)
            out.append(hour)
        day = nxt
    return out


TZS = {name: ZoneInfo(name) for name in ZONES}
TRANSITIONS = {name: _transitions(tz) for name, tz in TZS.items()}


def _start(rng: random.Random, name: str) -> tuple[dt.datetime, dt.datetime | None]:
    """Where a case starts, and the clock change it starts near (if it does)."""
    kind = rng.random()
    jitter = dt.timedelta(seconds=rng.randint(0, 59))
    if kind < 0.5 and TRANSITIONS[name]:  # around a clock change
        around = rng.choice(TRANSITIONS[name])
        return around + dt.timedelta(minutes=rng.randint(-300, 120)) + jitter, around
    if kind < 0.8:  # just before a month end, a year end or 29 February
        year = rng.randint(2024, 2040)
        month = rng.randint(1, 12)
        first_of_next = dt.datetime(year + month // 12, month % 12 + 1, 1, tzinfo=TZS[name])
        return (first_of_next - dt.timedelta(minutes=rng.randint(1, 3000))).astimezone(UTC) + jitter, None
    return dt.datetime(2024, 1, 1, tzinfo=UTC) + dt.timedelta(seconds=rng.randint(0, 36 * 365 * 86400)), None


def _case(rng: random.Random) -> Case:
    dense = rng.random() < 0.6
    minute_text, minutes, _ = _field(rng, 0, 59, None, 0.3 if dense else 0.05)
    hour_text, hours, _ = _field(rng, 0, 23, None, 0.5 if dense else 0.2)
    dom_text, days, _ = _field(rng, 1, 31, None, 0.6)
    month_text, months, _ = _field(rng, 1, 12, MONTHS, 0.7 if dense else 0.4)
    dow_text, weekdays, empty = _field(rng, 0, 7, DAYS, 0.6)
    if rng.random() < 0.1:  # 29 February, alone or with a week day
        dom_text, days, month_text, months = "29", {29}, "2", {2}
    name = rng.choice(ZONES)
    start, change = _start(rng, name)
    if change is not None and rng.random() < 0.5:  # fixed hours on both sides of the change
        hours = {(change + d).astimezone(TZS[name]).hour for d in (-MINUTE, dt.timedelta(0))}
        hour_text = ",".join(map(str, sorted(hours)))
        month_text, months = "*", set(range(1, 13))
    return Case(
        " ".join([minute_text, hour_text, dom_text, month_text, dow_text]),
        frozenset(minutes),
        frozenset(hours),
        frozenset(days),
        frozenset(months),
        frozenset(weekdays),
        dom_text.startswith("*"),
        dow_text.startswith("*"),
        TZS[name],
        start,
        empty,
    )


def _never_fires(case: Case) -> bool:
    """No matching date in a whole 400-year Gregorian cycle (a whole number of weeks)."""
    day = dt.date(2000, 1, 1)
    return not any(case.day_matches(day + dt.timedelta(days=k)) for k in range(146_097))


# --------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("seed", SEEDS)
def test_next_fires_agree_with_the_clock_reading_oracle(seed):
    rng = random.Random(seed)
    differences: list[str] = []
    seen: Counter[str] = Counter()
    refused = 0
    for _ in range(CASES_PER_SEED):
        case = _case(rng)
        try:
            spec = parse(case.text)
        except ScheduleError as exc:
            refused += 1
            if case.empty_item:
                assert str(exc).startswith("day-of-week: "), f"{case.text!r} refused: {exc}"
            else:
                assert str(exc).startswith("day-of-month: "), f"{case.text!r} refused: {exc}"
                assert _never_fires(case), f"{case.text!r} refused but fires"
            continue
        assert not case.empty_item, f"{case.text!r} has an item that matches nothing, yet was accepted"
        got, want = project(spec, case, N_FIRES), oracle(case, N_FIRES)
        assert len(got) == N_FIRES, f"{case.text!r} in {case.tz} from {case.start}: {got}"
        names, unexplained = explain(case, got, want)
        seen.update(names)
        if unexplained:
            differences.append(f"{case.text!r} in {case.tz.key} from {case.start.isoformat()}: {unexplained}")
    assert not differences, "\n".join(differences[:20])
    assert refused < CASES_PER_SEED // 10
    SEEN[seed] = seen


#: Divergences seen per seed, kept by the test above for the one below.
SEEN: dict[int, Counter[str]] = {}


def test_every_listed_divergence_shows_up_in_the_seeded_cases():
    """A listed divergence that no case shows is stale data: drop it or widen the cases."""
    for seed in SEEDS:
        if seed not in SEEN:  # run alone or out of order
            test_next_fires_agree_with_the_clock_reading_oracle(seed)
    total = sum(SEEN.values(), Counter())
    for divergence in DIVERGENCES:
        assert total[divergence.name] > 0, f"{divergence.name!r} never seen"


@pytest.mark.parametrize(
    ("text", "tz", "start", "want"),
    [
        # The oracle's ground truth by hand, so one fault in it and kernel.cron cannot hide.
        ("0 * * * *", "America/New_York", "2024-11-03T04:30Z", ["05:00", "06:00", "07:00"]),  # 01:00 twice
        ("30 1 * * *", "America/New_York", "2024-11-02T12:00Z", ["03T05:30", "03T06:30", "04T06:30"]),
        (
            "30 2 * * *",
            "Europe/Berlin",
            "2024-03-30T12:00Z",
            ["2024-04-01T00:30", "2024-04-02T00:30"],
        ),  # 31st: none
    ],
)
def test_the_oracle_reads_the_clock(text, tz, start, want):
    begin = dt.datetime.fromisoformat(start)
    spec = parse(text)
    case = Case(
        text,
        *(frozenset(v) for v in (spec.minutes, spec.hours, spec.days, spec.months, spec.weekdays)),
        spec.dom_star,
        spec.dow_star,
        TZS[tz],
        begin,
    )
    prefix = {5: f"{begin:%Y-%m-%dT}", 8: f"{begin:%Y-%m-}", 16: ""}
    expected = [dt.datetime.fromisoformat(prefix[len(w)] + w + ":00+00:00") for w in want]
    assert oracle(case, len(want)) == expected
