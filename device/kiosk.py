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
import os
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
from greengate.decision import Reason, red

from . import config as config_module
from . import datadir
from .cli import source_overrides
from .clock import Clock
from .faults import Faults
from .feed import StatusFeed
from .pipeline import Pipeline
from .privacy import Sealer, scrub_legacy_key
from .session import SessionCounter
from .state import STORED, BundleStore

log = logging.getLogger("greengate.kiosk")

LISTS_WAIT_SECONDS = 30.0  # a folder source waits this long for the first bundles
DRAIN_SECONDS = 60.0  # a finished folder source waits this long for the fleet's confirmations
BUNDLES_SETTLE = 0.5  # seconds without a new bundle before a heartbeat reports the arrivals


class LiveVerifier:
    """Verifies against whatever lists the store holds at this moment."""

    def __init__(self, store: BundleStore, clock: Clock | None = None):
        self.store = store
        self.clock = clock

    def verify(self, text, at):
        closed = getattr(self.store, "closed", None)  # tests run it without a store
        if closed is not None:
            # the place is shut after a case: nobody enters, whatever their certificate,
            # so none is read (and no holder is sealed to the fleet)
            return red(Reason.PLACE_CLOSED, closed["organisation"])
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
        # first: a second kiosk on this directory is refused before it touches anything
        self._data_lock = datadir.claim(cfg)
        data = self.data = self._data_lock.path

        self.indicator = make_indicator(cfg.indicator)
        self.indicator.starting()
        # Every part reports here; the light, the heartbeat and the log read it.
        self.faults = Faults()
        self._storage_parts: dict[str, str] = {}  # writer -> its storage error
        self._storage_lock = threading.Lock()
        self._fault_wake = threading.Event()
        self.faults.on_change(self._fault_wake.set)
        budget = timedelta(hours=cfg.bundles.offline_budget_hours)
        self.clock = Clock(data / "clock.json", budget.total_seconds())
        self.clock.on_write = lambda exc: self._storage("clock", exc)
        # A missing or damaged key file is a configuration fault, not a crash: the kiosk
        # stays up, shows why and (if its TLS files are usable) tells the fleet.
        problems = config_module.file_errors(cfg)
        for problem in problems:
            print(f"greengate-kiosk: {problem}", flush=True)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            self.faults.set("config", f"{problems[0]}{more}")
        try:
            fleet_key = config_module.load_fleet_key(cfg)
        except config_module.ConfigError:
            fleet_key = None  # every bundle is refused (device/state.py); the fault says why
        self.store = BundleStore(data / "bundles", fleet_key, cfg.kiosk.deployment,
                                 cfg.kiosk.policy, budget,
                                 on_bundle=self._bundle_arrived,
                                 kiosk_id=cfg.kiosk.id)
        self.store.on_write = lambda exc: self._storage("bundles", exc)
        self.outbox = Outbox(data / "outbox.sqlite", cfg.outbox.max_rows,
                             faults=_StoragePart(self, "outbox"))
        scrub_legacy_key(cfg.path)  # the linking key of earlier versions: off the card
        self.sealer = Sealer((lambda: self.store.sealing_key) if cfg.privacy.pseudonyms
                             else (lambda: None))
        tls = None
        if cfg.mqtt.tls:
            tls = (str(cfg.resolve(cfg.mqtt.ca)), str(cfg.resolve(cfg.mqtt.cert)),
                   str(cfg.resolve(cfg.mqtt.key)))
        self.reporter = Reporter(self.outbox, self.id, tls=tls,
                                 brokers=config_module.brokers(cfg),
                                 keepalive=cfg.mqtt.keepalive, replay_rate=cfg.mqtt.replay_rate,
                                 session_source=SessionCounter(
                                     data / "session",
                                     on_write=lambda exc: self._storage("session", exc)),
                                 confirm_timeout=cfg.mqtt.confirm_timeout,
                                 failover_after=cfg.mqtt.failover_after,
                                 primary_retry=cfg.mqtt.primary_retry)
        self.feed = StatusFeed(self.store, self.reporter, cfg.kiosk.deployment)
        self.feed.start()
        self.pipeline = None  # built in run(): the decoder may be slow to load
        self._last_show = 0.0
        self._progress = time.monotonic()
        self._idle = False

    # --- the data path -----------------------------------------------------
    def _bundle_arrived(self, b) -> None:
        self.clock.raise_floor(b.issued_at)
        self._bundle_at = time.monotonic()
        # a policy bundle may close or reopen the place: the light follows at once
        self._fault_wake.set()

    def on_decision(self, decision, now: float) -> None:
        scan_id = uuid.uuid4().hex
        sealed = self.sealer(decision.holder, kiosk=self.id, scan_id=scan_id)

        def build(seq):  # the outbox gives the seq inside its transaction
            return messages.encode(messages.scan(
                scan_id=scan_id, kiosk=self.id, ts=now, decision=decision.decision,
                reason=str(decision.reason), sub_reason=decision.sub_reason,
                cert_type=decision.type, cert_hash=decision.cert_hash, sealed=sealed,
                policy=self.store.policy_in_use, seq=seq))

        # before storing: a storage fault noticed now must not flash ahead of the decision
        self._last_show = time.monotonic()
        try:
            stored = self.outbox.add(scan_id, messages.scan_topic(self.id), build,
                                     decision=decision.decision, reason=str(decision.reason),
                                     ts=now)
        except Exception:
            # the outbox holds storage failures itself; whatever else went wrong, the
            # person in front of the kiosk still gets the answer
            log.exception("could not store scan %s", scan_id)
            stored = False
        self.indicator.show(decision)
        self._last_show = time.monotonic()
        self.reporter.notify(scan_id if stored else None)
        if stored:
            note = " (storage failing: held in memory)" if self.outbox.failing else ""
        elif self.outbox.failing:
            note = " (storage failing, memory full: counted as lost)"
        else:
            note = " (outbox full: counted in the hourly summary)"
        # The full scan id: the fault tests match it against what the fleet received.
        log.info("scan %s: %s %s%s%s", scan_id, decision.decision, decision.reason,
                 f"/{decision.sub_reason}" if decision.sub_reason else "", note)

    def run(self, keep_running: bool = False) -> int:
        from .decoders import make_decoder
        from .sources import DEVICE_NAMES, Recovering, make_source

        cfg = self.cfg
        decoder = make_decoder(cfg.decoder.backend)
        self.pipeline = Pipeline(decoder, LiveVerifier(self.store, self.clock), self.on_decision,
                                 cfg.decoder.cooldown, clock=self.clock.validation_time)
        path = cfg.resolve(cfg.source.path) if cfg.source.path and cfg.source.kind == "folder" \
            else cfg.source.path
        # Opened, and opened again with backoff, inside the loop below: a missing or lost
        # camera or scanner is a fault the kiosk shows and reports, not a reason to exit.
        self.source = Recovering(lambda: make_source(cfg.source, path, ticks=True),
                                 DEVICE_NAMES.get(cfg.source.kind, "source"),
                                 on_fault=lambda detail: self.faults.set("source", detail),
                                 on_recovered=lambda: self.faults.clear("source"))
        # The reporter and heartbeats before the source: whatever the camera does, the
        # fleet hears from the kiosk.
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
            # Every source yields at least every sources.TICK seconds (None while it
            # waits), so this loop notices SIGTERM promptly and the watchdog sees it alive.
            for item in self.source:
                self._progress = time.monotonic()
                if self.stopping.is_set():
                    break
                if item is None:
                    continue
                try:
                    self.pipeline.process(item, time.time())
                except Exception:  # one bad frame must not stop the checkpoint
                    log.exception("frame processing failed")
                self._progress = time.monotonic()

            if not self.stopping.is_set():
                status = self._source_ended(keep_running)
        finally:
            self.source.close()
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
        """A finite source (a folder, a video or a regular file) came to its end; a
        device never ends here: it is opened again (sources.Recovering)."""
        self._idle = True  # nothing more to capture: the watchdog must not restart us
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
        # Only a flag: the frame loop sees it within a tick and closes the source itself.
        # Closing a camera from inside a signal handler, in the middle of the driver's
        # own call, could deadlock it.
        self.stopping.set()

    def close(self) -> None:
        watchdog.stopping()
        self.stopping.set()
        self.reporter.stop()
        self.outbox.close()
        self.indicator.close()
        self._data_lock.release()

    # --- background --------------------------------------------------------
    def heartbeat(self) -> dict:
        """Never raises on a broken outbox: a kiosk whose disk fails must still say so."""
        clock = self.clock.state()
        now = self.clock.validation_time()
        lists = self.store.freshness(now) if now else ("missing" if self.store.verifier is None
                                                        else "stale")
        seq, confirmed = _safe(self.outbox.watermarks, (None, None))
        return messages.heartbeat(
            kiosk=self.id, session=self.reporter.session, ts=time.time(),
            uptime=time.monotonic() - self.started, bundles=self.store.versions(),
            outbox=_safe(self.outbox.depth, 0), clock=clock, lists=lists,
            cpu_temp=cpu_temperature(), overflow=_safe(self.outbox.overflow, 0), seq=seq,
            confirmed=confirmed, faults=self.faults.report(),
            memory=_safe(self.outbox.memory, 0), lost=_safe(self.outbox.lost, 0),
            policy=_safe(lambda: self.store.policy_in_use, None),
            roster=_safe(self._roster_held, None), closed=_safe(self._closed_by, None))

    def _roster_held(self) -> dict | None:
        held = self.store.roster
        return None if held is None else {"organisation": held.organisation,
                                          "version": held.version}

    def _closed_by(self) -> str | None:
        """The organisation whose closing closes this place ("?": the signed entry names
        this kiosk but not readably)."""
        closed = self.store.closed
        if closed is None:
            return None
        org = closed.get("organisation")
        return org if isinstance(org, str) and messages.ORG_CODE.match(org) else "?"

    def _heartbeats(self) -> None:
        # The faults are looked at every second, and at once when one starts or ends
        # (the light must follow them); the heartbeat goes out every `heartbeat` seconds,
        # retried each second while the reporter is not connected.
        while not self.stopping.is_set():
            self._fault_wake.wait(1.0)
            self._fault_wake.clear()
            if self.stopping.is_set():
                break
            try:
                self._tend_storage()
                self._show_fault()
                self.sealer.expire()  # an idle kiosk drops its epoch key on time too
                self.feed.tick()  # an empty roster delta topic: the full roster
            except Exception:
                log.exception("fault check failed")
            # also at once when a bundle kind arrives that the last heartbeat lacked: the
            # first heartbeat goes out on connecting, before the retained bundles are
            # applied (0.3 s later), and the fleet showed them "missing" for a minute
            held = _safe(self.store.versions, {}) or {}
            arrived = any(v is not None and getattr(self, "_beat_bundles", {}).get(kind) is None
                          for kind, v in held.items())
            if arrived and time.monotonic() - getattr(self, "_bundle_at", 0) < BUNDLES_SETTLE:
                # retained bundles come in a burst on connecting: one heartbeat holding
                # them all, not one per bundle (the wake-up above is for the light)
                continue
            if arrived or time.monotonic() - getattr(self, "_last_beat", 0) >= self.cfg.mqtt.heartbeat:
                try:
                    if self.reporter.publish_heartbeat(self.heartbeat()):
                        self._last_beat = time.monotonic()
                        self._beat_bundles = held
                except Exception:
                    self._last_beat = time.monotonic()  # no log line per second
                    self._beat_bundles = held
                    log.exception("heartbeat failed")

    # --- faults ------------------------------------------------------------
    def _storage(self, part: str, error) -> None:
        """A writer of the data directory (outbox, clock, session, bundles) reports the
        outcome of a write (None: it worked). They share one fault, "storage": it lasts
        while any of them fails; the outbox's error names it (it holds the decisions)."""
        with self._storage_lock:
            if error is None:
                self._storage_parts.pop(part, None)
            else:
                what = error if isinstance(error, str) else (
                    getattr(error, "strerror", None) or str(error) or type(error).__name__)
                self._storage_parts[part] = what if part == "outbox" else f"{what} ({part})"
            parts = dict(self._storage_parts)
        if parts:
            self.faults.set("storage", parts.get("outbox") or next(iter(parts.values())))
        else:
            self.faults.clear("storage")

    def _tend_storage(self) -> None:
        """While storage fails: move the outbox's memory rows to disk once it takes them,
        and find out whether the other writers' disk works again (a probe file)."""
        _safe(self.outbox.flush, False)
        with self._storage_lock:
            others = [part for part in self._storage_parts if part != "outbox"]
        if not others or time.monotonic() < getattr(self, "_probe_at", 0.0):
            return
        self._probe_at = time.monotonic() + 5.0
        probe = self.data / ".write-probe"
        try:
            with open(probe, "wb") as fh:
                fh.write(b"\0" * 4096)
                fh.flush()
                os.fsync(fh.fileno())
            probe.unlink()
        except OSError:
            probe.unlink(missing_ok=True)
            return
        for part in others:
            if part == "clock":
                self.clock.persist()  # the floor raised meanwhile; reports its own outcome
            else:
                self._storage(part, None)  # their next write tells if it was a fluke

    def _judge(self) -> None:
        """Set or clear the "lists" and "clock" faults from the store and the clock."""
        at = self.clock.validation_time()
        beyond = self.clock.beyond_budget()
        if beyond:
            self.faults.set("lists", "no fresh lists for longer than the offline budget")
        elif self.store.verifier is None:
            self.faults.set("lists", self.store.problem or "lists missing")
        elif at is not None and at > self.store.verifier.valid_until:
            self.faults.set("lists", "lists older than the offline budget")
        elif self.store.workers_only is not None and (
                self.store.roster is None or
                self.store.roster.organisation != self.store.workers_only):
            # every green certificate is red roster_missing: the guard and the fleet see why
            self.faults.set("lists", f"workers only: no roster of {self.store.workers_only}")
        else:
            self.faults.clear("lists")
        if at is None and not beyond:
            self.faults.set("clock", "no NTP and no time floor yet" if self.clock.floor is None
                            else "clock outside the time floor and no NTP")
        else:
            self.faults.clear("clock")

    def _show_fault(self) -> None:
        """With no decision showing, the light shows the worst active fault (or nothing):
        a kiosk nobody scans at must still tell the guard what is wrong."""
        self._judge()
        shown = max(self.cfg.indicator.red_seconds, self.cfg.indicator.green_seconds)
        if time.monotonic() - self._last_show < shown:
            return
        worst = self.faults.worst()
        now = self.indicator.pattern
        closed = self.store.closed
        if closed != getattr(self, "_closed_logged", None):
            self._closed_logged = closed
            if closed is not None:
                log.info("place closed (organisation %s since %s): every scan is red "
                         "place_closed", closed["organisation"], closed["since"])
            else:
                log.info("place open again: scans are decided as usual")
        if worst is not None:
            # a fault first: the kiosk needs service whether or not the place is open
            if now != self.indicator.fault_pattern(worst[0]).name:
                self.indicator.fault(worst[0])
        elif closed is not None:
            if now != "place_closed":
                self.indicator.place_closed()
        elif now not in (None, "starting", "lamp_test"):
            self.indicator.idle()

    def _watchdog(self) -> None:
        interval = watchdog.watchdog_interval()
        if not interval:
            return
        # The loop marks progress on every frame, line or tick, also while it waits for a
        # scanner or retries a lost camera: only a loop that hangs stops the pings.
        while not self.stopping.wait(interval):
            if self._idle or time.monotonic() - self._progress < 4 * interval:
                watchdog.watchdog_ping()
            else:
                log.error("the frame loop has not moved for %.0f s; letting the watchdog "
                          "restart the kiosk", time.monotonic() - self._progress)

    def _http_fallback(self) -> None:
        cfg = self.cfg
        context = None
        etags: dict[str, str] = {}
        wait = 5.0  # a first look soon: MQTT may be what is broken
        while not self.stopping.wait(wait):
            wait = 5.0 if self.store.verifier is None else cfg.bundles.http_interval
            if cfg.mqtt.ca and context is None:
                # Built in the loop: a damaged TLS file is the "config" fault the kiosk
                # already shows, and a file put right is used without a restart.
                try:
                    context = ssl.create_default_context(cafile=str(cfg.resolve(cfg.mqtt.ca)))
                    if cfg.mqtt.cert:
                        context.load_cert_chain(str(cfg.resolve(cfg.mqtt.cert)),
                                                str(cfg.resolve(cfg.mqtt.key)))
                except (OSError, ValueError, ssl.SSLError) as exc:
                    context = None
                    if not getattr(self, "_http_tls_warned", False):
                        self._http_tls_warned = True
                        log.warning("HTTP bundle fetch: TLS files unusable: %s", exc)
                    continue
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


class _StoragePart:
    """The fault registry as one writer sees it: its "storage" reports go through
    Kiosk._storage, merged with the other writers' into the one fault."""

    def __init__(self, kiosk: "Kiosk", part: str):
        self.kiosk, self.part = kiosk, part

    def set(self, kind: str, detail: str) -> None:
        self.kiosk._storage(self.part, detail)

    def clear(self, kind: str) -> None:
        self.kiosk._storage(self.part, None)


def _safe(fn, default):
    try:
        return fn()
    except Exception:
        return default


def config_fault(path, message: str, stopping: threading.Event) -> int:
    """A configuration that cannot be used at all, under systemd: show the config fault
    on the lights (the file's own [indicator] pins where readable, else the defaults)
    until `stopping`, and keep the watchdog fed: exiting would only make systemd restart
    the kiosk every few seconds, each time blipping the starting light. Returns 2."""
    from .indicator import make_indicator

    indicator = None
    try:
        indicator = make_indicator(config_module.indicator_fallback(path))
        indicator.fault("config")
    except Exception as exc:  # no lights either: the log and `systemctl status` still say why
        log.error("cannot show the configuration fault on the lights: %s", exc)
    watchdog.ready(f"configuration error: {message}")
    log.error("configuration error: %s; showing the configuration fault until stopped",
              message)
    fed = watchdog.watchdog_interval() is not None
    while not stopping.wait(1.0):  # short waits: a signal handler's set() is seen at once
        if fed:
            watchdog.watchdog_ping()

    watchdog.stopping()
    if indicator is not None:
        indicator.close()
    return 2


def run(args) -> int:
    """Exit codes: 0 stopped (SIGTERM, SIGINT) or a folder source finished; 2 the
    configuration cannot be used (at once outside systemd; under systemd, i.e. with
    $NOTIFY_SOCKET, only when stopped, after showing the config fault meanwhile);
    1 an unexpected error (a traceback: systemd restarts the kiosk). A missing camera
    or scanner and unusable key files do not end the kiosk: they are faults it shows."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = config_module.load(args.config, source_overrides(args))
    except config_module.ConfigError as exc:
        print(f"greengate-kiosk: {exc}", flush=True)
        if not os.environ.get("NOTIFY_SOCKET"):
            return 2  # a person at a terminal, or a script: the message is the answer
        stopping = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stopping.set())
        signal.signal(signal.SIGINT, lambda *_: stopping.set())
        return config_fault(args.config, str(exc), stopping)
    try:
        kiosk = Kiosk(cfg)
    except datadir.DataDirBusy as exc:
        print(f"greengate-kiosk: {exc}", flush=True)
        return 2
    signal.signal(signal.SIGTERM, kiosk.stop)
    signal.signal(signal.SIGINT, kiosk.stop)
    return kiosk.run(keep_running=getattr(args, "keep_running", False))
