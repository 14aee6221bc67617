"""Checkpoint policies: data documents, evaluated at the validation time.

A policy answers only for certificates that are already technically valid;
what it refuses is `policy_failed` with a sub-reason. Thresholds live in the
JSON document, never in code, so the fleet can tighten rules at once (seed 002).
"""

import json
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .content import Certificate, parse_date, parse_datetime

BUILTIN = ("hcmc-2021", "accept-valid")
TEST_DETECTED = "260373001"
TEST_NOT_DETECTED = "260415000"


class PolicyError(ValueError):
    pass


@dataclass(frozen=True)
class Policy:
    name: str
    title: str
    timezone: ZoneInfo
    accept: frozenset[str]
    min_dose_number: int
    min_days_after_dose: int
    require_complete_series: bool
    min_days_since_positive: int
    max_days_since_positive: int | None  # strictly fewer days than this
    test_max_hours: dict[str, float] | None  # None: any test type, any age
    accept_positive: bool
    document: dict

    def evaluate(self, cert: Certificate, at: datetime) -> tuple[str, str] | None:
        """None if the checkpoint lets the holder pass, else (sub_reason, detail)."""
        if cert.type not in self.accept:
            kinds = {"v": "vaccination", "t": "test", "r": "recovery"}
            return "type_not_accepted", f"{kinds[cert.type]} certificates are not accepted here"
        today = at.astimezone(self.timezone).date()
        entry = cert.entry
        if cert.type == "v":
            if entry["dn"] < self.min_dose_number:
                return "incomplete_vaccination", f"dose {entry['dn']}, needs {self.min_dose_number}"
            if self.require_complete_series and entry["dn"] < entry["sd"]:
                return "incomplete_vaccination", f"dose {entry['dn']} of {entry['sd']}"
            days = (today - parse_date(entry["dt"])).days
            if days < self.min_days_after_dose:
                return ("vaccination_too_recent",
                        f"last dose {days} days ago, needs {self.min_days_after_dose}")
        elif cert.type == "r":
            days = (today - parse_date(entry["fr"])).days
            if days < self.min_days_since_positive:
                return "recovery_too_recent", f"first positive test {days} days ago"
            if self.max_days_since_positive is not None and days >= self.max_days_since_positive:
                return ("recovery_expired",
                        f"first positive test {days} days ago, limit {self.max_days_since_positive}")
        else:
            if entry["tr"] == TEST_DETECTED and not self.accept_positive:
                return "test_positive", "the test result is positive"
            if entry["tr"] not in (TEST_DETECTED, TEST_NOT_DETECTED):
                return "test_result_unknown", f"unknown test result code {entry['tr'][:20]}"
            sampled = parse_datetime(entry["sc"])
            hours = (at - sampled).total_seconds() / 3600
            if hours < 0:
                return "test_in_future", "sample time is after the validation time"
            if self.test_max_hours is not None:
                limit = self.test_max_hours.get(entry["tt"])
                if limit is None:
                    return "test_type_not_accepted", f"test type {entry['tt'][:20]} is not accepted"
                if hours > limit:
                    return "test_too_old", f"sample taken {hours:.0f} h ago, limit {limit:g} h"
        return None


_KNOWN = {
    "": {"name", "title", "timezone", "accept", "vaccination", "recovery", "test", "description"},
    "vaccination": {"min_dose_number", "min_days_after_dose", "require_complete_series"},
    "recovery": {"min_days_since_positive", "max_days_since_positive"},
    "test": {"max_hours", "accept_positive"},
}


def _check_keys(doc: dict) -> None:
    """Unknown keys are refused: a typo must not silently mean 'no limit'."""
    for section, known in _KNOWN.items():
        node = doc if not section else doc.get(section)
        if node is None:
            continue
        if not isinstance(node, dict):
            raise PolicyError(f"policy field '{section}' must be an object, got {node!r}")
        for key in node:
            if key not in known:
                where = f"{section}.{key}" if section else key
                raise PolicyError(f"policy field '{where}' is unknown "
                                  f"(known: {', '.join(sorted(known))})")


def _get(doc: dict, path: str, kind, default=...):
    node = doc
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            if default is ...:
                raise PolicyError(f"policy field '{path}' is missing")
            return default
        node = node[part]
    if node is None and default is None:
        return None
    if kind is float and type(node) is int:
        node = float(node)
    if not isinstance(node, kind) or (kind is int and isinstance(node, bool)):
        raise PolicyError(f"policy field '{path}' must be {kind.__name__}, got {node!r}")
    return node


def from_document(doc: dict) -> Policy:
    if not isinstance(doc, dict):
        raise PolicyError("a policy is a JSON object")
    _check_keys(doc)
    name = _get(doc, "name", str)
    try:
        tz = ZoneInfo(_get(doc, "timezone", str, "UTC"))
    except (ZoneInfoNotFoundError, ValueError):
        raise PolicyError(f"policy timezone {doc.get('timezone')!r} is unknown") from None
    accept = _get(doc, "accept", list)
    if not accept or any(t not in ("v", "t", "r") for t in accept):
        raise PolicyError("policy field 'accept' must list some of 'v', 't', 'r'")
    max_hours = _get(doc, "test.max_hours", dict, None)
    if max_hours is not None:
        for key, value in max_hours.items():
            if type(value) not in (int, float) or value <= 0:
                raise PolicyError(f"policy field 'test.max_hours.{key}' must be a positive number")
        max_hours = {k: float(v) for k, v in max_hours.items()}
    numbers = {}
    for path in ("vaccination.min_dose_number", "vaccination.min_days_after_dose",
                 "recovery.min_days_since_positive"):
        numbers[path] = _get(doc, path, int, 0)
        if numbers[path] < 0:
            raise PolicyError(f"policy field '{path}' must not be negative")
    max_days = _get(doc, "recovery.max_days_since_positive", int, None)
    return Policy(
        name=name,
        title=_get(doc, "title", str, ""),
        timezone=tz,
        accept=frozenset(accept),
        min_dose_number=numbers["vaccination.min_dose_number"],
        min_days_after_dose=numbers["vaccination.min_days_after_dose"],
        require_complete_series=_get(doc, "vaccination.require_complete_series", bool, False),
        min_days_since_positive=numbers["recovery.min_days_since_positive"],
        max_days_since_positive=max_days,
        test_max_hours=max_hours,
        accept_positive=_get(doc, "test.accept_positive", bool, False),
        document=doc,
    )


def load(name_or_path: str | Path) -> Policy:
    """A built-in policy by name, or a JSON policy file."""
    if str(name_or_path) in BUILTIN:
        text = resources.files(__package__).joinpath(f"policies/{name_or_path}.json").read_text()
        source = f"built-in policy {name_or_path}"
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise PolicyError(f"no policy named {name_or_path!r} (built-in: {', '.join(BUILTIN)}) "
                              "and no such file")
        source = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise PolicyError(f"{source}: not UTF-8 text (is this a policy JSON file?)") from None
        except OSError as exc:
            raise PolicyError(f"{source}: cannot read: {exc.strerror}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PolicyError(f"{source}: line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    try:
        return from_document(doc)
    except PolicyError as exc:
        raise PolicyError(f"{source}: {exc}") from None
