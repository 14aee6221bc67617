"""Keyed holder pseudonyms: contact tracing without names on the wire.

The pseudonym is HMAC-SHA256 over the ICAO-standardised name and birth date,
keyed with a secret the fleet holds; without the key, a pseudonym cannot be
matched to a person by guessing names and birth dates.
"""

import hashlib
import hmac


class Pseudonymiser:
    def __init__(self, key_hex: str | None):
        self._key = bytes.fromhex(key_hex) if key_hex else None

    def __call__(self, holder: tuple[str, str, str] | None) -> str | None:
        if self._key is None or holder is None:
            return None
        family, given, dob = holder
        message = f"{family}\x1f{given}\x1f{dob}".encode()
        return hmac.new(self._key, message, hashlib.sha256).digest()[:16].hex()
