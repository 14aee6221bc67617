"""The HC1 transport: "HC1:" + base45(zlib(COSE_Sign1)).

Every failure here is `unreadable`: the QR is not a health certificate we can
even look at.
"""

import zlib

from . import base45
from .errors import Rejected

PREFIX = "HC1:"
# A QR code holds at most 4,296 alphanumeric characters; leave room for
# scanners that add a CR/LF, refuse anything larger before doing any work.
MAX_TEXT = 4400
# Real certificates inflate to 300-2,000 bytes. The cap keeps a 3 KB QR from
# inflating into megabytes (a zlib bomb reaches ~1000:1).
MAX_INFLATED = 16 * 1024


def unprefix(text: str) -> str:
    if not isinstance(text, str):
        raise Rejected("unreadable", "QR content is not text")
    if len(text) > MAX_TEXT:
        raise Rejected("unreadable", f"QR text is {len(text)} characters, more than any QR code holds")
    text = text.strip()
    if not text.startswith(PREFIX):
        head = text[:4]
        raise Rejected("unreadable", f"not a health certificate: starts with {head!r}, not 'HC1:'")
    return text[len(PREFIX):]


def b45decode(text: str) -> bytes:
    try:
        return base45.decode(text)
    except base45.Base45Error as exc:
        raise Rejected("unreadable", f"base45: {exc}") from None


def inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, MAX_INFLATED + 1)
    except zlib.error as exc:
        raise Rejected("unreadable", f"zlib: {exc}") from None
    if len(out) > MAX_INFLATED:
        raise Rejected("unreadable", f"zlib: inflates past {MAX_INFLATED} bytes (decompression bomb?)")
    if not inflater.eof:
        raise Rejected("unreadable", "zlib: compressed data is truncated")
    if inflater.unused_data:
        raise Rejected("unreadable", "zlib: trailing bytes after the compressed data")
    return out


def decode(text: str) -> bytes:
    """HC1 text to COSE bytes."""
    return inflate(b45decode(unprefix(text)))


def encode(cose: bytes) -> str:
    return PREFIX + base45.encode(zlib.compress(cose, 9))
