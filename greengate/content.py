"""CWT claims and the DCC payload: leniency, structure, the official schema, plausibility.

Order (docs/verification.md, "Schema, plausibility and leniency"):
1. leniency: the encodings real issuers send are normalised (null-valued keys
   are dropped, a CBOR date-time in `t.sc` becomes its text);
2. structure, cheap and with sentences a support desk can read: `ver`, `nam`,
   exactly one of v/t/r, each a non-empty list of maps;
3. the official JSON schema of the declared version (greengate.schema);
4. dates that exist (the schema's formats only look at the shape);
5. the entry that is evaluated, when a pre-1.3 certificate holds several.
`check_plausibility` (birth date against issuance) needs the CWT claims and is
called by the verifier after parse_claims.
"""

import re
from collections.abc import Mapping
from datetime import date, datetime, timedelta, timezone
from typing import NamedTuple

from . import schema
from .errors import Rejected

CLAIM_ISS, CLAIM_EXP, CLAIM_IAT, CLAIM_HCERT = 1, 4, 6, -260
TYPES = ("v", "t", "r")

_VER = re.compile(r"^\d+\.\d+\.\d+$")
_ICAO = re.compile(r"^[A-Z<]*$")  # ICAO 9303 part 3 machine-readable name alphabet
_DOB = re.compile(r"^(\d{4})(?:-(\d\d)(?:-(\d\d))?)?")
MIN_BIRTH_YEAR = 1900
# iat is UTC; a certificate issued in the morning at UTC+14 has an iat on the
# previous UTC day, so a newborn's birth date may be one day after iat's date.
_BIRTH_SLACK = timedelta(days=1)
_DATE_FIELDS = {"v": ("dt",), "t": (), "r": ("fr", "df", "du")}
_DATE_TIME_FIELDS = {"v": (), "t": ("sc", "dr"), "r": ()}
# Several entries (allowed before schema 1.3.0): the one evaluated is the
# latest, by these fields; ties keep the issuer's order (the last one wins).
_LATEST = {"v": lambda e: (str(e.get("dt", ""))[:10], e.get("dn", 0) if type(e.get("dn")) is int else 0),
           "t": lambda e: _moment_or_min(e.get("sc")),
           "r": lambda e: str(e.get("fr", ""))[:10]}


class Certificate(NamedTuple):
    type: str
    entry: Mapping  # the entry evaluated (the latest, when there are several)
    ci: str
    iss: str | None
    iat: float
    exp: float
    family: str  # nam.fnt, the ICAO-standardised name ("" when only gnt is given)
    given: str
    dob: str
    payload: Mapping | None = None  # the whole DCC after normalisation, holding only the evaluated entry
    country: str | None = None  # issuer country, CWT claim 1 (iss)
    schema: str | None = None  # the schema version the payload was validated against


def _invalid(detail: str) -> Rejected:
    return Rejected("invalid_content", detail)


def parse_date(value: str) -> date:
    return date.fromisoformat(value[:10])


def parse_datetime(value: str) -> datetime:
    text = value.replace("Z", "+00:00").replace("z", "+00:00")
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment


def _moment_or_min(value) -> datetime:
    try:
        return parse_datetime(value)
    except (TypeError, ValueError, AttributeError):
        return datetime.min.replace(tzinfo=timezone.utc)


def _claim_time(claims: Mapping, key: int, name: str) -> float:
    value = claims.get(key)
    # The spec wants integers, but issuers in the EU test data (ES) send
    # fractional seconds; refusing them would refuse real passes.
    if type(value) not in (int, float) or value != value or abs(value) > 1e11:
        raise _invalid(f"CWT claim '{name}' is missing or not a number")
    return value


def parse_claims(claims) -> Certificate:
    if type(claims) is not dict and not isinstance(claims, Mapping):
        raise _invalid("CWT payload is not a map of claims")
    iat = _claim_time(claims, CLAIM_IAT, "iat")
    exp = _claim_time(claims, CLAIM_EXP, "exp")
    iss = claims.get(CLAIM_ISS)
    if iss is not None and not isinstance(iss, str):
        raise _invalid("CWT claim 'iss' is not text")
    hcert = claims.get(CLAIM_HCERT)
    if type(hcert) is not dict and not isinstance(hcert, Mapping) \
            or type(hcert.get(1)) is not dict and not isinstance(hcert.get(1), Mapping):
        raise _invalid("CWT has no health certificate (claim -260 → 1)")
    return parse_dcc(hcert[1], iss, iat, exp)


# --------------------------------------------------------------------------- leniency

def _without_nulls(node: Mapping) -> dict:
    return {k: v for k, v in node.items() if v is not None}


def normalise(dcc: Mapping) -> dict:
    """The payload as the schema should see it. Returns `dcc` itself when there
    is nothing to change (the common case costs a few membership tests)."""
    out = dcc if type(dcc) is dict and None not in dcc.values() else _without_nulls(dcc)
    nam = out.get("nam")
    if isinstance(nam, Mapping) and (type(nam) is not dict or None in nam.values()):
        out = out if out is not dcc else dict(dcc)
        out["nam"] = _without_nulls(nam)
    for kind in TYPES:
        entries = out.get(kind)
        if type(entries) is not list:
            continue
        fixed = None
        for i, entry in enumerate(entries):
            if not isinstance(entry, Mapping):
                continue
            new = entry
            if type(entry) is not dict or None in entry.values():
                new = _without_nulls(entry)
            if kind == "t" and isinstance(new.get("sc"), datetime):
                # CBOR tag 0/1 (date-time) where the schema wants RFC 3339 text
                new = dict(new)
                moment = new["sc"]
                if moment.tzinfo is None:
                    moment = moment.replace(tzinfo=timezone.utc)
                new["sc"] = moment.isoformat()
            if new is not entry:
                if fixed is None:
                    fixed = list(entries)
                fixed[i] = new
        if fixed is not None:
            out = out if out is not dcc else dict(dcc)
            out[kind] = fixed
    return out


# --------------------------------------------------------------------------- structure

def _structure(dcc: Mapping) -> tuple[str, list]:
    ver = dcc.get("ver")
    if not isinstance(ver, str) or not _VER.match(ver):
        raise _invalid("'ver' (schema version) is missing or malformed")
    nam = dcc.get("nam")
    if type(nam) is not dict and not isinstance(nam, Mapping):
        raise _invalid("'nam' (name) is missing")
    if "fnt" not in nam and "gnt" not in nam:
        raise _invalid("'nam' holds neither 'fnt' nor 'gnt' (standardised names)")
    for key in ("fnt", "gnt"):
        value = nam.get(key)
        if value is not None and not (isinstance(value, str) and _ICAO.match(value)):
            raise _invalid(f"'nam.{key}' is not in the ICAO 9303 alphabet (A-Z and '<'): "
                           f"{str(value)[:40]!r}")
    if not isinstance(dcc.get("dob"), str):
        raise _invalid("'dob' (date of birth) is missing or not text")
    present = [t for t in TYPES if t in dcc]
    if len(present) != 1:
        raise _invalid(f"certificate must hold exactly one of v/t/r, holds {len(present) or 'none'}")
    kind = present[0]
    entries = dcc[kind]
    if not isinstance(entries, list) or not entries:
        raise _invalid(f"'{kind}' must be a list of at least one entry")
    for entry in entries:
        if type(entry) is not dict and not isinstance(entry, Mapping):
            raise _invalid(f"'{kind}' entry is not a map")
    return kind, entries


# --------------------------------------------------------------------------- dates that exist

def dob_earliest(dob: str) -> date | None:
    """The earliest day a (possibly partial) birth date can mean; None if empty."""
    match = _DOB.match(dob)
    if not match:
        return None
    year, month, day = match.groups()
    return date(int(year), int(month or 1), int(day or 1))


def _check_dates(dcc: Mapping, kind: str, entries: list) -> None:
    dob = dcc["dob"]
    if dob:
        try:
            born = dob_earliest(dob)
            if born is None:
                raise ValueError
            if len(dob) >= 10:
                parse_date(dob)
        except ValueError:
            raise _invalid(f"'dob' is not a date that exists: {dob[:40]!r}") from None
        if born.year < MIN_BIRTH_YEAR:
            raise _invalid(f"'dob' {dob[:10]} is before {MIN_BIRTH_YEAR}")
    many = len(entries) > 1
    for i, entry in enumerate(entries):
        where = f"{kind}[{i}]" if many else kind
        for name in _DATE_FIELDS[kind]:
            value = entry.get(name)
            if isinstance(value, str):
                try:
                    parse_date(value)
                except ValueError:
                    raise _invalid(f"'{where}.{name}' is not a date that exists: {value[:40]!r}") from None
        for name in _DATE_TIME_FIELDS[kind]:
            value = entry.get(name)
            if isinstance(value, str):
                try:
                    parse_datetime(value)
                except ValueError:
                    raise _invalid(f"'{where}.{name}' is not a date-time that exists: "
                                   f"{value[:40]!r}") from None


def parse_dcc(dcc: Mapping, iss=None, iat=0, exp=0) -> Certificate:
    if type(dcc) is not dict and not isinstance(dcc, Mapping):
        raise _invalid("health certificate is not a map")
    dcc = normalise(dcc)
    kind, entries = _structure(dcc)
    version = schema.validate(dcc)
    _check_dates(dcc, kind, entries)
    if len(entries) == 1:
        entry = entries[0]
        payload = dcc
    else:
        latest = _LATEST[kind]
        entry = max(reversed(entries), key=latest)  # max keeps the first of equals: the last entry
        payload = {**dcc, kind: [entry]}
    nam = dcc["nam"]
    return Certificate(kind, entry, entry["ci"], iss, iat, exp, nam.get("fnt", ""),
                       nam.get("gnt", ""), dcc["dob"], payload, iss, version)


# --------------------------------------------------------------------------- plausibility

def check_plausibility(cert: Certificate) -> None:
    """Rules real verifiers apply beyond the schema; raises Rejected (invalid_content)."""
    born = dob_earliest(cert.dob) if cert.dob else None
    if born is not None:
        issued = datetime.fromtimestamp(cert.iat, timezone.utc).date()
        if born > issued + _BIRTH_SLACK:
            raise _invalid(f"'dob' {cert.dob[:10]} is after the certificate was issued "
                           f"({issued.isoformat()})")
