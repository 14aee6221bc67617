"""The tracing key stays in the fleet (issue 14, docs/privacy.md).

Kiosk side: the sealer holds public keys only, and an old kiosk.toml's pseudonym key
is removed at start (device/privacy.py). Fleet side, through a real Mosquitto (TLS,
client certificates) and the real ingest worker on SQLite and PostgreSQL: two kiosks
scanning the same holder give one pseudonym the fleet can trace, equal to the one an
old-firmware kiosk sends; the sealed value is never stored, not even in the
quarantine; a tampered or replayed envelope stores the scan without a holder (counted);
an envelope sealed before a rotation opens during the grace period, not after.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import stat
import time
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from sqlalchemy import select

from device import privacy
from device.config import load as load_kiosk_config
from device.privacy import Sealer, scrub_legacy_key
from device.state import BundleStore
from fleet import bundles, sealing_keys, tracing
from fleet.models import Scan
from greengate import messages, sealing
from tests.ingestkit import (TS, KioskClient, Workers, ingest_config, quarantined, wait_for)
from tests.ingestkit import SealingKiosk as KioskSide

OLD_KEY = "00112233445566778899aabbccddeeff"  # pseudonym.key of a fleet being upgraded
PERSON = ("TRAN<PHAM", "THI<XUAN<HONG", "1987-06-05")
OTHER = ("LE", "VAN<BINH", "1990-02-03")


# --- the kiosk ---------------------------------------------------------------------------
KIOSK_TOML = f"""# made by greengate-provision enrol
[kiosk]
id = "k1"
deployment = "test"
policy = "hcmc-2021"

[mqtt]
tls = false

[bundles]
fleet_key = "fleet.pem"

[privacy]
pseudonyms = true
pseudonym_key = "{OLD_KEY}"   # the old key

[outbox]
max_rows = 1000
"""


def test_an_old_configuration_loses_its_key_and_nothing_else(tmp_path, caplog):
    path = tmp_path / "kiosk.toml"
    path.write_text(KIOSK_TOML)
    os.chmod(path, 0o640)
    cfg = load_kiosk_config(path)  # an old file still loads (the kiosk must start) ...
    assert cfg.privacy.pseudonym_key == "" and cfg.privacy.pseudonyms  # ... without the key
    with caplog.at_level(logging.WARNING, logger="device.privacy"):
        assert scrub_legacy_key(path)
    assert "removed the old pseudonym key" in caplog.text and str(path) in caplog.text
    assert path.read_text() == KIOSK_TOML.replace(f'pseudonym_key = "{OLD_KEY}"   # the old '
                                                  'key\n', "")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert OLD_KEY not in path.read_text()
    assert not scrub_legacy_key(path)  # nothing more to do
    load_kiosk_config(path)
    # a pseudonym_key line elsewhere is not ours to touch (and the loader refuses it)
    other = tmp_path / "other.toml"
    other.write_text('[kiosk]\npseudonym_key = "x"\n')
    assert not scrub_legacy_key(other) and "pseudonym_key" in other.read_text()


def test_a_file_that_cannot_be_rewritten_is_said_so(tmp_path, caplog):
    path = tmp_path / "kiosk.toml"
    path.write_text(KIOSK_TOML)
    (tmp_path / ".kiosk.toml.tmp").mkdir()  # device/files.py: its temporary file cannot be made
    with caplog.at_level(logging.ERROR, logger="device.privacy"):
        assert not scrub_legacy_key(path)
    assert "could not be removed" in caplog.text and "remove that line by hand" in caplog.text
    assert path.read_text() == KIOSK_TOML  # untouched, not half-written
    load_kiosk_config(path)  # and the kiosk still starts


def test_the_units_privileged_step_scrubs_the_config_and_the_boot_copy(tmp_path):
    """systemd/greengate-kiosk.service runs this before the sandboxed kiosk (which may
    not write /etc/greengate nor the boot partition); missing files are skipped."""
    import subprocess
    import sys
    etc, boot = tmp_path / "kiosk.toml", tmp_path / "boot-kiosk.toml"
    etc.write_text(KIOSK_TOML)
    boot.write_text(KIOSK_TOML)
    done = subprocess.run([sys.executable, "-m", "device.privacy", "scrub", str(etc),
                           str(tmp_path / "missing.toml"), str(boot)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("removed the old pseudonym key") == 2
    assert OLD_KEY not in etc.read_text() + boot.read_text()
    unit = (Path(__file__).parents[1] / "systemd" / "greengate-kiosk.service").read_text()
    assert ("ExecStartPre=-+/opt/greengate/.venv/bin/python -m device.privacy scrub "
            "/etc/greengate/kiosk.toml") in unit


def test_the_sealer_holds_no_key_that_links():
    """What the kiosk keeps in memory: a function giving the public key, and the current
    epoch (docs/privacy.md#the-envelope): the public key it is for, its own public key,
    and the AEAD of this epoch, which opens this kiosk's envelopes of these few minutes
    and nothing else: no pseudonym secret, no private key, nothing that links."""
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    from tests.fleetkit import FleetKit
    kit = FleetKit()
    sealer = Sealer(lambda: kit.sealing_key)
    assert not hasattr(sealer, "__dict__")
    assert set(Sealer.__slots__) == {"_key_source", "_warned", "_epochs"}
    held = [getattr(sealer, name) for name in Sealer.__slots__]
    assert not any(isinstance(v, (bytes, bytearray, str)) for v in held)
    # what the source gives is the public half only
    assert kit.sealing_key.__dataclass_fields__.keys() == {"kid", "public"}
    assert not hasattr(privacy, "Pseudonymiser")
    one = sealer(PERSON, kiosk="k1", scan_id="scan-0001")
    two = sealer(PERSON, kiosk="k1", scan_id="scan-0001")
    assert one != two  # the kiosk's own data cannot tell two scans are one person
    epoch = sealer._epochs.epoch
    assert {type(getattr(epoch, n)) for n in sealing.Epoch.__slots__} == {
        bytes, float, int, ChaCha20Poly1305}
    assert epoch.public == kit.sealing_key.public
    # the epoch's AEAD opens its own envelopes (what a memory thief gains: the people
    # this kiosk saw in these minutes) and not those of the next epoch
    raw = base64.urlsafe_b64decode(one + "=" * (-len(one) % 4))
    aad = sealing._aad(raw[:sealing.HEADER], "k1", "scan-0001")
    cipher = epoch._cipher
    assert cipher.decrypt(raw[sealing.HEADER - 12:sealing.HEADER], raw[sealing.HEADER:], aad)
    sealer._epochs.end()
    three = sealer(PERSON, kiosk="k1", scan_id="scan-0001")
    raw = base64.urlsafe_b64decode(three + "=" * (-len(three) % 4))
    with pytest.raises(InvalidTag):
        cipher.decrypt(raw[sealing.HEADER - 12:sealing.HEADER], raw[sealing.HEADER:],
                       sealing._aad(raw[:sealing.HEADER], "k1", "scan-0001"))
    assert {kit.opener.open(t, kiosk="k1", scan_id="scan-0001") for t in (one, two, three)} \
        == {sealing.identity_bytes(PERSON)}
    assert sealer(None, kiosk="k1", scan_id="scan-0001") is None
    assert Sealer(lambda: None)(PERSON, kiosk="k1", scan_id="scan-0001") is None
    # no key to seal to (pseudonyms off, a fleet older than sealing): no epoch kept
    keyless = [kit.sealing_key]
    gone = Sealer(lambda: keyless[0])
    gone(PERSON, kiosk="k1", scan_id="scan-0001")
    assert gone._epochs.epoch is not None
    keyless[0] = None
    gone(PERSON, kiosk="k1", scan_id="scan-0001")
    assert gone._epochs.epoch is None


def test_the_epoch_key_never_reaches_the_kiosks_disk(tmp_path, monkeypatch):
    """The kiosk's data as on_decision leaves it (the trust bundle in its BundleStore,
    every scan in the outbox, as sent): neither an epoch's ephemeral private key nor its
    AEAD key is in any file, in any encoding, across several epochs."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from device.outbox import Outbox
    from tests.fleetkit import FleetKit
    secrets_seen: list[bytes] = []
    real_derive, real_generate = sealing._derive, X25519PrivateKey.generate

    def derive(*args):
        key = real_derive(*args)
        secrets_seen.append(key)
        return key

    class Recording:
        @staticmethod
        def generate():
            private = real_generate()
            secrets_seen.append(private.private_bytes(
                serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                serialization.NoEncryption()))
            return private

    monkeypatch.setattr(sealing, "_derive", derive)
    monkeypatch.setattr(sealing, "X25519PrivateKey", Recording)
    kit = FleetKit()
    data = tmp_path / "data"
    store = BundleStore(data / "bundles", kit.key.public_key(), "test", "hcmc-2021",
                        timedelta(hours=72), kiosk_id="k1")
    assert store.offer(kit.trust(1, int(time.time()) - 60))[0]
    outbox = Outbox(data / "outbox.sqlite", 1000)
    sealer = Sealer(lambda: store.sealing_key, sealing.EpochSealer(seals=4))
    sent = []
    for i in range(10):  # three epochs
        scan_id = f"scan-{i:04d}"
        doc = messages.scan(scan_id=scan_id, kiosk="k1", ts=TS, decision="green", reason="ok",
                            sub_reason=None, cert_type="v", cert_hash="ab" * 16,
                            policy="hcmc-2021", seq=i + 1,
                            sealed=sealer(PERSON, kiosk="k1", scan_id=scan_id))
        sent.append(doc["sealed"])
        assert outbox.add(scan_id, messages.scan_topic("k1"), messages.encode(doc))
    outbox.close()
    assert len(secrets_seen) == 6  # three epochs: a private key and an AEAD key each
    assert len({base64.urlsafe_b64decode(t + "==")[9:41] for t in sent}) == 3
    files = b"".join(p.read_bytes() for p in data.rglob("*") if p.is_file())
    assert sent[0].encode() in files  # the envelopes are there: we look in the right place
    for secret in secrets_seen:
        for form in (secret, secret.hex().encode(), base64.b64encode(secret)[:40],
                     base64.urlsafe_b64encode(secret)[:40]):
            assert form not in files


def test_sealing_never_holds_up_the_light(caplog):
    """Whatever goes wrong in sealing, the decision goes on (without a holder)."""
    def broken():
        raise ValueError("a bundle the kiosk cannot read")
    with caplog.at_level(logging.ERROR, logger="device.privacy"):
        assert Sealer(broken)(PERSON, kiosk="k1", scan_id="scan-0001") is None
    assert "could not seal the holder of scan scan-0001" in caplog.text


# --- the fleet ------------------------------------------------------------------------------
@pytest.fixture
def fleet(fleet_config, broker):
    """An upgraded fleet: its PKI has the old pseudonym key; the sealing key pair is made
    on first use (here: the first trust bundle)."""
    config = ingest_config(fleet_config, broker)
    path = sealing_keys.secret_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(OLD_KEY + "\n")
    return config


@pytest.fixture
def workers(tmp_path):
    w = Workers(tmp_path)
    yield w
    w.close()


@pytest.fixture
def clients(broker):
    made = {}

    def get(identity):
        if identity not in made:
            made[identity] = KioskClient(broker, identity)
        return made[identity]

    yield get
    for client in made.values():
        client.close()


def legacy_holder(holder) -> str:
    """What a kiosk of the old firmware sends: the HMAC with the key it holds."""
    return hmac.new(bytes.fromhex(OLD_KEY), "\x1f".join(holder).encode(),
                    hashlib.sha256).digest()[:16].hex()


def rows(sessions) -> dict[str, Scan]:
    with sessions() as s:
        return {r.scan_id: r for r in s.scalars(select(Scan))}


def sealed_count(worker, outcome) -> float:
    return worker.metrics.value("greengate_ingest_sealed_holders_total", outcome=outcome)


def test_the_fleet_links_one_holder_across_kiosks_and_old_firmware(
        fleet, fleet_db, workers, clients, tmp_path):
    k1 = KioskSide(fleet, fleet_db, tmp_path, "k1")
    k2 = KioskSide(fleet, fleet_db, tmp_path, "k2")
    worker = workers.start(fleet, presence=False)
    sent = [("k1", k1.scan(PERSON, ts=TS)), ("k2", k2.scan(PERSON, ts=TS + 600)),
            ("k2", k2.scan(OTHER, ts=TS + 660))]
    old = messages.scan(scan_id="old-firmware-1", kiosk="k3", ts=TS + 1200, decision="green",
                        reason="ok", sub_reason=None, cert_type="v", cert_hash="ef" * 16,
                        holder=legacy_holder(PERSON), policy="hcmc-2021", seq=1)
    sent.append(("k3", old))
    for kiosk, doc in sent:
        clients(kiosk).publish(messages.scan_topic(kiosk), doc)
    wait_for(lambda: len(rows(fleet_db)) == 4, 20, "four scans stored")
    stored = rows(fleet_db)
    mine = [stored[doc["id"]].holder for _, doc in sent]
    # one pseudonym for the person at both kiosks, the same the old firmware made with the
    # key the fleet kept: the pseudonyms stored before the upgrade keep linking
    assert mine[0] == mine[1] == mine[3] == legacy_holder(PERSON)
    assert mine[2] == legacy_holder(OTHER) != mine[0]
    # the kiosks' own messages could not link them: their sealed values share nothing
    assert sent[0][1]["sealed"][60:] not in sent[1][1]["sealed"]
    assert sealed_count(worker, "opened") == 3 and sealed_count(worker, "legacy") == 1
    # the sealed value is stored nowhere: no column holds it
    for _, doc in sent[:3]:
        row = stored[doc["id"]]
        assert doc["sealed"] not in repr({c: getattr(row, c) for c in Scan.__table__.c.keys()})
    # a health official's trace by the pseudonym finds the person's visits at both kiosks
    with fleet_db() as s:
        result = tracing.trace(s, tracing.name_case(s, ["test"], holder=mine[0]),
                               TS - 3600, TS + 3600, 30.0)
    assert [v["kiosk"] for v in result.visits] == ["k1", "k2", "k3"]
    assert [c["holder"] for c in result.visits[1]["contacts"]] == [mine[2]]


def test_envelopes_that_do_not_open_and_refused_scans_keep_no_sealed_value(
        fleet, fleet_db, workers, clients, tmp_path):
    k1 = KioskSide(fleet, fleet_db, tmp_path, "k1")
    worker = workers.start(fleet, presence=False)
    good = k1.scan(PERSON)
    replayed = dict(k1.scan(PERSON), sealed=good["sealed"])  # copied into another scan
    tampered = k1.scan(PERSON)
    flipped = "A" if tampered["sealed"][100] != "A" else "B"
    tampered["sealed"] = tampered["sealed"][:100] + flipped + tampered["sealed"][101:]
    foreign = k1.scan(PERSON)
    foreign["sealed"] = sealing.seal(b"X", sealing.SealingKey.from_raw(bytes(range(1, 33))),
                                     kiosk="k1", scan_id=foreign["id"])
    ahead = k1.scan(PERSON, ts=time.time() + 3 * 86400)  # beyond the fleet's window
    unparsed = dict(k1.scan(PERSON), decision="maybe")  # refused by the parser
    for doc in (good, replayed, tampered, foreign, ahead, unparsed):
        clients("k1").publish(messages.scan_topic("k1"), doc)
    wait_for(lambda: len(rows(fleet_db)) == 4 and len(quarantined(fleet_db)) == 2, 20,
             "stored, refused")
    stored = rows(fleet_db)
    assert stored[good["id"]].holder == legacy_holder(PERSON)
    for doc in (replayed, tampered, foreign):  # the decision is kept, without a holder
        assert stored[doc["id"]].holder is None and stored[doc["id"]].decision == "green"
    assert sealed_count(worker, "invalid") == 2 and sealed_count(worker, "unknown_key") == 1
    refused = {q["reason"]: bytes(q["raw"]) for q in quarantined(fleet_db)}
    assert set(refused) == {"ts_future", "field_decision"}
    for raw, doc in ((refused["ts_future"], ahead), (refused["field_decision"], unparsed)):
        assert b'"sealed":"-"' in raw and doc["sealed"][:40].encode() not in raw


def test_envelopes_sealed_before_a_rotation_open_during_the_grace_period(
        fleet, fleet_db, workers, clients, tmp_path):
    k1 = KioskSide(fleet, fleet_db, tmp_path, "k1")
    waiting = k1.scan(PERSON)  # sealed to the first key, still in the kiosk's outbox
    worker = workers.start(fleet, presence=False)
    sealing_keys.rotate(fleet)  # `greengate-fleet sealing rotate`, another process
    signer = bundles.load_signing_key(fleet)
    with fleet_db() as s:
        assert bundles.refresh(s, fleet, "test", key=signer) == ["trust"]
        raw = bundles.latest(s, "test", "trust").raw
    assert k1.store.offer(raw)[0]
    fresh = k1.scan(PERSON)
    assert fresh["sealed"][:14] != waiting["sealed"][:14]  # another kid
    worker.unsealer._loaded -= sealing_keys.RELOAD_UNKNOWN  # as if a few seconds went by
    for doc in (fresh, waiting):
        clients("k1").publish(messages.scan_topic("k1"), doc)
    wait_for(lambda: len(rows(fleet_db)) == 2, 20, "both stored")
    stored = rows(fleet_db)
    assert stored[fresh["id"]].holder == stored[waiting["id"]].holder == legacy_holder(PERSON)
    # past the grace period the old key is purged: what is still sealed to it is counted
    sealing_keys.purge(fleet, now=10 ** 12)
    late = dict(waiting, id="late-0001")
    worker.unsealer._loaded -= sealing_keys.RELOAD_EVERY
    clients("k1").publish(messages.scan_topic("k1"), late)
    wait_for(lambda: len(rows(fleet_db)) == 3, 20, "the late one stored")
    assert rows(fleet_db)["late-0001"].holder is None
    assert sealed_count(worker, "opened") == 2
    # the key is looked up first: what is missing is the key
    assert sealed_count(worker, "unknown_key") == 1
