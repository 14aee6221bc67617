"""greengate-provision init | enrol | retire | crl | mosquitto-config | identity
(docs/provisioning.md).

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

from fleet import kiosk_config
from fleet.pki import (DEFAULT_WEB, FLEET_IDENTITY, ROLES, PKI, PKIError, crl_number,
                       init as pki_init)
from greengate import messages

from . import enrol as enrolling
from . import mosquitto_config, retire as retiring


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


def district_wait_option(p) -> None:
    p.add_argument("--district-wait", type=float, default=60.0, metavar="SECONDS",
                   help="with bridged district brokers: how long to wait for each to apply "
                        "the new CRL (default 60)")


def add_parsers(sub) -> None:
    def fleet_option(p):
        p.add_argument("--fleet-config", metavar="FILE",
                       default=os.environ.get("GREENGATE_FLEET_CONFIG"),
                       help="the fleet's TOML file (default: $GREENGATE_FLEET_CONFIG)")

    p = sub.add_parser("init", help="create the fleet PKI: CA, broker/web server certificate, "
                                    "fleet identity, bundle-signing keys, pseudonym secret, CRL")
    p.add_argument("--dir", type=Path, help="where (default: the fleet config's [pki] dir)")
    p.add_argument("--host", action="append", default=[], metavar="NAME",
                   help="DNS name or IP address kiosks use for the broker and the fleet web "
                        "server (repeatable; the first is the certificate's CN)")
    p.add_argument("--force", action="store_true",
                   help="replace existing keys (every enrolled kiosk must be enrolled again)")
    p.add_argument("--web", type=int, default=DEFAULT_WEB, metavar="N",
                   help=f"bundle-publisher identities to make (default {DEFAULT_WEB}: one "
                        "per gunicorn worker, twice over for a reload, and the CLI's)")
    p.add_argument("--broker-port", type=int, default=8883, metavar="PORT",
                   help="the broker's TLS port as kiosks reach it (default 8883); recorded "
                        "for `enrol`")
    p.add_argument("--http-url", default="", metavar="URL",
                   help="the fleet web server's HTTPS base URL as kiosks reach it, e.g. "
                        "https://fleet.example:8443; recorded for `enrol`")
    fleet_option(p)
    p.set_defaults(handler=_init)

    p = sub.add_parser("identity", help="the fleet processes' own MQTT identities: list "
                                        "them, or add one (then the broker ACL is rewritten)")
    p.add_argument("action", choices=("add", "list"))
    p.add_argument("role", nargs="?", choices=("ingest", "web"),
                   help="add: ingest (name it: the worker's --worker NAME) or web")
    p.add_argument("name", nargs="?", metavar="NAME",
                   help="ingest: the worker name; web: a number (default: the next one)")
    p.add_argument("--dir", type=Path, help="the fleet PKI (default: the fleet config's "
                                             "[pki] dir)")
    p.add_argument("--acl", type=Path, metavar="FILE",
                   help="the broker's ACL to rewrite (default: greengate.acl beside the "
                        "directory of [pki] broker_crl, as mosquitto-config wrote them)")
    fleet_option(p)
    p.set_defaults(handler=_identity)

    p = sub.add_parser("bridge", help="a district broker bridged to the core: its "
                                      "configuration, certificates and the bridge identity; "
                                      "the core's ACL learns the bridge")
    p.add_argument("name", metavar="NAME", help="the bridge (its district or site): 1-32 "
                                                "lowercase letters, digits or '-'")
    p.add_argument("--address", required=True, metavar="HOST:PORT",
                   help="the district broker as its kiosks reach it (its certificate's name "
                        "and its port)")
    p.add_argument("--core", required=True, metavar="HOST:PORT",
                   help="the core broker as the district broker reaches it")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="where the district broker's files go (copy them to its host)")
    p.add_argument("--pki", type=Path, metavar="DIR",
                   help="the fleet PKI (default: the fleet config's [pki] dir)")
    p.add_argument("--port", type=int, help="listen on this port (default: --address's)")
    p.add_argument("--bind", metavar="ADDR", help="listen on this address only")
    p.add_argument("--persistence-dir", metavar="DIR",
                   help="greengate.conf is the main file, its store here (default: a file "
                        "for Debian's conf.d)")
    p.add_argument("--acl", type=Path, metavar="FILE",
                   help="the CORE broker's ACL to rewrite (default: greengate.acl beside the "
                        "directory of [pki] broker_crl)")
    fleet_option(p)
    p.set_defaults(handler=_bridge)

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
    p.add_argument("--broker-host", metavar="NAME",
                   help="the broker as this kiosk reaches it (default: [enrol] broker_host, "
                        "else the first --host given to init, else [mqtt] host)")
    p.add_argument("--broker-port", type=int, metavar="PORT",
                   help="its TLS port (default: as --broker-host's source says, else 8883)")
    p.add_argument("--http-url", metavar="URL",
                   help="the fleet web server as this kiosk reaches it (default: [enrol] "
                        "http_url, else init's --http-url)")
    p.add_argument("--bridge", metavar="NAME",
                   help="its district broker (a bridge registered with `bridge`): its "
                        "kiosk.toml lists that broker first and the core as its fallback")
    p.add_argument("--data-dir", metavar="DIR",
                   help="[kiosk] data_dir of its kiosk.toml: where it keeps its outbox and "
                        "bundles (default: the kiosk's own default); one per kiosk")
    fleet_option(p)
    p.set_defaults(handler=_enrol)

    p = sub.add_parser("retire", help="retire a kiosk: revoke its certificates (CRL), mark it "
                                      "retired, end its live session")
    p.add_argument("kiosk_id", metavar="KIOSK_ID")
    p.add_argument("--reason", default="", help="why (stolen, broken, moved away, ...)")
    district_wait_option(p)
    fleet_option(p)
    p.set_defaults(handler=_retire)

    p = sub.add_parser("crl", help="re-sign the CRL from the revoked certificates and tell "
                                   "the broker (it expires after a year: run it before)")
    district_wait_option(p)
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
    p.add_argument("--standalone", action="store_true",
                   help="greengate.conf is Mosquitto's main file (mosquitto -c greengate.conf):"
                        " it sets persistence_location too. Default: a file for an include_dir"
                        " such as Debian's /etc/mosquitto/conf.d, whose main mosquitto.conf "
                        "sets persistence_location, pid_file and logging")
    p.add_argument("--persistence-dir", metavar="DIR",
                   help="with --standalone (implies it): where the broker keeps its store "
                        "(default /var/lib/mosquitto)")
    fleet_option(p)
    p.set_defaults(handler=_mosquitto)


def _pki_dir(args) -> Path:
    given = getattr(args, "dir", None) or getattr(args, "pki", None)
    if given:
        return given
    config = _fleet_config(args)
    return config.resolve(config.pki.dir)


def _prefix(args) -> str:
    """The fleet's [mqtt] client_id, when a fleet config is at hand (with --dir, init
    may run before the configuration is written: then the default)."""
    if not args.fleet_config:
        return FLEET_IDENTITY
    try:
        return _fleet_config(args).mqtt.client_id
    except PKIError:
        if args.dir:
            return FLEET_IDENTITY
        raise


def _init(args) -> int:
    if args.web < 1:
        return _error("--web must be at least 1: the web server publishes the bundles")
    try:
        directory = _pki_dir(args)
        pki = pki_init(directory, args.host, force=args.force, prefix=_prefix(args),
                       web=args.web, broker_port=args.broker_port, http_url=args.http_url)
    except PKIError as exc:
        return _error(str(exc))
    _say(f"fleet PKI created in {pki.dir} (CA fingerprint sha256:{pki.ca_fingerprint()})")
    if pki.reused_signing_key:
        _say(f"kept the bundle-signing key found in {pki.path('bundle-signing.key')} "
             "(kiosks that pin it keep working)")
    _say(f"kiosks will be told: broker {args.host[0]}:{args.broker_port}, web "
         f"{args.http_url or '(none: pass --http-url, or set it at enrol)'} "
         f"(in {pki.path('fleet.json')})")
    _say("the fleet's configuration uses it with (paths relative to data_dir, or absolute):")
    _say(f'  [pki]     dir = "{pki.dir}"')
    _say(f'  [bundles] signing_key = "{pki.path("bundle-signing.key")}"')
    _say(f'  [mqtt]    ca = "{pki.path("ca.pem")}"')
    _say(f'            cert = "{pki.path("clients")}/{{identity}}.pem"')
    _say(f'            key = "{pki.path("clients")}/{{identity}}.key"')
    _say(f"MQTT identities (one per process, in {pki.path('clients')}): "
         + ", ".join(pki.identities()))
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


def _new_crl(session, pki: PKI, config, again: str) -> tuple[list[str], bytes | None]:
    """Re-sign the CRL and tell the core broker: (the problems as sentences, the CRL or
    None when it could not be written). `again`: the command that finishes the job once
    the broker can be told."""
    try:
        count, pem = retiring.write_crl(session, pki, config)
    except (PKIError, OSError) as exc:
        return [f"the CRL could not be written ({exc}); run this again once the PKI is "
                "reachable"], None
    written = [str(pki.path("crl.pem"))]
    if config.pki.broker_crl:
        written.append(str(config.resolve(config.pki.broker_crl)))
    _say(f"CRL {crl_number(pem)} re-signed: {count} revoked certificate(s) in "
         f"{' and '.join(written)}, valid for a year")
    trouble = retiring.reload_broker(config.pki.broker_reload)
    if not trouble:
        return [], pem
    return [f"WARNING: the broker has NOT re-read the CRL ({trouble}). The revocation is in "
            f"the fleet's database and in {' and '.join(written)}, but the broker still "
            "accepts every certificate revoked since its last reload. Make it re-read the "
            "CRL now (`systemctl reload mosquitto` on the broker host, or send mosquitto "
            f"SIGHUP), then run `{again}`; set [pki] broker_reload so that this happens by "
            "itself"], pem


def _districts_crl(session, config, pem: bytes, wait: float, again: str):
    """The CRL to every registered district broker (provisioning/retire.py): (the
    districts that applied it, the problems as sentences)."""
    if not retiring.districts(session):
        return [], []  # one broker: nothing more to tell
    number = crl_number(pem)
    trouble = retiring.publish_crl(config, pem)
    if trouble:
        return [], [f"WARNING: the CRL did not reach the district brokers ({trouble}): "
                    f"each still accepts the certificates revoked since; run `{again}` once "
                    "the core broker is reachable"]
    from fleet.db import make_sessions
    applied, behind = retiring.wait_districts(make_sessions(session.get_bind()), number, wait)
    if applied:
        _say(f"district broker(s) {', '.join(b.name for b in applied)} applied CRL {number}")
    return applied, [f"WARNING: district broker {b.name} ({b.address}) has not applied CRL "
                     f"{number} within {wait:g} s ({retiring.behind_text(b)}, as the "
                     "ingest's presence worker last recorded it): it still "
                     "accepts the certificates revoked since, and any live session there "
                     f"was left alone; run `{again}` once it has (`greengate-provision "
                     "crl-follow` on its host applies what its bridge brings down)"
                     for b in behind]


def _enrol(args) -> int:
    try:
        config, pki = _loaded(args)
    except PKIError as exc:
        return _error(str(exc))
    if not pki.path("ca.key").exists():
        return _error(f"no fleet PKI in {pki.dir}: run `greengate-provision init` first")
    endpoints = kiosk_config.endpoints(config, pki, broker_host=args.broker_host,
                                       broker_port=args.broker_port, http_url=args.http_url)
    warning = enrolling.endpoint_warning(args.kiosk_id, **endpoints)
    if warning:
        print(f"greengate-provision: warning: {warning}", file=sys.stderr)
    with _fleet_session(config) as session:
        try:
            spec = enrolling.register(
                session, config, kiosk_id=args.kiosk_id, location_code=args.location,
                location_name=args.location_name, district_code=args.district,
                district_name=args.district_name,
                deployment=args.deployment, policy=args.policy, actor=_actor(),
                bridge=args.bridge)
            if args.token:
                token, expires = enrolling.create_token(
                    session, pki, spec.kiosk_id, config.enrol.token_hours, _actor())
                session.commit()
                url = endpoints["http_url"] or "https://FLEET:8443"
                _say(f"kiosk {spec.kiosk_id} registered; one-time token, valid until "
                     f"{enrolling.iso(expires)}:")
                _say(token)
                _say(f"on the Pi: sudo bash /opt/greengate/scripts/install-kiosk.sh "
                     f"--fleet {url} --token {token}")
                return _publish_reissued(config, spec)
            key, cert = pki.issue_kiosk(spec.kiosk_id, config.enrol.cert_days)
            text = kiosk_config.kiosk_toml(spec, **endpoints, data_dir=args.data_dir)
            files = enrolling.bundle_files(pki, key, cert, text)
            where = enrolling.write_tar(args.out, files) if args.out else \
                enrolling.write_folder(args.sd, files, args.force)
            kiosk_config.record_certificate(session, spec.kiosk_id, cert, "bundle")
            session.commit()
        except enrolling.EnrolError as exc:
            session.rollback()
            return _error(str(exc))
    _say(f"kiosk {spec.kiosk_id} registered; its bundle (private key inside: keep it safe) "
         f"is {where}")
    return _publish_reissued(config, spec)


def _publish_reissued(config, spec) -> int:
    """The policy bundle and roster re-signed for a kiosk at an organisation's control
    point go to MQTT now, so the kiosk finds them on its first connection."""
    from fleet.bundles import publish_now
    from fleet.db import make_engine, make_sessions

    policy, roster = spec.reissued
    kinds = {d: {"policy"} for d in policy}
    for deployment in roster:
        kinds.setdefault(deployment, set()).add("roster")
    if not kinds:
        return 0
    engine = make_engine(config.database_url)
    try:
        problems = [f"{d}: {why}" for d in sorted(kinds) if (why := publish_now(
            config, make_sessions(engine), d, kinds[d], timeout=30))]
    finally:
        engine.dispose()
    if problems:
        return _error("the kiosk's policy bundle and roster are signed but not published "
                      f"({'; '.join(problems)}): run `greengate-fleet bundles publish` once "
                      "the broker is reachable, before the kiosk starts")
    _say(f"its policy bundle and roster are published ({', '.join(sorted(kinds))})")
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
        again = f"greengate-provision retire {args.kiosk_id}"
        problems, pem = _new_crl(session, pki, config, again)
        applied, late = _districts_crl(session, config, pem, args.district_wait, again) \
            if pem is not None and not problems else ([], [])
        where = [(None, "the broker")] + [
            (messages.broker_address(b.address), f"district broker {b.name}")
            for b in applied]
    if problems:  # a kick now would only let the kiosk back in with the old CRL
        problems.append(f"the live session of {args.kiosk_id}, if any, was left alone: "
                        "it would reconnect at once")
    else:
        for broker, name in where:
            trouble = retiring.disconnect(config, pki, args.kiosk_id, broker=broker)
            if trouble:
                problems.append(f"its live session on {name} was not ended: {trouble}; run "
                                f"`{again}` again")
            else:
                _say(f"any live session of {args.kiosk_id} on {name} is ended")
    for problem in problems + late:
        print(f"greengate-provision: {problem}", file=sys.stderr)
    return 1 if problems or late else 0


def _crl(args) -> int:
    try:
        config, pki = _loaded(args)
    except PKIError as exc:
        return _error(str(exc))
    if not pki.path("ca.key").exists():
        return _error(f"no fleet PKI in {pki.dir}: run `greengate-provision init` first")
    with _fleet_session(config) as session:
        problems, pem = _new_crl(session, pki, config, "greengate-provision crl")
        if pem is not None and not problems:
            problems += _districts_crl(session, config, pem, args.district_wait,
                                       "greengate-provision crl")[1]
    for problem in problems:
        print(f"greengate-provision: {problem}", file=sys.stderr)
    return 1 if problems else 0


def _mosquitto(args) -> int:
    try:
        pki = PKI(_pki_dir(args))
        standalone = args.standalone or args.persistence_dir is not None
        made = mosquitto_config.write(
            pki, args.out, port=args.port, bind=args.bind,
            persistence_dir=(args.persistence_dir or "/var/lib/mosquitto")
            if standalone else None)
    except (PKIError, OSError) as exc:
        return _error(str(exc))
    _say(f"wrote {made['conf']} and {made['acl']}; the broker's copies of the certificates "
         f"are in {made['files']}")
    if standalone:
        _say(f"run the broker with it as its main file: mosquitto -c {made['conf']}")
    else:
        _say(f"{made['conf']} is for an include_dir (Debian: /etc/mosquitto/conf.d); the "
             "main mosquitto.conf sets persistence_location, pid_file and logging "
             "(--standalone: a main file of its own)")
    _say(f'set in the fleet configuration: [pki] broker_crl = "{made["crl"]}"  (retire '
         "updates it)")
    return 0


def _core_acl(args, config, pki, name: str) -> int:
    """Rewrite the core broker's ACL from the PKI's identities and have it re-read."""
    acl = args.acl
    if acl is None and config is not None and config.pki.broker_crl:
        acl = config.resolve(config.pki.broker_crl).parent.parent / "greengate.acl"
    if acl is None or not acl.exists():
        print(f"greengate-provision: the broker's ACL was not rewritten ({acl or 'no --acl'}"
              f" and no [pki] broker_crl): run `greengate-provision mosquitto-config` again "
              f"and reload the broker, or {name} may do nothing", file=sys.stderr)
        return 1
    mosquitto_config.write_acl(pki, acl)
    _say(f"ACL rewritten: {acl}")
    trouble = retiring.reload_broker(config.pki.broker_reload if config else "")
    if trouble:
        print(f"greengate-provision: the broker has not re-read its ACL ({trouble}): run "
              f"`systemctl reload mosquitto` on the broker host, or {name} may do nothing",
              file=sys.stderr)
        return 1
    _say("the broker re-read its ACL")
    return 0


def _bridge(args) -> int:
    from . import bridge_config
    config = _fleet_config(args) if args.fleet_config else None
    try:
        pki = PKI(args.pki or _pki_dir(args))
        if not pki.path("ca.key").exists():
            return _error(f"no fleet PKI in {pki.dir}: run `greengate-provision init` first")
        made = bridge_config.write(pki, args.out, args.name, address=args.address,
                                   core=args.core, port=args.port, bind=args.bind,
                                   persistence_dir=args.persistence_dir)
    except (PKIError, OSError) as exc:
        return _error(str(exc))
    _say(f"wrote {made['conf']} and {made['acl']} for the district broker {args.name}; its "
         f"certificates and the bridge's are in {made['files']}: copy the directory to its "
         "host")
    _say(f"on that host, run greengate-provision crl-follow with {made['follow']} as "
         "/etc/greengate/crl-follow.env (systemd/greengate-crl-follow.service): it applies "
         "the fleet's CRL coming down the bridge, so a kiosk retired is refused there too")
    if config is not None:
        from fleet import bridges
        with _fleet_session(config) as session:
            bridges.register(session, args.name, args.address)
            session.commit()
        _say(f"the fleet knows bridge {args.name}: kiosks on {args.address} are shown "
             "unreachable through it while it is down")
    return _core_acl(args, config, pki, bridge_config.identity(args.name))


def _identity(args) -> int:
    config = None
    try:
        if args.fleet_config:
            config = _fleet_config(args)
        pki = PKI(args.dir or _pki_dir(args))
        prefix = config.mqtt.client_id if config else FLEET_IDENTITY
        if args.action == "list":
            for name, role in pki.identities().items():
                _say(f"{name}\t{role}\t{pki.identity_paths(name)[0]}")
            return 0
        if not pki.path("ca.key").exists():
            return _error(f"no fleet PKI in {pki.dir}: run `greengate-provision init` first")
        if args.role is None:
            return _error("name the role: `identity add ingest WORKER` or `identity add web`")
        if args.role == "ingest" and not args.name:
            return _error("name the ingest worker: `identity add ingest 2` is the identity "
                          f"of `greengate-fleet ingest --worker 2` ({prefix}-ingest-2)")
        if args.role == "web" and args.name and not args.name.isdigit():
            return _error("a web identity is numbered: `identity add web [N]`")
        name = f"{prefix}-{args.role}-{args.name or pki.next_number(prefix, args.role)}"
        cert = pki.issue_identity(name, args.role)
    except PKIError as exc:
        return _error(str(exc))
    _say(f"{name} ({ROLES[args.role]}): {cert} and its key beside it; copy both to the host "
         "that runs it")
    return _core_acl(args, config, pki, name)
