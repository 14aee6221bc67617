"""Sealed holder identities (greengate/sealing.py), the fleet's sealing keys
(fleet/sealing_keys.py), the scan message's `sealed` field and the trust bundle that
carries the public key (fleet/bundles.py -> device/state.py). docs/privacy.md.

The end-to-end path (kiosks -> Mosquitto -> ingest -> tracing) and the kiosk's files
are in tests/test_tracing_key.py.
"""

from __future__ import annotations

import base64
import json
import os
import random
import stat
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from device.state import BundleStore
from fleet import bundles, sealing_keys
from fleet.config import ConfigError, load
from greengate import bundle, messages, sealing
from greengate.sealing import Opener, SealError, SealingKey

ID = sealing.identity_bytes(("TRAN", "THI<HONG", "1987-06-05"))


def pair():
    private = X25519PrivateKey.generate()
    opener = Opener([private])
    (kid,) = opener.kids()
    raw = private.public_key().public_bytes_raw()
    key = SealingKey.from_raw(raw)
    assert key.kid == kid
    return key, opener


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# --- the envelope ------------------------------------------------------------------------
def test_an_envelope_opens_only_for_its_own_scan():
    key, opener = pair()
    text = sealing.seal(ID, key, kiosk="k1", scan_id="scan-0001")
    assert opener.open(text, kiosk="k1", scan_id="scan-0001") == ID
    # replayed into another scan, or another kiosk's: it does not open
    for kiosk, scan_id in (("k1", "scan-0002"), ("k2", "scan-0001"), ("k", "1scan-0001")):
        with pytest.raises(SealError) as err:
            opener.open(text, kiosk=kiosk, scan_id=scan_id)
        assert err.value.reason == "invalid"


def test_the_same_holder_seals_differently_every_time_and_names_leak_no_length():
    key, opener = pair()
    epochs = sealing.EpochSealer()
    texts = {epochs(ID, key, kiosk="k1", scan_id="scan-0001") for _ in range(20)}
    texts |= {sealing.seal(ID, key, kiosk="k1", scan_id="scan-0001") for _ in range(20)}
    assert len(texts) == 40  # a kiosk's own data cannot link two scans of one person
    # within an epoch only the header's epoch key is shared: the ciphertexts are not
    bodies = [unb64(t)[sealing.HEADER:] for t in texts]
    assert len({b[:16] for b in bodies}) == 40
    assert all(opener.open(t, kiosk="k1", scan_id="scan-0001") == ID for t in texts)
    short = sealing.identity_bytes(("LY", "A", "2000-01-01"))
    longest = sealing.identity_bytes(("X" * 80, "Y" * 80, "1999-12-31"))
    sizes = {len(unb64(sealing.seal(i, key, kiosk="k1", scan_id="scan-0001")))
             for i in (short, ID, longest, b"")}
    assert sizes == {sealing.SIZE}
    assert len(sealing.seal(longest, key, kiosk="k1", scan_id="s")) == 434  # docs/protocol.md
    # beyond any valid DCC: the next multiple of PAD, and it still opens
    huge = b"Z" * 600
    text = sealing.seal(huge, key, kiosk="k1", scan_id="scan-0001")
    assert len(unb64(text)) == sealing.HEADER + 3 * sealing.PAD + sealing.TAG
    assert opener.open(text, kiosk="k1", scan_id="scan-0001") == huge


def test_every_byte_of_an_envelope_is_protected():
    key, opener = pair()
    raw = unb64(sealing.seal(ID, key, kiosk="k1", scan_id="scan-0001"))
    for i in range(len(raw)):
        tampered = bytearray(raw)
        tampered[i] ^= 0x01
        with pytest.raises(SealError) as err:
            opener.open(b64(bytes(tampered)), kiosk="k1", scan_id="scan-0001")
        # the version byte makes it malformed, the kid unknown, anything else invalid
        assert err.value.reason == ("malformed" if i == 0 else "unknown_key"
                                    if i <= sealing.KID_BYTES else "invalid"), i
    # nothing that failed entered the cache (a changed epoch key did not open)
    assert opener.cached() == 0
    assert opener.open(b64(raw), kiosk="k1", scan_id="scan-0001") == ID
    assert opener.cached() == 1
    for i in (sealing.HEADER - 1, sealing.HEADER, len(raw) - 1):  # tampered, epoch key cached
        tampered = bytearray(raw)
        tampered[i] ^= 0x80
        with pytest.raises(SealError, match="does not open"):
            opener.open(b64(bytes(tampered)), kiosk="k1", scan_id="scan-0001")
    derived = opener.derived
    assert opener.open(b64(raw), kiosk="k1", scan_id="scan-0001") == ID
    assert opener.derived == derived and opener.cached() == 1  # still cached


def test_another_fleets_key_and_a_forged_kid_do_not_open():
    key, _ = pair()
    _, other = pair()
    text = sealing.seal(ID, key, kiosk="k1", scan_id="scan-0001")
    with pytest.raises(SealError) as err:
        other.open(text, kiosk="k1", scan_id="scan-0001")
    assert err.value.reason == "unknown_key"
    # an envelope made for our key but labelled with the other's kid
    (other_kid,) = other.kids()
    raw = bytearray(unb64(text))
    raw[1:1 + sealing.KID_BYTES] = other_kid
    with pytest.raises(SealError) as err:
        other.open(b64(bytes(raw)), kiosk="k1", scan_id="scan-0001")
    assert err.value.reason == "invalid"


def test_opening_is_total():
    key, opener = pair()
    good = unb64(sealing.seal(ID, key, kiosk="k1", scan_id="scan-0001"))
    rng = random.Random(14)
    samples = [None, 5, b"bytes", "", "!!!!", "A" * (sealing.MAX_TEXT + 1), "A", "AB",
               b64(good[:-1]), b64(good + b"\0"), b64(good[:sealing.HEADER]),
               b64(bytes([1]) + good[1:]),  # the unreleased version 1
               b64(good[:1 + sealing.KID_BYTES] + bytes(32) +  # an all-zero epoch key
                   good[1 + sealing.KID_BYTES + 32:]),
               good.hex(), "\u00e9" * 500, "A" * 433 + "=", "A" * 433 + "+",
               b64(good)[:-1] + "\n", " " + b64(good)]
    samples += [b64(bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 700))))
                for _ in range(300)]
    samples += [b64(good[:1 + sealing.KID_BYTES] +
                    bytes(rng.getrandbits(8) for _ in range(len(good) - 1 - sealing.KID_BYTES)))
                for _ in range(100)]
    for sample in samples:
        with pytest.raises(SealError) as err:
            opener.open(sample, kiosk="k1", scan_id="scan-0001")
        assert err.value.reason in ("malformed", "unknown_key", "invalid")


def test_bad_padding_inside_a_valid_envelope_is_refused():
    """A sealer that is not ours (a hostile kiosk with a valid key) may encrypt anything:
    a length beyond the padded block, or bytes after the identity."""
    key, opener = pair()
    for padded in (b"\xff\xff" + bytes(sealing.PAD - 2),
                   b"\x00\x01A" + b"\x01" + bytes(sealing.PAD - 4)):
        text = _seal_padded(padded, key, "k1", "scan-0001")
        with pytest.raises(SealError) as err:
            opener.open(text, kiosk="k1", scan_id="scan-0001")
        assert err.value.reason == "invalid"


def _seal_padded(padded: bytes, key: SealingKey, kiosk: str, scan_id: str) -> str:
    epoch = sealing.Epoch(key, 0.0)
    header = epoch.prefix + os.urandom(sealing.NONCE_BYTES)
    body = epoch._cipher.encrypt(header[-sealing.NONCE_BYTES:], padded,
                                 sealing._aad(header, kiosk, scan_id))
    return b64(header + body)


# --- epochs (the kiosk) and the AEAD cache (the fleet) ----------------------------------
def header_of(text: str) -> tuple[bytes, bytes, bytes]:
    """(kid, epoch key, nonce) of an envelope."""
    raw = unb64(text)
    kid_end = 1 + sealing.KID_BYTES
    return raw[1:kid_end], raw[kid_end:kid_end + 32], raw[kid_end + 32:sealing.HEADER]


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_one_epoch_shares_its_key_never_a_nonce_and_opens_with_one_exchange():
    key, opener = pair()
    epochs = sealing.EpochSealer()
    texts = [epochs(ID, key, kiosk="k1", scan_id=f"scan-{i:04d}") for i in range(2000)]
    heads = [header_of(t) for t in texts]
    assert len({h[1] for h in heads}) == 1  # one epoch key ...
    assert len({h[2] for h in heads}) == 2000  # ... and a nonce of its own for every seal
    assert all(h[0] == key.kid for h in heads)
    for i, text in enumerate(texts):
        assert opener.open(text, kiosk="k1", scan_id=f"scan-{i:04d}") == ID
    assert opener.derived == 1 and opener.cached() == 1  # the X25519 exchange, once
    # another kiosk's epoch: one more exchange, then cached too
    other = sealing.EpochSealer()
    for i in range(3):
        text = other(ID, key, kiosk="k2", scan_id=f"scan-{i:04d}")
        assert opener.open(text, kiosk="k2", scan_id=f"scan-{i:04d}") == ID
    assert opener.derived == 2 and opener.cached() == 2
    # a cached epoch key does not loosen the binding to the scan
    with pytest.raises(SealError) as err:
        opener.open(texts[0], kiosk="k1", scan_id="scan-0001")
    assert err.value.reason == "invalid"
    with pytest.raises(SealError) as err:
        opener.open(texts[0], kiosk="k2", scan_id="scan-0000")
    assert err.value.reason == "invalid"


def test_epochs_end_by_time_count_key_change_and_when_idle():
    key, opener = pair()
    clock = Clock()
    epochs = sealing.EpochSealer(seconds=600, seals=3, clock=clock)

    def epk():
        return header_of(epochs(ID, key, kiosk="k1", scan_id="s"))[1]

    first = epk()
    assert epk() == epk() == first  # three seals: the epoch's limit
    second = epk()
    assert second != first
    clock.now += 599.9
    assert epk() == second
    clock.now += 0.1  # ten minutes after it began
    third = epk()
    assert third not in (first, second)
    rotated, rotated_opener = pair()  # the trust bundle brings a new fleet key
    text = epochs(ID, rotated, kiosk="k1", scan_id="s")
    assert header_of(text)[0] == rotated.kid and header_of(text)[1] != third
    assert rotated_opener.open(text, kiosk="k1", scan_id="s") == ID
    # an idle kiosk drops the epoch on time, without another seal
    assert epochs.epoch is not None
    clock.now += 599
    epochs.expire()
    assert epochs.epoch is not None
    clock.now += 1
    epochs.expire()
    assert epochs.epoch is None
    with pytest.raises(ValueError):
        sealing.EpochSealer(seconds=0)
    with pytest.raises(ValueError):
        sealing.EpochSealer(seals=0)


def test_an_epoch_keeps_no_private_key():
    key, _ = pair()
    epoch = sealing.Epoch(key, 0.0)
    held = [getattr(epoch, name) for name in sealing.Epoch.__slots__]
    assert not hasattr(epoch, "__dict__")
    assert not any(isinstance(v, X25519PrivateKey) for v in held)
    assert epoch.public == key.public and epoch.prefix[1:1 + sealing.KID_BYTES] == key.kid


def test_the_cache_is_a_bounded_lru():
    private = X25519PrivateKey.generate()
    key = SealingKey.from_raw(private.public_key().public_bytes_raw())
    opener = Opener([private], cache=3)
    seal = {name: sealing.EpochSealer() for name in "ABCDE"}

    def open_(name):
        text = seal[name](ID, key, kiosk=name, scan_id="s")
        before = opener.derived
        assert opener.open(text, kiosk=name, scan_id="s") == ID
        return opener.derived - before  # 1: a miss (an exchange), 0: a hit

    assert [open_(n) for n in "ABC"] == [1, 1, 1]
    assert open_("A") == 0  # A is now the most recently used
    assert open_("D") == 1 and opener.cached() == 3  # ... so B went, not A
    assert [open_(n) for n in "ACD"] == [0, 0, 0]
    assert open_("B") == 1 and open_("E") == 1 and opener.cached() == 3
    # made-up epoch keys cost an exchange each but push nothing out
    for i in range(10):
        raw = bytearray(unb64(seal["E"](ID, key, kiosk="E", scan_id="s")))
        raw[1 + sealing.KID_BYTES:1 + sealing.KID_BYTES + 32] = \
            X25519PrivateKey.generate().public_key().public_bytes_raw()
        with pytest.raises(SealError):
            opener.open(b64(bytes(raw)), kiosk="E", scan_id="s")
    assert [open_(n) for n in "BDE"] == [0, 0, 0] and opener.cached() == 3
    with pytest.raises(ValueError):
        Opener(cache=0)


def test_a_key_no_longer_held_opens_nothing_even_cached():
    """A reload (fleet/sealing_keys.Unsealer) takes the cache over, for the kids still
    held: a purged key's epochs do not open from the cache."""
    old_private, new_private = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    old_key = SealingKey.from_raw(old_private.public_key().public_bytes_raw())
    new_key = SealingKey.from_raw(new_private.public_key().public_bytes_raw())
    before = Opener([old_private, new_private])
    old_text = sealing.EpochSealer()(ID, old_key, kiosk="k1", scan_id="s")
    new_text = sealing.EpochSealer()(ID, new_key, kiosk="k1", scan_id="s")
    assert before.open(old_text, kiosk="k1", scan_id="s") == ID
    assert before.open(new_text, kiosk="k1", scan_id="s") == ID
    after = Opener([new_private])  # the old key purged
    after.adopt(before)
    assert after.cached() == 1
    assert after.open(new_text, kiosk="k1", scan_id="s") == ID and after.derived == 0
    with pytest.raises(SealError) as err:
        after.open(old_text, kiosk="k1", scan_id="s")
    assert err.value.reason == "unknown_key"
    small = Opener([old_private, new_private], cache=1)
    small.adopt(before)
    assert small.cached() == 1


def test_the_unsealer_keeps_its_cache_across_a_reload_but_not_a_purged_key(fleet):
    now = [0.0]
    unsealer = sealing_keys.Unsealer(fleet, clock=lambda: now[0])
    first = sealing_keys.load(fleet).current
    epochs = sealing.EpochSealer()
    doc = {"sealed": epochs(ID, first, kiosk="k1", scan_id="a"), "id": "a"}
    expected = sealing.pseudonym(sealing_keys.pseudonym_secret(fleet), ID)
    assert unsealer.holder(doc, "k1") == expected
    now[0] += sealing_keys.RELOAD_EVERY  # re-reads the keys
    assert unsealer.holder(doc, "k1") == expected
    assert unsealer.opener.derived == 0 and unsealer.opener.cached() == 1
    sealing_keys.rotate(fleet, now=1.0)
    sealing_keys.purge(fleet, now=10 ** 12)
    now[0] += sealing_keys.RELOAD_EVERY
    with pytest.raises(SealError) as err:
        unsealer.holder(doc, "k1")
    assert err.value.reason == "unknown_key" and unsealer.opener.cached() == 0


def test_the_pseudonym_is_the_one_kiosks_made_before_sealing():
    """The fleet keeps the old derivation and key: stored pseudonyms keep linking. This
    is the old device/privacy.py Pseudonymiser, written out."""
    import hashlib
    import hmac
    secret = bytes.fromhex("00112233445566778899aabbccddeeff")
    old = hmac.new(secret, "TRAN\x1fTHI<HONG\x1f1987-06-05".encode(),
                   hashlib.sha256).digest()[:16].hex()
    assert sealing.pseudonym(secret, ID) == old
    assert sealing.pseudonym(b"\x11" * 16, ID) != old
    for key in (secret, b"\x11" * 16, bytes(range(64)), bytes(range(100))):
        for identity in (ID, b"", b"x" * 500):
            assert sealing.Pseudonymiser(key)(identity) == hmac.new(
                key, identity, hashlib.sha256).digest()[:16].hex()


def test_strip_removes_the_sealed_value_from_raw_bytes():
    key, _ = pair()
    text = sealing.seal(ID, key, kiosk="k1", scan_id="scan-0001")
    raw = messages.encode(messages.scan(scan_id="scan-0001", kiosk="k1", ts=1.7e9,
                                        decision="green", reason="ok", sub_reason=None,
                                        cert_type="v", cert_hash="ab" * 16, policy="p",
                                        sealed=text, seq=3))
    stripped = sealing.strip(raw)
    assert text.encode() not in stripped and text[:40].encode() not in stripped
    assert json.loads(stripped)["sealed"] == "-" and json.loads(stripped)["seq"] == 3
    cut = raw[:raw.index(b'"sealed"') + 60]  # a quarantine keeps only the first bytes
    assert text[:40].encode() not in sealing.strip(cut)
    spaced = b'{"sealed" : "' + text.encode() + b'","x":1}'
    assert sealing.strip(spaced) == b'{"sealed" : "-","x":1}'
    assert sealing.strip(b'{"id":"x"}') == b'{"id":"x"}'


# --- the scan message --------------------------------------------------------------------
def _scan(**changes):
    doc = messages.scan(scan_id="scan-0001", kiosk="k1", ts=1.7e9, decision="green",
                        reason="ok", sub_reason=None, cert_type="v", cert_hash="ab" * 16,
                        policy="p", seq=1)
    doc.update(changes)
    return messages.encode(doc)


def test_a_scan_carries_a_sealed_holder_and_its_form_is_checked():
    key, _ = pair()
    text = sealing.seal(ID, key, kiosk="k1", scan_id="scan-0001")
    doc = messages.parse_scan(_scan(sealed=text), "k1")
    assert doc["sealed"] == text and doc["holder"] is None
    assert "sealed" not in messages.parse_scan(_scan(), "k1")
    assert len(_scan(sealed=text)) < 1000  # well under MAX_MESSAGE
    for bad, why in (("a+b/", "not base64url"), (5, "wrong type"), ("", "not base64url"),
                     ("A" * (sealing.MAX_TEXT + 1), "too long"),
                     ("A\u00e9", "not base64url")):
        with pytest.raises(messages.MessageError, match=why):
            messages.parse_scan(_scan(sealed=bad), "k1")
    with pytest.raises(messages.MessageError, match="comes with a 'holder'"):
        messages.parse_scan(_scan(sealed=text, holder="cd" * 16), "k1")


# --- the fleet's keys ----------------------------------------------------------------------
@pytest.fixture
def fleet(tmp_path):
    return load(None, env={}, fleet={"data_dir": str(tmp_path / "fleet"),
                                     "deployments": ["test"]},
                privacy={"grace_days": 10.0})


def test_first_use_makes_one_key_pair_and_a_secret_private_to_the_fleet(fleet):
    ring = sealing_keys.load(fleet, now=1000.0)
    again = sealing_keys.load(fleet)
    assert ring.current == again.current and ring.opener.kids() == {ring.current.kid}
    directory = sealing_keys.sealing_dir(fleet)
    assert directory == fleet.data_dir / "pki" / "sealing"
    key_file = directory / f"{ring.current.kid.hex()}.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    secret = sealing_keys.pseudonym_secret(fleet)
    assert len(secret) == 32 and sealing_keys.pseudonym_secret(fleet) == secret
    path = sealing_keys.secret_path(fleet)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = sealing.seal(ID, ring.current, kiosk="k1", scan_id="scan-0001")
    assert again.opener.open(text, kiosk="k1", scan_id="scan-0001") == ID


def test_the_existing_pseudonym_key_stays_the_secret(fleet):
    """The upgrade: the PKI's pseudonym.key (what kiosks held) is the fleet's secret."""
    path = sealing_keys.secret_path(fleet)
    path.parent.mkdir(parents=True)
    path.write_text("00112233445566778899aabbccddeeff\n")
    assert sealing_keys.pseudonym_secret(fleet) == bytes.fromhex(
        "00112233445566778899aabbccddeeff")
    path.write_text("not hex\n")
    with pytest.raises(sealing_keys.KeyError_, match="pseudonym.key: the pseudonym secret "
                                                     "must be 32-128 hex digits"):
        sealing_keys.pseudonym_secret(fleet)


def test_a_pki_that_lost_its_secret_is_not_given_a_new_one(fleet):
    pki = fleet.resolve(fleet.pki.dir)
    pki.mkdir(parents=True)
    (pki / "ca.pem").write_text("a CA")  # greengate-provision init made this PKI
    with pytest.raises(sealing_keys.KeyError_, match="pseudonym.key: the pseudonym secret is "
                                                     "missing from the fleet PKI"):
        sealing_keys.pseudonym_secret(fleet)
    assert not sealing_keys.secret_path(fleet).exists()


def test_rotation_keeps_old_keys_opening_for_the_grace_period(fleet):
    first = sealing_keys.load(fleet, now=1000.0).current
    old_envelope = sealing.seal(ID, first, kiosk="k1", scan_id="scan-0001")
    new_kid, old_kid = sealing_keys.rotate(fleet, now=2000.0)
    assert old_kid == first.kid.hex() and new_kid != old_kid
    ring = sealing_keys.load(fleet)
    assert ring.current.kid.hex() == new_kid
    assert ring.opener.open(old_envelope, kiosk="k1", scan_id="scan-0001") == ID
    lines = ring.describe(10 * 86400, 2000.0 + 86400)
    assert any(old_kid in line and "9.0 more days" in line for line in lines)
    assert sealing_keys.purge(fleet, now=2000.0 + 10 * 86400 - 1) == []
    assert sealing_keys.purge(fleet, now=2000.0 + 10 * 86400) == [old_kid]
    ring = sealing_keys.load(fleet)
    assert ring.opener.kids() == {ring.current.kid}
    assert not (sealing_keys.sealing_dir(fleet) / f"{old_kid}.key").exists()
    with pytest.raises(SealError) as err:
        ring.opener.open(old_envelope, kiosk="k1", scan_id="scan-0001")
    assert err.value.reason == "unknown_key"


def test_trust_bundles_are_issued_from_the_public_key_alone(fleet):
    ring = sealing_keys.load(fleet)
    directory = sealing_keys.sealing_dir(fleet)
    (directory / f"{ring.current.kid.hex()}.key").unlink()  # not read for the public key
    assert sealing_keys.current_public(fleet) == ring.current
    index = json.loads((directory / "keys.json").read_text())
    index["keys"][ring.current.kid.hex()]["public"] = "00" * 32
    (directory / "keys.json").write_text(json.dumps(index))
    with pytest.raises(sealing_keys.KeyError_, match="is not its own"):
        sealing_keys.current_public(fleet)


def test_damaged_key_files_are_named(fleet):
    ring = sealing_keys.load(fleet)
    directory = sealing_keys.sealing_dir(fleet)
    key_file = directory / f"{ring.current.kid.hex()}.key"
    key_file.write_text("garbage")
    with pytest.raises(sealing_keys.KeyError_, match=f"{key_file}: not an unencrypted PEM"):
        sealing_keys.load(fleet)
    (directory / "keys.json").write_text("{")
    with pytest.raises(sealing_keys.KeyError_, match="keys.json: cannot read"):
        sealing_keys.load(fleet)


def test_the_unsealer_reads_a_rotation_made_by_another_process(fleet):
    now = [0.0]
    unsealer = sealing_keys.Unsealer(fleet, clock=lambda: now[0])
    sealing_keys.rotate(fleet)  # e.g. `greengate-fleet sealing rotate`
    current = sealing_keys.load(fleet).current
    text = sealing.seal(ID, current, kiosk="k1", scan_id="scan-0001")
    doc = {"sealed": text, "id": "scan-0001"}
    with pytest.raises(SealError):  # re-read at most every RELOAD_UNKNOWN seconds
        unsealer.holder(doc, "k1")
    now[0] += sealing_keys.RELOAD_UNKNOWN
    assert unsealer.holder(doc, "k1") == sealing.pseudonym(
        sealing_keys.pseudonym_secret(fleet), ID)


def test_the_fleet_config_section(tmp_path):
    path = tmp_path / "fleet.toml"
    path.write_text("[privacy]\ngrace_days = -1\n")
    with pytest.raises(ConfigError, match=r"line 2: \[privacy\] grace_days must not be"):
        load(str(path), env={})
    config = load(None, env={}, fleet={"data_dir": str(tmp_path)},
                  privacy={"sealing_dir": "/srv/seal", "pseudonym_key": "keys/p.key"})
    assert str(sealing_keys.sealing_dir(config)) == "/srv/seal"
    assert sealing_keys.secret_path(config) == tmp_path / "keys" / "p.key"


# --- the trust bundle carries the public key -------------------------------------------------
def test_the_trust_bundle_carries_the_current_key_and_a_rotation_reissues_it(
        fleet_config, fleet_db, tmp_path):
    signer = bundles.ensure_signing_key(fleet_config)
    with fleet_db() as s:
        bundles.ensure_issued(s, fleet_config, "test", key=signer)
        raw = bundles.latest(s, "test", "trust").raw
    current = sealing_keys.load(fleet_config).current
    store = BundleStore(tmp_path / "kiosk", signer.public_key(), "test", "hcmc-2021",
                        timedelta(hours=72))
    assert store.offer(raw)[0]
    assert store.sealing_key == current
    # nothing to re-issue until the key changes
    with fleet_db() as s:
        assert "trust" not in bundles.refresh(s, fleet_config, "test", key=signer)
    sealing_keys.rotate(fleet_config)
    with fleet_db() as s:
        assert bundles.refresh(s, fleet_config, "test", key=signer) == ["trust"]
        raw = bundles.latest(s, "test", "trust").raw
    assert store.offer(raw)[0]
    assert store.sealing_key == sealing_keys.load(fleet_config).current != current
    # kept across a restart (read back from the stored bundle)
    again = BundleStore(tmp_path / "kiosk", signer.public_key(), "test", "hcmc-2021",
                        timedelta(hours=72))
    assert again.sealing_key == store.sealing_key


def test_a_trust_bundle_with_a_key_the_kiosk_cannot_use_is_refused(tmp_path):
    from cryptography.hazmat.primitives.asymmetric import ec
    signer = ec.generate_private_key(ec.SECP256R1())
    key, _ = pair()
    other, _ = pair()
    store = BundleStore(tmp_path, signer.public_key(), "test", "p", timedelta(hours=72))
    for version, entry, why in ((1, {"kid": other.kid, "key": key.public}, "kid is not"),
                                (2, {"kid": key.kid, "key": key.public[:31]}, "32 bytes"),
                                (3, "x", "needs 'kid'")):
        raw = bundle.seal("trust", version, 1_700_000_000,
                          {"certificates": [], "sealing": entry}, signer, "test")
        accepted, reason = store.offer(raw)
        assert not accepted and why in reason
    old = bundle.seal("trust", 4, 1_700_000_000, {"certificates": []}, signer, "test")
    assert store.offer(old)[0] and store.sealing_key is None  # a fleet older than sealing


def test_greengate_fleet_sealing_commands(fleet, capsys, monkeypatch):
    from fleet import cli
    path = fleet.data_dir / "fleet.toml"
    path.parent.mkdir(parents=True)
    path.write_text(f'[fleet]\ndata_dir = "{fleet.data_dir}"\ndeployments = ["test"]\n'
                    f'database_url = "sqlite:///{fleet.data_dir / "f.sqlite"}"\n'
                    '[privacy]\ngrace_days = 0\n[mqtt]\nhost = ""\n')
    from fleet import migrate
    from fleet.db import make_engine
    engine = make_engine(f"sqlite:///{fleet.data_dir / 'f.sqlite'}")
    migrate.upgrade(engine)
    engine.dispose()
    bundles.ensure_signing_key(load(str(path), env={}))
    assert cli.main(["--config", str(path), "sealing", "show"]) == 0
    assert "no sealing key yet" in capsys.readouterr().out
    assert cli.main(["--config", str(path), "sealing", "rotate", "--no-publish"]) == 0
    out = capsys.readouterr().out
    assert "current sealing key" in out and "test: trust v1 carries the new key" in out
    assert cli.main(["--config", str(path), "sealing", "rotate", "--no-publish"]) == 0
    out = capsys.readouterr().out
    assert "purged" in out and "trust v2" in out  # grace 0: the old key goes at once
    assert cli.main(["--config", str(path), "sealing", "show"]) == 0
    assert capsys.readouterr().out.count("current") == 1
    assert len(list(sealing_keys.sealing_dir(fleet).glob("*.key"))) == 1
    assert os.path.exists(sealing_keys.sealing_dir(fleet) / "keys.json")
    from sqlalchemy import select

    from fleet.db import make_sessions
    from fleet.models import AuditLog
    engine = make_engine(f"sqlite:///{fleet.data_dir / 'f.sqlite'}")
    with make_sessions(engine)() as s:
        logged = s.scalars(select(AuditLog).where(AuditLog.action == "sealing.rotate")).all()
    engine.dispose()
    assert [(a.actor, a.detail["retired"] is None) for a in logged] == [("cli", True),
                                                                        ("cli", False)]
