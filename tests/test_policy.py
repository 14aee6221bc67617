"""Checkpoint policy boundaries, through Verifier.verify.

hcmc-2021 counts days in Asia/Ho_Chi_Minh (UTC+7): a day boundary is local
midnight, i.e. 17:00 UTC the day before. Several cases below pick two moments
on the same UTC date that fall on different local dates, so a policy counting
UTC days would fail them.
"""

import json
from pathlib import Path
from datetime import datetime, timedelta, timezone

import pytest

from greengate import policy as policies
from greengate.policy import PolicyError

UTC = timezone.utc
SECOND = timedelta(seconds=1)


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.fixture(scope="module")
def hcmc(es256, make_verifier):
    return make_verifier(es256, policy="hcmc-2021")


def assert_green(decision):
    assert (decision.decision, decision.reason, decision.sub_reason) == ("green", "ok", None), \
        decision.detail


def assert_policy_red(decision, sub_reason):
    assert (decision.decision, decision.reason, decision.sub_reason) == \
        ("red", "policy_failed", sub_reason), decision.detail


# -- vaccination: at least 14 days after the dose, counted in local dates ------------------

DOSE = "2021-09-01"
DOSE_IAT = utc(2021, 9, 1)


@pytest.fixture(scope="module")
def vacc_1_of_2(es256):
    return es256.mint(es256.vaccination(date=DOSE, dose=1, of=2), iat=DOSE_IAT, exp=utc(2022, 9, 1))


@pytest.fixture(scope="module")
def vacc_2_of_2(es256):
    return es256.mint(es256.vaccination(date=DOSE, dose=2, of=2), iat=DOSE_IAT, exp=utc(2022, 9, 1))


@pytest.mark.parametrize("at, days", [
    (utc(2021, 9, 14, 1, 0), 13),           # 08:00 local on day 13
    (utc(2021, 9, 14, 16, 59, 59), 13),     # 23:59:59 local on day 13
])
def test_13_days_after_dose_is_too_recent(hcmc, vacc_2_of_2, at, days):
    decision = hcmc.verify(vacc_2_of_2, at)
    assert_policy_red(decision, "vaccination_too_recent")
    assert f"{days} days" in decision.detail


@pytest.mark.parametrize("at", [
    utc(2021, 9, 14, 17, 0),                # 00:00 local on day 14, still 14 Sep in UTC
    utc(2021, 9, 15, 1, 0),                 # 08:00 local on day 14
])
def test_14_days_after_dose_is_green(hcmc, vacc_2_of_2, at):
    assert_green(hcmc.verify(vacc_2_of_2, at))


def test_dose_1_of_2_at_14_days_is_green(hcmc, vacc_1_of_2):
    assert_green(hcmc.verify(vacc_1_of_2, utc(2021, 9, 14, 17, 0)))
    assert_policy_red(hcmc.verify(vacc_1_of_2, utc(2021, 9, 14, 16, 59, 59)),
                      "vaccination_too_recent")


def test_local_date_boundary_is_one_second_wide(hcmc, vacc_2_of_2):
    midnight_local = utc(2021, 9, 14, 17, 0)
    assert hcmc.verify(vacc_2_of_2, midnight_local - SECOND).reason == "policy_failed"
    assert hcmc.verify(vacc_2_of_2, midnight_local).reason == "ok"


def test_dose_date_in_the_future_is_too_recent(es256, hcmc):
    text = es256.mint(es256.vaccination(date="2021-09-20"), iat=DOSE_IAT, exp=utc(2022, 9, 1))
    assert_policy_red(hcmc.verify(text, utc(2021, 9, 10)), "vaccination_too_recent")


# -- recovery: first positive test less than 180 days ago --------------------------------

FIRST_POSITIVE = "2021-03-01"  # +179 d = 2021-08-27, +180 d = 08-28, +181 d = 08-29


@pytest.fixture(scope="module")
def recovery(es256):
    # the certificate's own window (df..du) is wider than the policy's 180 days, so
    # these tests see the policy's limit, not the certificate's technical validity
    return es256.mint(es256.recovery(first_positive=FIRST_POSITIVE, valid_from=FIRST_POSITIVE,
                                     valid_until="2022-03-01"),
                      iat=utc(2021, 3, 12), exp=utc(2022, 3, 1))


@pytest.mark.parametrize("at", [
    utc(2021, 8, 27, 1, 0),                 # 08:00 local, day 179
    utc(2021, 8, 27, 16, 59, 59),           # 23:59:59 local, day 179
])
def test_recovery_179_days_is_green(hcmc, recovery, at):
    assert_green(hcmc.verify(recovery, at))


@pytest.mark.parametrize("at, days", [
    (utc(2021, 8, 27, 17, 0), 180),         # 00:00 local on day 180, still 27 Aug in UTC
    (utc(2021, 8, 28, 5, 0), 180),          # noon local, day 180
    (utc(2021, 8, 29, 5, 0), 181),          # noon local, day 181
])
def test_recovery_180_and_181_days_is_expired(hcmc, recovery, at, days):
    decision = hcmc.verify(recovery, at)
    assert_policy_red(decision, "recovery_expired")
    assert f"{days} days" in decision.detail


def test_recovery_on_day_of_first_positive_is_green(es256, hcmc):
    # min_days_since_positive is 0 in hcmc-2021
    text = es256.mint(es256.recovery(first_positive=FIRST_POSITIVE, valid_from=FIRST_POSITIVE),
                      iat=utc(2021, 2, 28), exp=utc(2022, 3, 1))
    assert_green(hcmc.verify(text, utc(2021, 2, 28, 17, 0)))  # 00:00 local on 1 Mar


# -- tests: off by default, on in a custom document ---------------------------------------

SAMPLED = utc(2021, 10, 4, 8, 0)


def test_tests_are_not_accepted_by_default(es256, hcmc):
    text = es256.mint(es256.test(sampled=SAMPLED.isoformat()), iat=SAMPLED, exp=utc(2021, 10, 10))
    decision = hcmc.verify(text, SAMPLED + timedelta(hours=2))
    assert_policy_red(decision, "type_not_accepted")
    assert decision.type == "t"


@pytest.fixture(scope="module")
def tests_on_document(hcmc_document):
    doc = hcmc_document()
    doc["name"] = "tests-on"
    doc["accept"] = ["v", "t", "r"]
    return doc


@pytest.fixture(scope="module")
def tests_on(es256, make_verifier, tests_on_document):
    return make_verifier(es256, policy=tests_on_document)


@pytest.fixture(scope="module")
def mint_test(es256):
    def mint_test_(test_type="naat", result="negative", sampled=SAMPLED):
        dcc = es256.test(sampled=sampled.isoformat(), test_type=test_type, result=result)
        return es256.mint(dcc, iat=SAMPLED - timedelta(days=1), exp=SAMPLED + timedelta(days=30))
    return mint_test_


@pytest.mark.parametrize("test_type, limit", [("naat", 72), ("rat", 48)])
def test_test_age_boundary(tests_on, mint_test, test_type, limit):
    text = mint_test(test_type)
    assert_green(tests_on.verify(text, SAMPLED + timedelta(hours=limit)))
    assert_green(tests_on.verify(text, SAMPLED + timedelta(hours=limit - 1)))
    assert_policy_red(tests_on.verify(text, SAMPLED + timedelta(hours=limit) + SECOND),
                      "test_too_old")
    decision = tests_on.verify(text, SAMPLED + timedelta(hours=limit + 1))
    assert_policy_red(decision, "test_too_old")
    assert f"limit {limit} h" in decision.detail


def test_rat_is_not_held_to_the_naat_limit(tests_on, mint_test):
    # 60 h: inside the NAAT limit, outside the RAT one
    at = SAMPLED + timedelta(hours=60)
    assert_green(tests_on.verify(mint_test("naat"), at))
    assert_policy_red(tests_on.verify(mint_test("rat"), at), "test_too_old")


def test_positive_test_is_red(tests_on, mint_test):
    assert_policy_red(tests_on.verify(mint_test(result="positive"), SAMPLED + timedelta(hours=1)),
                      "test_positive")


def test_sample_in_the_future_is_red(tests_on, mint_test):
    assert_policy_red(tests_on.verify(mint_test(), SAMPLED - timedelta(hours=1)), "test_in_future")


def test_unknown_test_type_is_red(tests_on, mint_test):
    assert_policy_red(tests_on.verify(mint_test(test_type="LP0000-0"), SAMPLED + timedelta(hours=1)),
                      "test_type_not_accepted")


def test_unknown_test_result_is_red(tests_on, mint_test):
    assert_policy_red(tests_on.verify(mint_test(result="123456789"), SAMPLED + timedelta(hours=1)),
                      "test_result_unknown")


def test_custom_document_keeps_vaccination_rules(tests_on, vacc_2_of_2):
    assert_policy_red(tests_on.verify(vacc_2_of_2, utc(2021, 9, 14, 16, 59, 59)),
                      "vaccination_too_recent")
    assert_green(tests_on.verify(vacc_2_of_2, utc(2021, 9, 14, 17, 0)))


# -- require_complete_series, min_dose_number ---------------------------------------------

def test_require_complete_series(es256, make_verifier, hcmc_document, vacc_1_of_2, vacc_2_of_2):
    doc = hcmc_document()
    doc["vaccination"]["require_complete_series"] = True
    verifier = make_verifier(es256, policy=doc)
    at = utc(2021, 10, 1)
    decision = verifier.verify(vacc_1_of_2, at)
    assert_policy_red(decision, "incomplete_vaccination")
    assert "dose 1 of 2" in decision.detail
    assert_green(verifier.verify(vacc_2_of_2, at))


def test_min_dose_number(es256, make_verifier, hcmc_document, vacc_1_of_2, vacc_2_of_2):
    doc = hcmc_document()
    doc["vaccination"]["min_dose_number"] = 2
    verifier = make_verifier(es256, policy=doc)
    at = utc(2021, 10, 1)
    assert_policy_red(verifier.verify(vacc_1_of_2, at), "incomplete_vaccination")
    assert_green(verifier.verify(vacc_2_of_2, at))


# -- thresholds come from the document: change a number, the boundary moves ---------------

def test_min_days_after_dose_comes_from_the_document(es256, make_verifier, hcmc_document,
                                                     vacc_2_of_2):
    doc = hcmc_document()
    doc["vaccination"]["min_days_after_dose"] = 21
    verifier = make_verifier(es256, policy=doc)
    day_20, day_21 = utc(2021, 9, 21, 5, 0), utc(2021, 9, 22, 5, 0)
    assert_policy_red(verifier.verify(vacc_2_of_2, day_20), "vaccination_too_recent")
    assert_green(verifier.verify(vacc_2_of_2, day_21))
    # and hcmc-2021 itself is green on day 20
    assert_green(make_verifier(es256).verify(vacc_2_of_2, day_20))


def test_recovery_limit_comes_from_the_document(es256, make_verifier, hcmc_document, recovery):
    doc = hcmc_document()
    doc["recovery"]["max_days_since_positive"] = 90  # 2021-03-01 + 90 d = 2021-05-30
    verifier = make_verifier(es256, policy=doc)
    assert_green(verifier.verify(recovery, utc(2021, 5, 29, 5, 0)))
    assert_policy_red(verifier.verify(recovery, utc(2021, 5, 30, 5, 0)), "recovery_expired")


def test_no_recovery_limit_when_null(es256, make_verifier, hcmc_document, recovery):
    doc = hcmc_document()
    doc["recovery"]["max_days_since_positive"] = None
    assert_green(make_verifier(es256, policy=doc).verify(recovery, utc(2022, 2, 1)))


def test_min_days_since_positive_comes_from_the_document(es256, make_verifier, hcmc_document):
    recovery = es256.mint(es256.recovery(first_positive=FIRST_POSITIVE, valid_from=FIRST_POSITIVE),
                          iat=utc(2021, 3, 1), exp=utc(2022, 3, 1))
    doc = hcmc_document()
    doc["recovery"]["min_days_since_positive"] = 11  # 2021-03-12
    verifier = make_verifier(es256, policy=doc)
    assert_policy_red(verifier.verify(recovery, utc(2021, 3, 11, 16, 59, 59)), "recovery_too_recent")
    assert_green(verifier.verify(recovery, utc(2021, 3, 11, 17, 0)))


def test_test_limit_comes_from_the_document(es256, make_verifier, tests_on_document, mint_test):
    doc = json.loads(json.dumps(tests_on_document))
    doc["test"]["max_hours"]["LP6464-4"] = 24
    verifier = make_verifier(es256, policy=doc)
    text = mint_test("naat")
    assert_green(verifier.verify(text, SAMPLED + timedelta(hours=24)))
    assert_policy_red(verifier.verify(text, SAMPLED + timedelta(hours=25)), "test_too_old")


def test_any_test_type_and_age_when_max_hours_is_null(es256, make_verifier, tests_on_document,
                                                      mint_test):
    doc = json.loads(json.dumps(tests_on_document))
    doc["test"]["max_hours"] = None
    verifier = make_verifier(es256, policy=doc)
    assert_green(verifier.verify(mint_test("LP0000-0"), SAMPLED + timedelta(days=20)))


def test_accept_positive_comes_from_the_document(es256, make_verifier, tests_on_document,
                                                 mint_test):
    doc = json.loads(json.dumps(tests_on_document))
    doc["test"]["accept_positive"] = True
    assert_green(make_verifier(es256, policy=doc).verify(mint_test(result="positive"),
                                                         SAMPLED + timedelta(hours=1)))


def test_timezone_comes_from_the_document(es256, make_verifier, hcmc_document, vacc_2_of_2):
    at = utc(2021, 9, 14, 17, 0)  # 14 Sep in UTC, 15 Sep in Ho Chi Minh City
    assert_green(make_verifier(es256, policy=hcmc_document()).verify(vacc_2_of_2, at))
    doc = hcmc_document()
    doc["timezone"] = "UTC"
    assert_policy_red(make_verifier(es256, policy=doc).verify(vacc_2_of_2, at),
                      "vaccination_too_recent")


def test_accept_comes_from_the_document(es256, make_verifier, hcmc_document, recovery):
    doc = hcmc_document()
    doc["accept"] = ["v"]
    assert_policy_red(make_verifier(es256, policy=doc).verify(recovery, utc(2021, 5, 1)),
                      "type_not_accepted")


def test_builtin_hcmc_policy_is_a_rule_set_with_the_old_boundaries(hcmc_document):
    p = policies.load("hcmc-2021")
    assert p.name == "hcmc-2021"
    assert str(p.timezone) == "Asia/Ho_Chi_Minh"
    assert [r.identifier for r in p.rules] == [
        "type_not_accepted", "vaccination_too_recent", "recovery_not_yet_valid",
        "recovery_certificate_expired", "recovery_too_recent", "recovery_expired"]
    assert all(r.document["Engine"] == "CERTLOGIC" for r in p.rules)
    # the built-in is the old document's conversion (titles aside): same boundaries
    converted = policies.convert_legacy(hcmc_document())
    assert [r["Logic"] for r in p.document["rules"]] == [r["Logic"] for r in converted["rules"]]
    assert policies.load("accept-valid").rules == ()


# -- policy files: loading errors name the problem ---------------------------------------

def write(tmp_path, text, name="policy.json", encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return path


def test_custom_policy_file_loads(tmp_path, tests_on_document):
    p = policies.load(write(tmp_path, json.dumps(tests_on_document)))
    assert p.name == "tests-on" and "type_not_accepted" not in [r.identifier for r in p.rules]


def test_bad_json_names_the_line(tmp_path):
    path = write(tmp_path, '{\n  "name": "x",\n  "accept": ["v",]\n}\n')
    with pytest.raises(PolicyError) as err:
        policies.load(path)
    assert "line 3" in str(err.value)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("section, field, value", [
    ("vaccination", "min_days_after_dose", "14"),
    ("vaccination", "min_days_after_dose", True),
    ("vaccination", "min_days_after_dose", 14.5),
    ("vaccination", "min_dose_number", None),
    ("vaccination", "require_complete_series", "yes"),
    ("recovery", "max_days_since_positive", "180"),
    ("test", "accept_positive", 1),
    ("test", "max_hours", [72]),
])
def test_wrong_type_names_the_field(tmp_path, hcmc_document, section, field, value):
    doc = hcmc_document()
    doc[section][field] = value
    with pytest.raises(PolicyError) as err:
        policies.load(write(tmp_path, json.dumps(doc)))
    assert f"'{section}.{field}'" in str(err.value)


@pytest.mark.parametrize("field, value", [("name", 5), ("accept", "v"), ("accept", ["v", "x"]),
                                          ("accept", []), ("title", 1)])
def test_wrong_top_level_field_is_named(hcmc_document, field, value):
    doc = hcmc_document()
    doc[field] = value
    with pytest.raises(PolicyError, match=f"'{field}'"):
        policies.from_document(doc)


@pytest.mark.parametrize("value", [0, -72, "72", True])
def test_bad_test_limit_names_the_field(hcmc_document, value):
    doc = hcmc_document()
    doc["test"]["max_hours"]["LP6464-4"] = value
    with pytest.raises(PolicyError, match=r"'test\.max_hours\.LP6464-4'"):
        policies.from_document(doc)


def test_negative_threshold_is_refused(hcmc_document):
    doc = hcmc_document()
    doc["vaccination"]["min_days_after_dose"] = -1
    with pytest.raises(PolicyError, match=r"'vaccination\.min_days_after_dose'"):
        policies.from_document(doc)


@pytest.mark.parametrize("section, value", [("vaccination", []), ("recovery", "strict"),
                                            ("test", 14)])
def test_section_of_wrong_type_names_the_section(hcmc_document, section, value):
    """A section that is not an object must not silently fall back to the
    defaults (e.g. "vaccination": [] would mean 0 days after the dose)."""
    doc = hcmc_document()
    doc[section] = value
    with pytest.raises(PolicyError, match=f"'{section}"):
        policies.from_document(doc)


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "Asia", "../etc/passwd", ""])
def test_unknown_timezone_is_named(hcmc_document, zone):
    doc = hcmc_document()
    doc["timezone"] = zone
    with pytest.raises(PolicyError, match="timezone"):
        policies.from_document(doc)


def test_policy_must_be_an_object(tmp_path):
    with pytest.raises(PolicyError, match="JSON object"):
        policies.load(write(tmp_path, "[1, 2]"))


def test_missing_name_is_named(hcmc_document):
    doc = hcmc_document()
    del doc["name"]
    with pytest.raises(PolicyError, match="'name' is missing"):
        policies.from_document(doc)


def test_unknown_policy_name_lists_builtins():
    with pytest.raises(PolicyError) as err:
        policies.load("hcmc-2022")
    message = str(err.value)
    assert "hcmc-2022" in message
    for name in policies.BUILTIN:
        assert name in message


def test_directory_is_not_a_policy(tmp_path):
    with pytest.raises(PolicyError, match="built-in"):
        policies.load(tmp_path)


def test_non_utf8_policy_file_is_a_policy_error(tmp_path, hcmc_document):
    """A policy file in the wrong encoding must give a PolicyError (the CLI turns
    those into exit 2 with a message), not a UnicodeDecodeError traceback."""
    doc = hcmc_document()
    doc["title"] = "Chợ Bến Thành"
    path = write(tmp_path, json.dumps(doc, ensure_ascii=False), encoding="utf-16")
    with pytest.raises(PolicyError) as err:
        policies.load(path)
    assert str(path) in str(err.value)


def test_unknown_policy_key_is_refused_naming_it(hcmc_document):
    from greengate.policy import PolicyError, from_document, load
    import copy
    bad = copy.deepcopy(hcmc_document())
    bad["vaccination"]["min_days_after_doses"] = 14
    with pytest.raises(PolicyError, match=r"vaccination\.min_days_after_doses"):
        from_document(bad)


# -- rule sets: the EU rule format ---------------------------------------------------------

from greengate.content import parse_dcc  # noqa: E402

RULE = {
    "Identifier": "VR-VN-0001", "Type": "Acceptance", "Country": "VN", "Version": "1.0.0",
    "SchemaVersion": "1.3.0", "Engine": "CERTLOGIC", "EngineVersion": "1.3.3",
    "CertificateType": "Vaccination",
    "Description": [{"lang": "en", "desc": "Complete series only"},
                    {"lang": "vi", "desc": "Chỉ chấp nhận đủ liệu trình"}],
    "ValidFrom": "2021-09-01T00:00:00Z", "ValidTo": "2021-12-31T23:59:59Z",
    "AffectedFields": ["v.0.dn", "v.0.sd"],
    "Logic": {">=": [{"var": "payload.v.0.dn"}, {"var": "payload.v.0.sd"}]},
}


def rule(**changes):
    return {**json.loads(json.dumps(RULE)), **changes}


def rule_set(*rules, timezone="UTC"):
    return policies.from_document({"name": "test-rules", "timezone": timezone,
                                   "rules": list(rules)})


@pytest.fixture(scope="module")
def cert_1_of_2(es256):
    return parse_dcc(es256.vaccination(date=DOSE, dose=1, of=2))


@pytest.fixture(scope="module")
def cert_2_of_2(es256):
    return parse_dcc(es256.vaccination(date=DOSE, dose=2, of=2))


def test_a_failing_rule_names_itself_in_english_with_the_vietnamese_at_hand(cert_1_of_2,
                                                                            cert_2_of_2):
    p = rule_set(rule())
    at = utc(2021, 10, 1)
    sub_reason, detail = p.evaluate(cert_1_of_2, at)
    assert sub_reason == "VR-VN-0001"
    assert detail.startswith("Complete series only") and "dose 1 of 2" in detail
    assert p.descriptions("VR-VN-0001") == {"en": "Complete series only",
                                            "vi": "Chỉ chấp nhận đủ liệu trình"}
    assert p.evaluate(cert_2_of_2, at) is None


@pytest.mark.parametrize("at, applied", [
    (utc(2021, 8, 31, 23, 59, 59), False),
    (utc(2021, 9, 1), True),
    (utc(2021, 12, 31, 23, 59, 59), True),
    (utc(2022, 1, 1), False),
])
def test_a_rule_applies_only_within_valid_from_and_valid_to(cert_1_of_2, at, applied):
    assert (rule_set(rule()).evaluate(cert_1_of_2, at) is not None) == applied


def test_certificate_type_restricts_a_rule(es256, cert_1_of_2):
    never = {"===": [1, 2]}
    recovery = parse_dcc(es256.recovery(first_positive="2021-08-01"))
    at = utc(2021, 10, 1)
    assert rule_set(rule(CertificateType="Recovery", Logic=never)).evaluate(cert_1_of_2, at) is None
    assert rule_set(rule(CertificateType="Recovery", Logic=never)).evaluate(recovery, at)[0] == \
        "VR-VN-0001"
    assert rule_set(rule(CertificateType="General", Logic=never)).evaluate(cert_1_of_2, at)
    assert rule_set(rule(CertificateType="General", Logic=never)).evaluate(recovery, at)


@pytest.mark.parametrize("logic", [1, "true", {"var": "payload.v.0.dn"}, 0,
                                   {"plusTime": ["2021-01-01", 0, "day"]}, [True]])
def test_anything_but_true_fails_the_policy(cert_2_of_2, logic):
    assert rule_set(rule(Logic=logic)).evaluate(cert_2_of_2, utc(2021, 10, 1))[0] == "VR-VN-0001"


def test_a_rule_that_raises_fails_the_policy_and_says_why(cert_2_of_2):
    broken = {"<": [{"var": "payload.v.0.dt"}, 5]}  # a date text is no integer
    sub_reason, detail = rule_set(rule(Logic=broken)).evaluate(cert_2_of_2, utc(2021, 10, 1))
    assert sub_reason == "VR-VN-0001" and "could not be evaluated" in detail


def test_the_newest_version_of_a_rule_in_force_applies(cert_1_of_2):
    old = rule(Version="1.0.0", Logic=True)
    new = rule(Version="1.10.0", ValidFrom="2021-10-01T00:00:00Z", Logic=False)
    p = rule_set(old, new)
    assert p.evaluate(cert_1_of_2, utc(2021, 9, 30)) is None  # 1.10.0 not in force yet
    assert p.evaluate(cert_1_of_2, utc(2021, 10, 1)) is not None


def test_invalidation_rules_apply_to_their_issuer_countrys_certificates(cert_2_of_2):
    p = rule_set(rule(Type="Invalidation", Country="DE", Logic=False))
    at = utc(2021, 10, 1)
    assert p.evaluate(cert_2_of_2, at, {"issuerCountryCode": "VN"}) is None
    assert p.evaluate(cert_2_of_2, at, {"issuerCountryCode": "DE"})[0] == "VR-VN-0001"


def test_rules_see_the_external_data(cert_2_of_2):
    logic = {"in": [{"var": "payload.v.0.mp"}, {"var": "external.valueSets.vaccines-covid-19-names"}]}
    p = rule_set(rule(Logic=logic))
    at = utc(2021, 10, 1)
    mp = cert_2_of_2.entry["mp"]
    assert p.evaluate(cert_2_of_2, at, {"valueSets": {"vaccines-covid-19-names": [mp]}}) is None
    assert p.evaluate(cert_2_of_2, at, {"valueSets": {"vaccines-covid-19-names": []}})


@pytest.mark.parametrize("change, message", [
    ({"Logic": {"all": [1]}}, "rule 'VR-VN-0001': 'Logic' is not valid CertLogic: "
                              'unrecognised operator: "all"'),
    ({"Logic": {"if": [True, 1]}}, "rule 'VR-VN-0001': 'Logic' is not valid CertLogic: an "
                                   'operation with operator "if" must have exactly 3'),
    ({"Logic": {"and": [True, {"plusTime": ["x", 1, "week"]}]}}, "rule 'VR-VN-0001'.*unit"),
    ({"Engine": "JSONLOGIC"}, "rule 'VR-VN-0001': 'Engine'"),
    ({"CertificateType": "Passport"}, "rule 'VR-VN-0001': 'CertificateType'"),
    ({"Type": "Reject"}, "rule 'VR-VN-0001': 'Type'"),
    ({"ValidFrom": "soon"}, "rule 'VR-VN-0001': 'ValidFrom'"),
    ({"ValidTo": "2020-01-01T00:00:00Z"}, "rule 'VR-VN-0001': 'ValidTo' is before"),
    ({"Description": []}, "rule 'VR-VN-0001': 'Description'"),
    ({"AffectedFields": "v.0.dn"}, "rule 'VR-VN-0001': 'AffectedFields'"),
    ({"Colour": "red"}, "rule 'VR-VN-0001': field 'Colour' is unknown"),
    ({"Identifier": ""}, r"rule #1: 'Identifier'"),
])
def test_invalid_rules_are_refused_naming_the_rule(change, message):
    with pytest.raises(PolicyError, match=message.replace("(", r"\(").replace('"', '.')
                       if ".*" not in message else message):
        rule_set(rule(**change))


def test_a_missing_rule_field_is_named():
    bad = rule()
    del bad["ValidTo"]
    with pytest.raises(PolicyError, match="rule 'VR-VN-0001': field 'ValidTo' is missing"):
        rule_set(bad)


def test_the_same_rule_version_twice_is_refused():
    with pytest.raises(PolicyError, match="'VR-VN-0001' version 1.0.0 is in the policy twice"):
        rule_set(rule(), rule())


def test_unknown_rule_set_field_is_refused():
    with pytest.raises(PolicyError, match="'rulez' is unknown"):
        policies.from_document({"name": "x", "rules": [], "rulez": []})


# -- hcmc-2021: the recovery certificate's own window, at both edges -----------------------
# (the verifier also checks df/du as technical validity, before any policy; these run the
# policy's own rules, which a rule set carries to wherever it is applied)

@pytest.fixture(scope="module")
def windowed_recovery(es256):
    # df 2021-03-12, du 2021-06-30; first positive 2021-03-01 keeps the 180-day rule quiet
    return parse_dcc(es256.recovery(first_positive=FIRST_POSITIVE, valid_from="2021-03-12",
                                    valid_until="2021-06-30"))


@pytest.mark.parametrize("at, verdict", [
    (utc(2021, 3, 11, 16, 59, 59), "recovery_not_yet_valid"),  # 23:59:59 local on 11 Mar
    (utc(2021, 3, 11, 17, 0), None),                             # 00:00 local on df
    (utc(2021, 6, 30, 16, 59, 59), None),                        # 23:59:59 local on du
    (utc(2021, 6, 30, 17, 0), "recovery_certificate_expired"),   # 00:00 local the day after
])
def test_hcmc_recovery_window_edges(windowed_recovery, at, verdict):
    result = policies.load("hcmc-2021").evaluate(windowed_recovery, at)
    assert (result and result[0]) == verdict, result


# -- the old format: converted, same boundaries --------------------------------------------

def test_convert_legacy_gives_a_valid_rule_set_that_loads(hcmc_document):
    doc = policies.convert_legacy(hcmc_document())
    assert set(doc) == {"name", "title", "timezone", "rules"}
    assert policies.from_document(doc).rules == policies.from_document(hcmc_document()).rules
    assert policies.convert_legacy(json.loads(
        (Path(__file__).parent / "data" / "policies" / "accept-valid-legacy.json").read_text()
    ))["rules"]  # the old accept-valid had checks (issue 13); the new built-in has none


def test_convert_legacy_refuses_a_fractional_hour_limit(tests_on_document):
    doc = json.loads(json.dumps(tests_on_document))
    doc["test"]["max_hours"]["LP6464-4"] = 72.5
    with pytest.raises(PolicyError, match="'test.max_hours.LP6464-4' must be a whole number"):
        policies.convert_legacy(doc)


def test_verify_json_carries_the_rule_description_in_both_languages(es256, vacc_2_of_2, tmp_path):
    from device import verify_command
    from greengate.trust import TrustList, load_signer
    from greengate.verifier import Verifier
    verifier = Verifier(TrustList([load_signer(es256.der)]), policies.load("hcmc-2021"))
    decision = verifier.verify(vacc_2_of_2, utc(2021, 9, 14, 1, 0))
    out = verify_command.as_json(decision, verifier)
    assert out["sub_reason"] == "vaccination_too_recent"
    assert out["detail"].startswith("The last dose must be at least 14 days")
    assert out["descriptions"]["vi"].startswith("Mũi tiêm cuối")
    assert set(out["descriptions"]) == {"en", "vi"}
