"""A district's crl-follow decisions (provisioning/crl_follow.py), apart from MQTT: what
it applies, what it refuses and says so, and the report it sends up
(greengate.messages.parse_bridge_crl, total over any bytes). The whole path on real
bridged brokers is tests/test_tiers_retire.py."""

from __future__ import annotations

import datetime as dt
import os
import random
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from greengate import messages
from provisioning import bridge_config
from fleet import pki as pki_module
from provisioning.crl_follow import Follower
from fleet.pki import crl_number


@pytest.fixture
def district(tmp_path):
    """A fleet PKI, a district's files as `bridge` writes them, and a reload that counts."""
    pki = pki_module.init(tmp_path / "pki", ["localhost"])
    out = tmp_path / "d1"
    bridge_config.write(pki, out, "d1", address="d1.example:8883", core="core.example:8883",
                        group=None)
    counter = tmp_path / "reloads"
    follower = Follower("d1", out / "greengate", reload=f"sh -c 'echo x >> {counter}'")
    follower.reloads = lambda: len(counter.read_text().splitlines()) if counter.exists() else 0
    return pki, follower


def report(follower, payload: bytes) -> dict:
    """What goes up the bridge for `payload`, as the fleet parses it."""
    doc = follower.offer(payload)
    return messages.parse_bridge_crl(messages.encode(doc), "d1")


def test_a_newer_crl_of_the_fleet_ca_is_applied_and_an_older_one_never(district):
    pki, follower = district
    first = crl_number(follower.crl_path.read_bytes())
    assert follower.start()["number"] == first and follower.reloads() == 1
    older = pki.path("crl.pem").read_bytes()
    newer = pki.write_crl([(0x1234, dt.datetime.now(dt.timezone.utc))])
    done = report(follower, newer)
    assert done["number"] == crl_number(newer) > first and "error" not in done
    assert follower.crl_path.read_bytes() == newer and follower.reloads() == 2
    assert os.stat(follower.crl_path).st_mode & 0o777 == 0o644
    # a replay of the older one (or the same one again) changes nothing
    for payload in (older, newer):
        assert report(follower, payload)["number"] == crl_number(newer)
    assert follower.crl_path.read_bytes() == newer and follower.reloads() == 2


def test_what_is_not_a_current_crl_of_the_fleet_ca_is_refused_and_said(district, tmp_path):
    pki, follower = district
    follower.start()
    held = follower.crl_path.read_bytes()
    # another CA's CRL, made with the same subject as the fleet CA's
    other = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    forged = (x509.CertificateRevocationListBuilder().issuer_name(pki.ca_cert.subject)
              .last_update(now).next_update(now + dt.timedelta(days=1))
              .add_extension(x509.CRLNumber(2 ** 62), critical=False)
              .sign(other, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    ca_key = pki._load_key("ca.key")
    expired = (x509.CertificateRevocationListBuilder().issuer_name(pki.ca_cert.subject)
               .last_update(now - dt.timedelta(days=3)).next_update(now - dt.timedelta(days=1))
               .add_extension(x509.CRLNumber(2 ** 62), critical=False)
               .sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    unnumbered = (x509.CertificateRevocationListBuilder().issuer_name(pki.ca_cert.subject)
                  .last_update(now).next_update(now + dt.timedelta(days=1))
                  .sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    cases = {forged: "not signed by the fleet CA", expired: "expired",
             unnumbered: "without a CRL Number",
             b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n": "not a PEM CRL",
             pki.ca_cert.public_bytes(serialization.Encoding.PEM): "not a PEM CRL",
             b"\xff" * 5000: "not a PEM CRL", b"x" * (5 * 1024 * 1024): "more than a CRL"}
    for payload, why in cases.items():
        done = report(follower, payload)
        assert why in done["error"], (payload[:40], done)
        assert done["number"] == crl_number(held)
    assert follower.crl_path.read_bytes() == held and follower.reloads() == 1
    # the next good one clears the error
    assert "error" not in report(follower, pki.write_crl([]))
    applied = crl_number(follower.crl_path.read_bytes())
    # the retained CRL cleared on the core: the broker keeps its CRL, and that is no fault
    done = report(follower, b"")
    assert "error" not in done and done["number"] == applied
    assert crl_number(follower.crl_path.read_bytes()) == applied


def test_a_reload_that_fails_is_said_and_retried_with_the_same_crl(district, tmp_path):
    pki, follower = district
    follower.start()
    held = crl_number(follower.crl_path.read_bytes())
    follower.reload_command = "false"
    newer = pki.write_crl([])
    done = report(follower, newer)
    assert "exited with 1" in done["error"] and done["number"] == held
    assert follower.crl_path.read_bytes() == newer  # written; the broker has not read it
    follower.reload_command = "true"
    done = report(follower, newer)  # the same CRL again (retained, on the next connection)
    assert done["number"] == crl_number(newer) and "error" not in done
    # a broker's files that cannot be written: said, nothing applied
    follower.files = tmp_path / "gone"
    done = report(follower, pki.write_crl([]))
    assert "cannot" in done["error"] and done["number"] == crl_number(newer)


def test_a_crl_report_parses_or_is_refused_with_a_sentence():
    good = messages.encode(messages.bridge_crl(bridge="d1", number=5, at=time.time()))
    assert messages.parse_bridge_crl(good, "d1")["number"] == 5
    for payload, why in ((good, "published under"), (b"{", "not JSON"),
                         (messages.encode({"v": 1, "bridge": "d2", "number": -1,
                                           "at": time.time()}), "out of range"),
                         (messages.encode({"v": 1, "bridge": "d2", "number": 1,
                                           "at": "now"}), "wrong type"),
                         (messages.encode({"v": 1, "bridge": "d2", "number": 1,
                                           "at": time.time(), "error": "\x00"}),
                          "not printable")):
        with pytest.raises(messages.MessageError, match=why):
            messages.parse_bridge_crl(payload, "d2")
    rng = random.Random(17)
    for _ in range(2000):
        payload = bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
        try:
            messages.parse_bridge_crl(payload, "d1")
        except messages.MessageError:
            pass
    assert messages.bridge_of("gg/v1/bridge/d1/crl") == ("d1", "crl")
    for topic in ("gg/v1/bridge/D1/crl", "gg/v1/bridge/d1/other", "gg/v1/bridge/d1"):
        with pytest.raises(messages.MessageError):
            messages.bridge_of(topic)


def test_after_a_failed_start_an_older_retained_crl_reports_the_newer_file(district):
    """The broker reads the file: once a reload works, the file's CRL is what it holds,
    even when what came down the bridge is older (the district was provisioned after it)."""
    pki, follower = district
    older = pki.path("crl.pem").read_bytes()
    newer = pki.write_crl([])
    follower.crl_path.write_bytes(newer)  # `bridge` copied the PKI's newest
    follower.reload_command = "false"
    assert "exited with 1" in follower.start()["error"]
    follower.reload_command = "true"
    done = report(follower, older)  # the retained one on the core, from before
    assert done["number"] == crl_number(newer) and "error" not in done
    assert follower.crl_path.read_bytes() == newer
