"""The kiosk's one TOML configuration file, validated with errors that name the line.

Every key, its type, default and meaning is in SCHEMA below;
docs/kiosk-config.md is generated from it (`python -m device.config`).
"""

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple


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
        "data_dir": Key(str, "/var/lib/greengate", "bundles, outbox, time floor and session "
                                                   "counter"),
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
        "pseudonyms": Key(bool, True, "send a keyed holder pseudonym with each scan"),
        "pseudonym_key": Key(str, "", "hex key for the pseudonyms (32-128 digits), from the "
                                      "fleet at enrolment"),
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
    config = Config(path, sections)
    _check(config, text)
    return config


_KIND_NAMES = {str: "text", int: "a whole number", float: "a number", bool: "true or false"}


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
    if config.bundles.offline_budget_hours <= 0:
        fail("bundles", "offline_budget_hours", "'offline_budget_hours' must be positive")
    key = config.privacy.pseudonym_key
    if config.privacy.pseudonyms:
        if not re.fullmatch(r"(?:[0-9a-fA-F]{2}){16,64}", key):
            fail("privacy", "pseudonym_key" if key else "pseudonyms",
                 "pseudonyms need 'pseudonym_key': 32-128 hex digits from the fleet "
                 "(or set pseudonyms = false)")
    if config.outbox.max_rows < 100:
        fail("outbox", "max_rows", "'max_rows' must be at least 100")


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
    return "\n".join(out) + "\n"


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


if __name__ == "__main__":
    print(reference(), end="")
