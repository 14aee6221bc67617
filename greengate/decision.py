"""The one answer every scan gets: green or red, and exactly one reason."""

from dataclasses import dataclass
from enum import StrEnum


class Reason(StrEnum):
    OK = "ok"
    UNREADABLE = "unreadable"
    UNKNOWN_ISSUER = "unknown_issuer"
    BAD_SIGNATURE = "bad_signature"
    WRONG_KEY_USAGE = "wrong_key_usage"
    NOT_YET_VALID = "not_yet_valid"
    EXPIRED = "expired"
    INVALID_CONTENT = "invalid_content"
    REVOKED = "revoked"
    SUSPENDED = "suspended"
    POLICY_FAILED = "policy_failed"
    CLOCK_UNKNOWN = "clock_unknown"
    OUT_OF_SERVICE = "out_of_service"
    # the kiosk's organisation is suspended or closed (after a case): no certificate is read
    PLACE_CLOSED = "place_closed"


@dataclass(slots=True)  # not frozen: frozen init costs µs on the hot path
class Decision:
    decision: str  # "green" | "red"
    reason: Reason
    detail: str = ""
    sub_reason: str | None = None
    type: str | None = None  # "v" | "t" | "r"
    kid: str | None = None  # hex
    cert_hash: str | None = None  # hex, first 16 bytes of SHA-256(ci), as in status lists
    # Kept in memory only, never serialised: the kiosk seals it to the fleet, which
    # derives the keyed holder pseudonym (docs/privacy.md), and drops it.
    holder: tuple[str, str, str] | None = None

    @property
    def green(self) -> bool:
        return self.decision == "green"

    def to_dict(self) -> dict:
        return {
            "decision": self.decision,
            "reason": str(self.reason),
            "sub_reason": self.sub_reason,
            "detail": self.detail,
            "type": self.type,
            "kid": self.kid,
            "cert_hash": self.cert_hash,
        }


def red(reason: Reason | str, detail: str, **facts) -> Decision:
    return Decision("red", Reason(reason), detail, **facts)
