"""The kiosk's lights (device/indicator.py) on gpiozero's MockFactory.

Pin histories (`MockPin.states`: (seconds since the previous change, state))
give the timings; the tests only sleep to wait for a pattern to finish or to
let a repeating pattern run, never to measure a duration.
"""

import time
from math import isclose
from types import SimpleNamespace

import pytest
from gpiozero.pins.mock import MockFactory

from device.config import SCHEMA
from device.indicator import OUTPUTS, Indicator, main, make_indicator
from greengate.decision import Decision, Reason, red

PINS = {"green": 17, "red": 27, "buzzer": 22, "relay": 23}
GREEN = Decision("green", Reason.OK)
RED = red(Reason.EXPIRED, "expired on 2021-09-01")
CLOCK = red(Reason.CLOCK_UNKNOWN, "clock below the floor")
OOS = red(Reason.OUT_OF_SERVICE, "status list older than 72 h")
CERT_REASONS = [r for r in Reason if r not in (Reason.OK, Reason.CLOCK_UNKNOWN,
                                               Reason.OUT_OF_SERVICE)]


class Kiosk(SimpleNamespace):
    """An Indicator and its mock pins, by output name."""

    def states(self):
        return {name: pin.state for name, pin in self.pins.items()}

    def clear(self):
        for pin in self.pins.values():
            pin.clear_states()

    def history(self, name):
        """[(seconds since clear(), state), ...] for one output, the first entry the start."""
        t, out = 0.0, []
        for entry in self.pins[name].states:
            t += entry.timestamp
            out.append((t, entry.state))
        return out

    def pulses(self, name):
        """[(on at, on for), ...] for one output, in seconds since clear()."""
        result, on_at = [], None
        for t, state in self.history(name):
            if state and on_at is None:
                on_at = t
            elif not state and on_at is not None:
                result.append((on_at, t - on_at))
                on_at = None
        if on_at is not None:
            result.append((on_at, None))  # still on
        return result

    def wait_idle(self, timeout=3.0):
        deadline = time.monotonic() + timeout
        while self.indicator.pattern is not None:
            assert time.monotonic() < deadline, f"{self.indicator.pattern} still showing"
            time.sleep(0.005)

    def sample(self, seconds, every=0.005):
        """The distinct (green, red) LED states seen while sampling for `seconds`."""
        seen, end = [], time.monotonic() + seconds
        while time.monotonic() < end:
            now = (self.pins["green"].state, self.pins["red"].state)
            if not seen or seen[-1] != now:
                seen.append(now)
            time.sleep(every)
        return seen


def make_kiosk(relay=True, **kwargs) -> Kiosk:
    factory = MockFactory()
    kwargs.setdefault("green_seconds", 0.2)
    kwargs.setdefault("red_seconds", 0.2)
    indicator = Indicator(PINS["green"], PINS["red"], PINS["buzzer"],
                          PINS["relay"] if relay else None, pin_factory=factory, **kwargs)
    names = OUTPUTS if relay else OUTPUTS[:3]
    kiosk = Kiosk(factory=factory, indicator=indicator,
                  pins={name: factory.pin(PINS[name]) for name in names})
    kiosk.clear()
    return kiosk


@pytest.fixture
def kiosk():
    k = make_kiosk()
    yield k
    k.indicator.close()
    k.factory.reset()


@pytest.fixture
def fast(kiosk):
    """The kiosk with the repeating patterns sped up (clock_unknown, out_of_service)."""
    kiosk.indicator.blink_fast = 0.05
    kiosk.indicator.blink_slow = 0.1
    kiosk.indicator.starting_period = 0.1
    return kiosk


def test_everything_starts_off(kiosk):
    assert kiosk.states() == dict.fromkeys(OUTPUTS, False)
    assert kiosk.indicator.pattern is None


def test_green_lights_beeps_and_pulses_the_relay_then_clears(kiosk):
    kiosk.indicator.show(GREEN)
    # Applied before show() returns: no waiting for the pattern thread.
    assert kiosk.states() == {"green": True, "red": False, "buzzer": True, "relay": True}
    assert kiosk.indicator.pattern == "green"
    kiosk.wait_idle()
    assert kiosk.states() == dict.fromkeys(OUTPUTS, False)
    [(on_at, green_for)] = kiosk.pulses("green")
    assert isclose(green_for, 0.2, abs_tol=0.1)
    [(_, beep)] = kiosk.pulses("buzzer")
    assert isclose(beep, 0.1, abs_tol=0.08)
    [(relay_at, relay_for)] = kiosk.pulses("relay")
    assert isclose(relay_for, 0.2, abs_tol=0.1)  # min(1 s, green_seconds)
    assert kiosk.pulses("red") == []


def test_default_timings_from_the_pin_history():
    """Green 1.5 s with a 1 s relay pulse, red 3 s with two beeps: both kiosks run at once."""
    g, r = make_kiosk(green_seconds=1.5, red_seconds=3.0), make_kiosk(green_seconds=1.5,
                                                                     red_seconds=3.0)
    try:
        assert (g.indicator.green_seconds, g.indicator.red_seconds) == (1.5, 3.0)
        g.indicator.show(GREEN)
        r.indicator.show(RED)
        g.wait_idle(timeout=4)
        r.wait_idle(timeout=6)

        [(at, green_for)] = g.pulses("green")
        assert isclose(at, 0, abs_tol=0.1) and isclose(green_for, 1.5, abs_tol=0.15)
        [(at, relay_for)] = g.pulses("relay")
        assert isclose(at, 0, abs_tol=0.1) and isclose(relay_for, 1.0, abs_tol=0.15)
        [(_, beep)] = g.pulses("buzzer")
        assert isclose(beep, 0.1, abs_tol=0.08)
        assert g.pulses("red") == []

        [(at, red_for)] = r.pulses("red")
        assert isclose(at, 0, abs_tol=0.1) and isclose(red_for, 3.0, abs_tol=0.15)
        beeps = r.pulses("buzzer")
        assert len(beeps) == 2
        assert all(isclose(length, 0.3, abs_tol=0.1) for _, length in beeps)
        assert r.pulses("green") == [] and r.pulses("relay") == []
    finally:
        for k in (g, r):
            k.indicator.close()


def test_red_holds_then_clears(kiosk):
    kiosk.indicator.show(RED)
    assert kiosk.states() == {"green": False, "red": True, "buzzer": True, "relay": False}
    kiosk.wait_idle()
    assert kiosk.states() == dict.fromkeys(OUTPUTS, False)
    [(_, red_for)] = kiosk.pulses("red")
    assert isclose(red_for, 0.2, abs_tol=0.1)
    assert kiosk.pulses("relay") == [] and kiosk.pulses("green") == []


@pytest.mark.parametrize("reason", CERT_REASONS)
def test_every_certificate_reason_shows_red_and_never_the_relay(kiosk, reason):
    pattern = kiosk.indicator.pattern_for(red(reason, "x"))
    assert pattern.name == "red"
    steps = pattern.steps + pattern.loop
    assert all("relay" not in s.on and "green" not in s.on for s in steps)
    assert all("red" in s.on for s in steps)  # held for the whole red_seconds


def test_only_green_ever_energises_the_relay(fast):
    ind = fast.indicator
    for decision in (RED, CLOCK, OOS):
        pattern = ind.pattern_for(decision)
        assert not any("relay" in s.on for s in pattern.steps + pattern.loop), pattern.name
    assert any("relay" in s.on for s in ind.pattern_for(GREEN).steps)
    # And on the pins, while the patterns run.
    for show in (lambda: ind.show(RED), lambda: ind.show(CLOCK), lambda: ind.show(OOS),
                 ind.starting):
        show()
        time.sleep(0.15)
    ind.idle()
    assert fast.pulses("relay") == []


def test_a_new_decision_replaces_the_old_pattern_at_once():
    k = make_kiosk(green_seconds=5, red_seconds=5)
    try:
        k.indicator.show(GREEN)
        assert k.states()["relay"] and k.states()["green"]
        k.indicator.show(RED)  # the next person, while green still shows
        assert k.states() == {"green": False, "red": True, "buzzer": True, "relay": False}
        assert k.indicator.pattern == "red"
        k.indicator.show(GREEN)
        assert k.states() == {"green": True, "red": False, "buzzer": True, "relay": True}
        k.indicator.show(OOS)
        assert k.indicator.pattern == "out_of_service"
        assert k.states()["red"] and not k.states()["green"] and not k.states()["relay"]
        # The replaced patterns left nothing behind: the relay pulsed exactly twice,
        # each time cut short by the next decision.
        assert [length is not None and length < 1 for _, length in k.pulses("relay")] == \
            [True, True]
        # The green pattern's timer did not come back to switch anything later.
        time.sleep(0.3)
        assert k.indicator.pattern == "out_of_service"
    finally:
        k.indicator.close()


def test_red_holds_until_the_next_show():
    k = make_kiosk(red_seconds=5)
    try:
        k.indicator.show(RED)
        time.sleep(0.1)
        assert k.states()["red"]
        k.indicator.show(GREEN)
        assert not k.states()["red"] and k.states()["green"]
    finally:
        k.indicator.close()


def test_clock_unknown_alternates_both_leds_until_the_next_show(fast):
    fast.indicator.show(CLOCK)
    seen = fast.sample(0.6)
    assert fast.indicator.pattern == "clock_unknown"  # still going after many cycles
    assert (True, True) not in seen  # alternating, never both at once
    assert seen.count((True, False)) >= 3 and seen.count((False, True)) >= 3
    assert len(fast.pulses("buzzer")) >= 1 and fast.pulses("relay") == []
    fast.indicator.show(RED)
    assert fast.indicator.pattern == "red"


def test_out_of_service_blinks_red_only_until_the_next_show(fast):
    fast.indicator.show(OOS)
    seen = fast.sample(0.6)
    assert fast.indicator.pattern == "out_of_service"
    assert all(not green for green, _ in seen)
    assert seen.count((False, True)) >= 2 and seen.count((False, False)) >= 2
    assert len(fast.pulses("red")) >= 3
    assert fast.pulses("relay") == []
    fast.indicator.idle()
    assert fast.states() == dict.fromkeys(OUTPUTS, False)


def _signature(k, show, seconds=0.45):
    """What a guard sees: LED states, how often each LED lit, still running afterwards."""
    k.indicator.idle()
    k.clear()
    show()
    seen = k.sample(seconds)
    return (frozenset(seen), len(k.pulses("green")) > 1, len(k.pulses("red")) > 1,
            k.indicator.pattern is not None)


def test_the_four_patterns_are_told_apart(fast):
    """green, red, clock_unknown and out_of_service each look different."""
    ind = fast.indicator
    ind.green_seconds = ind.red_seconds = 0.3
    sigs = {
        "green": _signature(fast, lambda: ind.show(GREEN)),
        "red": _signature(fast, lambda: ind.show(RED)),
        "clock_unknown": _signature(fast, lambda: ind.show(CLOCK)),
        "out_of_service": _signature(fast, lambda: ind.show(OOS)),
    }
    assert len(set(sigs.values())) == 4, sigs
    # green: only the green LED, steady, then over; red: only red, steady, over.
    assert sigs["green"] == (frozenset({(False, False), (True, False)}), False, False, False)
    assert sigs["red"] == (frozenset({(False, False), (False, True)}), False, False, False)
    # clock_unknown: both LEDs blink (in turn) and keep going.
    assert sigs["clock_unknown"][1:] == (True, True, True)
    # out_of_service: only red blinks, and keeps going.
    assert sigs["out_of_service"][1:] == (False, True, True)
    assert all(not green for green, _ in sigs["out_of_service"][0])


def test_starting_blinks_green_until_the_first_show(fast):
    fast.indicator.starting()
    assert fast.indicator.pattern == "starting"
    time.sleep(0.35)
    assert len(fast.pulses("green")) >= 2 and fast.pulses("red") == []
    assert all(length is None or length < 0.05 for _, length in fast.pulses("green"))  # blips
    assert fast.pulses("buzzer") == [] and fast.pulses("relay") == []
    fast.indicator.show(RED)
    assert fast.states() == {"green": False, "red": True, "buzzer": True, "relay": False}


def test_idle_switches_everything_off(kiosk):
    kiosk.indicator.show(GREEN)
    kiosk.indicator.idle()
    assert kiosk.states() == dict.fromkeys(OUTPUTS, False)
    assert kiosk.indicator.pattern is None
    time.sleep(0.3)  # nothing comes back on
    assert kiosk.states() == dict.fromkeys(OUTPUTS, False)


@pytest.mark.parametrize("decision", [GREEN, CLOCK, OOS], ids=["green", "clock", "oos"])
def test_close_switches_everything_off_and_releases_the_pins(decision):
    k = make_kiosk(green_seconds=5)
    k.indicator.show(decision)
    time.sleep(0.05)
    k.indicator.close()
    assert k.states() == dict.fromkeys(OUTPUTS, False)
    assert not k.indicator._thread.is_alive()
    time.sleep(0.1)
    assert k.states() == dict.fromkeys(OUTPUTS, False)
    k.indicator.close()  # twice is fine
    with pytest.raises(RuntimeError):
        k.indicator.show(GREEN)
    # The pins are free again for a new Indicator.
    again = Indicator(17, 27, 22, 23, pin_factory=k.factory)
    again.close()


def test_lamp_test_blinks_each_output_once_in_turn(kiosk):
    started = time.monotonic()
    kiosk.indicator.lamp_test(seconds=0.05, gap=0.03)
    assert time.monotonic() - started >= 4 * 0.08 - 0.02  # it blocks until done
    assert kiosk.states() == dict.fromkeys(OUTPUTS, False)
    pulses = {name: kiosk.pulses(name) for name in OUTPUTS}
    assert all(len(p) == 1 for p in pulses.values()), pulses
    order = sorted(OUTPUTS, key=lambda name: pulses[name][0][0])
    assert order == ["green", "red", "buzzer", "relay"]
    for first, second in zip(order, order[1:]):  # one at a time
        (on_at, length), (next_at, _) = pulses[first][0], pulses[second][0]
        assert on_at + length <= next_at + 0.005


def test_without_a_relay():
    k = make_kiosk(relay=False)
    try:
        assert not k.indicator.has_relay
        k.indicator.show(GREEN)
        assert k.states() == {"green": True, "red": False, "buzzer": True}
        k.indicator.idle()
        k.clear()
        k.indicator.lamp_test(seconds=0.02, gap=0.01)
        assert [len(k.pulses(n)) for n in ("green", "red", "buzzer")] == [1, 1, 1]
    finally:
        k.indicator.close()


def test_make_indicator_from_the_config_defaults():
    values = {key: default for key, (_, default, _) in SCHEMA["indicator"].items()}
    assert values["relay_pin"] == -1
    factory = MockFactory()
    ind = make_indicator(SimpleNamespace(**values), pin_factory=factory)
    try:
        assert (ind.green_seconds, ind.red_seconds, ind.has_relay) == (1.5, 3.0, False)
        ind.show(GREEN)
        assert factory.pin(17).state and not factory.pin(27).state
    finally:
        ind.close()


def test_make_indicator_mock_backend_simulates_the_pins():
    section = SimpleNamespace(backend="mock", green_pin=5, red_pin=6, buzzer_pin=13,
                              relay_pin=19, green_seconds=0.2, red_seconds=0.2)
    ind = make_indicator(section)
    try:
        assert isinstance(ind._devices["green"].pin_factory, MockFactory)
        assert ind.has_relay
        ind.show(GREEN)
        assert ind._devices["relay"].pin.state
    finally:
        ind.close()
    with pytest.raises(ValueError):
        make_indicator(SimpleNamespace(**{**vars(section), "backend": "pigpio"}))


def test_durations_must_be_positive():
    with pytest.raises(ValueError):
        Indicator(17, 27, 22, pin_factory=MockFactory(), green_seconds=0)


def test_off_command_for_exec_stop_post(tmp_path, capsys):
    config = tmp_path / "kiosk.toml"
    config.write_text('[kiosk]\nid = "t1"\n[indicator]\nbackend = "mock"\nrelay_pin = 23\n'
                      '[mqtt]\ntls = false\n[bundles]\nfleet_key = "k"\n'
                      '[privacy]\npseudonyms = false\n')
    assert main(["off", "--config", str(config)]) == 0
    assert main(["off", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "cannot read" in capsys.readouterr().err


# --- fault patterns (device/faults.py kinds; the guard's table in hardware/README.md) --------
FAULT_KINDS = ("config", "storage", "source", "lists", "clock")


def test_every_fault_repeats_never_lights_green_and_never_the_relay(fast):
    ind = fast.indicator
    ind.flicker, ind.flash, ind.flash_period = 0.03, 0.04, 0.4
    for kind in ("config", "storage", "source"):
        pattern = ind.fault_pattern(kind)
        steps = pattern.steps + pattern.loop
        assert pattern.loop, kind
        assert not any("green" in s.on or "relay" in s.on for s in steps), kind
    with pytest.raises(ValueError):
        ind.fault("disk")
    for kind in FAULT_KINDS:
        ind.fault(kind)
        time.sleep(0.1)
    ind.idle()
    assert fast.pulses("relay") == []


def _flashes_per_period(k, kind, period):
    """Red flashes counted within one period of the repeating part."""
    k.indicator.idle()
    k.clear()
    k.indicator.fault(kind)
    time.sleep(3 * period + 0.05)
    start = period  # skip the first period (it carries the beeps)
    return len([at for at, _ in k.pulses("red") if start <= at < start + period])


def test_the_fault_patterns_are_told_apart_from_each_other_and_the_decisions(fast):
    """What a guard counts: config flickers, storage flashes twice, source three times,
    lists (out_of_service) one long red, clock alternates; none shows green but clock."""
    ind = fast.indicator
    ind.flicker, ind.flash, ind.flash_period = 0.03, 0.04, 0.5
    assert _flashes_per_period(fast, "storage", 0.5) == 2
    assert _flashes_per_period(fast, "source", 0.5) == 3
    assert _flashes_per_period(fast, "config", 0.5) >= 6
    ind.green_seconds = ind.red_seconds = 0.3
    sigs = {kind: _signature(fast, lambda: ind.fault(kind), seconds=0.6) for kind in FAULT_KINDS}
    sigs["green"] = _signature(fast, lambda: ind.show(GREEN), seconds=0.6)
    sigs["red"] = _signature(fast, lambda: ind.show(RED), seconds=0.6)
    assert sigs["lists"] == _signature(fast, lambda: ind.show(OOS), seconds=0.6)
    for kind in ("config", "storage", "source"):
        assert sigs[kind][1:] == (False, True, True), kind  # red only, blinking, going on
        assert all(not green for green, _ in sigs[kind][0])
    names = {kind: ind.fault_pattern(kind).name for kind in FAULT_KINDS}
    assert names == {"config": "config_fault", "storage": "storage_fault",
                     "source": "source_fault", "lists": "out_of_service",
                     "clock": "clock_unknown"}
    # the lengths of the red flashes tell lists (long) from storage/source (short)
    fast.indicator.idle()
    fast.clear()
    ind.fault("storage")
    time.sleep(1.1)
    assert all(length is None or length < 0.1 for _, length in fast.pulses("red"))
    fast.indicator.idle()
    fast.clear()
    ind.blink_slow = 0.3
    ind.fault("lists")
    time.sleep(1.1)
    assert any(length is not None and length >= 0.25 for _, length in fast.pulses("red"))
