"""Shared fixtures: test issuers, verifier factories and fixed clocks.

Nothing here (or in the tests using it) reads the clock of the day: every
certificate gets an explicit iat/exp and every verification an explicit `at`.
"""

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest

from greengate import policy as policies
from greengate.status import StatusList
from greengate.trust import TrustList, load_signer
from greengate.verifier import Verifier
from provisioning.issuer import Issuer

# real Mosquitto; SQLite + real PostgreSQL databases (database_url); the fleet app
pytest_plugins = ["tests.conftest_broker", "tests.conftest_db", "tests.conftest_fleet",
                  "tests.conftest_browser"]

UTC = timezone.utc
HCMC = ZoneInfo("Asia/Ho_Chi_Minh")

# One fixed calendar for every test. The certificates are issued on ISSUED,
# expire on EXPIRES, and are checked at CHECK unless a test says otherwise.
ISSUED = datetime(2021, 6, 1, tzinfo=UTC)
EXPIRES = datetime(2022, 6, 1, tzinfo=UTC)
CHECK = datetime(2021, 10, 5, 8, 0, tzinfo=UTC)  # 15:00 in Ho Chi Minh City
DOSE_DATE = "2021-08-01"  # long enough before CHECK for every policy
FIRST_POSITIVE = "2021-07-01"  # 96 days before CHECK

# A holder whose name and birth date must never leave the verifier.
HOLDER = SimpleNamespace(family="Trần-Phạm", given="Thị Xuân Hồng", dob="1987-06-05",
                         family_std="TRAN<PHAM", given_std="THI<XUAN<HONG")


@pytest.fixture(scope="session")
def clock():
    """The fixed times (aware datetimes) and dates the tests build on."""
    return SimpleNamespace(issued=ISSUED, expires=EXPIRES, check=CHECK, dose_date=DOSE_DATE,
                           first_positive=FIRST_POSITIVE, utc=UTC, hcmc=HCMC,
                           day=timedelta(days=1), hour=timedelta(hours=1))


@pytest.fixture(scope="session")
def holder():
    return HOLDER


@pytest.fixture(scope="session")
def es256():
    """An ES256 issuer without key-usage OIDs (may sign every type)."""
    return Issuer.create(alg="ES256")


@pytest.fixture(scope="session")
def ps256():
    """A PS256 issuer (RSA key generation is slow: made once per session)."""
    return Issuer.create(alg="PS256")


@pytest.fixture(scope="session")
def untrusted():
    """An ES256 issuer that no verifier built here trusts."""
    return Issuer.create(alg="ES256", name="Not Trusted")


def _policy(policy) -> policies.Policy:
    if isinstance(policy, policies.Policy):
        return policy
    if isinstance(policy, dict):
        return policies.from_document(policy)
    return policies.load(policy)


@pytest.fixture(scope="session")
def make_verifier():
    """make_verifier(*issuers, policy="hcmc-2021", status=None, valid_until=None) -> Verifier.

    policy: a built-in name, a policy file path, a policy document (dict) or a Policy.
    """

    def make(*issuers, policy="hcmc-2021", status: StatusList | None = None,
             valid_until: datetime | None = None) -> Verifier:
        trust = TrustList(load_signer(i.der) for i in issuers)
        return Verifier(trust, _policy(policy), status=status, valid_until=valid_until)

    return make


@pytest.fixture(scope="session")
def person():
    """Keyword arguments for Issuer.vaccination/test/recovery naming HOLDER."""
    return {"family": HOLDER.family, "given": HOLDER.given, "dob": HOLDER.dob}


@pytest.fixture(scope="session")
def hcmc_document():
    """hcmc-2021 in the old (pre-rule-set) policy format, as a fresh, editable document:
    tests move its thresholds; policy.from_document converts it (convert_legacy)."""
    text = (Path(__file__).parent / "data" / "policies" / "hcmc-2021-legacy.json").read_text()
    return lambda: json.loads(text)
