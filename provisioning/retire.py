"""Retiring a kiosk so that it stops speaking for anyone (docs/provisioning.md#retiring):

1. the fleet marks it retired (fleet/kiosks.py: presence event, outage closed, its
   certificates marked revoked); the ingest refuses its messages from then on;
2. the CRL is re-signed from every revoked certificate and the broker told to re-read
   it (`[pki] broker_reload`; Mosquitto re-reads its crlfile on SIGHUP), so the kiosk
   cannot connect again. Without that reload the revoked certificate still connects:
   `retire` says so and exits 1;
3. its live session, if any, is ended. The broker makes every client id the
   certificate's CN, so only a certificate naming the kiosk can take its session
   over: this step, which holds the CA, mints one valid for a few minutes (its key
   lives in this process's memory only), connects with it, which makes Mosquitto
   close the kiosk's connection, and leaves with session expiry 0, so nothing of the
   kiosk's session remains.

Step 3 comes after step 2, and a moment after it (Mosquitto handles SIGHUP in its
main loop): a kiosk reconnects at once, and must then meet the new CRL.

In tiers (docs/scaling.md#retiring-a-kiosk-in-tiers) each district broker has a CRL of
its own. Step 2 also puts the CRL, retained, on gg/v1/crl of the core; each district's
`crl-follow` applies it and says so on gg/v1/bridge/NAME/crl, which the ingest writes
to the bridge table. Retire waits for every registered bridge to report this CRL (or a
newer one), then ends the kiosk's session on each of those district brokers too, the
same way. A district that does not report in time is named, its sessions are left
alone, and retire exits 1: run it again once the district is back.
"""

from __future__ import annotations

import datetime as dt
import os
import shlex
import ssl
import subprocess
import threading
import time
from contextlib import contextmanager

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives import serialization
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from sqlalchemy import select

from fleet import bridges, kiosks, mqtt_identity
from fleet.models import RETIRED, Bridge, Kiosk, KioskCertificate
from fleet.pki import PKI
from greengate import messages

# after the reload command returned, before the kick: Mosquitto handles SIGHUP between
# two turns of its loop, and the kicked kiosk reconnects at once
SETTLE = 1.0


class RetireError(Exception):
    pass


def mark_retired(session, kiosk_id: str, reason: str, actor: str) -> list[str] | None:
    """The serials newly revoked; None when the kiosk was retired already (then only the
    broker's side is brought up to date)."""
    kiosk = session.get(Kiosk, kiosk_id)
    if kiosk is None:
        raise RetireError(f"no kiosk {kiosk_id!r} in the fleet")
    if kiosk.state == RETIRED:
        return None
    try:
        return kiosks.retire(session, kiosk, reason=reason, actor=actor, at=time.time())
    except kiosks.KioskError as exc:
        raise RetireError(exc.message) from None


def write_crl(session, pki: PKI, config) -> tuple[int, bytes]:
    """Re-sign the CRL from every revoked kiosk certificate; its copy for the broker too.
    (how many revoked, the CRL's PEM)."""
    revoked = [(int(c.serial, 16), dt.datetime.fromtimestamp(c.revoked_at, dt.timezone.utc))
               for c in session.scalars(select(KioskCertificate).where(
                   KioskCertificate.revoked_at.is_not(None)))]
    extra = [config.resolve(config.pki.broker_crl)] if config.pki.broker_crl else []
    return len(revoked), pki.write_crl(revoked, extra)


def publish_crl(config, pem: bytes, timeout: float = 10.0) -> str | None:
    """The CRL, retained, on the core's gg/v1/crl for the district brokers' crl-follow;
    None when the broker has it (PUBACK), else why not."""
    m = config.mqtt
    if not m.host:
        return "[mqtt] host is not set"
    try:
        identity = mqtt_identity.claim(config, "web", f"{m.client_id}-crl-{os.getpid()}")
    except mqtt_identity.IdentityError as exc:
        return str(exc)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=identity.client_id,
                         protocol=mqtt.MQTTv311, clean_session=True)
    try:
        if m.tls:
            client.tls_set_context(mqtt_identity.tls_context(config, identity))
        with _connected(client, identity.client_id, m.host, m.port, timeout) as problem:
            if problem:
                return problem
            info = client.publish(messages.crl_topic(), pem, qos=1, retain=True)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError) as exc:  # not queued: paho says why
                return f"the CRL was not sent: {exc}"
            if not info.is_published():
                return f"the broker did not take the CRL within {timeout:g} s"
            return None
    except mqtt_identity.IdentityError as exc:
        return str(exc)
    finally:
        identity.release()


@contextmanager
def _connected(client: mqtt.Client, name: str, host: str, port: int, timeout: float,
               **connect):
    """Gives None once the broker has accepted `client`, else why not; it leaves after."""
    connected = threading.Event()
    result: dict = {}

    def on_connect(_c, _u, _flags, reason, _props):
        result["reason"] = reason
        connected.set()

    client.on_connect = on_connect
    try:
        client.connect(host, port, keepalive=10, **connect)
    except (OSError, ssl.SSLError) as exc:
        yield f"cannot reach the broker {host}:{port} ({exc})"
        return
    client.loop_start()
    try:
        if not connected.wait(timeout):
            yield f"the broker {host}:{port} did not answer within {timeout:g} s"
        elif result["reason"].is_failure:
            yield f"the broker {host}:{port} refused {name}: {result['reason']}"
        else:
            yield None
    finally:
        client.disconnect()
        client.loop_stop()


def districts(session) -> list[Bridge]:
    """The registered bridges: the district brokers a retirement must reach."""
    return [b for b in bridges.listed(session) if b.address]


def wait_districts(sessions, number: int, timeout: float,
                   poll: float = 0.5) -> tuple[list[Bridge], list[Bridge]]:
    """(applied, behind): the registered bridges whose district reported CRL `number` or
    a newer one within `timeout`, and the others as last heard."""
    deadline = time.monotonic() + timeout
    while True:
        with sessions() as session:
            known = districts(session)
            session.expunge_all()
        applied = [b for b in known if (b.crl_number or 0) >= number]
        behind = [b for b in known if (b.crl_number or 0) < number]
        if not behind or time.monotonic() >= deadline:
            return applied, behind
        time.sleep(poll)


def behind_text(bridge: Bridge) -> str:
    """Why a district has not applied the CRL, as far as the fleet knows."""
    said = []
    if bridge.connected is False:
        said.append("its bridge is down")
    if bridge.crl_number is None:
        said.append("it never reported a CRL (is greengate-crl-follow running there?)")
    else:
        said.append(f"it reported CRL {bridge.crl_number}")
    if bridge.crl_error:
        said.append(f"its last problem: {bridge.crl_error}")
    return "; ".join(said)


def reload_broker(command: str) -> str | None:
    """Run `[pki] broker_reload`; None when it worked, else what went wrong (an empty
    command is a problem too: the broker goes on accepting what was just revoked)."""
    if not command.strip():
        return "[pki] broker_reload is empty, so nothing told it"
    try:
        done = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{command!r} failed: {exc}"
    if done.returncode != 0:
        return f"{command!r} exited with {done.returncode}: {done.stderr.strip()[:300]}"
    return None


def _memory_file(data: bytes) -> tuple[int, str]:
    """(fd, path) of an anonymous in-memory file holding `data`: OpenSSL loads
    certificates from paths only, and this key must never reach a disk."""
    fd = os.memfd_create("greengate-retire", os.MFD_CLOEXEC)
    os.write(fd, data)
    return fd, f"/proc/self/fd/{fd}"


def _kiosk_context(config, pki: PKI, kiosk_id: str) -> ssl.SSLContext:
    key, cert = pki.ephemeral(kiosk_id)
    pem = cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    m = config.mqtt
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(config.resolve(m.ca)) if m.ca else None)
    fd, path = _memory_file(pem)
    try:
        context.load_cert_chain(path)
    finally:
        os.close(fd)
    return context


def disconnect(config, pki: PKI, kiosk_id: str, timeout: float = 10.0,
               settle: float = SETTLE, broker: tuple[str, int] | None = None) -> str | None:
    """End the kiosk's live session (see the module text) on the core broker, or on
    `broker` (host, port: a district's); None when done, else why not."""
    m = config.mqtt
    host, port = broker or (m.host, m.port)
    if not m.tls:
        return "[mqtt] tls is off: the broker does not know clients by certificate"
    time.sleep(settle)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=kiosk_id, protocol=mqtt.MQTTv5)
    try:
        client.tls_set_context(_kiosk_context(config, pki, kiosk_id))
    except (OSError, ssl.SSLError, ValueError) as exc:
        return f"no certificate to end it with: {exc}"
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 0
    with _connected(client, f"the retire step's certificate for {kiosk_id}", host, port,
                    timeout, clean_start=True, properties=props) as problem:
        return problem
