"""`greengate-kiosk run`: the kiosk's main loop, wiring the parts together.

    source ──frames/text──▶ Pipeline (decode, cooldown, verify)
                               │ Decision
                               ▼
               outbox (durable) ──▶ light ──▶ reporter (MQTT, QoS 1)

A decision is written to the outbox before the light goes on, so a scan a
person was shown is a scan the fleet will receive. Heartbeats, bundle intake,
the HTTP fallback and the systemd watchdog run in their own threads.
"""

import logging
import signal
import threading
import time
import urllib.error
import urllib.request
import uuid
import ssl
from datetime import timedelta
from pathlib import Path

from greengate import messages, watchdog
from greengate.bundle import load_public_key
from greengate.decision import Reason, red

from . import config as config_module
from .cli import source_overrides
from .clock import UNKNOWN, Clock
from .feed import StatusFeed
from .pipeline import Pipeline
from .privacy import Pseudonymiser
from .session import SessionCounter
from .state import STORED, BundleStore

log = logging.getLogger("greengate.kiosk")

LISTS_WAIT_SECONDS = 30.0  # a folder source waits this long for the first bundles
DRAIN_SECONDS = 60.0  # a finished folder source waits this long for the fleet's confirmations


class LiveVerifier:
    """Verifies against whatever lists the store holds at this moment."""

    def __init__(self, store: BundleStore, clock: Clock | None = None):
        self.store = store
        self.clock = clock

    def verify(self, text, at):
        if at is None:
            if self.clock is not None and self.clock.beyond_budget():
                return red(Reason.OUT_OF_SERVICE, "no fresh lists for longer than the "
                                                  "offline budget")
            return red(Reason.CLOCK_UNKNOWN, "the kiosk's clock is not trustworthy")
        verifier = self.store.verifier
        if verifier is None:
            return red(Reason.OUT_OF_SERVICE, self.store.problem or "lists missing")
        return verifier.verify(text, at)


def cpu_temperature() -> float | None:
    try:
        return int(Path("/sys/class/thermal/thermal_zone0/temp").read_text()) / 1000
    except (OSError, ValueError):
        return None


class Kiosk:
    def __init__(self, cfg):
        from .indicator import make_indicator
        from .outbox import Outbox
        from .reporter import Reporter

        self.cfg = cfg
        self.id = cfg.kiosk.id
        self.started = time.monotonic()
        self.stopping = threading.Event()
        data = Path(cfg.kiosk.data_dir)
        if not data.is_absolute():
            data = cfg.resolve(cfg.kiosk.data_dir)
        data.mkdir(parents=True, exist_ok=True)
        self.data = data

        self.indicator = make_indicator(cfg.indicator)
        self.indicator.starting()
        budget = timedelta(hours=cfg.bundles.offline_budget_hours)
        self.clock = Clock(data / "clock.json", budget.total_seconds())
        fleet_key = load_public_key(cfg.resolve(cfg.bundles.fleet_key).read_bytes())
        self.store = BundleStore(data / "bundles", fleet_key, cfg.kiosk.deployment,
                                 cfg.kiosk.policy, budget,
                                 on_bundle=lambda b: self.clock.raise_floor(b.issued_at),
                                 kiosk_id=cfg.kiosk.id)
        self.outbox = Outbox(data / "outbox.sqlite", cfg.outbox.max_rows)
        self.pseudonym = Pseudonymiser(cfg.privacy.pseudonym_key if cfg.privacy.pseudonyms else None)
        tls = None
        if cfg.mqtt.tls:
            tls = (str(cfg.resolve(cfg.mqtt.ca)), str(cfg.resolve(cfg.mqtt.cert)),
                   str(cfg.resolve(cfg.mqtt.key)))
        self.reporter = Reporter(self.outbox, self.id, cfg.mqtt.host, cfg.mqtt.port, tls=tls,
                                 keepalive=cfg.mqtt.keepalive, replay_rate=cfg.mqtt.replay_rate,
                                 session_source=SessionCounter(data / "session"),
                                 confirm_timeout=cfg.mqtt.confirm_timeout)
        self.feed = StatusFeed(self.store, self.reporter, cfg.kiosk.deployment)
        self.feed.start()
        self.pipeline = None  # built in run(): the decoder may be slow to load
        self._last_show = 0.0
        self._fault_shown = None
        self._progress = time.monotonic()
        self._idle = False

    # --- the data path -----------------------------------------------------
    def on_decision(self, decision, now: float) -> None:
        scan_id = uuid.uuid4().hex
        holder = self.pseudonym(decision.holder)

        def build(seq):  # the outbox gives the seq inside its transaction
            return messages.encode(messages.scan(
                scan_id=scan_id, kiosk=self.id, ts=now, decision=decision.decision,
                reason=str(decision.reason), sub_reason=decision.sub_reason,
                cert_type=decision.type, cert_hash=decision.cert_hash, holder=holder,
                policy=self.store.policy_in_use, seq=seq))

        stored = self.outbox.add(scan_id, messages.scan_topic(self.id), build,
                                 decision=decision.decision, reason=str(decision.reason), ts=now)
        self.indicator.show(decision)
        self._last_show = time.monotonic()
        self._fault_shown = None
        self.reporter.notify(scan_id if stored else None)
        # The full scan id: the fault tests match it against what the fleet received.
        log.info("scan %s: %s %s%s%s", scan_id, decision.decision, decision.reason,
                 f"/{decision.sub_reason}" if decision.sub_reason else "",
                 "" if stored else " (outbox full: counted in the hourly summary)")

    def run(self, keep_running: bool = False) -> int:
        from .decoders import make_decoder
        from .sources import make_source

        cfg = self.cfg
        decoder = make_decoder(cfg.decoder.backend)
        self.pipeline = Pipeline(decoder, LiveVerifier(self.store, self.clock), self.on_decision,
                                 cfg.decoder.cooldown, clock=self.clock.validation_time)
        path = cfg.resolve(cfg.source.path) if cfg.source.path and cfg.source.kind == "folder" \
            else cfg.source.path
        self.source = make_source(cfg.source, path)
        self.reporter.start()
        threads = [threading.Thread(target=self._heartbeats, name="heartbeat", daemon=True),
                   threading.Thread(target=self._watchdog, name="watchdog", daemon=True)]
        if cfg.bundles.http_url:
            threads.append(threading.Thread(target=self._http_fallback, name="http", daemon=True))
        for t in threads:
            t.start()
        self.indicator.idle()
        watchdog.ready()
        if cfg.source.kind == "folder":
            self._await_lists()
        log.info("kiosk %s running: source %s, decoder %s", self.id, cfg.source.kind,
                 getattr(decoder, "name", decoder))
        status = 0
        try:
            for item in self.source:
                self._progress = time.monotonic()
                if self.stopping.is_set():
                    break
                try:
                    self.pipeline.process(item, time.time())
                except Exception:  # one bad frame must not stop the checkpoint
                    log.exception("frame processing failed")
            if not self.stopping.is_set():
                status = self._source_ended(keep_running)
        finally:
            self.close()
        return status

    def _await_lists(self) -> None:
        """A simulated kiosk reads its folder in a moment: give the retained bundles a
        chance to arrive first, or every frame of a fresh data directory would be
        out_of_service. A camera does not wait: a person in front of it gets an answer."""
        deadline = time.monotonic() + LISTS_WAIT_SECONDS
        while self.store.verifier is None and time.monotonic() < deadline and \
                not self.stopping.wait(0.1):
            pass
        if self.store.verifier is None:
            log.warning("no lists after %.0f s: %s", LISTS_WAIT_SECONDS, self.store.problem)

    def _source_ended(self, keep_running: bool) -> int:
        self._idle = True  # nothing more to capture: the watchdog must not restart us
        if self.cfg.source.kind != "folder":
            log.error("the %s source stopped delivering; exiting so that systemd restarts "
                      "the kiosk", self.cfg.source.kind)
            return 1
        if keep_running:
            log.info("folder finished; still reporting and sending heartbeats until stopped")
            self.stopping.wait()
            return 0
        log.info("folder finished; reporting the %d decision(s) left in the outbox until the "
                 "fleet confirms them", self.outbox.depth())
        deadline = time.monotonic() + DRAIN_SECONDS
        while (self.outbox.depth() or self.outbox.summaries()) and \
                time.monotonic() < deadline and not self.stopping.wait(0.1):
            pass
        left = self.outbox.depth() + self.outbox.summaries()
        if left:
            log.warning("%d message(s) not yet confirmed by the fleet; they stay in the "
                        "outbox and go out again on the next start", left)
        return 0

    def stop(self, *_):
        self.stopping.set()
        try:
            self.source.close()
        except Exception:
            pass

    def close(self) -> None:
        watchdog.stopping()
        self.stopping.set()
        self.reporter.stop()
        self.outbox.close()
        self.indicator.close()

    # --- background --------------------------------------------------------
    def heartbeat(self) -> dict:
        clock = self.clock.state()
        now = self.clock.validation_time()
        lists = self.store.freshness(now) if now else ("missing" if self.store.verifier is None
                                                        else "stale")
        seq, confirmed = self.outbox.watermarks()
        return messages.heartbeat(
            kiosk=self.id, session=self.reporter.session, ts=time.time(),
            uptime=time.monotonic() - self.started, bundles=self.store.versions(),
            outbox=self.outbox.depth(), clock=clock, lists=lists, cpu_temp=cpu_temperature(),
            overflow=self.outbox.overflow(), seq=seq, confirmed=confirmed)

    def _heartbeats(self) -> None:
        while not self.stopping.wait(min(5.0, self.cfg.mqtt.heartbeat)):
            self._show_fault()
            if time.monotonic() - getattr(self, "_last_beat", 0) >= self.cfg.mqtt.heartbeat:
                self._last_beat = time.monotonic()
                try:
                    self.reporter.publish_heartbeat(self.heartbeat())
                except Exception:
                    log.exception("heartbeat failed")

    def _show_fault(self) -> None:
        """Out of service or clock unknown must be visible with nobody scanning."""
        if time.monotonic() - self._last_show < self.cfg.indicator.red_seconds:
            return
        at = self.clock.validation_time()
        if self.clock.beyond_budget():
            fault = red(Reason.OUT_OF_SERVICE, "no fresh lists for longer than the budget")
        elif self.clock.state() == UNKNOWN:
            fault = red(Reason.CLOCK_UNKNOWN, "clock unknown")
        elif self.store.verifier is None or at > self.store.verifier.valid_until:
            fault = red(Reason.OUT_OF_SERVICE, self.store.problem or "lists older than the budget")
        else:
            fault = None
        if fault and self._fault_shown != fault.reason:
            self.indicator.show(fault)
        elif not fault and self._fault_shown:
            self.indicator.idle()
        self._fault_shown = fault.reason if fault else None

    def _watchdog(self) -> None:
        interval = watchdog.watchdog_interval()
        if not interval:
            return
        blocking = self.cfg.source.kind == "scanner"  # waits for people, not frames
        while not self.stopping.wait(interval):
            if blocking or self._idle or time.monotonic() - self._progress < 4 * interval:
                watchdog.watchdog_ping()
            else:
                log.error("no frame for %.0f s; letting the watchdog restart the kiosk",
                          time.monotonic() - self._progress)

    def _http_fallback(self) -> None:
        cfg = self.cfg
        context = None
        if cfg.mqtt.ca:
            context = ssl.create_default_context(cafile=str(cfg.resolve(cfg.mqtt.ca)))
            if cfg.mqtt.cert:
                context.load_cert_chain(str(cfg.resolve(cfg.mqtt.cert)), str(cfg.resolve(cfg.mqtt.key)))
        etags: dict[str, str] = {}
        wait = 5.0  # a first look soon: MQTT may be what is broken
        while not self.stopping.wait(wait):
            wait = 5.0 if self.store.verifier is None else cfg.bundles.http_interval
            if self.reporter.connected and self.store.verifier is not None:
                continue  # MQTT delivers; HTTP is for when it does not
            for kind in STORED:
                url = f"{cfg.bundles.http_url.rstrip('/')}/api/v1/bundles/{cfg.kiosk.deployment}/{kind}"
                held = self.store.versions().get(kind)
                if kind == "status" and held is not None and not self.feed.needs_snapshot(held):
                    url += f"?from={held}"  # the fleet answers with the delta, or the snapshot
                request = urllib.request.Request(url)
                if kind in etags:
                    request.add_header("If-None-Match", etags[kind])
                try:
                    with urllib.request.urlopen(request, timeout=20, context=context) as response:
                        body = response.read(64 * 1024 * 1024)
                        if response.headers.get("ETag"):
                            etags[kind] = response.headers["ETag"]
                    self.store.offer(body, "http")
                    self.feed.update()
                except urllib.error.HTTPError as exc:
                    if exc.code != 304:
                        log.warning("HTTP bundle fetch %s: %s", url, exc)
                except OSError as exc:
                    log.warning("HTTP bundle fetch %s: %s", url, exc)


def run(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = config_module.load(args.config, source_overrides(args))
    except config_module.ConfigError as exc:
        print(f"greengate-kiosk: {exc}")
        return 2
    kiosk = Kiosk(cfg)
    signal.signal(signal.SIGTERM, kiosk.stop)
    signal.signal(signal.SIGINT, kiosk.stop)
    return kiosk.run(keep_running=getattr(args, "keep_running", False))
