"""MQTT topics and message schemas shared by kiosks and the fleet.

Messages are compact JSON (readable with mosquitto_sub, a few hundred bytes).
Every parser checks types and sizes and raises MessageError with a sentence;
the fleet counts and logs those, it never crashes on them. See docs/protocol.md.
"""

import json
import re

VERSION = 1
ROOT = "gg/v1"
MAX_MESSAGE = 4096
KIOSK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
DECISIONS = ("green", "red")
CLOCK_STATES = ("synced", "floor", "unknown")


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


def bundle_topic(deployment: str, kind: str) -> str:
    """Retained, QoS 1: trust, policy, status (full snapshot), status-head."""
    return f"{ROOT}/bundle/{deployment}/{kind}"


def status_delta_topic(deployment: str, base: int) -> str:
    """Retained, QoS 1: the delta from status version `base` to the current one. A kiosk
    subscribes only to the one for the version it holds (docs/bundles.md)."""
    return f"{ROOT}/bundle/{deployment}/status-delta/{int(base)}"


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
         holder: str | None, policy: str) -> dict:
    return {"v": VERSION, "id": scan_id, "kiosk": kiosk, "ts": round(ts, 3),
            "decision": decision, "reason": reason, "sub": sub_reason, "type": cert_type,
            "cert": cert_hash, "holder": holder, "policy": policy}


def heartbeat(*, kiosk: str, session: int, ts: float, uptime: float, bundles: dict,
              outbox: int, clock: str, lists: str, cpu_temp: float | None,
              overflow: int = 0) -> dict:
    return {"v": VERSION, "kiosk": kiosk, "session": session, "ts": round(ts, 3),
            "uptime": round(uptime, 1), "bundles": bundles, "outbox": outbox,
            "clock": clock, "lists": lists, "cpu_temp": cpu_temp, "overflow": overflow}


def summary(*, summary_id: str, kiosk: str, hour: int, decision: str, reason: str,
            count: int, first: float, last: float) -> dict:
    """Decisions recorded only as a count because the kiosk's outbox was full."""
    return {"v": VERSION, "id": summary_id, "kiosk": kiosk, "hour": hour,
            "decision": decision, "reason": reason, "count": count,
            "first": round(first, 3), "last": round(last, 3)}


def presence(*, kiosk: str, session: int, state: str, cause: str | None = None) -> dict:
    """cause: only on the kiosk's own `offline` at a graceful stop ("stopped"). The last
    will carries none, which is how the fleet tells a stop from a lost connection: the
    two are otherwise the same message (docs/protocol.md)."""
    doc = {"v": VERSION, "kiosk": kiosk, "session": session, "state": state}
    if cause is not None:
        doc["cause"] = cause
    return doc


# --- parsing ---------------------------------------------------------------
def _decode(payload: bytes) -> dict:
    if len(payload) > MAX_MESSAGE:
        raise MessageError(f"message is {len(payload)} bytes, limit {MAX_MESSAGE}")
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MessageError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise MessageError("message is not a JSON object")
    if doc.get("v") != VERSION:
        raise MessageError(f"unsupported message version {doc.get('v')!r}")
    return doc


def _field(doc: dict, name: str, kinds, *, optional: bool = False, max_len: int = 100):
    value = doc.get(name)
    if value is None:
        if optional:
            return None
        raise MessageError(f"field '{name}' is missing")
    if type(value) is bool or not isinstance(value, kinds):
        raise MessageError(f"field '{name}' has the wrong type")
    if isinstance(value, str) and len(value) > max_len:
        raise MessageError(f"field '{name}' is too long")
    return value


def _same_kiosk(doc: dict, kiosk: str) -> None:
    if doc.get("kiosk") != kiosk:
        raise MessageError(f"message names kiosk {str(doc.get('kiosk'))[:70]!r} "
                           f"but was published under {kiosk!r}")


_HEX = re.compile(r"^[0-9a-f]+$")


def parse_scan(payload: bytes, kiosk: str) -> dict:
    doc = _decode(payload)
    _same_kiosk(doc, kiosk)
    scan_id = _field(doc, "id", str, max_len=64)
    if not re.match(r"^[A-Za-z0-9_-]{8,64}$", scan_id):
        raise MessageError("field 'id' is not a scan id")
    _field(doc, "ts", (int, float))
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
    return doc


def parse_heartbeat(payload: bytes, kiosk: str) -> dict:
    doc = _decode(payload)
    _same_kiosk(doc, kiosk)
    _field(doc, "session", int)
    _field(doc, "ts", (int, float))
    _field(doc, "uptime", (int, float))
    bundles = _field(doc, "bundles", dict)
    for kind, version in bundles.items():
        if kind not in ("trust", "policy", "status") or (version is not None and type(version) is not int):
            raise MessageError("field 'bundles' must map trust/policy/status to versions")
    _field(doc, "outbox", int)
    _field(doc, "overflow", int, optional=True)
    if _field(doc, "clock", str) not in CLOCK_STATES:
        raise MessageError(f"field 'clock' must be one of {', '.join(CLOCK_STATES)}")
    if _field(doc, "lists", str) not in ("fresh", "stale", "missing"):
        raise MessageError("field 'lists' must be fresh, stale or missing")
    _field(doc, "cpu_temp", (int, float), optional=True)
    return doc


def parse_presence(payload: bytes, kiosk: str) -> dict:
    doc = _decode(payload)
    _same_kiosk(doc, kiosk)
    _field(doc, "session", int)
    if _field(doc, "state", str) not in ("online", "offline"):
        raise MessageError("field 'state' must be online or offline")
    _field(doc, "cause", str, optional=True, max_len=40)
    return doc


def parse_summary(payload: bytes, kiosk: str) -> dict:
    doc = _decode(payload)
    _same_kiosk(doc, kiosk)
    if not re.fullmatch(r"s[0-9a-f]{16}", _field(doc, "id", str, max_len=64)):
        raise MessageError("field 'id' is not a summary id")
    if _field(doc, "hour", int) % 3600:
        raise MessageError("field 'hour' is not the start of an hour")
    # "unknown": the kiosk counted a decision whose scan message it could not read back
    # (device/outbox.py, docs/protocol.md#summary-new)
    if _field(doc, "decision", str) not in DECISIONS + ("unknown",):
        raise MessageError("field 'decision' must be green, red or unknown")
    _field(doc, "reason", str, max_len=40)
    if _field(doc, "count", int) < 1:
        raise MessageError("field 'count' must be at least 1")
    if _field(doc, "first", (int, float)) > _field(doc, "last", (int, float)):
        raise MessageError("field 'first' is after 'last'")
    return doc
