"""MQTT topics and message schemas shared by kiosks and the fleet.

Messages are compact JSON (readable with mosquitto_sub, a few hundred bytes).
Every parser is total: any byte string gives a checked message or a MessageError
with a sentence (sizes, nesting, invalid UTF-8, NaN/Infinity, numbers out of range,
text a database cannot hold); nothing else escapes. The fleet quarantines and
counts those, it never crashes on them. See docs/protocol.md.
"""

import json
import math
import re

from . import sealing

VERSION = 1
ROOT = "gg/v1"
MAX_MESSAGE = 4096
KIOSK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
DECISIONS = ("green", "red")
CLOCK_STATES = ("synced", "floor", "unknown")
POLICY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # fleet/policies.py NAME
# an organisation code as a roster bundle carries it (greengate/roster.py)
ORG_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SCAN_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
SUMMARY_ID = re.compile(r"^s[0-9a-f]{16}$")
# A broker as a kiosk names the one it is connected to: "host:port" (docs/protocol.md)
BROKER = re.compile(r"^[A-Za-z0-9\[][A-Za-z0-9.:\[\]_-]{0,252}:[0-9]{1,5}$")
# A bridge's name: the district (or site) broker it joins to the core (docs/tiers.md)
BRIDGE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
# A confirmation names at most this many ids, so that it stays well under MAX_MESSAGE
# (a scan id is at most 64 characters; the kiosk's are 32).
CONFIRM_IDS = 50
MAX_SEQ = 2 ** 53 - 1  # exact in a JSON number everywhere
MAX_COUNT = 10 ** 9  # outbox depths, overflow and summary counts
# a heartbeat's faults (device/faults.py, most urgent first), each kind at most once
FAULT_KINDS = ("config", "storage", "source", "lists", "clock")
MAX_FAULTS = 5
FAULT_DETAIL = 200  # characters
# Absolute bounds for any time a kiosk reports (Unix seconds): 2020-01-01 .. 2100-01-01.
# The fleet applies a tighter window around its own clock (fleet/ingest.py).
TS_MIN, TS_MAX = 1_577_836_800, 4_102_444_800


class MessageError(ValueError):
    pass


# --- topics ----------------------------------------------------------------
def scan_topic(kiosk: str) -> str:
    return f"{ROOT}/kiosk/{kiosk}/scan"


def heartbeat_topic(kiosk: str) -> str:
    return f"{ROOT}/kiosk/{kiosk}/heartbeat"


def summary_topic(kiosk: str) -> str:
    return f"{ROOT}/kiosk/{kiosk}/summary"


def presence_topic(kiosk: str) -> str:
    return f"{ROOT}/kiosk/{kiosk}/presence"


def confirm_topic(kiosk: str) -> str:
    """Fleet -> one kiosk, QoS 1, not retained: ids the fleet has committed. Only that
    kiosk may read it (the broker's ACL)."""
    return f"{ROOT}/confirm/{kiosk}"


def bundle_topic(deployment: str, kind: str) -> str:
    """Retained, QoS 1: trust, policy, status (full snapshot), status-head."""
    return f"{ROOT}/bundle/{deployment}/{kind}"


def status_delta_topic(deployment: str, base: int) -> str:
    """Retained, QoS 1: the delta from status version `base` to the current one. A kiosk
    subscribes only to the one for the version it holds (docs/bundles.md)."""
    return f"{ROOT}/bundle/{deployment}/status-delta/{int(base)}"


def roster_topic(kiosk: str) -> str:
    """Fleet -> one kiosk, retained, QoS 1: its organisation's roster bundle. Only that
    kiosk may read it (the broker's ACL; docs/rosters.md)."""
    return f"{ROOT}/roster/{kiosk}"


def roster_delta_topic(kiosk: str) -> str:
    """Fleet -> one kiosk, retained, QoS 1: the roster-delta from its organisation's
    previous roster to the current one, or empty (no delta a kiosk could hold the base
    of: take the full roster). Only that kiosk may read it."""
    return f"{ROOT}/roster/{kiosk}/delta"


def broker_address(text) -> tuple[str, int]:
    """"host:port" or "[v6 address]:port" -> (host, port), as kiosk configs, heartbeats and
    `greengate-provision bridge` name a broker; MessageError says what is wrong."""
    if not isinstance(text, str) or not BROKER.match(text):
        raise MessageError(f"{str(text)[:80]!r} is not host:port")
    host, _, port = text.rpartition(":")
    if host.startswith("["):
        if not host.endswith("]") or len(host) < 3:
            raise MessageError(f"{text[:80]!r} is not host:port")
        host = host[1:-1]
    elif ":" in host:
        raise MessageError(f"{text[:80]!r}: write an IPv6 address in brackets, [addr]:port")
    if not 1 <= int(port) <= 65535:
        raise MessageError(f"{text[:80]!r}: the port must be 1-65535")
    return host, int(port)


def broker_text(host: str, port: int) -> str:
    """The inverse of broker_address: what a heartbeat's `broker` says."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bridge_state_topic(name: str) -> str:
    """Retained, on the core broker: "1" while bridge `name` is connected, "0" once it
    is not (Mosquitto's bridge notifications; the "0" is the bridge's last will)."""
    return f"{ROOT}/bridge/{name}/state"


BRIDGE_KINDS = ("state", "crl")


def bridge_crl_topic(name: str) -> str:
    """Retained, district -> core (up the bridge): which CRL the district broker applies,
    from its `greengate-provision crl-follow` (parse_bridge_crl)."""
    return f"{ROOT}/bridge/{name}/crl"


def crl_topic() -> str:
    """Retained, QoS 1, core -> every district (down each bridge): the fleet CA's CRL as
    PEM, which each district's crl-follow checks against the CA and gives its broker."""
    return f"{ROOT}/crl"


def bridge_of(topic: str) -> tuple[str, str]:
    """(bridge name, "state" or "crl") of a bridge topic, or MessageError."""
    parts = topic.split("/")
    if (len(parts) != 5 or f"{parts[0]}/{parts[1]}" != ROOT or parts[2] != "bridge"
            or parts[4] not in BRIDGE_KINDS or not BRIDGE_NAME.match(parts[3])):
        raise MessageError(f"not a bridge topic: {topic[:100]!r}")
    return parts[3], parts[4]


def parse_bridge_state(payload: bytes) -> bool:
    """True (connected) or False; anything but b"1" / b"0" is a MessageError."""
    if payload == b"1":
        return True
    if payload == b"0":
        return False
    raise MessageError("bridge state must be '1' or '0'")


def bridge_crl(*, bridge: str, number: int | None, at: float, error: str | None = None) -> dict:
    """A district's word on its CRL: `number` (the CRL Number extension) is the one its
    broker has applied (None: none yet); `error` says why the newest one offered was not
    applied (a CRL of another CA, a reload that failed)."""
    doc = {"v": VERSION, "bridge": bridge, "number": number, "at": round(at, 3)}
    if error:
        doc["error"] = error[:FAULT_DETAIL]
    return doc


def parse_bridge_crl(payload: bytes, bridge: str) -> dict:
    doc = _decode(payload)
    if doc.get("bridge") != bridge:
        raise MessageError(f"message names bridge {str(doc.get('bridge'))[:40]!r} but was "
                           f"published under {bridge!r}")
    _field(doc, "number", int, optional=True, low=0, high=MAX_SEQ)
    _field(doc, "at", (int, float), **_TS)
    _field(doc, "error", str, optional=True, max_len=FAULT_DETAIL)
    return doc


def kiosk_of(topic: str) -> tuple[str, str]:
    """(kiosk id, message kind) of a kiosk topic, or MessageError."""
    parts = topic.split("/")
    if len(parts) != 5 or f"{parts[0]}/{parts[1]}" != ROOT or parts[2] != "kiosk":
        raise MessageError(f"not a kiosk topic: {topic[:100]!r}")
    if not KIOSK_ID.match(parts[3]):
        raise MessageError(f"bad kiosk id in topic: {parts[3][:70]!r}")
    return parts[3], parts[4]


# --- building --------------------------------------------------------------
def encode(message: dict) -> bytes:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()


def scan(*, scan_id: str, kiosk: str, ts: float, decision: str, reason: str,
         sub_reason: str | None, cert_type: str | None, cert_hash: str | None,
         holder: str | None = None, policy: str, seq: int | None = None,
         sealed: str | None = None) -> dict:
    """seq: the kiosk's sequence number of this decision (1, 2, 3, ... per outbox; the
    outbox assigns it). None only from kiosks older than the field. sealed: the holder's
    identity sealed to the fleet (greengate/sealing.py), which derives the pseudonym;
    holder: the pseudonym itself, only from kiosks older than sealing."""
    doc = {"v": VERSION, "id": scan_id, "kiosk": kiosk, "ts": round(ts, 3),
           "decision": decision, "reason": reason, "sub": sub_reason, "type": cert_type,
           "cert": cert_hash, "holder": holder, "policy": policy}
    if seq is not None:
        doc["seq"] = seq
    if sealed is not None:
        doc["sealed"] = sealed
    return doc


def heartbeat(*, kiosk: str, session: int, ts: float, uptime: float, bundles: dict,
              outbox: int, clock: str, lists: str, cpu_temp: float | None,
              overflow: int = 0, seq: int | None = None,
              confirmed: int | None = None, faults: list[dict] | None = None,
              memory: int | None = None, lost: int | None = None,
              policy: str | None = None, roster: dict | None = None,
              closed: str | None = None, broker: str | None = None) -> dict:
    """seq: the highest sequence number the kiosk has given a decision; confirmed: every
    decision with a sequence number up to this one has been confirmed by the fleet (the
    outbox holds none of them). Together they let the fleet find gaps.
    faults: the kiosk's active faults, [{"kind", "detail"}], most urgent first (at most
    MAX_FAULTS are sent); memory: decisions held only in memory because the storage
    fails; lost: decisions the kiosk could keep only as a count (storage failing and
    memory full); policy: the name of the policy the kiosk applies (the fleet compares
    it with the one it assigned); roster: {"organisation", "version"} of the roster the
    kiosk holds; closed: the organisation whose closing closes the place ("?": named in
    the policy bundle unreadably); broker: "host:port" of the broker this connection
    goes through (a kiosk may list several). None: not sent (kiosks older than the fields, or no
    roster / not closed: the fleet reads an absent field as null)."""
    doc = {"v": VERSION, "kiosk": kiosk, "session": session, "ts": round(ts, 3),
           "uptime": round(uptime, 1), "bundles": bundles, "outbox": outbox,
           "clock": clock, "lists": lists, "cpu_temp": cpu_temp, "overflow": overflow}
    if seq is not None:
        doc["seq"] = seq
    if confirmed is not None:
        doc["confirmed"] = confirmed
    if faults is not None:
        doc["faults"] = [{"kind": f["kind"], "detail": str(f["detail"])[:FAULT_DETAIL]}
                         for f in faults[:MAX_FAULTS]]
    if memory is not None:
        doc["memory"] = memory
    if lost is not None:
        doc["lost"] = lost
    if policy is not None:
        doc["policy"] = policy
    if roster is not None:
        doc["roster"] = {"organisation": roster["organisation"], "version": roster["version"]}
    if closed is not None:
        doc["closed"] = closed
    if broker is not None:
        doc["broker"] = broker
    return doc


def confirm(*, kiosk: str, scans: list[str] = (), summaries: list[str] = ()) -> dict:
    """The fleet committed these scan and summary ids of `kiosk` (new or seen before).
    At most CONFIRM_IDS ids in all: see confirms() to split a longer list."""
    return {"v": VERSION, "kiosk": kiosk, "scans": list(scans), "summaries": list(summaries)}


def confirms(kiosk: str, scans: list[str], summaries: list[str]) -> list[dict]:
    """Confirmations for any number of ids, each within CONFIRM_IDS."""
    out = []
    items = [("scans", i) for i in scans] + [("summaries", i) for i in summaries]
    for start in range(0, len(items), CONFIRM_IDS):
        chunk = items[start:start + CONFIRM_IDS]
        out.append(confirm(kiosk=kiosk, scans=[i for k, i in chunk if k == "scans"],
                           summaries=[i for k, i in chunk if k == "summaries"]))
    return out


def summary(*, summary_id: str, kiosk: str, hour: int, decision: str, reason: str,
            count: int, first: float, last: float) -> dict:
    """Decisions recorded only as a count because the kiosk's outbox was full."""
    return {"v": VERSION, "id": summary_id, "kiosk": kiosk, "hour": hour,
            "decision": decision, "reason": reason, "count": count,
            "first": round(first, 3), "last": round(last, 3)}


def presence(*, kiosk: str, session: int, state: str, cause: str | None = None,
             broker: str | None = None) -> dict:
    """cause: only on the kiosk's own `offline` at a graceful stop ("stopped"). The last
    will carries none, which is how the fleet tells a stop from a lost connection: the
    two are otherwise the same message (docs/protocol.md). broker: as in heartbeat()."""
    doc = {"v": VERSION, "kiosk": kiosk, "session": session, "state": state}
    if cause is not None:
        doc["cause"] = cause
    if broker is not None:
        doc["broker"] = broker
    return doc


def _broker_field(doc: dict) -> None:
    broker = _field(doc, "broker", str, optional=True, max_len=260)
    if broker is not None and not BROKER.match(broker):
        raise MessageError("field 'broker' must be host:port")


# --- parsing ---------------------------------------------------------------
def _refuse_constant(name: str):
    raise MessageError(f"number {name} is not allowed")


def _decode(payload) -> dict:
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise MessageError("message is not bytes")
    if len(payload) > MAX_MESSAGE:
        raise MessageError(f"message is {len(payload)} bytes, limit {MAX_MESSAGE}")
    try:
        text = bytes(payload).decode("utf-8")
    except UnicodeDecodeError:
        raise MessageError("not JSON: the message is not valid UTF-8") from None
    try:
        # NaN/Infinity are not JSON; deep nesting ends in RecursionError inside the
        # decoder (4096 bytes of "[" is enough): both are refused, never raised
        doc = json.loads(text, parse_constant=_refuse_constant)
    except MessageError:
        raise
    except RecursionError:
        raise MessageError("not JSON: nested too deeply") from None
    except (ValueError, TypeError) as exc:
        raise MessageError(f"not JSON: {str(exc)[:100]}") from None
    if not isinstance(doc, dict):
        raise MessageError("message is not a JSON object")
    if doc.get("v") != VERSION or type(doc.get("v")) is not int:
        raise MessageError(f"unsupported message version {str(doc.get('v'))[:20]!r}")
    return doc


def _field(doc: dict, name: str, kinds, *, optional: bool = False, max_len: int = 100,
           low: float | None = None, high: float | None = None):
    """One field, type-checked. Strings: printable, UTF-8-encodable (no lone surrogates,
    no NUL) and at most max_len. Numbers: finite and within [low, high] when given."""
    value = doc.get(name)
    if value is None:
        if optional:
            return None
        raise MessageError(f"field '{name}' is missing")
    if type(value) is bool or not isinstance(value, kinds):
        raise MessageError(f"field '{name}' has the wrong type")
    if isinstance(value, str):
        if len(value) > max_len:
            raise MessageError(f"field '{name}' is too long")
        if not value.isprintable():
            raise MessageError(f"field '{name}' holds characters that are not printable")
    elif isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise MessageError(f"field '{name}' is not a finite number")
        if (low is not None and value < low) or (high is not None and value > high):
            raise MessageError(f"field '{name}' is out of range")
    return value


def _same_kiosk(doc: dict, kiosk: str) -> None:
    if doc.get("kiosk") != kiosk:
        raise MessageError(f"message names kiosk {str(doc.get('kiosk'))[:70]!r} "
                           f"but was published under {kiosk!r}")


_HEX = re.compile(r"^[0-9a-f]+$")
_B64URL = re.compile(r"^[A-Za-z0-9_-]+$")
_TS = {"low": TS_MIN, "high": TS_MAX}


def parse_scan(payload: bytes, kiosk: str) -> dict:
    doc = _decode(payload)
    _same_kiosk(doc, kiosk)
    if not SCAN_ID.match(_field(doc, "id", str, max_len=64)):
        raise MessageError("field 'id' is not a scan id")
    _field(doc, "ts", (int, float), **_TS)
    if _field(doc, "decision", str) not in DECISIONS:
        raise MessageError("field 'decision' must be green or red")
    _field(doc, "reason", str, max_len=40)
    _field(doc, "sub", str, optional=True, max_len=40)
    if _field(doc, "type", str, optional=True, max_len=1) not in (None, "v", "t", "r"):
        raise MessageError("field 'type' must be v, t or r")
    for name in ("cert", "holder"):
        value = _field(doc, name, str, optional=True, max_len=64)
        if value is not None and not _HEX.match(value):
            raise MessageError(f"field '{name}' is not hex")
    _field(doc, "policy", str, max_len=64)
    _field(doc, "seq", int, optional=True, low=1, high=MAX_SEQ)
    # only its form here: opening it is the fleet's (fleet/ingest.py)
    sealed = _field(doc, "sealed", str, optional=True, max_len=sealing.MAX_TEXT)
    if sealed is not None:
        if not _B64URL.match(sealed):
            raise MessageError("field 'sealed' is not base64url")
        if doc.get("holder") is not None:
            raise MessageError("field 'sealed' comes with a 'holder': a kiosk sends one")
    return doc


def parse_heartbeat(payload: bytes, kiosk: str) -> dict:
    doc = _decode(payload)
    _same_kiosk(doc, kiosk)
    _field(doc, "session", int, low=0, high=MAX_SEQ)
    _field(doc, "ts", (int, float), **_TS)
    _field(doc, "uptime", (int, float), low=0, high=1e10)
    bundles = _field(doc, "bundles", dict)
    if len(bundles) > 8:
        raise MessageError("field 'bundles' must map trust/policy/status/valuesets to versions")
    for kind, version in bundles.items():
        if kind not in ("trust", "policy", "status", "valuesets") or (version is not None and (
                type(version) is not int or not 0 <= version <= MAX_SEQ)):
            raise MessageError("field 'bundles' must map trust/policy/status/valuesets to versions")
    _field(doc, "outbox", int, low=0, high=MAX_COUNT)
    _field(doc, "overflow", int, optional=True, low=0, high=MAX_COUNT)
    if _field(doc, "clock", str) not in CLOCK_STATES:
        raise MessageError(f"field 'clock' must be one of {', '.join(CLOCK_STATES)}")
    if _field(doc, "lists", str) not in ("fresh", "stale", "missing"):
        raise MessageError("field 'lists' must be fresh, stale or missing")
    _field(doc, "cpu_temp", (int, float), optional=True, low=-100, high=200)
    seq = _field(doc, "seq", int, optional=True, low=0, high=MAX_SEQ)
    confirmed = _field(doc, "confirmed", int, optional=True, low=0, high=MAX_SEQ)
    if confirmed is not None and (seq is None or confirmed > seq):
        raise MessageError("field 'confirmed' is beyond field 'seq'")
    faults = _field(doc, "faults", list, optional=True)
    if faults is not None:
        if len(faults) > MAX_FAULTS:
            raise MessageError(f"field 'faults' holds more than {MAX_FAULTS} entries")
        kinds = set()
        for entry in faults:
            if not isinstance(entry, dict) or set(entry) != {"kind", "detail"}:
                raise MessageError("field 'faults' must hold {kind, detail} objects")
            kind = _field(entry, "kind", str, max_len=20)
            if kind not in FAULT_KINDS or kind in kinds:
                raise MessageError(f"field 'faults': kind must be one of "
                                   f"{', '.join(FAULT_KINDS)}, each at most once")
            kinds.add(kind)
            _field(entry, "detail", str, max_len=FAULT_DETAIL)
    _field(doc, "memory", int, optional=True, low=0, high=MAX_COUNT)
    _field(doc, "lost", int, optional=True, low=0, high=MAX_COUNT)
    policy = _field(doc, "policy", str, optional=True, max_len=64)
    if policy is not None and not POLICY_NAME.match(policy):
        raise MessageError("field 'policy' is not a policy name (letters, digits, '_', '.', "
                           "'-', at most 64)")
    held = _field(doc, "roster", dict, optional=True)
    if held is not None:
        if set(held) != {"organisation", "version"}:
            raise MessageError("field 'roster' must be {organisation, version} or null")
        if not ORG_CODE.match(_field(held, "organisation", str, max_len=64)):
            raise MessageError("field 'roster': organisation is not an organisation code")
        _field(held, "version", int, low=0, high=MAX_SEQ)
    closed = _field(doc, "closed", str, optional=True, max_len=64)
    if closed is not None and closed != "?" and not ORG_CODE.match(closed):
        raise MessageError("field 'closed' must be an organisation code, '?' or null")
    _broker_field(doc)
    return doc


def parse_presence(payload: bytes, kiosk: str) -> dict:
    doc = _decode(payload)
    _same_kiosk(doc, kiosk)
    _field(doc, "session", int, low=0, high=MAX_SEQ)
    if _field(doc, "state", str) not in ("online", "offline"):
        raise MessageError("field 'state' must be online or offline")
    _field(doc, "cause", str, optional=True, max_len=40)
    _broker_field(doc)
    return doc


def parse_summary(payload: bytes, kiosk: str) -> dict:
    doc = _decode(payload)
    _same_kiosk(doc, kiosk)
    if not SUMMARY_ID.match(_field(doc, "id", str, max_len=64)):
        raise MessageError("field 'id' is not a summary id")
    if _field(doc, "hour", int, **_TS) % 3600:
        raise MessageError("field 'hour' is not the start of an hour")
    # "unknown": the kiosk counted a decision whose scan message it could not read back
    # (device/outbox.py, docs/protocol.md#summary-new)
    if _field(doc, "decision", str) not in DECISIONS + ("unknown",):
        raise MessageError("field 'decision' must be green, red or unknown")
    _field(doc, "reason", str, max_len=40)
    if _field(doc, "count", int, high=MAX_COUNT) < 1:
        raise MessageError("field 'count' must be at least 1")
    if _field(doc, "first", (int, float), **_TS) > _field(doc, "last", (int, float), **_TS):
        raise MessageError("field 'first' is after 'last'")
    return doc


def parse_confirm(payload: bytes, kiosk: str) -> dict:
    """A confirmation (kiosk side): lists of scan and summary ids, CONFIRM_IDS at most."""
    doc = _decode(payload)
    _same_kiosk(doc, kiosk)
    total = 0
    for name, pattern in (("scans", SCAN_ID), ("summaries", SUMMARY_ID)):
        ids = doc.get(name)
        if ids is None:
            doc[name] = []
            continue
        if not isinstance(ids, list):
            raise MessageError(f"field '{name}' must be a list of ids")
        for item in ids:
            if not isinstance(item, str) or not pattern.match(item):
                raise MessageError(f"field '{name}' holds something that is not an id")
        total += len(ids)
    if total > CONFIRM_IDS:
        raise MessageError(f"a confirmation names at most {CONFIRM_IDS} ids")
    return doc
