"""Status list look-up: revoked and suspended certificates, by certificate hash.

The key is the first 16 bytes of SHA-256 of the certificate identifier (ci),
as in the EU revocation scheme. This in-memory form is what the verifier
consults; the signed, compact wire format that fills it is built with the
fleet's status lists.
"""

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone

REVOKED = "revoked"
SUSPENDED = "suspended"


def cert_hash(ci: str) -> bytes:
    return hashlib.sha256(ci.encode("utf-8")).digest()[:16]


@dataclass(frozen=True, slots=True)
class Status:
    kind: str  # REVOKED | SUSPENDED
    until: datetime | None = None  # suspensions lapse by themselves at this time


class StatusList:
    def __init__(self, entries: dict[bytes, Status] | None = None):
        self._entries = dict(entries or {})

    def revoke(self, key: bytes) -> None:
        self._entries[key] = Status(REVOKED)

    def suspend(self, key: bytes, until: datetime) -> None:
        self._entries[key] = Status(SUSPENDED, until)

    def lookup(self, key: bytes, at: datetime) -> Status | None:
        status = self._entries.get(key)
        if status and status.kind == SUSPENDED and status.until and at >= status.until:
            return None
        return status

    def __len__(self) -> int:
        return len(self._entries)


# --- bundle bodies ---------------------------------------------------------
# A "status" bundle body is {"revoked": [16-byte keys], "suspended": [[key, until
# epoch seconds], ...]}; a "status-delta" body is {"from": version, "revoked": [...],
# "suspended": [...], "reinstated": [...]} and applies only on top of `from`.


def from_body(body) -> StatusList:
    if not isinstance(body, dict):
        raise ValueError("status body is not a map")
    status = StatusList()
    _apply(status, body)
    return status


def apply_delta(base: StatusList, body) -> StatusList:
    if not isinstance(body, dict):
        raise ValueError("status delta body is not a map")
    status = StatusList(base._entries)
    for key in body.get("reinstated", []):
        status._entries.pop(_key(key), None)
    _apply(status, body)
    return status


def _key(key) -> bytes:
    if not isinstance(key, bytes) or len(key) != 16:
        raise ValueError("status key must be 16 bytes")
    return key


def _apply(status: StatusList, body: dict) -> None:
    for key in body.get("revoked", []):
        status.revoke(_key(key))
    for item in body.get("suspended", []):
        if not isinstance(item, list) or len(item) != 2 or type(item[1]) is not int:
            raise ValueError("suspension must be [key, until]")
        status.suspend(_key(item[0]), datetime.fromtimestamp(item[1], timezone.utc))


def to_body(status: StatusList) -> dict:
    return {"revoked": [k for k, s in status._entries.items() if s.kind == REVOKED],
            "suspended": [[k, int(s.until.timestamp())] for k, s in status._entries.items()
                          if s.kind == SUSPENDED]}
