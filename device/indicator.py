"""The kiosk's lights, buzzer and turnstile relay (gpiozero).

One background thread plays one *pattern* at a time. A pattern is a list of
steps, each setting all four outputs (green LED, red LED, buzzer, relay) for a
number of seconds, optionally followed by a loop that repeats until the next
pattern. `show()` applies the new pattern's first step in the caller's thread
before it returns, so a new decision replaces whatever was showing at once;
the thread only does the timing. Because every step sets every output, the
relay can only be energised by a step that says so, and only the green
pattern has such a step.

Patterns (the guard's table is in hardware/README.md):

- green: green on for green_seconds, one 0.1 s beep, relay pulse of
  min(1 s, green_seconds); then all off.
- red (any certificate reason): red on for red_seconds, two 0.3 s beeps; then off.
- clock_unknown: green and red alternate, 0.25 s each, three short beeps at the
  start; repeats until the next pattern.
- out_of_service: red 1 s on / 1 s off, one 0.6 s beep at the start; repeats
  until the next pattern.
- starting: green 0.2 s blip once a second until the next pattern.
- idle: all off.

Fault patterns (fault(kind), shown by the kiosk while no decision is showing, for
the worst active fault of device/faults.py; all repeat until the next pattern and
never light green, so none can be taken for a pass):

- config (a configuration or key file cannot be used): red flickers, 0.1 s on /
  0.1 s off, one 1 s beep at the start.
- storage (the data directory refuses writes): two short red flashes (0.15 s)
  every 2 s, two short beeps at the start.
- source (camera or scanner missing or lost): three short red flashes (0.15 s)
  every 2 s, three short beeps at the start.
- lists: the out_of_service pattern. clock: the clock_unknown pattern.

Place closed (place_closed(), shown by the kiosk while no decision and no fault is
showing, for as long as the policy bundle lists this kiosk in `closed`: its
organisation is suspended after a case): red on 2.75 s, dark 0.25 s, repeating, no
sound. Nearly steady red reads "stop" from afar, and the short dark gap tells it from
a red decision (steady, then dark) and from out_of_service (half on, half off). No
beep: the place stays closed for days, and a beep at the start would sound again
after every scan. A scan at a closed place shows the ordinary red pattern.
"""

import logging
import sys
import threading
import time
from dataclasses import dataclass

from gpiozero import LED, Buzzer, DigitalOutputDevice

from greengate.decision import Decision, Reason, red

log = logging.getLogger(__name__)

OUTPUTS = ("green", "red", "buzzer", "relay")


@dataclass(frozen=True, slots=True)
class Step:
    seconds: float
    on: frozenset  # names from OUTPUTS that are on during this step


@dataclass(frozen=True, slots=True)
class Pattern:
    name: str
    steps: tuple  # played once
    loop: tuple = ()  # then repeated until the next pattern; empty: all off at the end


def timeline(total: float, **tracks) -> tuple:
    """Steps for `total` seconds from per-output on-intervals, e.g. green=[(0, 1.5)].

    Intervals are clipped to [0, total]; outputs not named stay off.
    """
    cuts = {0.0, total}
    for spans in tracks.values():
        for start, end in spans:
            cuts.update(t for t in (start, end) if 0 < t < total)
    cuts = sorted(cuts)
    steps: list[Step] = []
    for start, end in zip(cuts, cuts[1:]):
        on = frozenset(name for name, spans in tracks.items()
                       if any(s <= start < e for s, e in spans))
        if steps and steps[-1].on == on:
            steps[-1] = Step(steps[-1].seconds + end - start, on)
        else:
            steps.append(Step(end - start, on))
    return tuple(steps)


def _beeps(n: int, length: float, gap: float, start: float = 0.0) -> list:
    return [(start + i * (length + gap), start + i * (length + gap) + length) for i in range(n)]


class Indicator:
    """Green/red LEDs, buzzer and optional turnstile relay on BCM pins.

    `pin_factory=None` uses gpiozero's default (lgpio on a Pi); tests and the
    simulated kiosk pass a `gpiozero.pins.mock.MockFactory`.
    """

    # Pattern timings in seconds (class attributes so a test may shorten them).
    relay_max_seconds = 1.0  # a turnstile needs a pulse, not a held contact
    beep_short = 0.1  # green
    beep_long = 0.3  # red: two of them, 0.15 s apart
    blink_fast = 0.25  # clock_unknown: green/red alternation
    blink_slow = 1.0  # out_of_service: red on, then off
    starting_period = 1.0  # starting: a green blip (a fifth of it) once per period
    flicker = 0.1  # config fault: red on, then off
    flash = 0.15  # storage/source faults: each short red flash, and the gap after it
    flash_period = 2.0  # storage/source faults: one group of flashes per period
    closed_on = 2.75  # place closed: red on this long...
    closed_off = 0.25  # ...then dark this long, repeating

    def __init__(self, green_pin: int, red_pin: int, buzzer_pin: int,
                 relay_pin: int | None = None, green_seconds: float = 1.5,
                 red_seconds: float = 3.0, pin_factory=None, *,
                 relay_active_high: bool = True):
        if relay_pin is not None and relay_pin < 0:
            relay_pin = None
        if not (green_seconds > 0 and red_seconds > 0):
            raise ValueError("green_seconds and red_seconds must be positive")
        self.green_seconds = float(green_seconds)
        self.red_seconds = float(red_seconds)
        self._devices = {}
        try:
            self._devices["green"] = LED(green_pin, pin_factory=pin_factory)
            self._devices["red"] = LED(red_pin, pin_factory=pin_factory)
            self._devices["buzzer"] = Buzzer(buzzer_pin, pin_factory=pin_factory)
            if relay_pin is not None:
                self._devices["relay"] = DigitalOutputDevice(
                    relay_pin, active_high=relay_active_high, initial_value=False,
                    pin_factory=pin_factory)
        except BaseException:
            for device in self._devices.values():
                device.close()
            raise
        self.has_relay = relay_pin is not None
        self._cond = threading.Condition()
        self._pattern: Pattern | None = None
        self._steps: tuple = ()
        self._index = 0
        self._deadline = 0.0
        self._generation = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="greengate-indicator", daemon=True)
        self._thread.start()

    # --- public API ------------------------------------------------------------

    @property
    def pattern(self) -> str | None:
        """Name of the pattern showing now ("green", "red", ...), None when idle."""
        with self._cond:
            return self._pattern.name if self._pattern else None

    def show(self, decision: Decision) -> None:
        """Show a decision at once, replacing whatever is showing; returns immediately."""
        self._play(self.pattern_for(decision))

    def fault(self, kind: str) -> None:
        """Show a fault of device/faults.py (its pattern is in the module docstring)."""
        self._play(self.fault_pattern(kind))

    def starting(self) -> None:
        """Starting-up pattern, until the first show()/idle()."""
        period = self.starting_period
        self._play(Pattern("starting", (), timeline(period, green=[(0, period / 5)])))

    def place_closed(self) -> None:
        """The place-closed pattern (module docstring), until the next pattern."""
        self._play(self.closed_pattern())

    def idle(self) -> None:
        """Everything off."""
        self._play(None)

    def lamp_test(self, seconds: float = 0.4, gap: float = 0.2) -> None:
        """Blink green, red, buzzer and (if fitted) relay once each, in turn; blocks until done.

        Note: the relay step briefly releases a connected turnstile.
        """
        outputs = [name for name in OUTPUTS if name in self._devices]
        tracks = {name: [(i * (seconds + gap), i * (seconds + gap) + seconds)]
                  for i, name in enumerate(outputs)}
        pattern = Pattern("lamp_test", timeline(len(outputs) * (seconds + gap), **tracks))
        generation = self._play(pattern)
        with self._cond:
            self._cond.wait_for(lambda: self._generation != generation or self._pattern is None
                                or self._closed, timeout=len(outputs) * (seconds + gap) + 5)

    def close(self) -> None:
        """Stop any pattern, switch every output off (relay first) and release the pins."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._pattern = None
            self._generation += 1
            self._apply(frozenset())
            self._cond.notify_all()
        self._thread.join(timeout=2)
        for name in ("relay", "buzzer", "red", "green"):
            device = self._devices.get(name)
            if device is not None:
                try:
                    device.off()
                    device.close()
                except Exception:  # closing must never raise on the way out
                    log.exception("indicator: could not release the %s pin", name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- patterns ---------------------------------------------------------------

    def pattern_for(self, decision: Decision) -> Pattern:
        """The pattern show() plays for a decision."""
        if decision.green:
            g = self.green_seconds
            relay = [(0, min(self.relay_max_seconds, g))] if self.has_relay else []
            return Pattern("green", timeline(g, green=[(0, g)], buzzer=[(0, self.beep_short)],
                                             relay=relay))
        if decision.reason == Reason.CLOCK_UNKNOWN:
            half = self.blink_fast
            cycle = timeline(2 * half, green=[(0, half)], red=[(half, 2 * half)])
            first = timeline(4 * half, green=[(0, half), (2 * half, 3 * half)],
                             red=[(half, 2 * half), (3 * half, 4 * half)],
                             buzzer=_beeps(3, 0.08, 0.08))
            return Pattern("clock_unknown", first, cycle)
        if decision.reason == Reason.OUT_OF_SERVICE:
            on = self.blink_slow
            return Pattern("out_of_service", timeline(2 * on, red=[(0, on)], buzzer=[(0, 0.6)]),
                           timeline(2 * on, red=[(0, on)]))
        r = self.red_seconds
        return Pattern("red", timeline(r, red=[(0, r)], buzzer=_beeps(2, self.beep_long, 0.15)))

    def closed_pattern(self) -> Pattern:
        """The pattern place_closed() plays: never green, never the relay, no sound."""
        on, off = self.closed_on, self.closed_off
        return Pattern("place_closed", (), timeline(on + off, red=[(0, on)]))

    def fault_pattern(self, kind: str) -> Pattern:
        """The pattern fault() plays for a fault kind (device.faults.KINDS)."""
        if kind == "lists":
            return self.pattern_for(red(Reason.OUT_OF_SERVICE, "lists"))
        if kind == "clock":
            return self.pattern_for(red(Reason.CLOCK_UNKNOWN, "clock"))
        if kind == "config":
            f = self.flicker
            return Pattern("config_fault", timeline(2 * f * 5, red=_beeps(5, f, f),
                                                    buzzer=[(0, 1.0)]),
                           timeline(2 * f, red=[(0, f)]))
        flashes = {"storage": 2, "source": 3}.get(kind)
        if flashes is None:
            raise ValueError(f"unknown fault kind {kind!r}")
        f, period = self.flash, max(self.flash_period, 2 * flashes * self.flash)
        cycle = timeline(period, red=_beeps(flashes, f, f))
        return Pattern(f"{kind}_fault",
                       timeline(period, red=_beeps(flashes, f, f),
                                buzzer=_beeps(flashes, 0.08, 2 * f - 0.08)),
                       cycle)

    # --- machinery ----------------------------------------------------------------

    def _play(self, pattern: Pattern | None) -> int:
        with self._cond:
            if self._closed:
                raise RuntimeError("indicator is closed")
            self._generation += 1
            self._pattern = pattern
            self._steps = pattern.steps if pattern else ()
            self._index = 0
            if pattern and not self._steps:
                self._steps = pattern.loop
            if self._steps:
                self._apply(self._steps[0].on)
                self._deadline = time.monotonic() + self._steps[0].seconds
            else:
                self._pattern = None
                self._apply(frozenset())
            self._cond.notify_all()
            return self._generation

    def _apply(self, on: frozenset) -> None:
        """Set every output; called with the lock held.

        Everything that goes off goes off first (relay first of all), so a change
        of pattern never has both LEDs, or a red LED and the relay, on together.
        """
        for want in (False, True):
            for name in ("relay", "buzzer", "red", "green"):
                device = self._devices.get(name)
                if device is None or (name in on) != want:
                    continue
                try:
                    if bool(device.value) != want:
                        device.value = want
                except Exception:
                    log.exception("indicator: could not set the %s pin", name)

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                if self._pattern is None:
                    self._cond.wait()
                    continue
                remaining = self._deadline - time.monotonic()
                if remaining > 0:
                    self._cond.wait(remaining)  # a new pattern or close() wakes us early
                    continue
                self._index += 1
                if self._index >= len(self._steps):
                    if not self._pattern.loop:
                        self._pattern = None
                        self._apply(frozenset())
                        self._cond.notify_all()
                        continue
                    self._steps, self._index = self._pattern.loop, 0
                step = self._steps[self._index]
                self._apply(step.on)
                # From the previous deadline, not from now, so loops do not drift;
                # after a stall longer than a step, restart the clock instead of racing.
                self._deadline += step.seconds
                now = time.monotonic()
                if self._deadline < now:
                    self._deadline = now + step.seconds


def make_indicator(section, pin_factory=None) -> Indicator:
    """An Indicator from the config's [indicator] section (or any object with its keys).

    backend "mock" runs on gpiozero's MockFactory (the simulated kiosk), "gpio" on
    gpiozero's default factory; an explicit `pin_factory` wins over both.
    """
    backend = getattr(section, "backend", "gpio")
    if pin_factory is None:
        if backend == "mock":
            from gpiozero.pins.mock import MockFactory
            pin_factory = MockFactory()
        elif backend != "gpio":
            raise ValueError(f"unknown indicator backend {backend!r} (gpio or mock)")
    relay_pin = getattr(section, "relay_pin", -1)
    return Indicator(section.green_pin, section.red_pin, section.buzzer_pin,
                     relay_pin=relay_pin if relay_pin is not None and relay_pin >= 0 else None,
                     green_seconds=getattr(section, "green_seconds", 1.5),
                     red_seconds=getattr(section, "red_seconds", 3.0),
                     pin_factory=pin_factory,
                     relay_active_high=getattr(section, "relay_active_high", True))


def main(argv=None) -> int:
    """`python -m device.indicator off --config FILE`: switch every output off.

    The systemd unit runs this after the kiosk stops for any reason (ExecStopPost=),
    so a crash or a watchdog kill cannot leave a lamp lit or the relay energised:
    a GPIO line released by a killed process is not guaranteed to go low on
    every Pi model.
    """
    import argparse

    from .config import ConfigError, load

    parser = argparse.ArgumentParser(prog="python -m device.indicator")
    parser.add_argument("action", choices=["off"])
    parser.add_argument("--config", required=True, metavar="FILE")
    args = parser.parse_args(argv)
    try:
        section = load(args.config).indicator
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    make_indicator(section).close()  # close() drives every output low first
    return 0


if __name__ == "__main__":
    sys.exit(main())
