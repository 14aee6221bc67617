"""The enrolment contract between provisioning, the fleet and the kiosk
(docs/provisioning.md): the token's form and the files a kiosk is given.

A token is `gge1.<secret>.<pin>`: the secret is the credential (the fleet keeps only
its SHA-256), the pin is the first 128 bits (32 hex digits) of the SHA-256 of the
fleet CA's certificate (DER), so the kiosk can check which fleet it talks to before
it sends its request.
"""

from __future__ import annotations

import hashlib
import re

TOKEN_PREFIX = "gge1"
PIN_HEX = 32

# The folder `greengate/` of an enrolment bundle, and what `greengate-kiosk enrol`
# writes: the config names the others by these relative paths.
CONFIG, KEY, CERT, CA, FLEET_KEY = "kiosk.toml", "kiosk.key", "kiosk.pem", "ca.pem", \
    "fleet-bundle.pem"
FILES = (CONFIG, KEY, CERT, CA, FLEET_KEY)
BUNDLE_DIR = "greengate"

_TOKEN = re.compile(rf"^{TOKEN_PREFIX}\.([A-Za-z0-9_-]{{16,128}})\.([0-9a-f]{{{PIN_HEX}}})$")


class TokenError(ValueError):
    pass


def format_token(secret: str, ca_fingerprint_hex: str) -> str:
    return f"{TOKEN_PREFIX}.{secret}.{ca_fingerprint_hex[:PIN_HEX]}"


def parse_token(token: str) -> tuple[str, str]:
    """(secret, pin); TokenError when the text is not a token."""
    match = _TOKEN.match(token.strip())
    if match is None:
        raise TokenError("not a GreenGate enrolment token (gge1.<secret>.<pin>); copy it whole")
    return match.group(1), match.group(2)


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def pin_matches(pin: str, ca_der: bytes) -> bool:
    return hashlib.sha256(ca_der).hexdigest()[:PIN_HEX] == pin
