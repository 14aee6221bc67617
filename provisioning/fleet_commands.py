"""greengate-provision init | enrol | retire | mosquitto-config (docs/provisioning.md).

enrol and retire work on the fleet itself: they read the fleet's configuration
(`--fleet-config`, default $GREENGATE_FLEET_CONFIG) for its database, PKI directory
and broker, so they run on the fleet host as an admin.
Exit status: 0 done; 1 done in the fleet but a step after it failed (said what to do);
2 nothing done (bad usage, refused).
"""

from __future__ import annotations

import getpass
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from . import enrol as enrolling
from . import mosquitto_config, retire as retiring
from .pki import PKI, PKIError, init as pki_init


def _say(text: str) -> None:
    print(text)


def _error(text: str) -> int:
    print(f"greengate-provision: {text}", file=sys.stderr)
    return 2


def _fleet_config(args):
    from fleet.config import ConfigError, load
    try:
        return load(args.fleet_config)
    except ConfigError as exc:
        raise PKIError(str(exc)) from None


def _actor() -> str:
    try:
        return f"provision:{getpass.getuser()}"
    except (KeyError, OSError):
        return "provision"


def add_parsers(sub) -> None:
    def fleet_option(p):
        p.add_argument("--fleet-config", metavar="FILE",
                       default=os.environ.get("GREENGATE_FLEET_CONFIG"),
                       help="the fleet's TOML file (default: $GREENGATE_FLEET_CONFIG)")

    p = sub.add_parser("init", help="create the fleet PKI: CA, broker/web server certificate, "
                                    "fleet identity, bundle-signing and pseudonym keys, CRL")
    p.add_argument("--dir", type=Path, help="where (default: the fleet config's [pki] dir)")
    p.add_argument("--host", action="append", default=[], metavar="NAME",
                   help="DNS name or IP address kiosks use for the broker and the fleet web "
                        "server (repeatable; the first is the certificate's CN)")
    p.add_argument("--force", action="store_true",
                   help="replace existing keys (every enrolled kiosk must be enrolled again)")
    fleet_option(p)
    p.set_defaults(handler=_init)

    p = sub.add_parser("enrol", help="register a kiosk with the fleet and make its bundle "
                                     "(tar or SD card) or a one-time enrolment token")
    p.add_argument("kiosk_id", metavar="KIOSK_ID")
    p.add_argument("--location", metavar="CODE", help="where it stands (a location code)")
    p.add_argument("--location-name", metavar="NAME",
                   help="creates the location with this name if it does not exist")
    p.add_argument("--district", metavar="CODE",
                   help="the location's district (needed to create a location)")
    p.add_argument("--district-name", metavar="NAME",
                   help="creates the district with this name if it does not exist")
    p.add_argument("--policy", default="hcmc-2021", help="its entry policy (default hcmc-2021)")
    p.add_argument("--deployment", help="its deployment (needed if the fleet serves several)")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--out", type=Path, metavar="FILE.tar",
                     help="write the bundle as a tar file (.tar.gz: compressed)")
    how.add_argument("--sd", type=Path, metavar="BOOT",
                     help="write the bundle onto a mounted SD card's boot partition")
    how.add_argument("--token", action="store_true",
                     help="make a one-time token instead: the Pi runs `greengate-kiosk enrol`")
    p.add_argument("--force", action="store_true", help="--sd: replace a bundle on the card")
    fleet_option(p)
    p.set_defaults(handler=_enrol)

    p = sub.add_parser("retire", help="retire a kiosk: revoke its certificates (CRL), mark it "
                                      "retired, end its live session")
    p.add_argument("kiosk_id", metavar="KIOSK_ID")
    p.add_argument("--reason", default="", help="why (stolen, broken, moved away, ...)")
    fleet_option(p)
    p.set_defaults(handler=_retire)

    p = sub.add_parser("crl", help="re-sign the CRL from the revoked certificates and tell "
                                   "the broker (it expires after a year: run it before)")
    fleet_option(p)
    p.set_defaults(handler=_crl)

    p = sub.add_parser("mosquitto-config", help="write the broker's configuration: TLS with "
                                                "client certificates, CRL, ACL, persistence")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="e.g. /etc/mosquitto/conf.d (Debian's mosquitto.conf includes it)")
    p.add_argument("--pki", type=Path, metavar="DIR",
                   help="the fleet PKI (default: the fleet config's [pki] dir)")
    p.add_argument("--port", type=int, default=8883)
    p.add_argument("--bind", metavar="ADDR", help="listen on this address only")
    p.add_argument("--persistence-dir", default="/var/lib/mosquitto")
    fleet_option(p)
    p.set_defaults(handler=_mosquitto)


def _pki_dir(args) -> Path:
    given = getattr(args, "dir", None) or getattr(args, "pki", None)
    if given:
        return given
    config = _fleet_config(args)
    return config.resolve(config.pki.dir)


def _init(args) -> int:
    try:
        directory = _pki_dir(args)
        pki = pki_init(directory, args.host, force=args.force)
    except PKIError as exc:
        return _error(str(exc))
    _say(f"fleet PKI created in {pki.dir} (CA fingerprint sha256:{pki.ca_fingerprint()})")
    _say("the fleet's configuration uses it with (paths relative to data_dir, or absolute):")
    _say(f'  [pki]     dir = "{pki.dir}"')
    _say(f'  [bundles] signing_key = "{pki.path("bundle-signing.key")}"')
    _say(f'  [mqtt]    ca = "{pki.path("ca.pem")}"  cert = "{pki.path("fleet.pem")}"  '
         f'key = "{pki.path("fleet.key")}"')
    _say("next: greengate-provision mosquitto-config --out /etc/mosquitto/conf.d")
    return 0


@contextmanager
def _fleet_session(config):
    """A session on the fleet's database; the engine goes with it."""
    from fleet.db import make_engine, make_sessions

    engine = make_engine(config.database_url)
    try:
        with make_sessions(engine)() as session:
            yield session
    finally:
        engine.dispose()


def _loaded(args):
    """(config, PKI) of the fleet named by --fleet-config; PKIError says what is wrong."""
    config = _fleet_config(args)
    return config, PKI(config.resolve(config.pki.dir))


def _new_crl(session, pki: PKI, config) -> list[str]:
    """Re-sign the CRL and tell the broker; the problems, if any, as sentences."""
    try:
        count = retiring.write_crl(session, pki, config)
    except (PKIError, OSError) as exc:
        return [f"the CRL could not be written ({exc}); run this again once the PKI is "
                "reachable"]
    _say(f"CRL re-signed: {count} revoked certificate(s) in {pki.path('crl.pem')}, valid for "
         "a year")
    trouble = retiring.reload_broker(config.pki.broker_reload)
    return [f"the broker was not told to re-read the CRL: {trouble}"] if trouble else []


def _enrol(args) -> int:
    try:
        config, pki = _loaded(args)
    except PKIError as exc:
        return _error(str(exc))
    if not pki.path("ca.key").exists():
        return _error(f"no fleet PKI in {pki.dir}: run `greengate-provision init` first")
    with _fleet_session(config) as session:
        try:
            spec = enrolling.register(
                session, config, kiosk_id=args.kiosk_id, location_code=args.location,
                location_name=args.location_name, district_code=args.district,
                district_name=args.district_name,
                deployment=args.deployment, policy=args.policy, actor=_actor())
            if args.token:
                token, expires = enrolling.create_token(
                    session, pki, spec.kiosk_id, config.enrol.token_hours, _actor())
                session.commit()
                url = config.enrol.http_url or "https://FLEET:8443"
                _say(f"kiosk {spec.kiosk_id} registered; one-time token, valid until "
                     f"{enrolling.iso(expires)}:")
                _say(token)
                _say(f"on the Pi: sudo bash /opt/greengate/scripts/install-kiosk.sh "
                     f"--fleet {url} --token {token}")
                return 0
            key, cert = pki.issue_kiosk(spec.kiosk_id, config.enrol.cert_days)
            text = enrolling.kiosk_toml(
                spec, broker_host=config.enrol.broker_host or config.mqtt.host,
                broker_port=config.enrol.broker_port, http_url=config.enrol.http_url,
                pseudonym_key=pki.pseudonym_key())
            files = enrolling.bundle_files(pki, key, cert, text)
            where = enrolling.write_tar(args.out, files) if args.out else \
                enrolling.write_folder(args.sd, files, args.force)
            enrolling.record_certificate(session, spec.kiosk_id, cert, "bundle")
            session.commit()
        except enrolling.EnrolError as exc:
            session.rollback()
            return _error(str(exc))
    _say(f"kiosk {spec.kiosk_id} registered; its bundle (private key inside: keep it safe) "
         f"is {where}")
    return 0


def _retire(args) -> int:
    try:
        config, pki = _loaded(args)
    except PKIError as exc:
        return _error(str(exc))
    with _fleet_session(config) as session:
        try:
            serials = retiring.mark_retired(session, args.kiosk_id, args.reason, _actor())
        except retiring.RetireError as exc:
            return _error(str(exc))
        session.commit()
        if serials is None:
            _say(f"kiosk {args.kiosk_id} is retired already; bringing the CRL and the "
                 "broker up to date")
        else:
            _say(f"kiosk {args.kiosk_id} retired; {len(serials)} certificate(s) revoked")
        problems = _new_crl(session, pki, config)
    trouble = retiring.disconnect(config, args.kiosk_id)
    if trouble:
        problems.append(f"its live session was not ended: {trouble}")
    else:
        _say(f"any live session of {args.kiosk_id} on the broker is ended")
    for problem in problems:
        print(f"greengate-provision: {problem}", file=sys.stderr)
    return 1 if problems else 0


def _crl(args) -> int:
    try:
        config, pki = _loaded(args)
    except PKIError as exc:
        return _error(str(exc))
    if not pki.path("ca.key").exists():
        return _error(f"no fleet PKI in {pki.dir}: run `greengate-provision init` first")
    with _fleet_session(config) as session:
        problems = _new_crl(session, pki, config)
    for problem in problems:
        print(f"greengate-provision: {problem}", file=sys.stderr)
    return 1 if problems else 0


def _mosquitto(args) -> int:
    try:
        pki = PKI(_pki_dir(args))
        made = mosquitto_config.write(pki, args.out, port=args.port, bind=args.bind,
                                      persistence_dir=args.persistence_dir)
    except (PKIError, OSError) as exc:
        return _error(str(exc))
    _say(f"wrote {made['conf']} and {made['acl']}; the broker's copies of the certificates "
         f"are in {made['files']}")
    _say(f'set in the fleet configuration: [pki] broker_crl = "{made["crl"]}"  (retire '
         "updates it)")
    return 0
