"""Schema by version, plausibility, leniency, the recovery window and accept-valid,
each on certificates minted with the test issuer and verified end to end."""

import base64
from datetime import datetime, timedelta, timezone

import cbor2
import pytest

from greengate import content, cose, hc1, schema
from greengate import policy as policies
from greengate.trust import TrustList, load_signer
from greengate.valuesets import ValueSetError, ValueSets
from greengate.verifier import Verifier

UTC = timezone.utc
IAT, EXP = datetime(2021, 9, 1, tzinfo=UTC), datetime(2022, 9, 1, tzinfo=UTC)
AT = datetime(2021, 10, 5, 8, tzinfo=UTC)
SECOND = timedelta(seconds=1)


@pytest.fixture(scope="module")
def valid(es256, make_verifier):
    """Verifier under accept-valid: technical validity only."""
    return make_verifier(es256, policy="accept-valid")


@pytest.fixture(scope="module")
def hcmc(es256, make_verifier):
    return make_verifier(es256, policy="hcmc-2021")


def mint(issuer, dcc, iat=IAT, exp=EXP):
    return issuer.mint(dcc, iat=iat, exp=exp)


def vacc(issuer, **kw):
    return issuer.vaccination(date=kw.pop("date", "2021-09-01"), dose=2, of=2, **kw)


def assert_green(decision):
    assert (decision.decision, decision.reason) == ("green", "ok"), decision.detail


def assert_red(decision, reason, *words):
    assert (decision.decision, decision.reason) == ("red", reason), decision.detail
    for word in words:
        assert word in decision.detail, decision.detail


def parsed(text: str) -> content.Certificate:
    return content.parse_claims(cose.loads(cose.parse(hc1.decode(text)).payload))


# -- schema by version ----------------------------------------------------------------------

VERSIONS = list(schema.KNOWN.values())


def test_every_vendored_version_is_known():
    assert VERSIONS == ["1.0.0", "1.0.1", "1.1.0", "1.2.0", "1.2.1", "1.3.0", "1.3.1", "1.3.2", "1.3.3"]


@pytest.mark.parametrize("ver", VERSIONS)
def test_valid_payload_of_each_version_is_green(es256, valid, ver):
    dcc = vacc(es256)
    dcc["ver"] = ver
    assert_green(valid.verify(mint(es256, dcc), AT))
    assert parsed(mint(es256, dcc)).schema == ver


@pytest.mark.parametrize("ver", VERSIONS)
def test_schema_invalid_payload_of_each_version_is_invalid_content(es256, valid, ver):
    dcc = vacc(es256)
    dcc["ver"] = ver
    dcc["v"][0]["dn"] = 0  # every version: a dose number is at least 1
    assert_red(valid.verify(mint(es256, dcc), AT), "invalid_content", "v[0].dn", f"DCC schema {ver}")


@pytest.mark.parametrize("field, value, words", [
    ("sd", "2", ("v[0].sd", "integer")),
    ("ci", "X" * 81, ("v[0].ci",)),
    ("co", "vn", ("v[0].co", "pattern")),
])
def test_schema_failure_names_the_field(es256, valid, field, value, words):
    dcc = vacc(es256)
    dcc["v"][0][field] = value
    assert_red(valid.verify(mint(es256, dcc), AT), "invalid_content", *words)


def test_missing_required_entry_field(es256, valid):
    dcc = vacc(es256)
    del dcc["v"][0]["mp"]
    assert_red(valid.verify(mint(es256, dcc), AT), "invalid_content", "v[0]", "mp")


def test_old_versions_require_the_testing_centre_newer_do_not(es256, valid):
    dcc = es256.test(sampled="2021-10-04T08:00:00Z")
    del dcc["t"][0]["tc"]
    dcc["ver"] = "1.2.1"
    assert_red(valid.verify(mint(es256, dcc), AT), "invalid_content", "tc", "1.2.1")
    dcc["ver"] = "1.3.0"
    assert_green(valid.verify(mint(es256, dcc), AT))


@pytest.mark.parametrize("declared, used", [
    ("1.3.9", "1.3.3"), ("1.4.0", "1.3.3"), ("1.2.7", "1.2.1"), ("1.0.5", "1.0.1"), ("1.3.0", "1.3.0"),
])
def test_unknown_minor_or_patch_uses_nearest_lower_version(es256, declared, used):
    dcc = vacc(es256)
    dcc["ver"] = declared
    assert parsed(mint(es256, dcc)).schema == used


@pytest.mark.parametrize("declared", ["2.0.0", "0.9.9"])
def test_unknown_major_version_is_refused(es256, valid, declared):
    dcc = vacc(es256)
    dcc["ver"] = declared
    assert_red(valid.verify(mint(es256, dcc), AT), "invalid_content", declared, "not supported")


def test_schema_refs_are_resolved_locally():
    prepared = schema.prepare(schema._load("1.3.0"))
    assert "$ref" not in repr(prepared)
    with pytest.raises(RuntimeError, match="not local"):
        schema.prepare({"$ref": "https://example.org/other.json#/x"})


def test_type_one_of_is_kept_when_it_is_not_the_known_pattern():
    other = {"oneOf": [{"required": ["a"]}, {"required": ["b"]}]}
    assert schema.prepare(other)["oneOf"] == other["oneOf"]


# -- plausibility ---------------------------------------------------------------------------

def test_birth_after_issuance_is_invalid_content(es256, valid):
    # one day of slack for issuers east of UTC; two days after is implausible
    assert_green(valid.verify(mint(es256, vacc(es256, dob="2021-09-02")), AT))
    assert_red(valid.verify(mint(es256, vacc(es256, dob="2021-09-03")), AT),
               "invalid_content", "'dob'", "after the certificate was issued")


def test_partial_birth_date_after_issuance(es256, valid):
    assert_red(valid.verify(mint(es256, vacc(es256, dob="2022")), AT), "invalid_content", "dob")
    assert_green(valid.verify(mint(es256, vacc(es256, dob="2021")), AT))


def test_birth_before_1900_is_invalid_content(es256, valid):
    assert_green(valid.verify(mint(es256, vacc(es256, dob="1900-01-01")), AT))
    assert_red(valid.verify(mint(es256, vacc(es256, dob="1899-12-31")), AT), "invalid_content", "dob")


@pytest.mark.parametrize("field, value", [
    ("fnt", "NGUYỄN"), ("fnt", "nguyen"), ("fnt", "NGUYEN VAN"), ("gnt", "VAN-AN"), ("gnt", 7),
])
def test_standardised_names_outside_the_icao_alphabet(es256, valid, field, value):
    dcc = vacc(es256)
    dcc["nam"][field] = value
    assert_red(valid.verify(mint(es256, dcc), AT), "invalid_content", f"nam.{field}", "ICAO 9303")


@pytest.mark.parametrize("where, value, words", [
    ("dob", "1990-02-30", ("'dob'", "exists")),
    ("dob", "1990-13", ("'dob'", "exists")),
    ("v.dt", "2021-02-29", ("'v.dt'", "exists")),
    ("t.sc", "2021-02-30T10:00:00Z", ("'t.sc'", "exists")),
    ("r.du", "2022-04-31", ("'r.du'", "exists")),
])
def test_dates_that_do_not_exist(es256, valid, where, value, words):
    if where == "dob":
        dcc = vacc(es256, dob=value)
    elif where == "v.dt":
        dcc = vacc(es256, date=value)
    elif where == "t.sc":
        dcc = es256.test(sampled="2021-10-04T08:00:00Z")
        dcc["t"][0]["sc"] = value
    else:
        dcc = es256.recovery(first_positive="2021-09-01")
        dcc["r"][0]["du"] = value
    assert_red(valid.verify(mint(es256, dcc), AT), "invalid_content", *words)


# -- leniency -------------------------------------------------------------------------------

def test_null_valued_keys_count_as_absent(es256, valid):
    dcc = vacc(es256)
    dcc.update(t=None, r=None)
    dcc["nam"]["gn"] = None
    dcc["v"][0]["extra"] = None
    text = mint(es256, dcc)
    assert_green(valid.verify(text, AT))
    cert = parsed(text)
    assert "t" not in cert.payload and "r" not in cert.payload and "gn" not in cert.payload["nam"]


def test_null_does_not_stand_in_for_a_required_field(es256, valid):
    dcc = vacc(es256)
    dcc["v"][0]["mp"] = None
    assert_red(valid.verify(mint(es256, dcc), AT), "invalid_content", "mp")


@pytest.mark.parametrize("tag", [0, 1])
def test_cbor_date_time_tag_for_sample_time(es256, valid, tag):
    sampled = datetime(2021, 10, 4, 8, 0, tzinfo=UTC)
    dcc = es256.test(sampled=sampled.isoformat())
    dcc["t"][0]["sc"] = (cbor2.CBORTag(0, "2021-10-04T08:00:00Z") if tag == 0
                         else cbor2.CBORTag(1, int(sampled.timestamp())))
    text = mint(es256, dcc)
    assert_green(valid.verify(text, AT))
    cert = parsed(text)
    assert content.parse_datetime(cert.entry["sc"]) == sampled
    assert isinstance(cert.payload["t"][0]["sc"], str)


def test_cbor_date_time_tag_elsewhere_is_not_read_as_text(es256, valid):
    dcc = vacc(es256)
    dcc["v"][0]["dt"] = cbor2.CBORTag(1, int(IAT.timestamp()))  # the schema wants a date
    assert_red(valid.verify(mint(es256, dcc), AT), "invalid_content", "v[0].dt")


def test_date_with_a_time_is_read_as_the_date(es256, valid):
    # SG/4 of the EU test data: "fr": "2022-01-01T00:00:00.000Z", valid there
    dcc = es256.recovery(first_positive="2021-09-01")
    dcc["r"][0]["fr"] = "2021-09-01T00:00:00.000Z"
    assert_green(valid.verify(mint(es256, dcc), AT))


def _two_doses(issuer, ver):
    dcc = issuer.vaccination(date="2021-06-01", dose=1, of=2)
    second = issuer.vaccination(date="2021-08-01", dose=2, of=2)["v"][0]
    dcc["v"] = [second, dcc["v"][0]]  # issuer order is not date order
    dcc["ver"] = ver
    return dcc, second


@pytest.mark.parametrize("ver", ["1.0.0", "1.2.1"])
def test_several_entries_where_the_version_allows_them(es256, valid, ver):
    dcc, second = _two_doses(es256, ver)
    text = mint(es256, dcc)
    assert_green(valid.verify(text, AT))
    cert = parsed(text)
    assert cert.entry["dn"] == 2 and cert.ci == second["ci"]
    assert cert.payload["v"] == [cert.entry]  # rules read v.0: the evaluated entry


def test_latest_entry_decides_the_policy(es256, hcmc):
    dcc = es256.vaccination(date="2021-06-01", dose=2, of=2)
    dcc["v"].append(es256.vaccination(date="2021-10-01", dose=3, of=3)["v"][0])
    dcc["ver"] = "1.2.1"
    decision = hcmc.verify(mint(es256, dcc), AT)  # the booster is 4 days old
    assert (decision.decision, decision.reason) == ("red", "policy_failed"), decision
    assert decision.sub_reason == "vaccination_too_recent"


def test_several_entries_refused_from_1_3_0(es256, valid):
    dcc, _ = _two_doses(es256, "1.3.0")
    assert_red(valid.verify(mint(es256, dcc), AT), "invalid_content", "'v'", "1.3.0")


def test_a_second_kind_is_still_refused(es256, valid):
    dcc = vacc(es256)
    dcc["t"] = es256.test(sampled="2021-10-04T08:00:00Z")["t"]
    dcc["ver"] = "1.0.0"  # the 1.0.0 schema alone would allow it
    assert_red(valid.verify(mint(es256, dcc), AT), "invalid_content", "exactly one of v/t/r")


# -- the recovery certificate's own window --------------------------------------------------

@pytest.fixture(scope="module")
def recovery(es256):
    dcc = es256.recovery(first_positive="2021-10-01", valid_from="2021-10-12",
                         valid_until="2022-03-01")
    return mint(es256, dcc, iat=datetime(2021, 10, 1, tzinfo=UTC))


@pytest.mark.parametrize("at, reason", [
    (datetime(2021, 10, 11, 23, 59, 59, tzinfo=UTC), "not_yet_valid"),
    (datetime(2021, 10, 12, tzinfo=UTC), "ok"),
    (datetime(2022, 3, 1, 23, 59, 59, tzinfo=UTC), "ok"),
    (datetime(2022, 3, 2, tzinfo=UTC), "expired"),
])
def test_recovery_window_edges_in_utc(valid, recovery, at, reason):
    assert valid.verify(recovery, at).reason == reason


@pytest.mark.parametrize("at, reason", [
    # Asia/Ho_Chi_Minh (UTC+7): local midnight is 17:00 UTC the day before
    (datetime(2021, 10, 11, 16, 59, 59, tzinfo=UTC), "not_yet_valid"),
    (datetime(2021, 10, 11, 17, 0, tzinfo=UTC), "ok"),
    (datetime(2022, 3, 1, 16, 59, 59, tzinfo=UTC), "ok"),
    (datetime(2022, 3, 1, 17, 0, tzinfo=UTC), "expired"),
])
def test_recovery_window_edges_in_the_policy_timezone(hcmc, recovery, at, reason):
    assert hcmc.verify(recovery, at).reason == reason


def test_issue_examples_are_red_under_hcmc(es256, hcmc):
    ahead = es256.recovery(first_positive="2021-09-20", valid_from="2021-10-16")
    assert_red(hcmc.verify(mint(es256, ahead), AT), "not_yet_valid", "2021-10-16")
    gone = es256.recovery(first_positive="2021-09-01", valid_until="2021-09-30")
    assert_red(hcmc.verify(mint(es256, gone), AT), "expired", "2021-09-30")


# -- accept-valid: technical validity only ---------------------------------------------------

def test_unknown_test_result_is_a_policy_matter(es256, valid, make_verifier, tests_policy):
    text = mint(es256, es256.test(sampled="2021-10-04T08:00:00Z", result="123456789"))
    assert_green(valid.verify(text, AT))
    decision = make_verifier(es256, policy=tests_policy).verify(text, AT)
    assert (decision.decision, decision.reason) == ("red", "policy_failed"), decision


def test_dose_after_validation_time_is_a_policy_matter(es256, valid, hcmc):
    text = mint(es256, vacc(es256, date="2021-10-06"))
    assert_green(valid.verify(text, AT))
    assert_red(hcmc.verify(text, AT), "policy_failed")


@pytest.fixture(scope="module")
def tests_policy():
    """A checkpoint that takes test certificates (a legacy document, converted to rules)."""
    return policies.from_document({
        "name": "tests-on", "timezone": "Asia/Ho_Chi_Minh", "accept": ["v", "t", "r"],
        "vaccination": {"min_dose_number": 1, "min_days_after_dose": 14},
        "recovery": {"min_days_since_positive": 0, "max_days_since_positive": 180},
        "test": {"max_hours": {"LP6464-4": 72, "LP217198-3": 48}, "accept_positive": False},
    })


# -- value sets -----------------------------------------------------------------------------

def test_vendored_value_sets():
    sets = ValueSets.default()
    assert sets.codes("covid-19-lab-result") == {"260415000", "260373001"}
    assert "EU/1/20/1528" in sets.codes("vaccines-covid-19-names")
    assert sets.codes("no-such-set") == frozenset()
    external = sets.as_external()
    assert sorted(external["covid-19-lab-test-type"]) == ["LP217198-3", "LP6464-4"]
    assert set(external) == set(sets.ids())


def test_value_sets_from_a_folder(tmp_path):
    (tmp_path / "a.json").write_text('{"valueSetId": "x", "valueSetDate": "2021-01-01", '
                                     '"valueSetValues": {"1": {}, "2": {}}}')
    assert ValueSets.load(tmp_path).codes("x") == {"1", "2"}
    (tmp_path / "b.json").write_text('{"valueSetId": "x", "valueSetValues": {}}')
    with pytest.raises(ValueSetError, match="twice"):
        ValueSets.load(tmp_path)
    (tmp_path / "b.json").write_text('{"valueSetValues": {}}')
    with pytest.raises(ValueSetError, match="valueSetId"):
        ValueSets.load(tmp_path)
    with pytest.raises(ValueSetError, match="no value-set files"):
        ValueSets.load(tmp_path / "empty")


def test_unknown_code_is_a_policy_matter_by_default_and_invalid_when_strict(es256, valid):
    text = mint(es256, vacc(es256, product="EU/1/99/9999"))
    assert_green(valid.verify(text, AT))
    strict = Verifier(TrustList([load_signer(es256.der)]), policies.load("accept-valid"),
                      valuesets=ValueSets.default(strict_fields={"v.mp"}))
    assert_red(strict.verify(text, AT), "invalid_content", "'v.mp'", "EU/1/99/9999")
    assert_green(strict.verify(mint(es256, vacc(es256)), AT))


def test_strict_field_names_are_checked():
    with pytest.raises(ValueSetError, match="unknown"):
        ValueSets.default(strict_fields={"v.xx"})
    with pytest.raises(ValueSetError, match="need value set"):
        ValueSets({}, strict_fields={"t.tr"})


# -- what the policy receives ----------------------------------------------------------------

class Recording:
    """A policy that records what the verifier hands it and lets everything pass."""
    name = "recording"
    timezone = UTC

    def __init__(self):
        self.calls = []

    def evaluate(self, cert, at, external=None):
        self.calls.append((cert, at, external))
        return None


class OldStyle(Recording):
    def evaluate(self, cert, at):
        self.calls.append((cert, at))
        return None


def test_external_data_for_the_rules(es256):
    policy = Recording()
    verifier = Verifier(TrustList([load_signer(es256.der)]), policy)
    assert_green(verifier.verify(mint(es256, vacc(es256)), AT))
    cert, at, external = policy.calls[0]
    assert at == AT and cert.country == "VN" and cert.payload["v"][0] is cert.entry
    assert external == {
        "validationClock": "2021-10-05T08:00:00+00:00",
        "valueSets": ValueSets.default().as_external(),
        "countryCode": "VN",
        "exp": "2022-09-01T00:00:00+00:00",
        "iat": "2021-09-01T00:00:00+00:00",
        "issuerCountryCode": "VN",
        "kid": base64.b64encode(es256.kid).decode(),
    }


def test_a_policy_without_external_still_works(es256):
    policy = OldStyle()
    verifier = Verifier(TrustList([load_signer(es256.der)]), policy)
    assert_green(verifier.verify(mint(es256, vacc(es256)), AT))
    assert len(policy.calls[0]) == 2


def test_window_zone_can_be_set_and_naive_budget_still_works(es256, recovery):
    verifier = Verifier(TrustList([load_signer(es256.der)]), policies.load("accept-valid"),
                        valid_until=datetime(2030, 1, 1), zone="Asia/Ho_Chi_Minh")
    assert verifier.verify(recovery, datetime(2021, 10, 11, 17, 0, tzinfo=UTC)).reason == "ok"
    assert verifier.verify(recovery, datetime(2021, 10, 11, 16, 59, 59, tzinfo=UTC)).reason == \
        "not_yet_valid"
