"""Token enrolment: a Pi exchanges a one-time token and a CSR for its certificate
(docs/provisioning.md#enrolling-with-a-token). No login: the token is the credential.

    GET  /api/v1/enrol/ca     the fleet CA (PEM); the Pi checks it against the pin in
                              its token before it trusts this server
    POST /api/v1/enrol        {"token": "gge1.…", "csr": PEM} -> {"kiosk", "certificate",
                              "ca", "fleet_key", "config"}

A token works once: it is marked used by a conditional UPDATE, so two racing requests
cannot both get a certificate. Failed exchanges are logged per client address; after
`[enrol] max_failures` in 10 minutes that address gets 429 until they age out. The
CSR is checked before the token is spent, so a broken request does not burn it.
"""

from __future__ import annotations

import logging

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from flask import Response, jsonify, request
from sqlalchemy import func, select, update

from greengate import enrolment

from .. import audit, kiosk_config
from ..app import current_fleet, db
from ..models import RETIRED, District, EnrolmentAttempt, EnrolmentToken, Kiosk, Location
from ..pki import PKI, PKIError  # the fleet host holds the CA for token enrolment
from . import ApiError, bp
from .common import json_body, now

log = logging.getLogger(__name__)

WINDOW = 600.0  # seconds over which failures count


def _pki():
    config = current_fleet().config
    pki = PKI(config.resolve(config.pki.dir))
    if not pki.path("ca.key").exists():
        raise ApiError(503, "this fleet has no PKI to sign certificates with: create it with "
                            "`greengate-provision init` ([pki] dir)", "not_set_up")
    return pki


@bp.get("/enrol/ca")
def enrol_ca():
    return Response(_pki().ca_pem(), mimetype="application/x-pem-file")


def _fail(session, status: int, message: str, address: str):
    session.add(EnrolmentAttempt(at=now(), address=address))
    session.commit()
    log.warning("enrolment refused for %s: %s", address, message)
    return ApiError(status, message, {403: "forbidden", 410: "gone"}.get(status))


@bp.post("/enrol")
def enrol():
    config = current_fleet().config
    session = db()
    address = request.remote_addr or "unknown"
    at = now()
    failures = session.scalar(select(func.count()).select_from(EnrolmentAttempt).where(
        EnrolmentAttempt.address == address, EnrolmentAttempt.at > at - WINDOW))
    if failures >= config.enrol.max_failures:
        raise ApiError(429, f"too many failed enrolments from {address}; wait 10 minutes "
                            "and check the token", "too_many_requests")
    body = json_body({"token", "csr"})
    token, csr_pem = body.get("token"), body.get("csr")
    if not isinstance(token, str) or not isinstance(csr_pem, str):
        raise _fail(session, 422, "send 'token' (the gge1.… text) and 'csr' (a PEM "
                                  "certificate request), both strings", address)
    try:
        secret = enrolment.parse_token(token)[0]
    except enrolment.TokenError as exc:
        raise _fail(session, 422, str(exc), address) from None
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        valid = csr.is_signature_valid
    except ValueError:
        valid = False
    if not valid:
        raise _fail(session, 422, "'csr' is not a valid PEM certificate request", address)
    row = session.scalar(select(EnrolmentToken).where(
        EnrolmentToken.token_hash == enrolment.secret_hash(secret)))
    if row is None:
        raise _fail(session, 403, "unknown enrolment token", address)
    if row.used_at is not None:
        raise _fail(session, 410, "this enrolment token was used already; make a new one "
                                  "with `greengate-provision enrol --token`", address)
    if row.expires_at <= at:
        raise _fail(session, 410, "this enrolment token has expired; make a new one with "
                                  "`greengate-provision enrol --token`", address)
    kiosk = session.get(Kiosk, row.kiosk_id)
    if kiosk is not None and kiosk.state == RETIRED:
        raise _fail(session, 410, f"kiosk {row.kiosk_id!r} is retired; a retired id is not "
                                  "used again: enrol the kiosk under a new id", address)
    if kiosk is None:
        raise _fail(session, 410, f"kiosk {row.kiosk_id!r} is gone", address)
    spent = session.execute(update(EnrolmentToken).where(
        EnrolmentToken.id == row.id, EnrolmentToken.used_at.is_(None))
        .values(used_at=at, used_from=address)).rowcount
    if spent != 1:
        session.rollback()
        raise _fail(session, 410, "this enrolment token was used already", address)
    pki = _pki()
    try:
        cert = pki.sign_csr(csr_pem.encode(), kiosk.id, config.enrol.cert_days)
    except PKIError as exc:
        session.rollback()  # the token stays unused: the request was at fault
        raise ApiError(422, str(exc)) from None
    kiosk_config.record_certificate(session, kiosk.id, cert, "token")
    audit.record(session, f"token:{row.created_by}", "kiosk.enrol", kiosk.id, via="token",
                 address=address, serial=format(cert.serial_number, "x"))
    location = session.get(Location, kiosk.location_id) if kiosk.location_id else None
    district = session.get(District, location.district_id) \
        if location is not None and location.district_id else None
    spec = kiosk_config.KioskSpec(
        kiosk.id, kiosk.deployment, kiosk.policy, location, district,
        district_broker=kiosk_config.district_broker(session, kiosk))
    text = kiosk_config.kiosk_toml(spec, **kiosk_config.endpoints(config, pki))
    session.commit()
    return jsonify(kiosk=kiosk.id,
                   certificate=cert.public_bytes(serialization.Encoding.PEM).decode(),
                   ca=pki.ca_pem().decode(), fleet_key=pki.bundle_public_pem().decode(),
                   config=text)
