"""One reason code at a time: each case produces exactly that reason, red (ok: green).

Every decision is also checked for privacy: Decision.to_dict() (what reports
and the CLI carry) never holds the holder's names or birth date.
"""

import hashlib
import json
import zlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID, ObjectIdentifier

from greengate import base45, cose, hc1, policy
from greengate.content import CLAIM_EXP, CLAIM_HCERT, CLAIM_IAT, CLAIM_ISS
from greengate.decision import Reason
from greengate.status import StatusList, cert_hash
from greengate.trust import Signer, TrustList, load_signer
from greengate.verifier import Verifier
from provisioning.issuer import Issuer

UTC = timezone.utc
SECOND = timedelta(seconds=1)
ISSUED = datetime(2021, 6, 1, tzinfo=UTC)
EXPIRES = datetime(2022, 6, 1, tzinfo=UTC)
AT = datetime(2021, 10, 5, 8, 0, tzinfo=UTC)
DOSE = "2021-08-01"
DICT_KEYS = {"decision", "reason", "sub_reason", "detail", "type", "kid", "cert_hash"}
DATA = Path(__file__).parent / "data" / "dgc-testdata"

_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)


# -- helpers ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def check(holder):
    """check(decision, reason, sub_reason=None): colour, reason, sub-reason and privacy."""
    secrets_ = [holder.family, holder.given, holder.family_std, holder.given_std, holder.dob,
                "Trần", "TRAN", "Xuân", "XUAN"]
    # (hex kids and hashes can never contain these: each has a non-hex letter or a '-')

    def check_(decision, reason, sub_reason=None):
        colour = "green" if reason == "ok" else "red"
        assert (decision.decision, str(decision.reason), decision.sub_reason) == \
            (colour, reason, sub_reason), decision.detail
        assert isinstance(decision.reason, Reason)
        as_dict = decision.to_dict()
        assert set(as_dict) == DICT_KEYS
        text = json.dumps(as_dict, ensure_ascii=False)
        for secret in secrets_:
            assert secret not in text, f"{secret!r} leaked into {text}"
        assert decision.green is (colour == "green")
        return decision

    return check_


@pytest.fixture(scope="module")
def vacc(es256, person):
    """A vaccination payload for the private holder (fresh ci each call)."""
    return lambda issuer=es256, **kw: issuer.vaccination(date=DOSE, **{**person, **kw})


@pytest.fixture(scope="module")
def verifier(es256, ps256, make_verifier):
    return make_verifier(es256, ps256)


def claims(dcc, iat=ISSUED, exp=EXPIRES, iss="VN"):
    return {CLAIM_ISS: iss, CLAIM_IAT: int(iat.timestamp()), CLAIM_EXP: int(exp.timestamp()),
            CLAIM_HCERT: {1: dcc}}


def raw_signature(key, protected: bytes, payload: bytes) -> bytes:
    tbs = cbor2.dumps(["Signature1", protected, b"", payload])
    if isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(key.sign(tbs, ec.ECDSA(hashes.SHA256())))
        size = (key.curve.key_size + 7) // 8
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    return key.sign(tbs, _PSS, hashes.SHA256())


def hc1_of(protected, unprotected, payload, signature, tag=True) -> str:
    """HC1 text around a hand-built COSE_Sign1 (protected: a header dict or raw bytes)."""
    if isinstance(protected, dict):
        protected = cbor2.dumps(protected)
    body = [protected, unprotected, payload, signature]
    return hc1.encode(cbor2.dumps(cbor2.CBORTag(18, body) if tag else body))


def hand_signed(key, kid, payload: bytes, alg: int) -> str:
    """COSE with protected {alg, kid}, signed by key whatever alg says."""
    protected = cbor2.dumps({1: alg, 4: kid})
    return hc1_of(protected, {}, payload, raw_signature(key, protected, payload))


def cose_parts(text: str) -> list:
    obj = cbor2.loads(hc1.decode(text))
    return list(obj.value if isinstance(obj, cbor2.CBORTag) else obj)


def custom_issuer(extensions, *, alg="ES256", not_before=datetime(2020, 1, 1, tzinfo=UTC),
                  not_after=datetime(2035, 1, 1, tzinfo=UTC)) -> Issuer:
    """An Issuer whose signer certificate carries arbitrary (even malformed) extensions."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "VN"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "Quirky Issuer")])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(not_before).not_valid_after(not_after))
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return Issuer(key, builder.sign(key, hashes.SHA256()))


EKU = ObjectIdentifier("2.5.29.37")
KEY_USAGE = ObjectIdentifier("2.5.29.15")


# -- ok ---------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["es256", "ps256"])
def test_ok(request, verifier, vacc, check, which):
    issuer = request.getfixturevalue(which)
    dcc = vacc(issuer)
    decision = check(verifier.verify(issuer.mint(dcc, iat=ISSUED, exp=EXPIRES), AT), "ok")
    assert decision.type == "v"
    assert decision.kid == issuer.kid.hex()
    assert decision.cert_hash == cert_hash(dcc["v"][0]["ci"]).hex()
    assert "hcmc-2021" in decision.detail


@pytest.mark.parametrize("kind", ["v", "t", "r"])
def test_ok_for_every_type_under_accept_valid(es256, make_verifier, person, check, kind):
    dcc = {"v": lambda: es256.vaccination(date=DOSE, **person),
           "t": lambda: es256.test(sampled="2021-10-05T06:00:00Z", **person),
           "r": lambda: es256.recovery(first_positive="2021-07-01", **person)}[kind]()
    decision = make_verifier(es256, policy="accept-valid").verify(
        es256.mint(dcc, iat=ISSUED, exp=EXPIRES), AT)
    assert check(decision, "ok").type == kind


def test_holder_is_kept_in_memory_only(es256, verifier, vacc, holder, check):
    decision = check(verifier.verify(es256.mint(vacc(), iat=ISSUED, exp=EXPIRES), AT), "ok")
    # the kiosk needs it to derive the keyed pseudonym; it is never serialised
    assert decision.holder == (holder.family_std, holder.given_std, holder.dob)


def test_naive_validation_time_is_utc(es256, verifier, vacc, check):
    text = es256.mint(vacc(), iat=ISSUED, exp=EXPIRES)
    check(verifier.verify(text, EXPIRES.replace(tzinfo=None)), "ok")
    check(verifier.verify(text, (EXPIRES + SECOND).replace(tzinfo=None)), "expired")


# -- unreadable ---------------------------------------------------------------------------

def _zlib_b45(data: bytes) -> str:
    return "HC1:" + base45.encode(zlib.compress(data))


def _b45(data: bytes) -> str:
    return "HC1:" + base45.encode(data)


UNREADABLE = {
    # not HC1
    "url": ("https://example.com/pass/123", "not a health certificate"),
    "empty": ("", "not a health certificate"),
    "hc2 prefix": ("HC2:6BFOXN%TS3DH", "not a health certificate"),
    "no colon": ("HC16BFOXN%TS3DH", "not a health certificate"),
    "lower-case prefix only": ("hc1:6BFOXN", "not a health certificate"),
    # base45
    "lower-case base45": ("HC1:abc", "base45"),
    "dangling character": ("HC1:ABCD", "base45"),
    "triplet out of range": ("HC1:GGW", "base45"),
    "pair out of range": ("HC1:GG", "base45"),
    "illegal character": ("HC1:AB#", "base45"),
    # zlib
    "not zlib": (_b45(b"this is not zlib data"), "zlib"),
    "empty zlib": ("HC1:", "zlib"),
    "truncated zlib": (_b45(zlib.compress(b"x" * 100)[:-3]), "zlib"),
    "trailing bytes": (_b45(zlib.compress(b"\x80") + b"junk"), "zlib"),
    # CBOR
    "not CBOR": (_zlib_b45(b"\xff\xfe\xfd"), "CBOR"),
    "truncated CBOR": (_zlib_b45(b"\xd2\x84\x43\xa1\x01"), "CBOR"),
    # COSE structure
    "array of 3": (_zlib_b45(cbor2.dumps([b"", {}, b""])), "array of 4"),
    "array of 5": (_zlib_b45(cbor2.dumps([b"", {}, b"", b"", b""])), "array of 4"),
    "map": (_zlib_b45(cbor2.dumps({1: 2})), "array of 4"),
    "int": (_zlib_b45(cbor2.dumps(18)), "array of 4"),
    "wrong tag": (_zlib_b45(cbor2.dumps(cbor2.CBORTag(17, [b"", {}, b"", b""]))), "tag 17"),
    "cwt around wrong tag": (
        _zlib_b45(cbor2.dumps(cbor2.CBORTag(61, cbor2.CBORTag(98, [b"", {}, b"", b""])))),
        "tag 98"),
    "protected not bytes": (_zlib_b45(cbor2.dumps([{1: -7}, {}, b"", b""])), "wrong types"),
    "unprotected not map": (_zlib_b45(cbor2.dumps([b"", [], b"", b""])), "wrong types"),
    "payload not bytes": (_zlib_b45(cbor2.dumps([b"", {}, "payload", b""])), "byte strings"),
    "signature not bytes": (_zlib_b45(cbor2.dumps([b"", {}, b"", None])), "byte strings"),
    "protected header not CBOR": (_zlib_b45(cbor2.dumps([b"\xff", {}, b"", b""])),
                                  "protected header"),
    "protected header not a map": (_zlib_b45(cbor2.dumps([cbor2.dumps([1, -7]), {}, b"", b""])),
                                   "protected header"),
}


@pytest.mark.parametrize("case", UNREADABLE)
def test_unreadable(verifier, check, case):
    text, fragment = UNREADABLE[case]
    decision = check(verifier.verify(text, AT), "unreadable")
    assert fragment in decision.detail
    assert decision.kid is None and decision.type is None


def test_unreadable_signed_payload_that_is_not_cbor(es256, verifier, check):
    text = hand_signed(es256.key, es256.kid, b"\xff\xff not cbor", cose.ES256)
    decision = check(verifier.verify(text, AT), "unreadable")
    assert "payload" in decision.detail
    assert decision.kid == es256.kid.hex()


@pytest.mark.parametrize("value", [None, b"HC1:6BF", 42, ["HC1:"]])
def test_unreadable_when_not_text(verifier, check, value):
    check(verifier.verify(value, AT), "unreadable")


def test_surrounding_whitespace_is_tolerated(es256, verifier, vacc, check):
    text = es256.mint(vacc(), iat=ISSUED, exp=EXPIRES)
    check(verifier.verify(f"  {text}\r\n", AT), "ok")


# -- unknown_issuer -----------------------------------------------------------------------

def test_unknown_issuer_kid_not_in_list(untrusted, verifier, vacc, check):
    decision = check(verifier.verify(untrusted.mint(vacc(untrusted), iat=ISSUED, exp=EXPIRES), AT),
                     "unknown_issuer")
    assert decision.kid == untrusted.kid.hex()


@pytest.mark.parametrize("length", [0, 1, 7, 9, 16, 32])
def test_unknown_issuer_kid_wrong_length(es256, verifier, vacc, check, length):
    # signed by the trusted key, but the kid is not 8 bytes (32: the whole SHA-256)
    kid = (hashlib.sha256(es256.der).digest() * 2)[:length]
    payload = cbor2.dumps(claims(vacc()))
    text = hc1.encode(cose.sign(payload, es256.key, kid))
    decision = check(verifier.verify(text, AT), "unknown_issuer")
    assert f"{length} bytes" in decision.detail


def test_unknown_issuer_without_kid(es256, verifier, vacc, check):
    payload = cbor2.dumps(claims(vacc()))
    text = hc1.encode(cose.sign(payload, es256.key, es256.kid, kid_in="none"))
    check(verifier.verify(text, AT), "unknown_issuer")


def test_unknown_issuer_on_empty_trust_list(es256, vacc, check):
    empty = Verifier(TrustList(), policy.load("hcmc-2021"))
    check(empty.verify(es256.mint(vacc(), iat=ISSUED, exp=EXPIRES), AT), "unknown_issuer")


def test_kid_only_in_unprotected_header_is_accepted(es256, ps256, verifier, vacc, check):
    for issuer in (es256, ps256):
        text = issuer.mint(vacc(issuer), iat=ISSUED, exp=EXPIRES, kid_in="unprotected")
        protected, unprotected, _, _ = cose_parts(text)
        assert 4 not in cbor2.loads(protected) and unprotected[4] == issuer.kid
        check(verifier.verify(text, AT), "ok")


def test_kid_in_protected_header_wins(es256, untrusted, verifier, vacc, check):
    payload = cbor2.dumps(claims(vacc()))
    # protected names the real signer, unprotected a stranger: green
    protected = cbor2.dumps({1: cose.ES256, 4: es256.kid})
    sig = raw_signature(es256.key, protected, payload)
    check(verifier.verify(hc1_of(protected, {4: untrusted.kid}, payload, sig), AT), "ok")
    # protected names a stranger, unprotected the real signer: the stranger counts
    protected = cbor2.dumps({1: cose.ES256, 4: untrusted.kid})
    sig = raw_signature(es256.key, protected, payload)
    check(verifier.verify(hc1_of(protected, {4: es256.kid}, payload, sig), AT), "unknown_issuer")


def test_shared_kid_tries_every_candidate(es256, vacc, check):
    """kids are not unique: a look-alike signer under the same kid must not block the real one."""
    impostor_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    real = load_signer(es256.der)
    impostor = Signer(real.kid, impostor_key, real.not_before, real.not_after, None, b"\x30other")
    text = es256.mint(vacc(), iat=ISSUED, exp=EXPIRES)
    for order in ([impostor, real], [real, impostor]):
        check(Verifier(TrustList(order), policy.load("hcmc-2021")).verify(text, AT), "ok")
    check(Verifier(TrustList([impostor]), policy.load("hcmc-2021")).verify(text, AT),
          "bad_signature")


# -- bad_signature ------------------------------------------------------------------------

def test_bad_signature_tampered_payload(es256, ps256, verifier, vacc, check):
    for issuer in (es256, ps256):
        text = issuer.mint(vacc(issuer, dose=1, of=2), iat=ISSUED, exp=EXPIRES)
        check(verifier.verify(text, AT), "ok")
        protected, unprotected, payload, signature = cose_parts(text)
        # one byte: dose 1 of 2 becomes dose 2 of 2; still valid CBOR
        needle = b"bdn\x01"
        assert payload.count(needle) == 1
        forged = payload.replace(needle, b"bdn\x02")
        assert cbor2.loads(forged)[CLAIM_HCERT][1]["v"][0]["dn"] == 2
        decision = check(verifier.verify(hc1_of(protected, unprotected, forged, signature), AT),
                         "bad_signature")
        assert decision.kid == issuer.kid.hex()


def test_bad_signature_tampered_signature(es256, ps256, verifier, vacc, check):
    for issuer in (es256, ps256):
        protected, unprotected, payload, signature = cose_parts(
            issuer.mint(vacc(issuer), iat=ISSUED, exp=EXPIRES))
        for i in (0, len(signature) // 2, len(signature) - 1):
            bad = bytearray(signature)
            bad[i] ^= 0x01
            check(verifier.verify(hc1_of(protected, unprotected, payload, bytes(bad)), AT),
                  "bad_signature")


def test_bad_signature_tampered_protected_header(es256, verifier, vacc, check):
    protected, unprotected, payload, signature = cose_parts(
        es256.mint(vacc(), iat=ISSUED, exp=EXPIRES))
    header = cbor2.loads(protected)
    header[99] = "extra"  # same alg and kid, but the signed header bytes differ
    check(verifier.verify(hc1_of(header, unprotected, payload, signature), AT), "bad_signature")


def test_bad_signature_es256_alg_with_rsa_signer(ps256, verifier, vacc, check):
    text = hand_signed(ps256.key, ps256.kid, cbor2.dumps(claims(vacc(ps256))), cose.ES256)
    decision = check(verifier.verify(text, AT), "bad_signature")
    assert "not EC" in decision.detail


def test_bad_signature_ps256_alg_with_ec_signer(es256, verifier, vacc, check):
    text = hand_signed(es256.key, es256.kid, cbor2.dumps(claims(vacc())), cose.PS256)
    decision = check(verifier.verify(text, AT), "bad_signature")
    assert "not RSA" in decision.detail


@pytest.mark.parametrize("alg", [-35, -36, -8, -257, 0, None, "ES256", b"\xf9"])
def test_bad_signature_unsupported_alg(es256, verifier, vacc, check, alg):
    payload = cbor2.dumps(claims(vacc()))
    header = {4: es256.kid} if alg is None else {1: alg, 4: es256.kid}
    protected = cbor2.dumps(header)
    text = hc1_of(protected, {}, payload, raw_signature(es256.key, protected, payload))
    decision = check(verifier.verify(text, AT), "bad_signature")
    assert "algorithm" in decision.detail


@pytest.mark.parametrize("length", [0, 63, 65, 72, 128])
def test_bad_signature_es256_wrong_signature_length(es256, verifier, vacc, check, length):
    protected, unprotected, payload, _ = cose_parts(es256.mint(vacc(), iat=ISSUED, exp=EXPIRES))
    decision = check(verifier.verify(hc1_of(protected, unprotected, payload, b"\x01" * length), AT),
                     "bad_signature")
    assert f"{length} bytes, not 64" in decision.detail  # refused before any curve arithmetic


@pytest.mark.parametrize("length", [0, 255, 257, 512])
def test_bad_signature_ps256_wrong_signature_length(ps256, verifier, vacc, check, length):
    protected, unprotected, payload, _ = cose_parts(ps256.mint(vacc(ps256), iat=ISSUED, exp=EXPIRES))
    check(verifier.verify(hc1_of(protected, unprotected, payload, b"\x01" * length), AT),
          "bad_signature")


def test_bad_signature_other_key_under_trusted_kid(es256, untrusted, verifier, vacc, check):
    payload = cbor2.dumps(claims(vacc()))
    check(verifier.verify(hc1.encode(cose.sign(payload, untrusted.key, es256.kid)), AT),
          "bad_signature")


def test_bad_signature_alg_in_unprotected_header_cannot_downgrade(es256, verifier, vacc, check):
    # protected header without alg, unprotected one claiming PS256: the EC key decides
    payload = cbor2.dumps(claims(vacc()))
    protected = cbor2.dumps({4: es256.kid})
    sig = raw_signature(es256.key, protected, payload)
    check(verifier.verify(hc1_of(protected, {1: cose.ES256}, payload, sig), AT), "ok")
    check(verifier.verify(hc1_of(protected, {1: cose.PS256}, payload, sig), AT), "bad_signature")


# -- wrong_key_usage ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def v_only():
    return Issuer.create(alg="ES256", usage="v", name="Vaccination Only")


def test_wrong_key_usage(v_only, make_verifier, person, check):
    verifier = make_verifier(v_only, policy="accept-valid")
    test_cert = v_only.mint(v_only.test(sampled="2021-10-05T06:00:00Z", **person),
                            iat=ISSUED, exp=EXPIRES)
    decision = check(verifier.verify(test_cert, AT), "wrong_key_usage")
    assert decision.type == "t"
    recovery = v_only.mint(v_only.recovery(first_positive="2021-07-01", **person),
                           iat=ISSUED, exp=EXPIRES)
    check(verifier.verify(recovery, AT), "wrong_key_usage")
    # the type it may sign is fine
    check(verifier.verify(v_only.mint(v_only.vaccination(date=DOSE, **person),
                                      iat=ISSUED, exp=EXPIRES), AT), "ok")


def test_wrong_key_usage_multi_usage_signer(make_verifier, person, check):
    vr = Issuer.create(alg="ES256", usage="vr")
    verifier = make_verifier(vr, policy="accept-valid")
    check(verifier.verify(vr.mint(vr.recovery(first_positive="2021-07-01", **person),
                                  iat=ISSUED, exp=EXPIRES), AT), "ok")
    check(verifier.verify(vr.mint(vr.test(sampled="2021-10-05T06:00:00Z", **person),
                                  iat=ISSUED, exp=EXPIRES), AT), "wrong_key_usage")


def test_wrong_key_usage_with_early_oid_variant(make_verifier, person, check):
    # 1.3.6.1.4.1.0.1847.2021.1.2: the vaccination OID as the early test data spelled it
    issuer = custom_issuer([x509.ExtendedKeyUsage([ObjectIdentifier("1.3.6.1.4.1.0.1847.2021.1.2")])])
    verifier = make_verifier(issuer, policy="accept-valid")
    check(verifier.verify(issuer.mint(issuer.test(sampled="2021-10-05T06:00:00Z", **person),
                                      iat=ISSUED, exp=EXPIRES), AT), "wrong_key_usage")
    check(verifier.verify(issuer.mint(issuer.vaccination(date=DOSE, **person),
                                      iat=ISSUED, exp=EXPIRES), AT), "ok")


def test_unrelated_eku_oids_do_not_restrict(make_verifier, person, check):
    issuer = custom_issuer([x509.ExtendedKeyUsage([ObjectIdentifier("1.3.6.1.5.5.7.3.2")])])
    verifier = make_verifier(issuer, policy="accept-valid")
    check(verifier.verify(issuer.mint(issuer.test(sampled="2021-10-05T06:00:00Z", **person),
                                      iat=ISSUED, exp=EXPIRES), AT), "ok")


# -- lenient DER path ----------------------------------------------------------------------

def test_empty_eku_sequence_goes_through_lenient_path(make_verifier, vacc, person, check):
    # extendedKeyUsage must hold at least one OID; a strict parser refuses 30 00
    issuer = custom_issuer([x509.UnrecognizedExtension(EKU, b"\x30\x00")])
    assert b"\x06\x03\x55\x1d\x25\x04\x02\x30\x00" in issuer.der
    with pytest.raises(ValueError):
        x509.load_der_x509_certificate(issuer.der).extensions
    signer = load_signer(issuer.der)
    assert signer.lenient
    assert signer.allowed_types is None
    assert signer.kid == issuer.kid
    assert signer.not_before == datetime(2020, 1, 1, tzinfo=UTC)
    assert signer.not_after == datetime(2035, 1, 1, tzinfo=UTC)
    verifier = make_verifier(issuer, policy="accept-valid")
    check(verifier.verify(issuer.mint(issuer.vaccination(date=DOSE, **person),
                                      iat=ISSUED, exp=EXPIRES), AT), "ok")
    check(verifier.verify(issuer.mint(issuer.test(sampled="2021-10-05T06:00:00Z", **person),
                                      iat=ISSUED, exp=EXPIRES), AT), "ok")
    # the lenient path still checks signatures and times
    protected, unprotected, payload, signature = cose_parts(
        issuer.mint(issuer.vaccination(date=DOSE, **person), iat=ISSUED, exp=EXPIRES))
    check(verifier.verify(hc1_of(protected, unprotected, payload + b"\x00", signature), AT),
          "bad_signature")


def test_lenient_path_keeps_key_usage(make_verifier, person, check):
    # a malformed keyUsage extension makes the strict parser give up; the
    # lenient reader must still find the vaccination-only EKU
    issuer = custom_issuer([x509.UnrecognizedExtension(KEY_USAGE, b"\x05\x00"),
                            x509.ExtendedKeyUsage([ObjectIdentifier("1.3.6.1.4.1.1847.2021.1.2")])])
    signer = load_signer(issuer.der)
    assert signer.lenient and signer.allowed_types == {"v"}
    verifier = make_verifier(issuer, policy="accept-valid")
    check(verifier.verify(issuer.mint(issuer.test(sampled="2021-10-05T06:00:00Z", **person),
                                      iat=ISSUED, exp=EXPIRES), AT), "wrong_key_usage")
    check(verifier.verify(issuer.mint(issuer.vaccination(date=DOSE, **person),
                                      iat=ISSUED, exp=EXPIRES), AT), "ok")


def test_lenient_path_keeps_signer_validity(make_verifier, person, check):
    issuer = custom_issuer([x509.UnrecognizedExtension(EKU, b"\x30\x00")],
                           not_after=datetime(2021, 12, 31, tzinfo=UTC))
    assert load_signer(issuer.der).lenient
    text = issuer.mint(issuer.vaccination(date=DOSE, **person), iat=ISSUED, exp=EXPIRES)
    verifier = make_verifier(issuer, policy="accept-valid")
    check(verifier.verify(text, AT), "ok")
    check(verifier.verify(text, datetime(2022, 1, 1, tzinfo=UTC)), "expired")


def test_co15_certificate_with_empty_eku(check):
    case = DATA / "common" / "2DCode" / "raw" / "CO15.json"
    if not case.exists():
        pytest.skip("EU test data not present")
    data = json.loads(case.read_text())
    signer = load_signer(data["TESTCTX"]["CERTIFICATE"])
    assert signer.lenient
    clock = datetime.fromisoformat(data["TESTCTX"]["VALIDATIONCLOCK"].replace("Z", "+00:00"))
    verifier = Verifier(TrustList([signer]), policy.load("accept-valid"))
    decision = verifier.verify(data["PREFIX"], clock)
    assert (decision.decision, decision.reason, decision.type) == ("green", "ok", "r")


# -- not_yet_valid / expired ------------------------------------------------------------

@pytest.fixture(scope="module")
def minted(es256, vacc):
    return es256.mint(vacc(), iat=ISSUED, exp=EXPIRES)


def test_not_yet_valid_before_iat(verifier, minted, check):
    decision = check(verifier.verify(minted, ISSUED - SECOND), "not_yet_valid")
    assert "signer" not in decision.detail
    # iat itself is valid as far as the time checks go (the policy then wants 14 days)
    assert verifier.verify(minted, ISSUED).reason != "not_yet_valid"


def test_expired_after_exp(verifier, minted, check):
    decision = check(verifier.verify(minted, EXPIRES + SECOND), "expired")
    assert "signer" not in decision.detail
    check(verifier.verify(minted, EXPIRES), "ok")


@pytest.fixture(scope="module")
def short_lived_signer():
    return Issuer.create(alg="ES256", not_before="2021-06-01T00:00:00Z",
                         not_after="2021-12-31T00:00:00Z")


def test_not_yet_valid_before_signer_not_before(short_lived_signer, make_verifier, person, check):
    issuer = short_lived_signer
    text = issuer.mint(issuer.vaccination(date="2021-04-01", **person),
                       iat=datetime(2021, 5, 1, tzinfo=UTC), exp=EXPIRES)
    verifier = make_verifier(issuer)
    decision = check(verifier.verify(text, datetime(2021, 5, 31, 23, 59, 59, tzinfo=UTC)),
                     "not_yet_valid")
    assert "signer" in decision.detail
    check(verifier.verify(text, datetime(2021, 6, 1, tzinfo=UTC)), "ok")


def test_expired_after_signer_not_after(short_lived_signer, make_verifier, person, check):
    issuer = short_lived_signer
    text = issuer.mint(issuer.vaccination(date=DOSE, **person), iat=ISSUED, exp=EXPIRES)
    verifier = make_verifier(issuer)
    check(verifier.verify(text, datetime(2021, 12, 31, tzinfo=UTC)), "ok")
    decision = check(verifier.verify(text, datetime(2021, 12, 31, 0, 0, 1, tzinfo=UTC)), "expired")
    assert "signer" in decision.detail


# -- invalid_content -----------------------------------------------------------------------

def _two_types(d):
    d["r"] = [{"tg": "840539006", "fr": "2021-07-01", "co": "VN", "is": "MoH", "df": "2021-07-12",
               "du": "2021-12-28", "ci": "URN:UVCI:01:VN:R"}]


def _set(path, value):
    def mutate(d):
        *parents, last = path
        node = d
        for p in parents:
            node = node[p]
        node[last] = value
    return mutate


def _delete(path):
    def mutate(d):
        *parents, last = path
        node = d
        for p in parents:
            node = node[p]
        del node[last]
    return mutate


DCC_MUTATIONS = {
    "two types": _two_types,
    "no type": _delete(["v"]),
    "two entries": lambda d: d["v"].append(dict(d["v"][0])),
    "no entries": _set(["v"], []),
    "entries not a list": lambda d: d.update(v=d["v"][0]),
    "entry not a map": _set(["v", 0], "dose"),
    "missing mp": _delete(["v", 0, "mp"]),
    "missing ci": _delete(["v", 0, "ci"]),
    "null dt": _set(["v", 0, "dt"], None),
    "dn=0": _set(["v", 0, "dn"], 0),
    # schema 1.3.x sets no maximum dose number; 1.0.0-1.2.1 cap it at 9
    "dn=10 under 1.2.1": lambda d: (d.update(ver="1.2.1"), d["v"][0].update(dn=10)),
    "dn as text": _set(["v", 0, "dn"], "1"),
    "dn as bool": _set(["v", 0, "dn"], True),
    "bad date": _set(["v", 0, "dt"], "2021-02-30"),
    "not a date": _set(["v", 0, "dt"], "yesterday"),
    "date as int": _set(["v", 0, "dt"], 20210801),
    "ci too long": _set(["v", 0, "ci"], "URN:UVCI:" + "X" * 100),
    "ver missing": _delete(["ver"]),
    "ver malformed": _set(["ver"], "1.3"),
    "nam missing": _delete(["nam"]),
    "fnt lower case": _set(["nam", "fnt"], "tran"),
    "fnt missing": _delete(["nam", "fnt"]),
    "gnt with digits": _set(["nam", "gnt"], "A1"),
    "fn not text": _set(["nam", "fn"], 7),
    "dob malformed": _set(["dob"], "05/06/1987"),
    "dob missing": _delete(["dob"]),
}


@pytest.mark.parametrize("case", DCC_MUTATIONS)
def test_invalid_content_payload(es256, verifier, vacc, check, case):
    dcc = vacc()
    DCC_MUTATIONS[case](dcc)
    decision = check(verifier.verify(es256.mint(dcc, iat=ISSUED, exp=EXPIRES), AT),
                     "invalid_content")
    assert decision.kid == es256.kid.hex()


@pytest.mark.parametrize("field, value", [("sc", "2021-10-05 late"), ("tr", 260415000),
                                          ("tt", None)])
def test_invalid_content_test_entry(es256, make_verifier, person, check, field, value):
    dcc = es256.test(sampled="2021-10-05T06:00:00Z", **person)
    dcc["t"][0][field] = value
    check(make_verifier(es256, policy="accept-valid").verify(
        es256.mint(dcc, iat=ISSUED, exp=EXPIRES), AT), "invalid_content")


@pytest.mark.parametrize("field", ["fr", "df", "du"])
def test_invalid_content_recovery_entry(es256, make_verifier, person, check, field):
    dcc = es256.recovery(first_positive="2021-07-01", **person)
    dcc["r"][0][field] = "2021-13-01"
    check(make_verifier(es256, policy="accept-valid").verify(
        es256.mint(dcc, iat=ISSUED, exp=EXPIRES), AT), "invalid_content")


CLAIM_MUTATIONS = {
    "missing -260": lambda c: c.pop(CLAIM_HCERT),
    "-260 without 1": lambda c: c.update({CLAIM_HCERT: {2: c[CLAIM_HCERT][1]}}),
    "-260 is a list": lambda c: c.update({CLAIM_HCERT: [c[CLAIM_HCERT][1]]}),
    "dcc is a list": lambda c: c.update({CLAIM_HCERT: {1: [c[CLAIM_HCERT][1]]}}),
    "missing iat": lambda c: c.pop(CLAIM_IAT),
    "missing exp": lambda c: c.pop(CLAIM_EXP),
    "iat as text": lambda c: c.update({CLAIM_IAT: "1622505600"}),
    "iat as bool": lambda c: c.update({CLAIM_IAT: True}),
    "exp NaN": lambda c: c.update({CLAIM_EXP: float("nan")}),
    "exp infinite": lambda c: c.update({CLAIM_EXP: float("inf")}),
    "iat huge": lambda c: c.update({CLAIM_IAT: 2 ** 200}),
    "iss as int": lambda c: c.update({CLAIM_ISS: 704}),
}


@pytest.mark.parametrize("case", CLAIM_MUTATIONS)
def test_invalid_content_claims(es256, verifier, vacc, check, case):
    c = claims(vacc())
    CLAIM_MUTATIONS[case](c)
    check(verifier.verify(es256.sign_claims(c), AT), "invalid_content")


@pytest.mark.parametrize("payload", [[1, 2], "claims", 42])
def test_invalid_content_claims_not_a_map(es256, verifier, check, payload):
    check(verifier.verify(es256.sign_claims(payload), AT), "invalid_content")


def test_fractional_claim_times_are_accepted(es256, verifier, vacc, check):
    # ES issuers send fractional seconds; refusing them would refuse real passes
    c = claims(vacc())
    c[CLAIM_IAT] += 0.5
    c[CLAIM_EXP] += 0.5
    check(verifier.verify(es256.sign_claims(c), AT), "ok")


# -- revoked / suspended ----------------------------------------------------------------

def test_revoked(es256, make_verifier, vacc, check):
    dcc = vacc()
    statuses = StatusList()
    statuses.revoke(cert_hash(dcc["v"][0]["ci"]))
    verifier = make_verifier(es256, status=statuses)
    decision = check(verifier.verify(es256.mint(dcc, iat=ISSUED, exp=EXPIRES), AT), "revoked")
    assert decision.cert_hash == cert_hash(dcc["v"][0]["ci"]).hex()
    # revocation does not lapse
    check(verifier.verify(es256.mint(dcc, iat=ISSUED, exp=EXPIRES), EXPIRES), "revoked")
    # another certificate of the same holder and issuer is not touched
    check(verifier.verify(es256.mint(vacc(), iat=ISSUED, exp=EXPIRES), AT), "ok")


def test_suspended_until_its_end(es256, make_verifier, vacc, check):
    dcc = vacc()
    until = AT + timedelta(days=10)
    statuses = StatusList()
    statuses.suspend(cert_hash(dcc["v"][0]["ci"]), until)
    verifier = make_verifier(es256, status=statuses)
    text = es256.mint(dcc, iat=ISSUED, exp=EXPIRES)
    decision = check(verifier.verify(text, AT), "suspended")
    assert until.isoformat() in decision.detail
    check(verifier.verify(text, until - SECOND), "suspended")
    check(verifier.verify(text, until), "ok")  # lapses by itself
    check(verifier.verify(text, until + timedelta(days=1)), "ok")


def test_status_is_keyed_by_ci_hash(es256, make_verifier, vacc, check):
    dcc = vacc()
    ci = dcc["v"][0]["ci"]
    statuses = StatusList()
    full = hashlib.sha256(ci.encode()).digest()
    with pytest.raises(ValueError):  # the full hash is not a status key (and shares its prefix)
        statuses.revoke(full)
    statuses.revoke(full[16:])  # 16 bytes, but not the leading ones
    statuses.revoke(cert_hash(ci + "X"))
    check(make_verifier(es256, status=statuses).verify(
        es256.mint(dcc, iat=ISSUED, exp=EXPIRES), AT), "ok")


def test_status_checked_after_signature(es256, untrusted, make_verifier, vacc, check):
    # a forged certificate carrying a revoked ci is a forgery first
    dcc = vacc(untrusted)
    statuses = StatusList()
    statuses.revoke(cert_hash(dcc["v"][0]["ci"]))
    payload = cbor2.dumps(claims(dcc))
    text = hc1.encode(cose.sign(payload, untrusted.key, es256.kid))
    check(make_verifier(es256, status=statuses).verify(text, AT), "bad_signature")


# -- policy_failed ------------------------------------------------------------------------

def test_policy_failed(es256, verifier, person, check):
    text = es256.mint(es256.vaccination(date="2021-10-01", **person), iat=ISSUED, exp=EXPIRES)
    decision = check(verifier.verify(text, AT), "policy_failed", "vaccination_too_recent")
    assert decision.type == "v" and decision.kid == es256.kid.hex()
    text = es256.mint(es256.test(sampled="2021-10-05T06:00:00Z", **person), iat=ISSUED, exp=EXPIRES)
    check(verifier.verify(text, AT), "policy_failed", "type_not_accepted")


# -- clock_unknown / out_of_service -----------------------------------------------------

def test_clock_unknown(verifier, minted, check):
    check(verifier.verify(minted, None), "clock_unknown")
    # even before reading the certificate
    check(verifier.verify("garbage", None), "clock_unknown")


def test_out_of_service(es256, make_verifier, minted, check):
    verifier = make_verifier(es256, valid_until=AT - SECOND)
    check(verifier.verify(minted, AT), "out_of_service")
    check(verifier.verify("garbage", AT), "out_of_service")
    # the clock problem is reported first
    check(verifier.verify(minted, None), "clock_unknown")
    # within the budget: business as usual
    fresh = make_verifier(es256, valid_until=AT)
    check(fresh.verify(minted, AT), "ok")


# -- the whole table is covered ------------------------------------------------------------

def test_every_reason_in_the_brief_exists():
    assert {r.value for r in Reason} == {
        "ok", "unreadable", "unknown_issuer", "bad_signature", "wrong_key_usage",
        "not_yet_valid", "expired", "invalid_content", "revoked", "suspended",
        "policy_failed", "clock_unknown", "out_of_service", "place_closed"}


def test_to_dict_is_plain_json(es256, verifier, minted):
    as_dict = verifier.verify(minted, AT).to_dict()
    assert json.loads(json.dumps(as_dict)) == as_dict
    assert type(as_dict["reason"]) is str
