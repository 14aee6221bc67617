"""The kiosk's one TOML configuration file, validated with errors that name the line.

Every key, its type and its default is in SCHEMA below; docs/kiosk-config.md
documents the same table for technicians.
"""

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(ValueError):
    pass


_KIOSK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_ANY = object()

# section -> key -> (type, default); default _REQUIRED means the key must be given.
_REQUIRED = object()
SCHEMA: dict[str, dict[str, tuple]] = {
    "kiosk": {
        "id": (str, _REQUIRED),
        "location": (str, ""),
        "district": (str, ""),
        "deployment": (str, "default"),
        "policy": (str, "hcmc-2021"),
        "data_dir": (str, "/var/lib/greengate"),
    },
    "source": {
        "kind": (str, "picamera2"),  # picamera2 | v4l2 | folder | scanner
        "path": (str, ""),  # v4l2 device, folder or video file, serial port
        "width": (int, 1280),
        "height": (int, 960),
        "fps": (float, 15.0),
        "lens_position": (float, -1.0),  # picamera2 focus in dioptres; < 0 means autofocus
        "interval": (float, 0.0),  # folder: seconds between frames (0: as fast as possible)
        "loop": (bool, False),  # folder: start again at the end
        "baudrate": (int, 9600),  # serial scanner
    },
    "decoder": {
        "backend": (str, "auto"),  # auto | pyzbar | zxing
        "cooldown": (float, 3.0),  # seconds the same code held up counts once
    },
    "indicator": {
        "backend": (str, "gpio"),  # gpio | mock (simulated kiosk: gpiozero MockFactory)
        "green_pin": (int, 17),
        "red_pin": (int, 27),
        "buzzer_pin": (int, 22),
        "relay_pin": (int, -1),  # < 0: no turnstile relay
        "relay_active_high": (bool, True),  # false for relay boards that switch on a low input
        "green_seconds": (float, 1.5),
        "red_seconds": (float, 3.0),
    },
    "mqtt": {
        "host": (str, "localhost"),
        "port": (int, 8883),
        "tls": (bool, True),
        "ca": (str, ""),
        "cert": (str, ""),
        "key": (str, ""),
        "keepalive": (int, 30),
        "heartbeat": (float, 30.0),
        "replay_rate": (float, 50.0),  # outbox messages per second after an outage
    },
    "bundles": {
        "fleet_key": (str, _REQUIRED),  # PEM of the fleet's bundle-signing public key
        "http_url": (str, ""),  # fallback: fleet base URL, e.g. https://fleet:8443
        "http_interval": (float, 600.0),
        "offline_budget_hours": (float, 72.0),
    },
    "privacy": {
        "pseudonyms": (bool, True),
        "pseudonym_key": (str, ""),  # hex; from the fleet at enrolment
    },
    "outbox": {
        "max_rows": (int, 500_000),
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
        for key, (kind, default) in keys.items():
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
