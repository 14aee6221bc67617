"""Conformance against the EU DCC test data (eu-digital-green-certificates/dgc-testdata).

The data lives in tests/data/dgc-testdata/ (Apache-2.0, unmodified; see its
README.md). Two kinds of tests:

* test_expected_result: one test per (case file, EXPECTED* flag). Each flag is
  checked through the engine's own stage functions (hc1, cose, content, trust,
  verifier.check_times), the same code the kiosk and the CLI run. `true` means
  the step must succeed; `false` means it must fail, and for the steps the
  engine itself performs the engine must be the one that says no (a Rejected,
  a refused key usage, a time problem), not merely produce something that
  differs from the reference data.
* test_end_to_end_*: Verifier(trust, accept-valid).verify(text, clock), the
  path `greengate-kiosk verify` takes, must light green for the cases the EU
  data calls valid and red, with the specific reason code, for the cases
  BasicDgcTestsList.md calls invalid.

Flags the data sets that the EU README does not define are never dropped
silently: a typo with an evident meaning is mapped in FLAG_ALIASES (with the
evidence), everything else needs an entry in KNOWN_EXCEPTIONS, or the test
fails. KNOWN_EXCEPTIONS also holds expectations we believe are wrong; those run
as strict xfails so they turn red when behaviour changes.
"""

import base64
import io
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from PIL import Image, UnidentifiedImageError
from pyzbar.pyzbar import decode as zbar_decode

from greengate import content, cose, hc1, policy
from greengate.errors import Rejected
from greengate.trust import TrustList, load_signer
from greengate.verifier import Verifier, check_times, check_validity_window

DATA = Path(__file__).parent / "data" / "dgc-testdata"
POLICY = policy.load("accept-valid")

# Reason codes that mean "the signature step failed" (DESIGN.md reason table).
SIGNATURE_REASONS = {"unreadable", "unknown_issuer", "bad_signature"}
TIME_REASONS = {"not_yet_valid", "expired"}
KID_LENGTH = 8  # DCC kids are the first 8 bytes of SHA-256(DER of the signer certificate)

# Misspelled flags whose meaning is evident, mapped to the flag they stand for.
FLAG_ALIASES = {
    # ES/201..203. EXPTECTEDEXPIRED is the name the EU README originally gave
    # to test 4 ("Check the EXP field for expiring against the
    # VALIDATIONCLOCK"); dgc-testdata PR #10 renamed it EXPECTEDEXPIRATIONCHECK
    # and issue #178 asks member states to rename the key, i.e. same meaning,
    # same value. The data agrees: at VALIDATIONCLOCK all three are between
    # iat and exp and inside the signer's validity, so `true` = "check passes".
    "EXPTECTEDEXPIRED": "EXPECTEDEXPIRATIONCHECK",
}

# test id -> why it does not run as a plain pass. Unrunnable entries (unknown
# flag, data missing for the flag) are skipped; runnable ones are strict xfails.
KNOWN_EXCEPTIONS = {
    **{
        f"ES/{n}-EXPECTEDRESULTS": (
            "ES data nests a key EXPECTEDRESULTS=true inside EXPECTEDRESULTS; it names "
            "no validation step (not in the EU README's flag list), so there is nothing to check"
        )
        for n in (1001, 1002, 1003)
    },
    "common/B1-PICTUREDECODE": (
        "B1 sets EXPECTEDPICTUREDECODE=true but has no 2DCODE field, so there is no picture "
        "to decode (its point is the base45 error, covered by common/B1-B45DECODE)"
    ),
}

KNOWN_FLAGS = (
    "EXPECTEDPICTUREDECODE", "EXPECTEDUNPREFIX", "EXPECTEDB45DECODE", "EXPECTEDCOMPRESSION",
    "EXPECTEDVERIFY", "EXPECTEDDECODE", "EXPECTEDVALIDJSON", "EXPECTEDSCHEMAVALIDATION",
    "EXPECTEDVALIDOBJECT", "EXPECTEDENCODE", "EXPECTEDEXPIRATIONCHECK", "EXPECTEDKEYUSAGE",
)


# --------------------------------------------------------------------------- data

def _load_cases() -> dict[str, dict]:
    cases = {}
    for path in sorted(DATA.glob("*/2DCode/raw/*.json")):
        case_id = f"{path.parts[-4]}/{path.stem}"
        cases[case_id] = json.loads(path.read_text(encoding="utf-8"))
    return cases


CASES = _load_cases()


def _clock(case: dict) -> datetime:
    moment = datetime.fromisoformat(case["TESTCTX"]["VALIDATIONCLOCK"].replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _trust(case: dict) -> TrustList:
    return TrustList([load_signer(case["TESTCTX"]["CERTIFICATE"])])


def _cose_bytes(case: dict) -> bytes:
    """The COSE under test: the COSE field when present (it is not always the
    same bytes as PREFIX, e.g. in Z1/Z2), else the COSE that PREFIX carries."""
    if "COSE" in case:
        return bytes.fromhex(case["COSE"])
    return hc1.decode(case["PREFIX"])


def _cose_text(case: dict) -> str:
    """HC1 text for the COSE under test, for the Verifier."""
    if "COSE" in case:
        return hc1.encode(bytes.fromhex(case["COSE"]))
    return case["PREFIX"]


def _canon(value):
    """Order-independent, type-strict form of decoded CBOR/JSON: maps compare
    without regard to key order, but 1, 1.0, True and "1" all differ."""
    if isinstance(value, Mapping):
        items = ((_canon(k), _canon(v)) for k, v in value.items())
        return ("map", tuple(sorted(items, key=repr)))
    if isinstance(value, (list, tuple)):
        return ("array", tuple(_canon(v) for v in value))
    return (type(value).__name__, value)


def _cbor_field(case: dict):
    """The CBOR field, decoded. Member states put either the DCC itself there
    (README: "the CBOR-encoding of the Digital Green Certificate payload") or the
    whole CWT claims map (DE, ES/10x, SG); the EU's own test suite accepts both
    ("Hack in order to match different level of CBOR Payload"), so do we."""
    return cbor2.loads(bytes.fromhex(case["CBOR"]))


def _is_claims(value) -> bool:
    return isinstance(value, Mapping) and content.CLAIM_HCERT in value


def _claims(case: dict):
    return cose.loads(cose.parse(_cose_bytes(case)).payload)


# --------------------------------------------------------------------------- stage checks

@dataclass
class Outcome:
    ok: bool
    detail: str
    engine_refused: bool = False  # the engine itself said no (vs. output != reference)


def _refused(exc: Rejected) -> Outcome:
    return Outcome(False, f"engine: {exc.reason}: {exc.detail}", engine_refused=True)


def _compare(got, want, what: str) -> Outcome:
    if got == want:
        return Outcome(True, f"{what} matches the reference data")
    return Outcome(False, f"{what} differs from the reference data")


def check_picture(case):
    try:
        image = Image.open(io.BytesIO(base64.b64decode(case["2DCODE"])))
    except UnidentifiedImageError as exc:
        return Outcome(False, f"2DCODE is not an image: {exc}")
    symbols = zbar_decode(image)
    if len(symbols) != 1:
        return Outcome(False, f"found {len(symbols)} codes in the picture")
    return _compare(symbols[0].data.decode("latin-1"), case["PREFIX"], "decoded QR text")


def check_unprefix(case):
    try:
        return _compare(hc1.unprefix(case["PREFIX"]), case["BASE45"], "unprefixed text")
    except Rejected as exc:
        return _refused(exc)


def check_b45decode(case):
    try:
        raw = hc1.b45decode(case["BASE45"])
        if "COMPRESSED" in case:
            return _compare(raw, bytes.fromhex(case["COMPRESSED"]), "base45-decoded bytes")
        return _compare(hc1.inflate(raw), bytes.fromhex(case["COSE"]), "base45-decoded, inflated bytes")
    except Rejected as exc:
        return _refused(exc)


def check_compression(case):
    try:
        return _compare(hc1.inflate(bytes.fromhex(case["COMPRESSED"])), bytes.fromhex(case["COSE"]),
                        "inflated bytes")
    except Rejected as exc:
        return _refused(exc)


def _verify_stage(case) -> Outcome:
    """COSE parse, the kid rules against a one-certificate trust list, the signature."""
    try:
        sign1 = cose.parse(_cose_bytes(case))
    except Rejected as exc:
        return _refused(exc)
    kid = sign1.kid
    if not isinstance(kid, bytes) or len(kid) != KID_LENGTH:
        return Outcome(False, f"kid {kid!r} is not {KID_LENGTH} bytes", engine_refused=True)
    candidates = _trust(case).candidates(kid)
    if not candidates:
        return Outcome(False, f"kid {kid.hex()} is not the test certificate's", engine_refused=True)
    failure = None
    for signer in candidates:
        try:
            sign1.verify(signer.public_key)
            return Outcome(True, f"signature verifies with kid {kid.hex()}")
        except Rejected as exc:
            failure = exc
    return _refused(failure)


def check_verify(case):
    stage = _verify_stage(case)
    decision = Verifier(_trust(case), POLICY).verify(_cose_text(case), _clock(case))
    route_ok = decision.reason not in SIGNATURE_REASONS
    assert stage.ok == route_ok, (
        f"stage functions say {stage.detail!r} but Verifier.verify says "
        f"{decision.reason}: {decision.detail}")
    return stage


def check_decode(case):
    try:
        claims = _claims(case)
    except Rejected as exc:
        return _refused(exc)
    try:
        want = _cbor_field(case)
    except cbor2.CBORDecodeError as exc:
        return Outcome(False, f"the CBOR field cannot be decoded: {exc}")
    if _is_claims(want):
        return _compare(_canon(claims), _canon(want), "COSE payload (whole CWT claims)")
    hcert = claims.get(content.CLAIM_HCERT) if isinstance(claims, Mapping) else None
    dcc = hcert.get(1) if isinstance(hcert, Mapping) else None
    return _compare(_canon(dcc), _canon(want), f"COSE payload's claim -260/1 ({type(dcc).__name__})")


def check_validjson(case):
    try:
        claims = cose.loads(cose.parse(hc1.decode(case["PREFIX"])).payload)
        dcc = claims[content.CLAIM_HCERT][1]
    except Rejected as exc:
        return _refused(exc)
    as_json = json.loads(json.dumps(dcc, ensure_ascii=False))
    return _compare(_canon(as_json), _canon(case["JSON"]), "DCC decoded from PREFIX, as JSON,")


def check_schema(case):
    """The engine's schema check on the CBOR field (whole claims or bare DCC), else on the payload."""
    try:
        if "CBOR" in case:
            decoded = cose.loads(bytes.fromhex(case["CBOR"]))
        else:
            decoded = _claims(case)
        if _is_claims(decoded):
            cert = content.parse_claims(decoded)
        else:
            cert = content.parse_dcc(decoded)
    except Rejected as exc:
        return _refused(exc)
    return Outcome(True, f"valid {cert.type} certificate")


def check_validobject(case):
    try:
        cert = content.parse_dcc(case["JSON"])
    except Rejected as exc:
        return _refused(exc)
    return Outcome(True, f"valid {cert.type} certificate")


def check_encode(case):
    want = _cbor_field(case)
    if _is_claims(want):
        want = want[content.CLAIM_HCERT][1]
    encoded = cbor2.loads(cbor2.dumps(case["JSON"]))
    return _compare(_canon(encoded), _canon(want), "CBOR encoded from JSON")


def _certificate_and_signer(case):
    return content.parse_claims(_claims(case)), load_signer(case["TESTCTX"]["CERTIFICATE"])


def check_expiration(case):
    try:
        cert, signer = _certificate_and_signer(case)
    except Rejected as exc:
        return _refused(exc)
    problem = check_times(cert, signer, _clock(case))
    decision = Verifier(_trust(case), POLICY).verify(_cose_text(case), _clock(case))
    # The EU flag is about the CWT's exp (and iat, and the signer's validity);
    # a recovery certificate's own df/du window is checked too, by the
    # verifier, and may refuse a case whose flag is true (BE/2: df is 9 days
    # after the clock). Then the verifier must name that window.
    window = check_validity_window(cert, _clock(case))
    if problem is None and window is not None:
        assert decision.reason == window[0], (decision.reason, decision.detail)
    else:
        assert (problem is None) == (decision.reason not in TIME_REASONS), (
            f"check_times says {problem} but Verifier.verify says {decision.reason}: {decision.detail}")
    if problem:
        return Outcome(False, f"engine: {problem[0]}: {problem[1]}", engine_refused=True)
    return Outcome(True, "valid at VALIDATIONCLOCK")


def check_keyusage(case):
    try:
        cert, signer = _certificate_and_signer(case)
    except Rejected as exc:
        return _refused(exc)
    allowed = signer.may_sign(cert.type)
    decision = Verifier(_trust(case), POLICY).verify(_cose_text(case), _clock(case))
    assert allowed == (decision.reason != "wrong_key_usage"), (
        f"may_sign({cert.type!r}) is {allowed} but Verifier.verify says {decision.reason}")
    usage = "any type" if signer.allowed_types is None else "/".join(sorted(signer.allowed_types))
    return Outcome(allowed, f"signer may sign {usage}; certificate is {cert.type}",
                   engine_refused=not allowed)


def _has(*fields):
    return lambda case: all(f in case or f in case.get("TESTCTX", {}) for f in fields)


def _has_cose_and(*fields):
    return lambda case: ("COSE" in case or "PREFIX" in case) and _has(*fields)(case)


# flag -> (check, data it needs, must the engine itself refuse when the flag is false)
CHECKS = {
    "EXPECTEDPICTUREDECODE": (check_picture, _has("2DCODE", "PREFIX"), False),
    "EXPECTEDUNPREFIX": (check_unprefix, _has("PREFIX", "BASE45"), True),
    "EXPECTEDB45DECODE": (check_b45decode,
                          lambda c: "BASE45" in c and ("COMPRESSED" in c or "COSE" in c), True),
    "EXPECTEDCOMPRESSION": (check_compression, _has("COMPRESSED", "COSE"), True),
    "EXPECTEDVERIFY": (check_verify, _has_cose_and("CERTIFICATE", "VALIDATIONCLOCK"), True),
    "EXPECTEDDECODE": (check_decode, _has_cose_and("CBOR"), False),
    "EXPECTEDVALIDJSON": (check_validjson, _has("PREFIX", "JSON"), False),
    "EXPECTEDSCHEMAVALIDATION": (check_schema, lambda c: "CBOR" in c or _has_cose_and()(c), True),
    "EXPECTEDVALIDOBJECT": (check_validobject, _has("JSON"), True),
    "EXPECTEDENCODE": (check_encode, _has("JSON", "CBOR"), False),
    "EXPECTEDEXPIRATIONCHECK": (check_expiration,
                                _has_cose_and("CERTIFICATE", "VALIDATIONCLOCK"), True),
    "EXPECTEDKEYUSAGE": (check_keyusage, _has_cose_and("CERTIFICATE", "VALIDATIONCLOCK"), True),
}
assert set(CHECKS) == set(KNOWN_FLAGS)


def _flag_id(case_id: str, flag: str) -> str:
    short = flag[len("EXPECTED"):] if flag in KNOWN_FLAGS else flag
    return f"{case_id}-{short}"


def _flag_params():
    params = []
    for case_id, case in CASES.items():
        for flag, expected in case.get("EXPECTEDRESULTS", {}).items():
            test_id = _flag_id(case_id, flag)
            meaning = FLAG_ALIASES.get(flag, flag)
            runnable = meaning in CHECKS and CHECKS[meaning][1](case)
            marks = ()
            if test_id in KNOWN_EXCEPTIONS:
                reason = f"{test_id}: {KNOWN_EXCEPTIONS[test_id]}"
                marks = (pytest.mark.xfail(strict=True, reason=reason) if runnable
                         else pytest.mark.skip(reason=reason),)
            params.append(pytest.param(case_id, flag, meaning, expected, id=test_id, marks=marks))
    return params


FLAG_PARAMS = _flag_params()


@pytest.mark.parametrize("case_id, flag, meaning, expected", FLAG_PARAMS)
def test_expected_result(case_id, flag, meaning, expected):
    case = CASES[case_id]
    if meaning not in CHECKS:
        pytest.fail(f"{flag} is not a flag the EU README defines; map it in FLAG_ALIASES "
                    "or document it in KNOWN_EXCEPTIONS")
    check, has_data, engine_must_refuse = CHECKS[meaning]
    if not has_data(case):
        pytest.fail(f"{case_id} sets {flag} but lacks the fields it needs; document it in KNOWN_EXCEPTIONS")
    assert isinstance(expected, bool), f"{flag} is {expected!r}, not a boolean"
    outcome = check(case)
    if expected:
        assert outcome.ok, f"{meaning} should succeed: {outcome.detail}"
    else:
        assert not outcome.ok, f"{meaning} should fail but succeeded: {outcome.detail}"
        if engine_must_refuse:
            assert outcome.engine_refused, f"the engine did not refuse it: {outcome.detail}"


def test_known_exceptions_are_current():
    """No stale entries: every exception names a test that exists."""
    ids = {p.id for p in FLAG_PARAMS}
    assert set(KNOWN_EXCEPTIONS) <= ids, sorted(set(KNOWN_EXCEPTIONS) - ids)


def test_all_data_loaded():
    countries = {case_id.split("/")[0] for case_id in CASES}
    assert {"common", "AT", "BE", "CH", "DE", "DK", "ES", "IT", "SG"} <= countries
    assert len(CASES) >= 99


# --------------------------------------------------------------------------- end to end

def _effective_flags(case: dict) -> dict[str, bool]:
    flags = {}
    for flag, value in case.get("EXPECTEDRESULTS", {}).items():
        flags[FLAG_ALIASES.get(flag, flag)] = value
    return flags


def _sample_time(case: dict) -> datetime | None:
    """Sample time of a test certificate (from JSON, else from the signed payload)."""
    dcc = case.get("JSON")
    if not isinstance(dcc, Mapping):
        try:
            dcc = _claims(case)[content.CLAIM_HCERT][1]
        except (Rejected, LookupError, TypeError):
            return None
    tests = dcc.get("t") if isinstance(dcc, Mapping) else None
    if not tests:
        return None
    return content.parse_datetime(tests[0]["sc"])


def _green_cases():
    """All flags true, with PREFIX, CERTIFICATE and VALIDATIONCLOCK, and EXPIRATIONCHECK true."""
    out = []
    for case_id, case in CASES.items():
        flags = _effective_flags(case)
        if not all(v is True for v in flags.values()):
            continue
        if flags.get("EXPECTEDEXPIRATIONCHECK") is not True:
            continue
        if not _has("PREFIX", "CERTIFICATE", "VALIDATIONCLOCK")(case):
            continue
        out.append(case_id)
    return out


GREEN_CASES = _green_cases()

# Cases the EU data calls valid that the kiosk refuses on purpose, with the reason it must give.
# EXPECTEDEXPIRATIONCHECK covers the CWT's exp only; issue 13 made a recovery
# certificate's own window (df ≤ validation day ≤ du) technical validity too.
GREEN_EXCEPTIONS = {
    "BE/2": ("not_yet_valid", "recovery df 2021-08-28 is 9 days after VALIDATIONCLOCK 2021-08-19"),
    "ES/1502": ("expired", "recovery du 2021-11-01 is years before VALIDATIONCLOCK 2026-04-25"),
}


@pytest.mark.parametrize("case_id", GREEN_CASES)
def test_end_to_end_green(case_id):
    case = CASES[case_id]
    clock = _clock(case)
    decision = Verifier(_trust(case), POLICY).verify(case["PREFIX"], clock)
    if case_id in GREEN_EXCEPTIONS:
        assert (decision.decision, decision.reason) == ("red", GREEN_EXCEPTIONS[case_id][0]), decision
        return
    # a sample after the clock is a policy matter (test_future_sample_is_a_policy_matter)
    assert decision.green, f"{decision.reason}: {decision.detail}"


def test_green_set_is_not_empty():
    assert len(GREEN_CASES) >= 30, GREEN_CASES
    assert set(GREEN_EXCEPTIONS) <= set(GREEN_CASES), "stale GREEN_EXCEPTIONS entry"


FUTURE_SAMPLE_CASES = [
    case_id for case_id, case in CASES.items()
    if "VALIDATIONCLOCK" in case.get("TESTCTX", {}) and (_sample_time(case) or _clock(case)) > _clock(case)
]


@pytest.mark.parametrize("case_id", FUTURE_SAMPLE_CASES)
def test_future_sample_is_a_policy_matter(case_id):
    """Test certificates whose sample time is after VALIDATIONCLOCK (SG/2, SG/3:
    every flag true, but no EXPIRATIONCHECK flag). BasicDgcTestsList DGC8 wants
    them refused, and a checkpoint policy does (rule test_in_future, see
    tests/test_policy.py); accept-valid is technical validity only (issue 13),
    so they are green there, as the EU data's flags say."""
    case = CASES[case_id]
    decision = Verifier(_trust(case), POLICY).verify(case["PREFIX"], _clock(case))
    assert decision.green, decision


# The reason code each INVALID row of BasicDgcTestsList.md must produce.
LIST_EXPECTED_REASONS = {
    "H1": "unreadable",  # prefix HL0:
    "H2": "unreadable",  # prefix HC2:
    "H3": "unreadable",  # no prefix at all
    "B1": "unreadable",  # '=' is not base45
    "Z1": "unreadable",  # zlib stream broken
    "Z2": "unreadable",  # not compressed at all
    "CO5": "bad_signature",
    "CO6": "wrong_key_usage",
    "CO7": "wrong_key_usage",
    "CO8": "wrong_key_usage",
    "CO9": "wrong_key_usage",
    "CO10": "wrong_key_usage",
    "CO11": "wrong_key_usage",
    "CO16": "not_yet_valid",
    "CO17": "expired",
    "CO22": "unknown_issuer",  # the protected kid wins, and it is not the signer's
    "CO23": "unknown_issuer",  # only an unprotected kid, and it is wrong
    # CBO1: the COSE and CWT are well formed and signed, but claim -260/1 is a
    # byte string of mangled CBOR rather than a map: the payload breaks the
    # schema, so invalid_content (unreadable would also be defensible).
    "CBO1": "invalid_content",
    # CBO2: the COSE bytes are not a COSE_Sign1 array at all.
    "CBO2": "unreadable",
    "DGC1": "invalid_content",  # nam is empty, no v/t/r
    "DGC2": "invalid_content",  # v, t and r in one certificate
}
# Q1 is about the picture (its PREFIX is a valid certificate); covered by common/Q1-PICTUREDECODE.
LIST_NOT_END_TO_END = {"Q1"}


def _basic_list_rows() -> dict[str, tuple[str, str | None]]:
    """ID -> (VALID/INVALID, linked common case or None) for the verifier table of BasicDgcTestsList.md."""
    rows = {}
    text = (DATA / "BasicDgcTestsList.md").read_text(encoding="utf-8")
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 5 or cells[3] not in ("VALID", "INVALID"):
            continue
        match = re.search(r"\(common/2DCode/raw/([^)/]+)\.json\)", cells[4])
        if match:
            assert match.group(1) == cells[0], line
        rows[cells[0]] = (cells[3], match.group(1) if match else None)
    return rows


BASIC_ROWS = _basic_list_rows()
BASIC_LIST = {k: validity for k, (validity, data) in BASIC_ROWS.items() if data}


def test_basic_list_is_covered():
    invalid = {k for k, v in BASIC_LIST.items() if v == "INVALID"} - LIST_NOT_END_TO_END
    assert invalid == set(LIST_EXPECTED_REASONS)
    assert all(f"common/{k}" in CASES for k in BASIC_LIST)


def _end_to_end_text(case: dict) -> str:
    """PREFIX, unless it decodes to a different COSE than the COSE field (then the COSE field)."""
    if "COSE" in case:
        try:
            if hc1.decode(case["PREFIX"]) != bytes.fromhex(case["COSE"]):
                return _cose_text(case)
        except Rejected:
            pass  # PREFIX itself is the broken input (Z1, Z2)
    return case["PREFIX"]


@pytest.mark.parametrize("list_id", [
    pytest.param(k, id=f"common/{k}")
    for k in sorted(set(BASIC_LIST) - LIST_NOT_END_TO_END, key=lambda k: (BASIC_LIST[k], k))
])
def test_end_to_end_basic_list(list_id):
    case = CASES[f"common/{list_id}"]
    decision = Verifier(_trust(case), POLICY).verify(_end_to_end_text(case), _clock(case))
    if BASIC_LIST[list_id] == "VALID":
        assert decision.green, f"{decision.reason}: {decision.detail}"
    else:
        assert decision.decision == "red"
        assert decision.reason == LIST_EXPECTED_REASONS[list_id], decision.detail


# --------------------------------------------------------------------------- list rows without data
#
# BasicDgcTestsList.md names some COSE checks without a data file. They are
# built here: CO3's signed payload (and validation clock), re-signed by a key
# made for the test, so that the one thing wrong is the thing under test (a
# mere edit of CO3's header would break its signature and prove nothing).

def _issuer(key) -> tuple[object, bytes, TrustList]:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "GreenGate conformance test DSC")])
    start = datetime(2021, 1, 1, tzinfo=timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(start).not_valid_after(start.replace(year=2031))
            .sign(key, hashes.SHA256()))
    signer = load_signer(cert.public_bytes(serialization.Encoding.DER))
    return key, signer.kid, TrustList([signer])


@pytest.fixture(scope="module")
def ec_issuer():
    return _issuer(ec.generate_private_key(ec.SECP256R1()))


@pytest.fixture(scope="module")
def rsa_issuer():
    return _issuer(rsa.generate_private_key(public_exponent=65537, key_size=2048))


def _signed(issuer, *, alg: int, kid: bytes | None = None, der_signature: bool = False) -> str:
    """HC1 text: CO3's payload signed by `issuer`'s key, with header alg `alg`."""
    key, own_kid, _ = issuer
    payload = cose.parse(bytes.fromhex(CASES["common/CO3"]["COSE"])).payload
    protected = cbor2.dumps({1: alg, 4: own_kid if kid is None else kid})
    tbs = cbor2.dumps(["Signature1", protected, b"", payload])
    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(tbs, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
    else:
        signature = key.sign(tbs, ec.ECDSA(hashes.SHA256()))  # DER, as X.509 uses
        if not der_signature:
            r, s = decode_dss_signature(signature)
            signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return hc1.encode(cbor2.dumps(cbor2.CBORTag(18, [protected, {}, payload, signature])))


SYNTHETIC_ROWS = {
    # id: (issuer fixture, keyword arguments for _signed, expected decision reason)
    "control-ES256": ("ec_issuer", {"alg": -7}, "ok"),
    "control-PS256": ("rsa_issuer", {"alg": -37}, "ok"),
    "CO4": ("ec_issuer", {"alg": -35}, "bad_signature"),  # ES384 id on a good P-256/SHA-256 signature
    "CO24": ("ec_issuer", {"alg": -7, "der_signature": True}, "bad_signature"),  # DER (70-72 bytes), not r||s
    "CO25": ("ec_issuer", {"alg": -7, "kid": b"\x01" * 7}, "unknown_issuer"),
    "CO26": ("ec_issuer", {"alg": -7, "kid": b"\x01" * 9}, "unknown_issuer"),
    "CO27": ("ec_issuer", {"alg": -37}, "bad_signature"),  # PS256 id, ECDSA signature and key
    "CO27-rsa": ("rsa_issuer", {"alg": -7}, "bad_signature"),  # ES256 id, RSA-PSS signature and key
}
# Rows without data not built here: Q2 is about the QR symbol's encoding mode
# (the kiosk's decoder, not the engine); DGC7 (positive test) and DGC8 (future
# sample time) are policy questions: accept-valid greens a positive test by
# design, and test_future_sample_is_red covers DGC8 with SG/2 and SG/3.
NOT_SYNTHESIZED = {"Q2", "DGC7", "DGC8"}


def test_rows_without_data_are_accounted_for():
    without_data = {k for k, (validity, data) in BASIC_ROWS.items() if data is None}
    built = {k.split("-")[0] for k in SYNTHETIC_ROWS if not k.startswith("control")}
    assert without_data == built | NOT_SYNTHESIZED


@pytest.mark.parametrize("row", list(SYNTHETIC_ROWS))
def test_end_to_end_synthetic_row(row, request):
    fixture, kwargs, reason = SYNTHETIC_ROWS[row]
    issuer = request.getfixturevalue(fixture)
    decision = Verifier(issuer[2], POLICY).verify(_signed(issuer, **kwargs), _clock(CASES["common/CO3"]))
    assert decision.reason == reason, decision.detail
    assert decision.green == (reason == "ok")
