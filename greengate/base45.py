"""Base45 (RFC 9285), the alphabet QR alphanumeric mode packs densely."""

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"
_VALUE = {c: i for i, c in enumerate(ALPHABET)}
# bytes.translate maps every legal character to its value and every other one
# to 0xFF, so one C-level pass both converts and finds illegal characters.
_TABLE = bytes(_VALUE.get(chr(i), 0xFF) for i in range(256))


class Base45Error(ValueError):
    pass


def encode(data: bytes) -> str:
    out = []
    append = out.append
    for i in range(0, len(data) - 1, 2):
        n = data[i] * 256 + data[i + 1]
        n, c = divmod(n, 45)
        e, d = divmod(n, 45)
        append(ALPHABET[c] + ALPHABET[d] + ALPHABET[e])
    if len(data) % 2:
        d, c = divmod(data[-1], 45)
        append(ALPHABET[c] + ALPHABET[d])
    return "".join(out)


def decode(text: str) -> bytes:
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        raise Base45Error("non-ASCII character in base45 text") from None
    vals = raw.translate(_TABLE)
    if 0xFF in vals:
        bad = text[vals.index(0xFF)]
        raise Base45Error(f"character {bad!r} is not in the base45 alphabet")
    full, rest = divmod(len(vals), 3)
    if rest == 1:
        raise Base45Error("base45 text length leaves a dangling character")
    end = 3 * full
    # All triplets at once, in C: each triplet's three digits go into the low byte
    # of its own 24-bit slot of three big integers, and one multiply-add over those
    # gives every triplet's value (a slot holds at most 44 + 44*45 + 44*2025 < 2**17,
    # so nothing carries into the next slot). A value over 0xFFFF, base45's range
    # rule, shows as a non-zero top byte. (Three times faster than a Python loop
    # over the triplets; a numpy version ran faster alone but slower inside the
    # whole verification: its code evicts OpenSSL's tables from the CPU caches.)
    slots = bytearray(end)
    slots[2::3] = vals[0:end:3]
    low = int.from_bytes(slots, "big")
    slots[2::3] = vals[1:end:3]
    mid = int.from_bytes(slots, "big")
    slots[2::3] = vals[2:end:3]
    high = int.from_bytes(slots, "big")
    words = (low + mid * 45 + high * 2025).to_bytes(end, "big")
    if words[0::3].count(0) != full:
        raise Base45Error("base45 triplet out of range")
    out = bytearray(2 * full)
    out[0::2] = words[1::3]
    out[1::2] = words[2::3]
    if rest == 2:
        n = vals[-2] + vals[-1] * 45
        if n > 0xFF:
            raise Base45Error("base45 pair out of range")
        out.append(n)
    return bytes(out)
