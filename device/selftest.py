"""`greengate-kiosk selftest`: check every part and say what is wrong in plain words.

Meant for the technician at the door: each line is OK or PROBLEM with what to
do about it. Exit 0 when everything is OK, 1 otherwise, 2 for a bad config.
"""

import socket
import ssl
import time
from datetime import datetime, timedelta, timezone

from . import config as config_module
from . import datadir
from .cli import source_overrides
from .clock import FLOOR, SYNCED, Clock
from .state import BundleStore


def _lights(cfg, report):
    from .indicator import make_indicator
    try:
        indicator = make_indicator(cfg.indicator)
        indicator.lamp_test()
        indicator.close()
        report(True, "lights", "green, red, buzzer (and relay) blinked once each: "
                               "check that you saw and heard all of them")
    except Exception as exc:
        report(False, "lights", f"cannot drive the GPIO pins ({exc}); check the wiring and that "
                                "the kiosk user is in the 'gpio' group")


def _camera(cfg, report):
    from .sources import make_source
    path = cfg.resolve(cfg.source.path) if cfg.source.kind == "folder" else cfg.source.path
    if cfg.source.kind == "scanner":
        try:
            source = make_source(cfg.source, path)
            source.close()
            report(True, "scanner", f"serial scanner port {path} opens")
        except Exception as exc:
            report(False, "scanner", f"cannot open the scanner at {path} ({exc}); check the cable "
                                     "and the port name")
        return
    try:
        source = make_source(cfg.source, path)
        frame = next(iter(source), None)
        source.close()
    except Exception as exc:
        report(False, "camera", _camera_problem(cfg.source.kind, path, exc))
        return
    if frame is None:
        report(False, "camera", "the camera delivered no picture")
    else:
        shape = getattr(frame, "shape", None)
        report(True, "camera", f"picture received ({shape[1]}x{shape[0]})" if shape else "text source")


def _camera_problem(kind: str, path, exc: Exception) -> str:
    """One cause, one thing to do: a missing library is not a loose cable."""
    if isinstance(exc, ImportError) or isinstance(exc.__cause__, ImportError):
        return f"the camera software is not installed: {exc}"
    if kind == "picamera2":
        return (f"the Pi camera does not deliver pictures ({exc}); check its ribbon cable "
                "(seated, contacts the right way round) and that no other program uses it")
    if kind == "v4l2":
        return (f"the USB camera {path or '(no [source] path)'} does not deliver pictures "
                f"({exc}); check its USB cable and the device name")
    return f"cannot read the {kind} source {path} ({exc})"


def _clock_and_bundles(cfg, report):
    data = datadir.readable(cfg)  # the old shared place until the kiosk moved its files
    budget = timedelta(hours=cfg.bundles.offline_budget_hours)
    clock = Clock(data / "clock.json", budget.total_seconds())
    key_problem = config_module.pem_problem(cfg.resolve(cfg.bundles.fleet_key), "public key")
    store = None
    if key_problem is None:
        # The bundles on disk raise the floor as they do when the kiosk starts; in memory
        # only: a selftest changes nothing on the kiosk.
        store = BundleStore(data / "bundles", config_module.load_fleet_key(cfg),
                            cfg.kiosk.deployment, cfg.kiosk.policy, budget,
                            on_bundle=lambda b: clock.raise_floor(b.issued_at, persist=False))
    state = clock.state()
    if state == SYNCED:
        report(True, "clock", "synchronised by NTP")
    elif state == FLOOR:
        report(True, "clock", "not synchronised by NTP, but consistent with the last fleet data")
    elif clock.floor is not None and time.time() > clock.floor + budget.total_seconds():
        report(False, "clock", f"no NTP, and the newest fleet data is "
                               f"{(time.time() - clock.floor) / 3600:.0f} h old, beyond the offline "
                               f"budget of {budget.total_seconds() / 3600:.0f} h: connect the kiosk "
                               "to the network so it can synchronise (NTP) and fetch its lists")
    else:
        report(False, "clock", "the time cannot be trusted: connect the kiosk to the network so it "
                               "can synchronise (NTP), the kiosk shows 'clock unknown' until then")
    if store is None:
        report(False, "bundles", f"the pinned fleet key ({key_problem}) cannot be used: "
                                 "re-run the enrolment")
        return
    if store.verifier is None:
        report(False, "bundles", f"{store.problem}: the kiosk has not received its lists from the "
                                 "fleet yet; check the network and the broker")
        return
    # An untrusted clock is reported above; the lists' age is still worth saying.
    at = clock.validation_time() or datetime.now(timezone.utc)
    versions = ", ".join(f"{k} v{v}" for k, v in store.versions().items())
    if at > store.verifier.valid_until:
        report(False, "bundles", f"lists are older than the offline budget ({versions}); the kiosk "
                                 "is out of service until it reaches the fleet")
    else:
        report(True, "bundles", f"lists present ({versions})")


def _tls_files(cfg) -> list[str]:
    """What is wrong with the kiosk's TLS files, in plain words (empty: nothing)."""
    from cryptography import x509

    problems = []
    now = datetime.now(timezone.utc)
    for key, kind, what in (("ca", "certificate", "the broker's CA certificate"),
                            ("cert", "certificate", "the kiosk certificate"),
                            ("key", "private key", "the kiosk's private key")):
        path = cfg.resolve(getattr(cfg.mqtt, key))
        problem = config_module.pem_problem(path, kind)
        if problem is None and kind == "certificate":
            cert = x509.load_pem_x509_certificates(path.read_bytes())[0]
            if cert.not_valid_after_utc < now:
                problem = f"expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC: {path}"
            elif cert.not_valid_before_utc > now:
                problem = (f"not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC "
                           f"(is the kiosk's clock right?): {path}")
        if problem:
            problems.append(f"{what}: {problem}")
    return problems


def _broker(cfg, report):
    if cfg.mqtt.tls:
        problems = _tls_files(cfg)
        if problems:
            report(False, "broker", "; ".join(problems) + ": re-enrol the kiosk, or put the "
                                    "files from its enrolment back")
            return
    brokers = config_module.brokers(cfg)
    for host, port in brokers:
        # several brokers: each is checked (a fallback nobody can reach is no fallback)
        _one_broker(cfg, report, host, port,
                    "broker" if len(brokers) == 1 else f"broker {host}:{port}")


def _one_broker(cfg, report, host: str, port: int, part: str):
    try:
        sock = socket.create_connection((host, port), timeout=5)
    except OSError as exc:
        report(False, part, f"cannot reach the broker at {host}:{port} ({exc.strerror or exc}); "
                            "check the network cable/Wi-Fi and the broker address")
        return
    try:
        if cfg.mqtt.tls:
            context = ssl.create_default_context(cafile=str(cfg.resolve(cfg.mqtt.ca)))
            context.load_cert_chain(str(cfg.resolve(cfg.mqtt.cert)), str(cfg.resolve(cfg.mqtt.key)))
            with context.wrap_socket(sock, server_hostname=host) as tls:
                tls.do_handshake()
        report(True, part, f"{host}:{port} reachable" + (" with TLS" if cfg.mqtt.tls else ""))
    except (ssl.SSLError, OSError) as exc:
        report(False, part, f"TLS with the broker failed ({exc}); the kiosk certificate may be "
                            "expired, retired, or from another fleet: re-enrol the kiosk")
    finally:
        sock.close()


def run(args) -> int:
    try:
        cfg = config_module.load(args.config, source_overrides(args))
    except config_module.ConfigError as exc:
        print(f"PROBLEM config: {exc}")
        return 2
    problems = []

    def report(ok, part, text):
        print(f"{'OK     ' if ok else 'PROBLEM'} {part}: {text}")
        if not ok:
            problems.append(part)

    started = time.monotonic()
    for check in (_lights, _camera, _clock_and_bundles, _broker):
        try:
            check(cfg, report)
        except Exception as exc:  # a self-test reports, it does not crash
            report(False, check.__name__.strip("_"), f"check failed unexpectedly: {exc}")
    print(f"{len(problems)} problem(s) in {time.monotonic() - started:.1f} s")
    return 1 if problems else 0
