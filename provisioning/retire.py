"""Retiring a kiosk so that it stops speaking for anyone (docs/provisioning.md#retiring):

1. the fleet marks it retired (fleet/kiosks.py: presence event, outage closed, its
   certificates marked revoked); the ingest refuses its messages from then on;
2. the CRL is re-signed from every revoked certificate and the broker told to re-read
   it (`[pki] broker_reload`; Mosquitto re-reads its crlfile on SIGHUP), so the kiosk
   cannot connect again;
3. its live session, if any, is ended: the fleet's identity connects with the kiosk's
   client id, which makes Mosquitto close the kiosk's connection (session takeover),
   and leaves with session expiry 0, so nothing of the kiosk's session remains.

Step 3 comes after step 2: a kiosk reconnects at once, and must then meet the new CRL.
"""

from __future__ import annotations

import datetime as dt
import shlex
import ssl
import subprocess
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from sqlalchemy import select

from fleet import kiosks
from fleet.models import RETIRED, Kiosk, KioskCertificate

from .pki import PKI


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


def write_crl(session, pki: PKI, config) -> int:
    """Re-sign the CRL from every revoked kiosk certificate; its copy for the broker too."""
    revoked = [(int(c.serial, 16), dt.datetime.fromtimestamp(c.revoked_at, dt.timezone.utc))
               for c in session.scalars(select(KioskCertificate).where(
                   KioskCertificate.revoked_at.is_not(None)))]
    extra = [config.resolve(config.pki.broker_crl)] if config.pki.broker_crl else []
    pki.write_crl(revoked, extra)
    return len(revoked)


def reload_broker(command: str) -> str | None:
    """Run `[pki] broker_reload`; None when it worked, else what went wrong."""
    if not command.strip():
        return None
    try:
        done = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{command!r} failed: {exc}"
    if done.returncode != 0:
        return f"{command!r} exited with {done.returncode}: {done.stderr.strip()[:300]}"
    return None


def disconnect(config, kiosk_id: str, timeout: float = 10.0) -> str | None:
    """End the kiosk's live session (see the module text); None when done, else why not."""
    m = config.mqtt
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=kiosk_id, protocol=mqtt.MQTTv5)
    if m.tls:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(config.resolve(m.ca)) if m.ca else None)
        if m.cert:
            context.load_cert_chain(str(config.resolve(m.cert)),
                                    str(config.resolve(m.key)) if m.key else None)
        client.tls_set_context(context)
    connected = threading.Event()
    result: dict = {}

    def on_connect(_c, _u, _flags, reason, _props):
        result["reason"] = reason
        connected.set()

    client.on_connect = on_connect
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 0
    try:
        client.connect(m.host, m.port, keepalive=10, clean_start=True, properties=props)
    except (OSError, ssl.SSLError) as exc:
        return f"cannot reach the broker {m.host}:{m.port} ({exc})"
    client.loop_start()
    try:
        if not connected.wait(timeout):
            return f"the broker {m.host}:{m.port} did not answer within {timeout:g} s"
        if result["reason"].is_failure:
            return f"the broker refused the fleet's identity: {result['reason']}"
    finally:
        client.disconnect()
        client.loop_stop()
    return None
