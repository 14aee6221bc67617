"""Just enough DER to read a certificate a strict X.509 parser refuses.

Some national signer certificates carry harmless encoding quirks (an empty
extendedKeyUsage sequence, non-minimal integers). Rejecting them would turn
valid health passes red, so trust.py falls back to this walker to find the
public key, the validity period and the key-usage OIDs, and nothing else.
"""

from datetime import datetime, timezone


class DerError(ValueError):
    pass


def read_tlv(data: bytes, pos: int = 0) -> tuple[int, int, int]:
    """Return (tag, start of value, end of value) of the TLV at pos."""
    if pos + 2 > len(data):
        raise DerError("truncated TLV")
    tag = data[pos]
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 4 or pos + n > len(data):
            raise DerError("bad length")
        length = int.from_bytes(data[pos:pos + n], "big")
        pos += n
    end = pos + length
    if end > len(data):
        raise DerError("value runs past the end")
    return tag, pos, end


def children(data: bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """(tag, value start, value end, tlv start) of each element in a constructed value."""
    out = []
    pos = start
    while pos < end:
        tag, vs, ve = read_tlv(data, pos)
        out.append((tag, vs, ve, pos))
        pos = ve
    return out


def decode_oid(body: bytes) -> str:
    if not body:
        raise DerError("empty OID")
    first = body[0]
    parts = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    n = 0
    for b in body[1:]:
        n = (n << 7) | (b & 0x7F)
        if not b & 0x80:
            parts.append(n)
            n = 0
    return ".".join(map(str, parts))


def decode_time(tag: int, body: bytes) -> datetime:
    text = body.decode("ascii")
    if tag == 0x17:  # UTCTime YYMMDDHHMMSSZ
        year = int(text[:2])
        text = ("19" if year >= 50 else "20") + text
    elif tag != 0x18:  # GeneralizedTime
        raise DerError("not a time")
    return datetime.strptime(text[:14], "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc)


EKU_OID = "2.5.29.37"


def parse_certificate(der: bytes) -> dict:
    """{'spki': DER bytes, 'not_before', 'not_after', 'eku': list[str] | None}."""
    _, cs, ce = read_tlv(der)
    tbs_tag, ts, te, _ = children(der, cs, ce)[0]
    fields = children(der, ts, te)
    if fields and fields[0][0] == 0xA0:  # explicit version
        fields = fields[1:]
    # serial, signature alg, issuer, validity, subject, spki, then optional extras
    if len(fields) < 6:
        raise DerError("tbsCertificate too short")
    validity = children(der, fields[3][1], fields[3][2])
    not_before = decode_time(validity[0][0], der[validity[0][1]:validity[0][2]])
    not_after = decode_time(validity[1][0], der[validity[1][1]:validity[1][2]])
    spki_tag, spki_vs, spki_ve, spki_start = fields[5]
    eku = None
    for tag, vs, ve, _ in fields[6:]:
        if tag != 0xA3:  # extensions
            continue
        (_, es, ee, _), = children(der, vs, ve)
        for _, xs, xe, _ in children(der, es, ee):
            parts = children(der, xs, xe)
            if decode_oid(der[parts[0][1]:parts[0][2]]) != EKU_OID:
                continue
            value = parts[-1]
            _, ss, se = read_tlv(der, value[1])
            eku = [decode_oid(der[s:e]) for t, s, e, _ in children(der, ss, se) if t == 0x06]
    return {"spki": der[spki_start:spki_ve], "not_before": not_before,
            "not_after": not_after, "eku": eku}
