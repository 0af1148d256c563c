"""kernel.cron: parsing, next fire times, the DST rule, and random specs against brute force."""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import replace
from zoneinfo import ZoneInfo

import pytest

from shiftflow.kernel.cron import (
    CronSpec,
    IntervalSpec,
    OnceSpec,
    ScheduleError,
    fires_between,
    next_fire,
    parse,
    parse_duration,
    parse_time,
    zone,
)

UTC = dt.UTC
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def local(tz: ZoneInfo, *args: int, fold: int = 0) -> dt.datetime:
    return dt.datetime(*args, tzinfo=tz, fold=fold)


def walls(spec: CronSpec, start: dt.datetime, end: dt.datetime, tz: ZoneInfo) -> list[str]:
    return [t.astimezone(tz).strftime("%m-%d %H:%M:%S%z") for t in fires_between(spec, start, end, tz)]


# --------------------------------------------------------------------------- parsing


def test_fields_ranges_steps_lists_and_names():
    spec = parse("*/15 9-17/4 1,15 JAN-mar mon-FRI")
    assert spec.seconds == (0,)
    assert spec.minutes == (0, 15, 30, 45)
    assert spec.hours == (9, 13, 17)
    assert spec.days == (1, 15)
    assert spec.months == (1, 2, 3)
    assert spec.weekdays == (1, 2, 3, 4, 5)
    assert not spec.has_seconds and not spec.dom_star and not spec.dow_star


def test_six_fields_put_seconds_first():
    spec = parse("5/20 0 12 * * *")
    assert spec.has_seconds
    assert spec.seconds == (5, 25, 45)
    assert spec.minutes == (0,) and spec.hours == (12,)
    assert spec.dom_star and spec.dow_star


def test_sunday_is_0_and_7_and_ranges_may_end_on_7():
    assert parse("0 0 * * 7").weekdays == (0,)
    assert parse("0 0 * * 5-7").weekdays == (0, 5, 6)
    assert parse("0 0 * * SUN").weekdays == (0,)


@pytest.mark.parametrize(
    ("macro", "same_as"),
    [
        ("@hourly", "0 * * * *"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@weekly", "0 0 * * 0"),
        ("@monthly", "0 0 1 * *"),
        ("@yearly", "0 0 1 1 *"),
        ("@ANNUALLY", "0 0 1 1 *"),
    ],
)
def test_macros(macro, same_as):
    a, b = parse(macro), parse(same_as)
    assert (a.minutes, a.hours, a.days, a.months, a.weekdays) == (
        b.minutes,
        b.hours,
        b.days,
        b.months,
        b.weekdays,
    )


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("61 * * * *", "minute: 61 is out of range 0-59"),
        ("* 24 * * *", "hour: 24 is out of range 0-23"),
        ("* * 0 * *", "day-of-month: 0 is out of range 1-31"),
        ("* * * 13 *", "month: 13 is out of range 1-12"),
        ("* * * * 8", "day-of-week: 8 is out of range 0-7"),
        ("60 * * * * *", "second: 60 is out of range 0-59"),
        ("x * * * *", "minute: 'x' is not a number 0-59"),
        ("* * * FOO *", "month: 'FOO' is not a number 1-12 or a name (JAN"),
        ("*/0 * * * *", "minute: step must be at least 1, got 0"),
        ("*/x * * * *", "minute: step 'x' is not a whole number"),
        ("30-10 * * * *", "minute: range 30-10 goes backwards"),
        ("* * * * FRI-MON", "day-of-week: range FRI-MON goes backwards"),
        ("1,,2 * * * *", "minute: empty item in '1,,2'"),
        ("* * * *", "cron: expected 5 fields"),
        ("* * * * * * *", "cron: expected 5 fields"),
        ("", "cron: expected 5 fields"),
        ("@reboot", "cron: unknown macro '@reboot'"),
        ("0 0 * * 7/2", "day-of-week: '7/2' matches no day"),
        ("0 0 1 * 7/2", "day-of-week: '7/2' matches no day"),  # OR would silently lose the week days
        ("0 0 * * MON,7/1", "day-of-week: '7/1' matches no day"),
        ("0 0 30 2 *", "day-of-month: day 30 never occurs in month(s) 2"),
        ("0 0 31 4,6 *", "day-of-month: day 31 never occurs in month(s) 4, 6"),
    ],
)
def test_errors_name_the_field(expression, message):
    with pytest.raises(ScheduleError) as info:
        parse(expression)
    assert str(info.value).startswith(message)


FIELD_LAYOUT = [
    ("second", 0, 59),
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day-of-month", 1, 31),
    ("month", 1, 12),
]


@pytest.mark.parametrize(
    ("index", "name", "lo", "hi"), [(i, *f) for i, f in enumerate([*FIELD_LAYOUT, ("day-of-week", 0, 7)])]
)
def test_every_item_of_every_field_matches_something_or_is_refused_with_the_field_named(index, name, lo, hi):
    # Each form, with every start and end and steps up to past the range: an item that
    # matches no value would make a field (or, under OR, a day field) silently lose it.
    steps = (1, 2, 3, 7, hi - lo, hi - lo + 1, 100)
    items = [str(a) for a in range(lo, hi + 1)]
    items += [f"{a}/{n}" for a in range(lo, hi + 1) for n in steps]
    items += [f"*/{n}" for n in steps]
    items += [
        f"{a}-{b}/{n}"
        for a in range(lo, hi + 1)
        for b in sorted({*range(a, hi + 1, 3), hi})
        for n in (1, 2, 5, 100)
    ]
    for item in items:
        fields = ["0", "0", "0", "*", "*", "*"]
        fields[index] = item
        try:
            spec = parse(" ".join(fields))
        except ScheduleError as exc:
            assert str(exc).startswith(f"{name}: "), f"{item!r}: {exc}"
            continue
        values = (spec.seconds, spec.minutes, spec.hours, spec.days, spec.months, spec.weekdays)[index]
        assert values, f"{name} {item!r} parsed to no value"


def test_day_31_is_fine_when_a_listed_month_has_it_or_day_of_week_is_restricted():
    # April has no 31st, May has: it fires on May 31 only.
    assert fires_between(parse("0 0 31 4,5 *"), utc(2024, 1, 1), utc(2025, 12, 31)) == [
        utc(2024, 5, 31),
        utc(2025, 5, 31),
    ]
    # OR: day 31 or a Monday, in April: every April Monday (there is no April 31).
    assert fires_between(parse("0 0 31 4 MON"), utc(2024, 1, 1), utc(2024, 12, 31)) == [
        utc(2024, 4, day) for day in (1, 8, 15, 22, 29)
    ]


def test_durations_times_and_zones():
    assert parse_duration("90") == 90
    assert parse_duration("90s") == 90
    assert parse_duration("5m") == 300
    assert parse_duration("1h30m") == 5400
    assert parse_duration("2d") == 172800
    for bad in ("", "0", "1x", "m", "-5"):
        with pytest.raises(ScheduleError, match="^every: "):
            parse_duration(bad)
    assert parse_time("2030-01-31T09:00", BERLIN) == utc(2030, 1, 31, 8)
    assert parse_time("2030-01-31T09:00+00:00", BERLIN) == utc(2030, 1, 31, 9)
    with pytest.raises(ScheduleError, match="^at: 'tomorrow' is not an ISO 8601 time"):
        parse_time("tomorrow", UTC)
    assert zone("Europe/Berlin") == BERLIN
    with pytest.raises(ScheduleError, match="^timezone: 'Mars/Base' is not a known IANA time zone"):
        zone("Mars/Base")


# --------------------------------------------------------------------------- next fire


def test_next_fire_is_strictly_after_and_in_utc():
    spec = parse("* * * * *")
    assert next_fire(spec, utc(2024, 1, 1, 10, 0)) == utc(2024, 1, 1, 10, 1)
    assert next_fire(spec, utc(2024, 1, 1, 10, 0, 0, 1)) == utc(2024, 1, 1, 10, 1)
    assert next_fire(spec, utc(2024, 1, 1, 9, 59, 59)) == utc(2024, 1, 1, 10, 0)
    assert next_fire(spec, local(BERLIN, 2024, 1, 1, 11, 0)).tzinfo is UTC


def test_naive_after_is_refused():
    with pytest.raises(ValueError, match="aware"):
        next_fire(parse("* * * * *"), dt.datetime(2024, 1, 1))


def test_rollovers_month_end_year_end_and_leap_day():
    assert next_fire(parse("0 0 1 * *"), utc(2024, 1, 31, 12)) == utc(2024, 2, 1)
    assert next_fire(parse("59 23 31 12 *"), utc(2024, 12, 31, 23, 59)) == utc(2025, 12, 31, 23, 59)
    assert next_fire(parse("0 0 29 2 *"), utc(2024, 3, 1)) == utc(2028, 2, 29)
    assert next_fire(parse("0 0 31 * *"), utc(2024, 4, 1)) == utc(2024, 5, 31)


def test_day_of_month_or_day_of_week_like_vixie():
    # Both restricted: the 13th OR a Friday.
    fires = fires_between(parse("0 0 13 * FRI"), utc(2024, 9, 1), utc(2024, 9, 30))
    assert [t.day for t in fires] == [6, 13, 20, 27]  # 13 Sept 2024 is a Friday too
    fires = fires_between(parse("0 0 1 * MON"), utc(2024, 7, 1), utc(2024, 7, 31))
    assert [t.day for t in fires] == [8, 15, 22, 29]  # 1 July is itself a Monday
    # Day-of-month starts with '*': AND (odd days that are Mondays).
    fires = fires_between(parse("0 0 */2 * MON"), utc(2024, 7, 1), utc(2024, 7, 31))
    assert [t.day for t in fires] == [15, 29]


def test_seconds_field():
    spec = parse("*/20 * * * * *")
    assert fires_between(spec, utc(2024, 1, 1, 0, 0, 50), utc(2024, 1, 1, 0, 1, 30)) == [
        utc(2024, 1, 1, 0, 1, 0),
        utc(2024, 1, 1, 0, 1, 20),
    ]


# --------------------------------------------------------------------------- rare specs


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        # One field starts with '*': the day fields combine with AND, so slots can be decades apart.
        ("0 0 1 2 */7", utc(2043, 2, 2), utc(2054, 2, 1)),  # 1 February on a Sunday
        ("0 0 29 2 */7", utc(2033, 1, 1), utc(2060, 2, 29)),  # 29 February on a Sunday
        ("0 0 29 2 */7", utc(2089, 1, 1), utc(2128, 2, 29)),  # 40 years: 2100 is no leap year
        ("0 0 29 2 */7", utc(2088, 2, 29, 12), utc(2128, 2, 29)),
        ("0 0 */7 2 MON", utc(2024, 1, 1), utc(2027, 2, 1)),  # days 1, 8, 15, 22, 29 AND Monday
    ],
)
def test_a_rare_spec_keeps_firing_however_far_away_its_next_slot_is(expression, after, expected):
    assert next_fire(parse(expression), after) == expected
    assert next_fire(parse(expression), after, NEW_YORK) == expected.replace(tzinfo=NEW_YORK).astimezone(UTC)


def test_a_slot_beyond_the_last_representable_year_is_none_not_a_crash():
    assert next_fire(parse("0 0 29 2 */7"), utc(9980, 1, 1)) is None  # no 29 February after 9980 is a Sunday
    assert next_fire(parse("59 23 31 12 *"), utc(9999, 12, 31, 23, 59)) is None


def _bypassing_parse(template: str, **fields: object) -> CronSpec:
    """A spec ``parse`` would refuse, built by hand to see what the search makes of it."""
    return replace(parse(template), **fields)


@pytest.mark.parametrize("dom_star", [False, True])
def test_parse_refuses_exactly_the_specs_the_search_finds_no_slot_for(dom_star):
    # Every (month, day, weekday) under AND. The Gregorian calendar repeats every 400 years,
    # a whole number of weeks, so a date that exists meets every week day within 400 years
    # (29 February within 40); one that never exists (30 February) never fires.
    starts = [utc(2024, 6, 1), utc(2089, 3, 1)]
    for month in range(1, 13):
        for day in range(1, 32):
            try:
                parse(f"0 0 {day} {month} *")
                refused = False
            except ScheduleError as exc:
                assert str(exc).startswith("day-of-month: ")
                refused = True
            for weekday in range(7):
                spec = _bypassing_parse(
                    "0 0 1 1 *",
                    days=(day,),
                    months=(month,),
                    weekdays=(weekday,),
                    dom_star=dom_star,
                    dow_star=True,
                )
                for start in starts:
                    got = next_fire(spec, start)
                    where = f"day {day} month {month} weekday {weekday} from {start:%Y}"
                    if refused:
                        assert got is None, where
                    else:
                        assert got is not None, where
                        assert (got.day, got.month, got.isoweekday() % 7) == (day, month, weekday), where
                        assert got.year - start.year <= 41, where


# --------------------------------------------------------------------------- DST


def test_berlin_spring_forward_gap_fires_once_at_the_end_of_the_gap():
    # 2024-03-31: 02:00 CET becomes 03:00 CEST (01:00 UTC).
    daily = parse("30 2 * * *")
    assert walls(daily, utc(2024, 3, 29), utc(2024, 4, 2), BERLIN) == [
        "03-29 02:30:00+0100",
        "03-30 02:30:00+0100",
        "03-31 03:00:00+0200",
        "04-01 02:30:00+0200",
    ]
    quarter = parse("*/15 * * * *")
    assert walls(quarter, utc(2024, 3, 31, 0, 30), utc(2024, 3, 31, 1, 30), BERLIN) == [
        "03-31 01:45:00+0100",
        "03-31 03:00:00+0200",
        "03-31 03:15:00+0200",
        "03-31 03:30:00+0200",
    ]
    # Right after the collapsed fire, the next one is the next real slot.
    assert next_fire(quarter, utc(2024, 3, 31, 1, 0), BERLIN) == utc(2024, 3, 31, 1, 15)


def test_berlin_fall_back_a_fixed_hour_fires_once_a_wildcard_hour_in_both_passes():
    # 2024-10-27: 03:00 CEST becomes 02:00 CET (01:00 UTC); 02:00-02:59 happen twice.
    daily = parse("30 2 * * *")
    assert walls(daily, utc(2024, 10, 25), utc(2024, 10, 29), BERLIN) == [
        "10-25 02:30:00+0200",
        "10-26 02:30:00+0200",
        "10-27 02:30:00+0200",
        "10-28 02:30:00+0100",
    ]
    fixed = parse("*/30 2 * * *")  # a fixed hour: every slot once, at its first occurrence
    assert walls(fixed, utc(2024, 10, 26, 23, 0), utc(2024, 10, 27, 2, 30), BERLIN) == [
        "10-27 02:00:00+0200",
        "10-27 02:30:00+0200",
    ]
    # Asked from inside the repeated hour (second pass), nothing fires until the next day.
    inside = local(BERLIN, 2024, 10, 27, 2, 10, fold=1)
    assert next_fire(fixed, inside, BERLIN) == local(BERLIN, 2024, 10, 28, 2, 0)
    half = parse("*/30 * * * *")  # a wildcard hour reads the clock: the repeated hour fires again
    assert walls(half, utc(2024, 10, 26, 23, 0), utc(2024, 10, 27, 2, 30), BERLIN) == [
        "10-27 01:30:00+0200",
        "10-27 02:00:00+0200",
        "10-27 02:30:00+0200",
        "10-27 02:00:00+0100",
        "10-27 02:30:00+0100",
        "10-27 03:00:00+0100",
        "10-27 03:30:00+0100",
    ]
    # (Compared in UTC: PEP 495 makes a fold=1 time unequal to any time in another zone.)
    assert next_fire(half, inside, BERLIN) == utc(2024, 10, 27, 1, 30)  # 02:30 CET
    first_pass = local(BERLIN, 2024, 10, 27, 2, 40)  # the next slot is 02:00 again, second pass
    assert next_fire(half, first_pass, BERLIN) == utc(2024, 10, 27, 1, 0)  # 02:00 CET


def test_an_hourly_job_runs_once_per_real_hour_through_both_changes():
    hourly = parse("0 * * * *")
    # New York 2024-11-03: 01:00-01:59 happen twice; one run per real hour, 01:00 twice.
    fires = fires_between(hourly, utc(2024, 11, 3, 3), utc(2024, 11, 3, 9), NEW_YORK)
    assert [t.hour for t in fires] == [4, 5, 6, 7, 8, 9]
    assert walls(hourly, utc(2024, 11, 3, 3), utc(2024, 11, 3, 8), NEW_YORK) == [
        "11-03 00:00:00-0400",
        "11-03 01:00:00-0400",
        "11-03 01:00:00-0500",
        "11-03 02:00:00-0500",
        "11-03 03:00:00-0500",
    ]
    # Berlin 2024-03-31: 02:00-02:59 never happen; a wildcard hour skips them rather than
    # adding a run at 03:00 (that would be two runs ten minutes apart).
    ten_past = parse("10 * * * *")
    assert walls(ten_past, utc(2024, 3, 30, 23), utc(2024, 3, 31, 3), BERLIN) == [
        "03-31 00:10:00+0100",
        "03-31 01:10:00+0100",
        "03-31 03:10:00+0200",
        "03-31 04:10:00+0200",
    ]
    # A fixed hour inside the gap still fires that day, at the end of the gap.
    assert walls(parse("10 2 * * *"), utc(2024, 3, 30), utc(2024, 4, 1), BERLIN) == [
        "03-30 02:10:00+0100",
        "03-31 03:00:00+0200",
    ]


def test_new_york_spring_and_fall():
    # 2024-03-10 02:00 EST -> 03:00 EDT; 2024-11-03 02:00 EDT -> 01:00 EST.
    spec = parse("30 1,2 * * *")
    assert walls(spec, utc(2024, 3, 9, 12), utc(2024, 3, 11, 12), NEW_YORK) == [
        "03-10 01:30:00-0500",
        "03-10 03:00:00-0400",
        "03-11 01:30:00-0400",
        "03-11 02:30:00-0400",
    ]
    assert walls(spec, utc(2024, 11, 2, 12), utc(2024, 11, 4, 12), NEW_YORK) == [
        "11-03 01:30:00-0400",
        "11-03 02:30:00-0500",
        "11-04 01:30:00-0500",
        "11-04 02:30:00-0500",
    ]


def test_six_field_spec_through_a_gap_collapses_to_one_fire():
    spec = parse("0 */20 2 * * *")  # 02:00, 02:20, 02:40 local: all inside the NY gap
    assert walls(spec, utc(2024, 3, 10, 6), utc(2024, 3, 10, 8), NEW_YORK) == ["03-10 03:00:00-0400"]


def test_intervals_are_elapsed_time_and_once_fires_once():
    hourly = IntervalSpec(3600)
    fires = fires_between(hourly, utc(2024, 3, 31, 0, 10), utc(2024, 3, 31, 3, 0), BERLIN)
    assert fires == [utc(2024, 3, 31, 1), utc(2024, 3, 31, 2), utc(2024, 3, 31, 3)]
    anchored = IntervalSpec(90, anchor=utc(2024, 1, 1, 0, 0, 10))
    assert next_fire(anchored, utc(2024, 1, 1, 0, 0, 10)) == utc(2024, 1, 1, 0, 1, 40)
    assert next_fire(anchored, utc(2023, 12, 31, 23, 59, 59)) == utc(2024, 1, 1, 0, 0, 10)
    once = OnceSpec(utc(2030, 1, 1))
    assert next_fire(once, utc(2029, 12, 31)) == utc(2030, 1, 1)
    assert next_fire(once, utc(2030, 1, 1)) is None


# --------------------------------------------------------------------------- random specs vs brute force

NAMES_MONTH = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
NAMES_DAY = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]


def _random_field(
    rng: random.Random, lo: int, hi: int, names: list[str] | None, dense: bool
) -> tuple[str, set[int]]:
    """A random field text and, computed independently of the parser, the values it means."""

    def show(v: int) -> str:
        if names and rng.random() < 0.3:
            return names[v - lo if lo == 1 else v % 7]
        return str(v)

    top = 6 if names is NAMES_DAY else hi  # day-of-week values 0-6 (7 tested separately)
    forms = ["*", "*/n", "a", "a-b", "a-b/n", "a/n", "list"]
    weights = [6, 3, 1, 2, 2, 1, 2] if dense else [1, 1, 3, 2, 1, 1, 3]
    form = rng.choices(forms, weights)[0]
    if form == "*":
        return "*", set(range(lo, top + 1))
    if form == "*/n":
        n = rng.randint(1, max(1, (top - lo) // 2))
        return f"*/{n}", set(range(lo, top + 1, n))
    if form == "a":
        a = rng.randint(lo, top)
        return show(a), {a}
    if form in ("a-b", "a-b/n"):
        a = rng.randint(lo, top)
        b = rng.randint(a, top)
        n = rng.randint(1, 5) if form == "a-b/n" else 1
        return f"{show(a)}-{show(b)}" + (f"/{n}" if form == "a-b/n" else ""), set(range(a, b + 1, n))
    if form == "a/n":
        a, n = rng.randint(lo, top), rng.randint(1, 7)
        return f"{a}/{n}", set(range(a, top + 1, n))
    picks = sorted(set(rng.sample(range(lo, top + 1), rng.randint(2, min(5, top - lo + 1)))))
    return ",".join(show(v) for v in picks), set(picks)


def _random_spec(rng: random.Random, seconds: bool) -> tuple[str, list[set[int]], bool, bool]:
    dense = rng.random() < 0.7
    parts, sets = [], []
    layout = [
        (0, 59, None),
        (0, 59, None),
        (0, 23, None),
        (1, 31, None),
        (1, 12, NAMES_MONTH),
        (0, 6, NAMES_DAY),
    ]
    for index, (lo, hi, names) in enumerate(layout):
        if index == 0 and not seconds:
            sets.append({0})
            continue
        text, values = _random_field(rng, lo, hi, names, dense)
        parts.append(text)
        sets.append(values)
    dom_text, dow_text = parts[-3], parts[-1]
    return " ".join(parts), sets, dom_text.startswith("*"), dow_text.startswith("*")


_LONGEST = {1: 31, 2: 29, 3: 31, 4: 30, 5: 31, 6: 30, 7: 31, 8: 31, 9: 30, 10: 31, 11: 30, 12: 31}


def _parse_or_never(text: str, sets: list[set[int]], dow_star: bool) -> CronSpec | None:
    """Parse ``text``; a refusal is only right for a spec that can never fire."""
    try:
        return parse(text)
    except ScheduleError as exc:
        never = dow_star and all(d > _LONGEST[m] for d in sets[3] for m in sets[4])
        assert never and str(exc).startswith("day-of-month:"), f"{text!r} refused: {exc}"
        return None


def _matches(wall: dt.datetime, sets: list[set[int]], dom_star: bool, dow_star: bool) -> bool:
    s, mi, h, dom, mon, dow = sets
    if wall.second not in s or wall.minute not in mi or wall.hour not in h or wall.month not in mon:
        return False
    by_dom, by_dow = wall.day in dom, wall.isoweekday() % 7 in dow
    return (by_dom and by_dow) if (dom_star or dow_star) else (by_dom or by_dow)


def _brute_force(sets, dom_star, dow_star, start, end, tz, step, hour_star):
    """Fires in (start, end] by stepping UTC instants. A wildcard hour fires whenever the
    clock shows a matching time. A fixed hour fires a wall time at its first occurrence,
    and wall times skipped by a forward jump at the instant after the jump."""
    out = []
    instant = start - dt.timedelta(seconds=start.timestamp() % step.total_seconds()) + step
    previous_wall = (instant - step).astimezone(tz).replace(tzinfo=None)
    while instant <= end:
        here = instant.astimezone(tz)
        wall = here.replace(tzinfo=None)
        fire = (here.fold == 0 or hour_star) and _matches(wall, sets, dom_star, dow_star)
        skipped = previous_wall + step
        while not fire and not hour_star and skipped < wall:
            fire = _matches(skipped, sets, dom_star, dow_star)
            skipped += step
        if fire:
            out.append(instant)
        previous_wall = max(previous_wall, wall)
        instant += step
    return out


TRANSITIONS = [
    (BERLIN, utc(2024, 3, 31, 1)),
    (BERLIN, utc(2024, 10, 27, 1)),
    (NEW_YORK, utc(2024, 3, 10, 7)),
    (NEW_YORK, utc(2024, 11, 3, 6)),
    (ZoneInfo("Australia/Lord_Howe"), utc(2024, 4, 6, 15)),  # a 30-minute fall back
    (UTC, utc(2024, 2, 28, 12)),
]


@pytest.mark.parametrize("seed", range(6))
def test_random_five_field_specs_match_minute_stepping_around_dst(seed):
    rng = random.Random(seed)
    for _ in range(40):
        text, sets, dom_star, dow_star = _random_spec(rng, seconds=False)
        if rng.random() < 0.8:  # most specs should fire in a 30-hour window: open the month
            fields = text.split()
            text, sets[4] = " ".join([*fields[:3], "*", fields[4]]), set(range(1, 13))
        if rng.random() < 0.5:  # and the day of the month (then day-of-week alone decides)
            fields = text.split()
            text, sets[3], dom_star = " ".join([*fields[:2], "*", *fields[3:]]), set(range(1, 32)), True
        tz, around = rng.choice(TRANSITIONS)
        start = around - dt.timedelta(
            hours=rng.randint(1, 20), minutes=rng.randint(0, 59), seconds=rng.randint(0, 59)
        )
        end = start + dt.timedelta(hours=30)
        hour_star = text.split()[-4].startswith("*")
        expected = _brute_force(sets, dom_star, dow_star, start, end, tz, dt.timedelta(minutes=1), hour_star)
        spec = _parse_or_never(text, sets, dow_star)
        if spec is None:
            continue
        got = fires_between(spec, start, end, tz, limit=10_000)
        assert got == expected, f"{text!r} in {tz} from {start}"


@pytest.mark.parametrize("seed", range(3))
def test_random_six_field_specs_match_second_stepping_around_dst(seed):
    rng = random.Random(100 + seed)
    for _ in range(15):
        text, sets, dom_star, dow_star = _random_spec(rng, seconds=True)
        # Near-dense minute/hour fields so that a 2-hour window sees fires.
        sets[2] = set(range(24))
        text = " ".join(text.split()[:2] + ["*"] + text.split()[3:])
        tz, around = rng.choice(TRANSITIONS)
        start = around - dt.timedelta(minutes=rng.randint(0, 90), seconds=rng.randint(0, 59))
        end = start + dt.timedelta(hours=2)
        hour_star = text.split()[-4].startswith("*")
        expected = _brute_force(sets, dom_star, dow_star, start, end, tz, dt.timedelta(seconds=1), hour_star)
        spec = _parse_or_never(text, sets, dow_star)
        if spec is None:
            continue
        got = fires_between(spec, start, end, tz, limit=100_000)
        assert got == expected, f"{text!r} in {tz} from {start}"


@pytest.mark.parametrize("seed", range(3))
def test_random_sparse_specs_match_day_stepping_over_years(seed):
    rng = random.Random(200 + seed)
    for _ in range(40):
        text, sets, dom_star, dow_star = _random_spec(rng, seconds=False)
        spec = _parse_or_never(text, sets, dow_star)
        if spec is None:
            continue
        start = utc(2023, 1, 1) + dt.timedelta(days=rng.randint(0, 365))
        end = start + dt.timedelta(days=3 * 366)
        expected = []
        day = start.replace(hour=0, minute=0, second=0)
        while day <= end and len(expected) < 200:
            if _matches(
                day.replace(tzinfo=None, hour=0, minute=0), [{0}, {0}, {0}, *sets[3:]], dom_star, dow_star
            ):
                for h in sorted(sets[2]):
                    for m in sorted(sets[1]):
                        t = day.replace(hour=h, minute=m)
                        if start < t <= end:
                            expected.append(t)
            day += dt.timedelta(days=1)
        expected = expected[:200]
        assert fires_between(spec, start, end, UTC, limit=200) == expected, text
