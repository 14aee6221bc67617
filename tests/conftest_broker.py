"""Pytest fixtures around tests/broker.py: a real Mosquitto per test, a shared test PKI.

Registered from tests/conftest.py (pytest_plugins). A missing mosquitto binary
fails the MQTT tests with the install command instead of skipping them quietly.
"""

from __future__ import annotations

import pytest

from tests.broker import PKI, Broker, MosquittoMissing, Subscriber, find_mosquitto


@pytest.fixture(scope="session")
def mosquitto() -> str:
    """Path of the mosquitto binary (fails the test with an install hint if missing)."""
    try:
        return find_mosquitto()
    except MosquittoMissing as exc:
        problem = str(exc)
    pytest.fail(problem, pytrace=False)


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> PKI:
    """A throw-away CA with a server certificate for localhost / 127.0.0.1."""
    return PKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def foreign_pki(tmp_path_factory) -> PKI:
    """Another CA the brokers do not trust (for the wrong-client-certificate test)."""
    return PKI(tmp_path_factory.mktemp("foreign-pki"), name="Some Other CA")


@pytest.fixture
def make_broker(mosquitto, pki, tmp_path):
    """make_broker(tls=True, persistence=True, **Broker options) -> started Broker.

    Every broker made is stopped at the end of the test."""
    made: list[Broker] = []

    def make(*, tls: bool = True, start: bool = True, **options) -> Broker:
        broker = Broker(tmp_path / f"broker{len(made)}", pki if tls else None, **options)
        made.append(broker)
        return broker.start() if start else broker

    yield make
    for broker in made:
        if broker.running:
            try:
                broker.resume()
            except (OSError, ProcessLookupError):
                pass
        broker.kill()


@pytest.fixture
def broker(make_broker) -> Broker:
    """A running TLS broker (client certificates required, persistence on)."""
    return make_broker()


@pytest.fixture
def subscriber():
    """subscriber(broker, topics, **Subscriber options) -> started, recording Subscriber."""
    made: list[Subscriber] = []

    def make(broker: Broker, topics, **options) -> Subscriber:
        sub = Subscriber(broker, topics, **options)
        made.append(sub)
        return sub.start()

    yield make
    for sub in made:
        try:
            sub.close()
        except Exception:
            pass
