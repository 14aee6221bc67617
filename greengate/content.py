"""CWT claims and the DCC payload, checked field by field against the DCC schema.

Hand-written rather than a JSON-schema engine: the schema is small, the
kiosk checks thousands of certificates a second, and each failure needs a
sentence a support desk can read.
"""

import re
from typing import NamedTuple
from collections.abc import Mapping
from datetime import date, datetime, timezone

from .errors import Rejected

CLAIM_ISS, CLAIM_EXP, CLAIM_IAT, CLAIM_HCERT = 1, 4, 6, -260
TYPES = ("v", "t", "r")

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")
_DOB = re.compile(r"^(\d{4}(-\d{2}(-\d{2})?)?)?$")  # year, year-month, or full date; may be empty
_STD_NAME = re.compile(r"^[A-Z<]*$")
_VER = re.compile(r"^\d+\.\d+\.\d+$")
_STR, _INT, _DATE_T, _DATETIME = "str", "int", "date", "datetime"
_R, _O = True, False  # required, optional

# (field, kind, required) per certificate type, as in the DCC schema
_ENTRY_FIELDS = {
    "v": (("tg", _STR, _R), ("vp", _STR, _R), ("mp", _STR, _R), ("ma", _STR, _R),
          ("dn", _INT, _R), ("sd", _INT, _R), ("dt", _DATE_T, _R), ("co", _STR, _R),
          ("is", _STR, _R), ("ci", _STR, _R)),
    "t": (("tg", _STR, _R), ("tt", _STR, _R), ("nm", _STR, _O), ("ma", _STR, _O),
          ("sc", _DATETIME, _R), ("tr", _STR, _R), ("tc", _STR, _O), ("co", _STR, _R),
          ("is", _STR, _R), ("ci", _STR, _R)),
    "r": (("tg", _STR, _R), ("fr", _DATE_T, _R), ("co", _STR, _R), ("is", _STR, _R),
          ("df", _DATE_T, _R), ("du", _DATE_T, _R), ("ci", _STR, _R)),
}
_MAX_STR = 80
_MAX_INT = 9  # dn and sd are 1..9 in the DCC schema


class Certificate(NamedTuple):
    type: str
    entry: Mapping
    ci: str
    iss: str | None
    iat: float
    exp: float
    family: str  # nam.fnt, the ICAO-standardised name
    given: str
    dob: str


def _invalid(detail: str) -> Rejected:
    return Rejected("invalid_content", detail)


def parse_date(value: str) -> date:
    return date.fromisoformat(value[:10])


def parse_datetime(value: str) -> datetime:
    text = value.replace("Z", "+00:00")
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment


def _check_field(kind: str, name: str, value) -> None:
    if kind is _STR and type(value) is str and len(value) <= _MAX_STR:
        return  # the common case, kept cheap: thousands of checks a second
    if kind == _INT:
        if type(value) is not int or not 1 <= value <= _MAX_INT:
            raise _invalid(f"'{name}' must be a whole number from 1 to {_MAX_INT}")
        return
    if not isinstance(value, str):
        raise _invalid(f"'{name}' must be text, got {type(value).__name__}")
    if kind == _STR:
        if len(value) > _MAX_STR:
            raise _invalid(f"'{name}' is longer than {_MAX_STR} characters")
    elif kind == _DATE_T:
        try:
            if not _DATE.match(value):
                raise ValueError
            parse_date(value)
        except ValueError:
            raise _invalid(f"'{name}' is not a date: {value[:40]!r}") from None
    else:
        try:
            parse_datetime(value)
        except ValueError:
            raise _invalid(f"'{name}' is not a date-time: {value[:40]!r}") from None


def _claim_time(claims: Mapping, key: int, name: str) -> float:
    value = claims.get(key)
    # The spec wants integers, but issuers in the EU test data (ES) send
    # fractional seconds; refusing them would refuse real passes.
    if type(value) not in (int, float) or value != value or abs(value) > 1e11:
        raise _invalid(f"CWT claim '{name}' is missing or not a number")
    return value


def parse_claims(claims) -> Certificate:
    if not isinstance(claims, Mapping):
        raise _invalid("CWT payload is not a map of claims")
    iat = _claim_time(claims, CLAIM_IAT, "iat")
    exp = _claim_time(claims, CLAIM_EXP, "exp")
    iss = claims.get(CLAIM_ISS)
    if iss is not None and not isinstance(iss, str):
        raise _invalid("CWT claim 'iss' is not text")
    hcert = claims.get(CLAIM_HCERT)
    if not isinstance(hcert, Mapping) or not isinstance(hcert.get(1), Mapping):
        raise _invalid("CWT has no health certificate (claim -260 → 1)")
    return parse_dcc(hcert[1], iss, iat, exp)


def parse_dcc(dcc: Mapping, iss=None, iat=0, exp=0) -> Certificate:
    if not isinstance(dcc, Mapping):
        raise _invalid("health certificate is not a map")
    ver = dcc.get("ver")
    if not isinstance(ver, str) or not _VER.match(ver):
        raise _invalid("'ver' (schema version) is missing or malformed")
    nam = dcc.get("nam")
    if not isinstance(nam, Mapping):
        raise _invalid("'nam' (name) is missing")
    for key in ("fn", "gn", "fnt", "gnt"):
        if key in nam and not (isinstance(nam[key], str) and len(nam[key]) <= _MAX_STR):
            raise _invalid(f"'nam.{key}' must be text of at most {_MAX_STR} characters")
    fnt = nam.get("fnt")
    if not isinstance(fnt, str) or not _STD_NAME.match(fnt):
        raise _invalid("'nam.fnt' (standardised family name) is missing or not A-Z and '<'")
    gnt = nam.get("gnt", "")
    if not _STD_NAME.match(gnt):
        raise _invalid("'nam.gnt' is not A-Z and '<'")
    dob = dcc.get("dob")
    if not isinstance(dob, str) or not _DOB.match(dob[:10]):
        raise _invalid("'dob' (date of birth) is missing or malformed")
    present = [t for t in TYPES if t in dcc]
    if len(present) != 1:
        raise _invalid(f"certificate must hold exactly one of v/t/r, holds {len(present) or 'none'}")
    cert_type = present[0]
    entries = dcc[cert_type]
    if not isinstance(entries, list) or len(entries) != 1:
        raise _invalid(f"'{cert_type}' must hold exactly one entry")
    entry = entries[0]
    if not isinstance(entry, Mapping):
        raise _invalid(f"'{cert_type}' entry is not a map")
    for name, kind, required in _ENTRY_FIELDS[cert_type]:
        value = entry.get(name)
        if value is not None:
            _check_field(kind, name, value)
        elif required:
            raise _invalid(f"'{cert_type}.{name}' is missing")
    return Certificate(cert_type, entry, entry["ci"], iss, iat, exp, fnt, gnt, dob)
