"""Helpers shared by the API modules: the clock, time in and out, query parameters,
JSON bodies, keyset pagination and the district officer's scope.

Times: the database keeps epoch seconds (float, UTC); the API speaks ISO 8601
UTC (`2021-10-05T08:00:00.000Z`). Query parameters take ISO 8601 with a zone
(`Z` or `+07:00`) or epoch seconds; anything else is a 400 that says what to send.

Pagination is keyset on the row id (never OFFSET: a scan table of tens of
millions of rows stays fast on its last page): `?limit=` (1..1000) and
`?after=` (the `next` value of the previous page); the answer carries `next`,
null on the last page.
"""

from __future__ import annotations

import math
import re
import time
from datetime import datetime, timezone

from flask import current_app, g, request
from sqlalchemy import select

from ..auth import current_user, district_scope, organisation_scope, ward_scope as _ward_scope
from ..models import District, Location
from . import ApiError

UTC = timezone.utc
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_EPOCH = 253402300800  # 10000-01-01T00:00:00Z
CODE_RULE = "1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit"


# --- the clock ---------------------------------------------------------------------
def now() -> float:
    """The API's notion of now: app.config["GREENGATE_CLOCK"] (a callable; tests pin
    it) or the wall clock."""
    clock = current_app.config.get("GREENGATE_CLOCK")
    return clock() if clock else time.time()


# --- time in and out ---------------------------------------------------------------
def iso(ts: float | None) -> str | None:
    """Epoch seconds -> '2021-10-05T08:00:00.123Z'. None, and anything that is no time
    (a kiosk's 1e300, NaN or infinity stored before the ingest checked them, years
    outside 1..9999), is None: a stored value never makes an answer fail."""
    if ts is None or isinstance(ts, bool) or not isinstance(ts, (int, float)):
        return None
    try:
        text = datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")
    except (OverflowError, ValueError, OSError):
        return None
    return text.replace("+00:00", "Z")


def parse_time(text: str, name: str) -> float:
    """ISO 8601 with a time zone, or epoch seconds -> epoch seconds; else ApiError 400."""
    value = text.strip()
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        if math.isfinite(number) and 0 <= number < MAX_EPOCH:
            return number
        raise ApiError(400, f"{name}={text!r} is not a time: epoch seconds must be a "
                            "number from 0 to 253402300799 (the year 9999)")
    try:
        moment = datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, f"{name}={text!r} is not a time: send ISO 8601 with a time zone, "
                            f"like {name}=2021-10-05T08:00:00Z, or epoch seconds") from None
    if moment.tzinfo is None:
        raise ApiError(400, f"{name}={text!r} has no time zone: add Z for UTC (e.g. "
                            f"{name}=2021-10-05T08:00:00Z) or an offset like +07:00")
    return moment.timestamp()


def time_arg(name: str, default: float | None = None) -> float | None:
    text = request.args.get(name)
    if text is None or text.strip() == "":
        return default
    return parse_time(text, name)


def time_range(default_since: float | None = None,
               default_until: float | None = None) -> tuple[float | None, float | None]:
    since, until = time_arg("since", default_since), time_arg("until", default_until)
    if since is not None and until is not None and since > until:
        raise ApiError(400, f"since ({iso(since)}) is after until ({iso(until)}): swap them")
    return since, until


# --- other query parameters ----------------------------------------------------------
def int_arg(name: str, default: int | None = None, minimum: int | None = None,
            maximum: int | None = None) -> int | None:
    text = request.args.get(name)
    if text is None or text.strip() == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise ApiError(400, f"{name}={text!r} is not a whole number") from None
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        bounds = (f"between {minimum} and {maximum}" if minimum is not None and maximum is not None
                  else f"at least {minimum}" if minimum is not None else f"at most {maximum}")
        raise ApiError(400, f"{name}={value} is out of range: it must be {bounds}")
    return value


def bool_arg(name: str, default: bool | None = None) -> bool | None:
    text = request.args.get(name)
    if text is None or text.strip() == "":
        return default
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ApiError(400, f"{name}={text!r} is not a yes/no value: send true or false")


def choice_arg(name: str, choices, default: str | None = None, many: bool = False):
    """One value of `choices` (or, with many=True, a comma-separated list of them)."""
    text = request.args.get(name)
    if text is None or text.strip() == "":
        return default
    values = [v.strip() for v in text.split(",") if v.strip()] if many else [text.strip()]
    for value in values:
        if value not in choices:
            raise ApiError(400, f"{name}={value!r} is not known; use one of: {', '.join(choices)}")
    return values if many else values[0]


def pattern_arg(name: str, pattern: re.Pattern, rule: str, lower: bool = False) -> str | None:
    text = request.args.get(name)
    if text is None or text.strip() == "":
        return None
    value = text.strip().lower() if lower else text.strip()
    if not pattern.match(value):
        raise ApiError(400, f"{name}={text!r} is not valid: it must be {rule}")
    return value


# --- JSON bodies ------------------------------------------------------------------
def json_body(allowed: set[str]) -> dict:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, "send a JSON object as the request body, with "
                            "'Content-Type: application/json'")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(422, f"unknown field{'s' if len(unknown) > 1 else ''} "
                            f"{', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    return body


def text_field(body: dict, name: str, *, required: bool, max_length: int,
               pattern: re.Pattern | None = None, rule: str = "") -> str | None:
    if name not in body or body[name] is None:
        if required:
            raise ApiError(422, f"'{name}' is required")
        return None
    value = body[name]
    if not isinstance(value, str):
        raise ApiError(422, f"'{name}' must be a string, not {type(value).__name__}")
    value = value.strip()
    if required and not value:
        raise ApiError(422, f"'{name}' must not be empty")
    if len(value) > max_length:
        raise ApiError(422, f"'{name}' is {len(value)} characters long; at most {max_length} "
                            "are allowed")
    if pattern is not None and not pattern.match(value):
        raise ApiError(422, f"'{name}' {value!r} is not valid: it must be {rule}")
    return value


# --- keyset pagination --------------------------------------------------------------
def page_args(default_limit: int = DEFAULT_LIMIT) -> tuple[int, int | None]:
    limit = int_arg("limit", default_limit, 1, MAX_LIMIT)
    after = int_arg("after", None, 0)
    return limit, after


def keyset_page(session, stmt, id_column, limit: int, after: int | None,
                descending: bool = True):
    """Rows of `stmt` ordered by `id_column` after the cursor, and the next cursor."""
    if after is not None:
        stmt = stmt.where(id_column < after if descending else id_column > after)
    stmt = stmt.order_by(id_column.desc() if descending else id_column.asc()).limit(limit + 1)
    rows = session.execute(stmt).all()
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (_row_id(rows[-1]) if more else None)


def _row_id(row) -> int:
    first = row[0]
    return first.id if hasattr(first, "id") else first


# --- who may see what -----------------------------------------------------------------
def caller():
    from ..app import primary_db  # who calls: never a lagging replica
    return current_user(primary_db())


def scope() -> int | None:
    """The district id the caller is limited to, else None (sees every district).

    A district officer: its district; a ward officer: its ward's district; a manager:
    its organisation's district. The finer limits are ward_scope() and org_scope();
    a query on locations should use location_clause(), which combines all three.
    A scoped role whose account lacks its anchor (a district officer without a
    district, a ward officer without a ward, a manager without an organisation) is
    refused with a 403, never widened to everything."""
    if "scope" in g:
        return g.scope
    district = district_scope(caller())  # AuthError 403 for a role without its anchor
    g.scope = district
    return district


def ward_scope() -> int | None:
    """The ward id a ward officer is limited to; None for every other role. Locations
    with no ward are outside every ward officer's scope."""
    if "ward_scope" not in g:
        g.ward_scope = _ward_scope(caller())
    return g.ward_scope


def org_scope() -> int | None:
    """The organisation id a manager is limited to; None for every other role."""
    if "org_scope" not in g:
        g.org_scope = organisation_scope(caller())
    return g.org_scope


def location_clause(location=Location):
    """A SQLAlchemy condition on Location (or an alias of it) for the caller's limits,
    or None when the caller sees every location. Use it on any query that joins
    Location: `if (c := location_clause()) is not None: stmt = stmt.where(c)`.

    Combines the district (scope()), the ward (ward_scope(): a location without a ward
    matches no ward officer) and the organisation (org_scope(): only the manager's own
    organisation's locations)."""
    from sqlalchemy import and_
    conditions = []
    district, ward, organisation = scope(), ward_scope(), org_scope()
    if district is not None:
        conditions.append(location.district_id == district)
    if ward is not None:
        conditions.append(location.ward_id == ward)
    if organisation is not None:
        conditions.append(location.organisation_id == organisation)
    if not conditions:
        return None
    return conditions[0] if len(conditions) == 1 else and_(*conditions)


def location_visible(location: Location | None) -> bool:
    """Whether one loaded location is inside the caller's limits (a Python check, the
    twin of location_clause() for a row already at hand)."""
    if location is None:
        return scope() is None and ward_scope() is None and org_scope() is None
    district, ward, organisation = scope(), ward_scope(), org_scope()
    return ((district is None or location.district_id == district)
            and (ward is None or location.ward_id == ward)
            and (organisation is None or location.organisation_id == organisation))


def district_by_code(session, code: str, what: str = "district") -> District:
    district = session.scalar(select(District).where(District.code == code))
    limited = scope()
    if district is None or (limited is not None and district.id != limited):
        if district is not None and what == "filter":
            raise ApiError(403, f"you may only see your own district; district={code!r} is "
                                "another one", "forbidden")
        raise ApiError(404, f"no district with code {code!r}")
    return district


def location_by_code(session, code: str, what: str = "location") -> Location:
    location = session.scalar(select(Location).where(Location.code == code))
    if location is None or not location_visible(location):
        if location is not None and what == "filter":
            if ward_scope() is None and org_scope() is None:
                raise ApiError(403, f"you may only see your own district; location={code!r} "
                                    "is in another one", "forbidden")
            raise ApiError(403, f"you may only see your own ward or organisation; "
                                f"location={code!r} is outside it", "forbidden")
        raise ApiError(404, f"no location with code {code!r}")
    return location
