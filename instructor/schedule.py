"""Due dates of the assignments, from one schedule file (``schedule.toml`` at the course root).

::

    timezone = "Europe/Berlin"            # for dates written without an offset

    [due]
    01_neural_networks = 2027-01-15T23:59:00          # 23:59 in Berlin (CET, UTC+1)
    02_tokenization = 2027-01-22T23:59:00-05:00       # an explicit offset wins

``make release`` (``python -m instructor release``) writes each due date into nbgrader's
gradebook (``Assignment.duedate``, stored in UTC as nbgrader does); nbgrader compares it with
each submission's ``timestamp.txt`` when autograding, and the late-penalty plugin
(``instructor/late_penalty.py``) turns the difference into points.
"""

from __future__ import annotations

import datetime as dt
import tomllib
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

SCHEDULE = "schedule.toml"


class ScheduleError(ValueError):
    """The schedule file is malformed or names an unknown assignment."""


def to_utc(when: dt.datetime, zone: str) -> dt.datetime:
    """`when` in UTC, without tzinfo (nbgrader's convention); a naive `when` is local time in `zone`."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=ZoneInfo(zone))
    return when.astimezone(dt.timezone.utc).replace(tzinfo=None)


def load_schedule(path: Path, assignments: list[str] | None = None) -> dict[str, dt.datetime]:
    """assignment -> due date in UTC (naive), read from `path`; {} when there is no such file."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ScheduleError(f"{path}: {err}") from None
    zone = data.get("timezone", "UTC")
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"{path}: unknown time zone {zone!r} (use an IANA name such as 'Europe/Berlin')") from None
    due = data.get("due", {})
    if not isinstance(due, dict):
        raise ScheduleError(f"{path}: [due] must be a table of assignment = date-time")
    out = {}
    for name, when in due.items():
        if isinstance(when, dt.date) and not isinstance(when, dt.datetime):
            raise ScheduleError(f"{path}: {name} = {when} has no time of day; write e.g. {when}T23:59:00")
        if not isinstance(when, dt.datetime):
            raise ScheduleError(f"{path}: {name} = {when!r} is not a TOML date-time (e.g. 2027-01-15T23:59:00)")
        if assignments is not None and name not in assignments:
            raise ScheduleError(f"{path}: {name!r} is not an assignment of this course ({', '.join(assignments)})")
        out[name] = to_utc(when, zone)
    return out


def set_due_dates(db_url: str, due: dict[str, dt.datetime]) -> None:
    """Write the due dates into nbgrader's gradebook (the assignments exist: they were generated)."""
    from nbgrader.api import Gradebook

    with Gradebook(db_url) as gb:
        for name, when in due.items():
            gb.update_or_create_assignment(name, duedate=when)
