"""The kiosk's one TOML configuration file, validated with errors that name the line.

Every key, its type, default and meaning is in SCHEMA below;
docs/kiosk-config.md is generated from it (`python -m device.config`).
"""

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from greengate import messages


class ConfigError(ValueError):
    pass


_KIOSK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")

# section -> key -> Key(type, default, meaning); default _REQUIRED: the key must be given.
_REQUIRED = object()


class Key(NamedTuple):
    kind: type
    default: object
    meaning: str


SCHEMA: dict[str, dict[str, Key]] = {
    "kiosk": {
        "id": Key(str, _REQUIRED, "the kiosk's id: its MQTT identity and certificate CN "
                                  "(letters, digits, `-`, `_`, `.`; at most 63)"),
        "location": Key(str, "", "where it stands, for the dashboard"),
        "district": Key(str, "", "its district, for the dashboard"),
        "deployment": Key(str, "default", "which fleet's bundles it takes (bundle topics and "
                                          "the `deployment` field of every bundle)"),
        "policy": Key(str, "hcmc-2021", "the entry policy it applies, by name, from the policy "
                                        "bundle"),
        "data_dir": Key(str, "", "bundles, outbox, time floor and session counter; one "
                                 "kiosk process each (locked). Empty: "
                                 "`/var/lib/greengate/<id>`, where an earlier version's "
                                 "files in `/var/lib/greengate` are moved on first start"),
    },
    "source": {
        "kind": Key(str, "picamera2", "where frames come from (docs/camera.md)"),
        "path": Key(str, "", "v4l2: device (`/dev/video0`); folder: folder, image or video "
                             "file; scanner: serial port, pyserial URL, FIFO or file"),
        "width": Key(int, 1280, "camera frame width in pixels"),
        "height": Key(int, 960, "camera frame height in pixels"),
        "fps": Key(float, 15.0, "camera frames per second"),
        "lens_position": Key(float, -1.0, "picamera2 focus in dioptres (1 / metres); "
                                          "negative: continuous autofocus"),
        "interval": Key(float, 0.0, "folder: seconds between frames (0: as fast as possible)"),
        "loop": Key(bool, False, "folder: start again at the end"),
        "baudrate": Key(int, 9600, "serial scanner speed"),
    },
    "decoder": {
        "backend": Key(str, "auto", "`auto`: zxing-cpp with retries on enhanced crops when "
                                    "installed, else pyzbar; or force one"),
        "cooldown": Key(float, 3.0, "seconds the same code held up counts as one scan"),
    },
    "indicator": {
        "backend": Key(str, "gpio", "`gpio`: the Pi's pins; `mock`: gpiozero's MockFactory "
                                    "(simulated kiosk)"),
        "green_pin": Key(int, 17, "BCM pin of the green LED"),
        "red_pin": Key(int, 27, "BCM pin of the red LED"),
        "buzzer_pin": Key(int, 22, "BCM pin of the buzzer"),
        "relay_pin": Key(int, -1, "BCM pin of a turnstile relay; negative: none"),
        "relay_active_high": Key(bool, True, "false for relay boards that switch on a low input"),
        "green_seconds": Key(float, 1.5, "how long green holds (the relay pulses meanwhile)"),
        "red_seconds": Key(float, 3.0, "how long red holds"),
    },
    "mqtt": {
        "host": Key(str, "localhost", "the broker"),
        "port": Key(int, 8883, "the broker's port"),
        "brokers": Key(list, [], "several brokers, in order of preference: "
                                 "`[\"district.example:8883\", \"core.example:8883\"]` "
                                 "(its district's first, the core's as fallback; "
                                 "docs/scaling.md). Set: `host` and `port` are not"),
        "primary_retry": Key(float, 300.0, "with `brokers`: while on another broker, seconds "
                                           "between tries of the first"),
        "failover_after": Key(float, 120.0, "with `brokers`: seconds without any "
                                            "confirmation from the fleet, scans waiting, "
                                            "before the kiosk moves to the next broker (a "
                                            "district cut off from the core)"),
        "tls": Key(bool, True, "TLS with the kiosk's client certificate; false only for demos"),
        "ca": Key(str, "", "PEM of the CA that signed the broker's certificate"),
        "cert": Key(str, "", "the kiosk's client certificate (PEM)"),
        "key": Key(str, "", "the kiosk's private key (PEM)"),
        "keepalive": Key(int, 30, "MQTT keepalive, seconds: the last will fires after 1.5 x this"),
        "heartbeat": Key(float, 30.0, "seconds between heartbeats"),
        "replay_rate": Key(float, 50.0, "outbox messages per second replayed after an outage "
                                        "(live scans go first)"),
        "confirm_timeout": Key(float, 30.0, "seconds a sent scan waits for the fleet's "
                                            "confirmation before it is sent again (longer while "
                                            "none comes, up to 8 x)"),
    },
    "bundles": {
        "fleet_key": Key(str, _REQUIRED, "PEM of the fleet's bundle-signing public key, pinned "
                                         "at enrolment"),
        "http_url": Key(str, "", "fallback while MQTT is down: the fleet's base URL, e.g. "
                                 "`https://fleet:8443`; empty: none"),
        "http_interval": Key(float, 600.0, "seconds between HTTP fallback fetches"),
        "offline_budget_hours": Key(float, 72.0, "lists older than this: out_of_service"),
    },
    "privacy": {
        "pseudonyms": Key(bool, True, "send each scan's holder identity sealed to the "
                                      "fleet's key, from which the fleet derives the holder "
                                      "pseudonym (docs/privacy.md)"),
        "pseudonym_key": Key(str, "", "obsolete: the key earlier versions held; never used, "
                                      "and removed from the file when the kiosk starts"),
    },
    "outbox": {
        "max_rows": Key(int, 500_000, "scans kept in full while unreported; beyond it, "
                                      "decisions are counted in hourly summaries "
                                      "(docs/protocol.md)"),
    },
}

CHOICES = {
    ("source", "kind"): ("picamera2", "v4l2", "folder", "scanner"),
    ("decoder", "backend"): ("auto", "pyzbar", "zxing"),
    ("indicator", "backend"): ("gpio", "mock"),
}


@dataclass
class Config:
    path: Path
    sections: dict[str, dict] = field(default_factory=dict)
    text: str = ""  # the file as read: later checks (file_errors) name its lines

    def __getattr__(self, name):
        try:
            return _Section(self.sections[name])
        except KeyError:
            raise AttributeError(name) from None

    def resolve(self, value: str) -> Path:
        """A path from the config, relative to the config file's folder."""
        p = Path(value)
        return p if p.is_absolute() else (self.path.parent / p)


class _Section:
    def __init__(self, values: dict):
        self.__dict__.update(values)


def _line_of(text: str, section: str, key: str | None) -> int | None:
    lines = text.splitlines()
    current = None
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        header = re.match(r"^\[\s*([A-Za-z0-9_.-]+)\s*\]", stripped)
        if header:
            current = header.group(1)
            if key is None and current == section:
                return number
            continue
        if current == section and key and re.match(rf"^{re.escape(key)}\s*=", stripped):
            return number
    return None


def _where(path: Path, text: str, section: str, key: str | None) -> str:
    line = _line_of(text, section, key)
    return f"{path}, line {line}" if line else str(path)


def load(path: str | Path, overrides: dict[str, dict] | None = None) -> Config:
    """overrides: {section: {key: value}} from the command line, validated like the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration: {exc.strerror}") from None
    return parse(text, path, overrides)


def parse(text: str, path: Path = Path("<config>"), overrides: dict[str, dict] | None = None) -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    for section, values in (overrides or {}).items():
        if isinstance(raw.get(section, {}), dict):
            raw.setdefault(section, {}).update(values)
    sections: dict[str, dict] = {}
    for section, table in raw.items():
        if section not in SCHEMA:
            raise ConfigError(f"{_where(path, text, section, None)}: unknown section [{section}] "
                              f"(known: {', '.join(SCHEMA)})")
        if not isinstance(table, dict):
            raise ConfigError(f"{_where(path, text, section, None)}: [{section}] must be a table")
    for section, keys in SCHEMA.items():
        table = raw.get(section, {})
        values = {}
        for key in table:
            if key not in keys:
                raise ConfigError(f"{_where(path, text, section, key)}: unknown key '{key}' in "
                                  f"[{section}] (known: {', '.join(keys)})")
        for key, (kind, default, _) in keys.items():
            where = _where(path, text, section, key)
            if key not in table:
                if default is _REQUIRED:
                    raise ConfigError(f"{_where(path, text, section, None)}: [{section}] needs "
                                      f"'{key}'")
                values[key] = default
                continue
            value = table[key]
            if kind is float and type(value) is int:
                value = float(value)
            if type(value) is not kind:
                raise ConfigError(f"{where}: '{key}' must be {_KIND_NAMES[kind]}, got {value!r}")
            choices = CHOICES.get((section, key))
            if choices and value not in choices:
                raise ConfigError(f"{where}: '{key}' must be one of {', '.join(choices)}, "
                                  f"got {value!r}")
            values[key] = value
        sections[section] = values
    config = Config(path, sections, text)
    _check(config, text)
    return config


_KIND_NAMES = {str: "text", int: "a whole number", float: "a number", bool: "true or false",
               list: "a list"}


def brokers(config) -> list[tuple[str, int]]:
    """The brokers to try, in order (checked by _check)."""
    if config.mqtt.brokers:
        return [messages.broker_address(b) for b in config.mqtt.brokers]
    return [(config.mqtt.host, config.mqtt.port)]


def _check(config: Config, text: str) -> None:
    path = config.path

    def fail(section, key, message):
        raise ConfigError(f"{_where(path, text, section, key)}: {message}")

    if not _KIOSK_ID.match(config.kiosk.id):
        fail("kiosk", "id", "'id' may hold letters, digits, '-', '_' and '.' (at most 63)")
    if config.source.kind in ("v4l2", "folder", "scanner") and not config.source.path:
        fail("source", "path", f"source kind '{config.source.kind}' needs 'path'")
    if config.source.kind in ("v4l2", "folder") and config.source.path and \
            config.source.kind == "folder" and not config.resolve(config.source.path).exists():
        fail("source", "path", f"folder or video {config.source.path!r} does not exist")
    for key in ("width", "height"):
        if not 16 <= getattr(config.source, key) <= 8192:
            fail("source", key, f"'{key}' must be between 16 and 8192 pixels")
    if config.decoder.cooldown < 0:
        fail("decoder", "cooldown", "'cooldown' must not be negative")
    pins = [config.indicator.green_pin, config.indicator.red_pin, config.indicator.buzzer_pin]
    if config.indicator.relay_pin >= 0:
        pins.append(config.indicator.relay_pin)
    if any(not 0 <= p <= 27 for p in pins):
        fail("indicator", None, "GPIO pins are BCM numbers 0-27")
    if len(set(pins)) != len(pins):
        fail("indicator", None, "two outputs share one GPIO pin")
    if not 1 <= config.mqtt.port <= 65535:
        fail("mqtt", "port", "'port' must be 1-65535")
    if config.mqtt.tls and not (config.mqtt.ca and config.mqtt.cert and config.mqtt.key):
        fail("mqtt", "tls", "TLS needs 'ca', 'cert' and 'key' (the kiosk's certificate)")
    if config.mqtt.heartbeat <= 0 or config.mqtt.keepalive <= 0:
        fail("mqtt", "heartbeat", "'heartbeat' and 'keepalive' must be positive")
    if config.mqtt.confirm_timeout < 1:
        fail("mqtt", "confirm_timeout", "'confirm_timeout' must be at least 1 second")
    if config.mqtt.brokers:
        table = tomllib.loads(text).get("mqtt", {}) if text else {}
        if "host" in table or "port" in table:
            fail("mqtt", "brokers", "give either 'brokers' or 'host' and 'port', not both")
        if len(config.mqtt.brokers) > 8:
            fail("mqtt", "brokers", "'brokers' names at most 8 brokers")
        for entry in config.mqtt.brokers:
            try:
                messages.broker_address(entry)
            except messages.MessageError as exc:
                fail("mqtt", "brokers", f"'brokers': {exc}")
    if config.mqtt.primary_retry < 10:
        fail("mqtt", "primary_retry", "'primary_retry' must be at least 10 s")
    if config.mqtt.failover_after < 5:
        fail("mqtt", "failover_after", "'failover_after' must be at least 5 s")
    if config.bundles.offline_budget_hours <= 0:
        fail("bundles", "offline_budget_hours", "'offline_budget_hours' must be positive")
    # an old file's pseudonym key is accepted (the kiosk must start) and never kept: the
    # kiosk removes it from the file at start (device/privacy.py)
    config.sections["privacy"]["pseudonym_key"] = ""
    if config.outbox.max_rows < 100:
        fail("outbox", "max_rows", "'max_rows' must be at least 100")


# --- the files the configuration names --------------------------------------------------
# Checked apart from load(): `python -m device.indicator off` (after every stop) must
# switch the lights off whatever state the key files are in.

def pem_problem(path: Path, kind: str) -> str | None:
    """What is wrong with a PEM file in plain words, or None. kind: "certificate"
    (one or more, as a CA file holds), "private key" or "public key" (PEM or DER)."""
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return f"file missing: {path}"
    except IsADirectoryError:
        return f"not a file: {path}"
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    try:
        if kind == "certificate":
            if not x509.load_pem_x509_certificates(data):
                raise ValueError("no certificate")
        elif kind == "private key":
            serialization.load_pem_private_key(data, password=None)
        else:
            from greengate.bundle import load_public_key
            load_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # TypeError: a password-protected key; the kiosk has no password to give
        return f"not a PEM {kind}: {path}"
    return None


def file_errors(config: Config) -> list[ConfigError]:
    """Every key file the configuration names that cannot be used, as ConfigErrors
    naming the configuration file and line, most important first: without the fleet
    key no list can be trusted; without the TLS files no report leaves the kiosk."""
    wanted = [("bundles", "fleet_key", "public key")]
    if config.mqtt.tls:
        wanted += [("mqtt", "ca", "certificate"), ("mqtt", "cert", "certificate"),
                   ("mqtt", "key", "private key")]
    errors = []
    for section, key, kind in wanted:
        value = getattr(getattr(config, section), key)
        problem = pem_problem(config.resolve(value), kind) if value else None
        if problem:
            where = _where(config.path, config.text, section, key)
            errors.append(ConfigError(f"{where}: '{key}': {problem}"))
    return errors


def load_fleet_key(config: Config):
    """The pinned fleet key, or ConfigError naming the file and line."""
    from greengate.bundle import load_public_key
    path = config.resolve(config.bundles.fleet_key)
    problem = pem_problem(path, "public key")
    if problem:
        raise ConfigError(f"{_where(config.path, config.text, 'bundles', 'fleet_key')}: "
                          f"'fleet_key': {problem}")
    return load_public_key(path.read_bytes())


def indicator_fallback(path: str | Path) -> "_Section":
    """The [indicator] section to show a configuration fault with when the file as a
    whole cannot be used: the file's own [indicator] keys where they are valid (a
    simulated kiosk keeps its mock pins), the defaults otherwise."""
    keys = SCHEMA["indicator"]
    values = {key: spec.default for key, spec in keys.items()}
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8")).get("indicator")
    except (OSError, ValueError):  # TOMLDecodeError and UnicodeDecodeError are ValueErrors
        raw = None
    if isinstance(raw, dict):
        mine = dict(values)
        for key, value in raw.items():
            spec = keys.get(key)
            if spec is None:
                continue
            if spec.kind is float and type(value) is int:
                value = float(value)
            if type(value) is spec.kind and value in CHOICES.get(("indicator", key), (value,)):
                mine[key] = value
        pins = [mine["green_pin"], mine["red_pin"], mine["buzzer_pin"]] + \
            ([mine["relay_pin"]] if mine["relay_pin"] >= 0 else [])
        if all(0 <= p <= 27 for p in pins) and len(set(pins)) == len(pins) and \
                mine["green_seconds"] > 0 and mine["red_seconds"] > 0:
            values = mine
    return _Section(values)


def reference() -> str:
    """docs/kiosk-config.md: the SCHEMA as a technician's reference."""
    out = ["# Kiosk configuration", "",
           "One TOML file: `greengate-kiosk run --config FILE` (and `selftest`); an example",
           "is `device/kiosk.example.toml`. Unknown sections or keys, wrong types and",
           "impossible values are refused with a message naming the file and line.",
           "Relative paths are relative to the configuration file. `--source KIND` and",
           "`--path PATH` on the command line replace `[source] kind` and `path` (a",
           "command-line path is relative to where the command runs).", "",
           "<!-- generated by `python -m device.config` from device/config.py SCHEMA -->"]
    for section, keys in SCHEMA.items():
        out += ["", f"## [{section}]", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        for key, (kind, default, meaning) in keys.items():
            choices = CHOICES.get((section, key))
            kind_name = kind.__name__ + (f" ({' / '.join(choices)})" if choices else "")
            shown = "**required**" if default is _REQUIRED else f"`{_toml(default)}`"
            out.append(f"| `{key}` | {kind_name} | {shown} | {meaning} |")
    for title, text in NOTES:
        out += ["", f"## {title}", "", *text.strip("\n").splitlines()]
    return "\n".join(out) + "\n"


# Sections of docs/kiosk-config.md after the keys: (title, Markdown text).
NOTES = [
    ("Storage failures", """
A full or failing SD card (SQLite's `database or disk is full`, `disk I/O
error`, a read-only file system, an outbox file that cannot be opened) does not
stop the kiosk and does not hold anybody at the door:

- **The light still shows every decision.** A decision the outbox cannot write
  is kept in memory with its `seq`, up to 5 000 (`device/outbox.py`
  `MEMORY_ROWS`), and sent to the fleet like a row on disk; the fleet's
  confirmation removes it from memory.
- **The fault `storage`** is set (the SQLite or OS message as its detail): with
  nobody scanning the light shows two short red flashes every 2 s
  (hardware/README.md), every heartbeat carries it in `faults` together with
  `memory` (decisions held in memory), and the fleet shows the kiosk
  `degraded`, cause `storage: database or disk is full`.
- **As soon as the disk takes writes again** (the kiosk tries every second,
  and at a scan), the rows in memory are written to the outbox in one
  transaction, confirmations that could not be applied are applied, and the
  fault ends.
- **Past 5 000 decisions in memory** a decision is kept only as a count per
  (hour, decision, reason): heartbeat field `lost` (cumulative); once the disk
  takes writes the counts become overflow summaries (docs/protocol.md) and the
  `lost` total is kept in the outbox file. Nothing is dropped silently.
- **Logging:** the fault is logged once when it starts, changes and ends
  (`device/faults.py`), and the counts held and lost at most once a minute;
  never a line per frame.
- The other writers do not stop the kiosk either: the time floor
  (`clock.json`; the floor in memory still holds), the MQTT session counter
  (a number that cannot be saved is at least the current Unix time, so the
  fleet still sees the newest session as the newest) and bundle files (the
  bundle is refused for now, the lists in hand stay in use; it comes again,
  retained on the broker or over HTTP). Each sets the same `storage` fault,
  naming itself, e.g. `No space left on device (clock)`; a small probe file
  written every 5 s tells when the disk works again.

What is only in memory is lost if the kiosk process dies or the Pi loses
power before the disk recovers; `memory` in the last heartbeats says how many
decisions were at stake. Tested in `tests/test_never_dark.py` with the data
directory on a small full tmpfs.
"""),
    ("Errors", """
A file that cannot be used is named with its line, e.g.
`/etc/greengate/kiosk.toml, line 3: 'port' must be 1-65535`. The key files it
names are checked the same way when the kiosk starts (`device/config.py`
`file_errors`): `[bundles] fleet_key` must be a public key (PEM or DER),
`[mqtt] ca` and `cert` PEM certificates and `key` a PEM private key without a
password; the cause is one of `file missing: PATH`, `cannot read PATH: ...`,
`not a PEM certificate: PATH`, `not a PEM private key: PATH`, `not a PEM public
key: PATH`, e.g. `/etc/greengate/kiosk.toml, line 24: 'fleet_key': file
missing: /etc/greengate/fleet.pem`.

A kiosk is never dark because of its configuration:

- **A key file cannot be used.** The kiosk runs, with the fault `config` (the
  message above) on its light while no decision shows (red flicker,
  `device/indicator.py`) and in every heartbeat's `faults`. Without the fleet
  key it trusts no list, so every scan is `out_of_service`; without usable TLS
  files it cannot reach the broker, but it scans and keeps the decisions in its
  outbox. Fix the file and restart the kiosk (`systemctl restart
  greengate-kiosk`); TLS files put back are used at the next connection attempt
  even before that, but the fault shows until the restart.
- **The file itself cannot be used** (not TOML, a wrong key or value). Under
  systemd (`$NOTIFY_SOCKET` set) the kiosk shows the `config` pattern on the
  pins of the file's own `[indicator]` section where those are valid, else on
  the default pins, tells systemd it is ready (with the message as its
  status: `systemctl status greengate-kiosk`), keeps the watchdog fed and
  waits for SIGTERM, so there is no restart loop. Outside systemd it prints
  the message and exits 2 at once.

`greengate-kiosk run` exit codes: 0 stopped by SIGTERM or SIGINT (within a few
seconds: nothing it waits on blocks for longer than 0.5 s), or a folder source
finished; 2
the configuration cannot be used (at once outside systemd, on SIGTERM under
it); 1 an unexpected error, with a traceback (systemd restarts the kiosk:
`Restart=on-failure`). A missing camera or scanner never ends the kiosk (next
section). `greengate-kiosk selftest` names the same causes, and for the
kiosk's certificate also `expired on DATE` or `not valid before DATE`.
"""),
    ("Sources", """
The source is opened after the reporter and the heartbeats start, so a kiosk
whose camera or scanner is missing still reports. A source that cannot be
opened, or stops (a camera unplugged, a serial scanner gone, a scanner FIFO
whose writer closed it, a Pi camera that delivers no frame for 5 s), sets the
fault `source` with the cause (`camera not found: ...`, `camera lost: ...`,
`scanner lost: ...`), shown on the light (three short red flashes every 2 s)
and in the heartbeat's `faults`, and is opened again after 1 s, then 2, 4, ...
up to 30 s between attempts. The fault ends when it works again: a camera
when a frame arrives, a serial scanner when its port opens, a FIFO when a line
arrives; a camera plugged back resumes without a restart. Only a folder, a
video file or a regular file given as a scanner has an end: the kiosk reports
what is left and exits 0 (`--keep-running`: it stays up).

While it waits (for a frame, a scanned line or the next attempt) the frame
loop still turns at least every 0.5 s (`device/sources.py` `TICK`): it sees
SIGTERM at once, and the systemd watchdog is fed only while it turns. A loop
stuck for 60 s (4 x `WatchdogSec/2`) gets no more pings, and systemd kills and
restarts the kiosk `WatchdogSec` (30 s) later.
"""),
]



def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


if __name__ == "__main__":
    print(reference(), end="")
