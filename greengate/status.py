"""Status list look-up: revoked and suspended certificates, by certificate hash.

The key is the first 16 bytes of SHA-256 of the certificate identifier (ci),
as in the EU revocation scheme. This in-memory form is what the verifier
consults; the signed, compact wire format that fills it is built with the
fleet's status lists.
"""

import hashlib
from dataclasses import dataclass
from datetime import datetime

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
