"""The fleet server's configuration: one TOML file, then environment overrides.

    [fleet]       data_dir, database_url, secret_key, deployment(s), retention_days
    [mqtt]        broker and the fleet processes' client certificates
    [ingest]      the ingest worker's time window for kiosk times, confirmations
    [bundles]     the bundle-signing key and how often lists are re-issued
    [presence]    keepalive and sweep timing
    [pki]         where the fleet PKI is, and how the broker learns of a new CRL
    [privacy]     the holder-sealing keys and the pseudonym secret (docs/privacy.md)
    [enrol]       what enrolled kiosks are told (broker, URL) and token rules
    [web]         the dashboard: language, cookies, login limits, silent kiosks, tracing
    [reports]     weekly compliance reports: language, PDF font
    [alerts]      the alert dispatcher: timing, webhook, SMTP (fleet/alerts.py)
    [metrics]     an optional bearer token for /metrics

Every key, type and default is in SCHEMA (docs/fleet-config.md is generated from it:
`python -m fleet.config > docs/fleet-config.md`). An environment variable
GREENGATE_<SECTION>_<KEY> (e.g. GREENGATE_FLEET_DATABASE_URL) overrides the
file, so containers and CI need no file at all. Errors name the file and line.
"""

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(ValueError):
    pass


SCHEMA: dict[str, dict[str, tuple[type, object, str]]] = {
    "fleet": {
        "data_dir": (str, "/var/lib/greengate-fleet", "database file (SQLite), keys, exports"),
        "database_url": (str, "", "SQLAlchemy URL; empty: SQLite file `fleet.sqlite` in "
                                  "data_dir. PostgreSQL: `postgresql+psycopg://user@host/db`"),
        "read_database_url": (str, "", "a read replica for the dashboard's and API's "
                                       "read-only requests (GET); empty: the primary. "
                                       "docs/fleet.md#read-replica"),
        "secret_key": (str, "", "Flask session key; empty: generated once into data_dir"),
        "deployments": (list, ["default"], "deployments (cities) whose lists this fleet signs"),
        "retention_days": (int, 21, "scans older than this many days are deleted "
                                   "(`greengate-fleet scans purge`, hourly by timer)"),
    },
    "mqtt": {
        "host": (str, "localhost", "the broker"),
        "port": (int, 8883, "the broker's port"),
        "tls": (bool, True, "TLS with the fleet's client certificate"),
        "ca": (str, "", "PEM of the broker's CA"),
        "cert": (str, "", "the fleet's client certificates: `{identity}` in it stands for "
                          "each process's own identity, e.g. `pki/clients/{identity}.pem` "
                          "(docs/provisioning.md#fleet-identities); a plain path: one "
                          "certificate shared by every process (only one of them can be "
                          "connected at a time on the generated broker config)"),
        "key": (str, "", "the private keys, `{identity}` as in cert"),
        "client_id": (str, "greengate-fleet", "prefix of the MQTT client ids and fleet "
                                              "identities (`<client_id>-ingest-<worker>`, "
                                              "`<client_id>-web-<n>`); kiosk ids may not "
                                              "start with it"),
        "share_group": (str, "ingest", "shared-subscription group of the ingest workers"),
        "batch_size": (int, 500, "scans written per transaction at most"),
        "batch_seconds": (float, 0.2, "a batch is written at the latest after this long"),
    },
    "ingest": {
        "max_age_days": (float, 400.0, "a scan or summary whose kiosk time is older than "
                                       "this (by the fleet's clock) is quarantined, not "
                                       "stored (docs/fleet.md#quarantine)"),
        "max_ahead_hours": (float, 24.0, "a scan or summary whose kiosk time is further "
                                         "ahead of the fleet's clock than this is "
                                         "quarantined"),
        "confirm_seconds": (float, 0.5, "committed ids wait at most this long for others of "
                                        "the same kiosk, so that one confirmation carries "
                                        "them all (docs/fleet.md#a-messages-way)"),
    },
    "bundles": {
        "signing_key": (str, "pki/bundle-signing.key", "PEM of the fleet's bundle-signing "
                                                       "private key (P-256), relative to "
                                                       "data_dir (`greengate-provision init`)"),
        "refresh_hours": (float, 24.0, "re-issue unchanged lists this often, well inside the "
                                       "kiosks' offline budget"),
        "deltas": (int, 8, "status versions back for which a delta is published"),
        "strict_value_fields": (list, [], "certificate fields (`v.mp`, `t.tr`, ...) where a "
                                          "code missing from the value sets is invalid "
                                          "content; elsewhere it is only a policy matter "
                                          "(sent to kiosks in the valuesets bundle)"),
    },
    "presence": {
        "keepalive": (float, 30.0, "the kiosks' MQTT keepalive / heartbeat, seconds"),
        "sweep": (float, 5.0, "seconds between presence sweeps"),
        "backlog": (int, 1000, "an outbox deeper than this makes a kiosk degraded"),
    },
    "pki": {
        "dir": (str, "pki", "the fleet PKI made by `greengate-provision init` (CA, broker "
                            "certificate, keys, CRL), relative to data_dir"),
        "broker_crl": (str, "", "a copy of crl.pem the broker reads (`greengate-provision "
                                "mosquitto-config` sets it up); empty: Mosquitto reads "
                                "the PKI's own crl.pem"),
        "broker_reload": (str, "systemctl reload mosquitto", "command run after the CRL "
                                                             "changed (Mosquitto re-reads "
                                                             "it on SIGHUP); empty: none"),
    },
    "privacy": {
        "sealing_dir": (str, "", "the holder-sealing X25519 key pairs (current and retired) "
                                 "and their index, relative to data_dir; empty: `sealing/` "
                                 "in the PKI directory (docs/privacy.md)"),
        "pseudonym_key": (str, "", "the holder pseudonyms' secret (hex), relative to "
                                   "data_dir; empty: `pseudonym.key` in the PKI directory. "
                                   "Only the fleet holds it"),
        "grace_days": (float, 30.0, "a rotated-out sealing key still opens envelopes this "
                                    "long (scans kiosks sealed before they learnt the new "
                                    "key), then `greengate-fleet sealing purge` deletes it"),
    },
    "enrol": {
        "broker_host": (str, "", "the broker's name as kiosks reach it (with broker_port); "
                                 "empty: the first --host given to `greengate-provision "
                                 "init` (its fleet.json), else [mqtt] host"),
        "broker_port": (int, 8883, "the broker's TLS port as kiosks reach it"),
        "http_url": (str, "", "the fleet web server's base URL as kiosks reach it (HTTPS: "
                              "list fallback and token enrolment), e.g. `https://fleet:8443`; "
                              "empty: init's --http-url"),
        "token_hours": (float, 24.0, "an enrolment token expires after this long"),
        "cert_days": (int, 825, "validity of kiosk client certificates"),
        "max_failures": (int, 10, "failed token exchanges per client address in 10 minutes "
                                  "before it is refused (HTTP 429)"),
    },
    "web": {
        "language": (str, "vi", "the dashboard's default language: vi or en (each user may "
                                "switch)"),
        "secure_cookies": (bool, True, "session cookie only over HTTPS; false only for a "
                                       "plain-HTTP test set-up"),
        "session_hours": (float, 12.0, "a dashboard login lasts this long"),
        "login_failures": (int, 5, "failed logins per account from one address in 15 "
                                   "minutes before that address waits (HTTP 429); past it "
                                   "the account's other failing addresses are slowed, an "
                                   "address with no failure never is; 4× per address"),
        "trusted_proxies": (int, 0, "reverse proxies in front of the web server whose "
                                    "X-Forwarded-For is believed (login throttling by "
                                    "address); 0: the connecting address"),
        "max_body_bytes": (int, 16 * 1024 * 1024, "largest request body any route accepts "
                                                  "(HTTP 413 beyond it)"),
        "max_anonymous_body_bytes": (int, 64 * 1024, "largest request body of the routes that "
                                                     "need no login (login, enrolment)"),
        "silent_hours": (float, 2.0, "an online kiosk with no scans for this long is listed "
                                     "as silent"),
        "trace_minutes": (float, 30.0, "tracing: other holders scanned at the same place "
                                       "within this many minutes of the case"),
    },
    "reports": {
        "language": (str, "vi", "weekly compliance reports (docs/reports.md): the language "
                                "made and e-mailed by the upkeep, vi or en (the other is "
                                "made on demand)"),
        "font": (str, "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
                 "a TTF font with Vietnamese letters for the reports' PDF (Debian "
                 "fonts-dejavu-core)"),
        "workers": (int, 1, "processes making the weekly reports' PDFs when many are made "
                            "at once: 1 the calling process alone (leaves the other cores "
                            "to the ingest and the dashboard), 0 one per core, N that many"),
    },
    "alerts": {
        "poll": (float, 5.0, "`greengate-fleet alerts`: seconds between looks at the kiosks' "
                             "states and outages"),
        "grace_seconds": (float, 60.0, "a kiosk offline for less than this (a reboot) does not "
                                       "alert; counted from its outage's start"),
        "dashboard_url": (str, "", "the dashboard's base URL as people reach it, e.g. "
                                   "`https://fleet.example`; set: alerts carry a link"),
        "webhook_timeout": (float, 10.0, "seconds a webhook may take to answer"),
        "webhook_secret": (str, "", "if set, webhooks carry `X-GreenGate-Signature: sha256=` "
                                    "HMAC of the body with this key"),
        "retry_seconds": (float, 30.0, "a failed delivery is tried again after this, doubling "
                                       "each time"),
        "retry_max_seconds": (float, 900.0, "longest wait between two tries"),
        "max_attempts": (int, 12, "tries before a delivery is given up as failed (shown on "
                                  "/alerts)"),
        "senders": (int, 4, "deliveries in flight at once (a slow target holds one)"),
        "smtp_host": (str, "", "mail server for e-mail alerts; empty: e-mail is off"),
        "smtp_port": (int, 587, "its port"),
        "smtp_from": (str, "greengate-fleet@localhost", "sender address of alert e-mails"),
        "smtp_starttls": (bool, True, "STARTTLS before logging in / sending"),
        "smtp_user": (str, "", "SMTP login; empty: none"),
        "smtp_password": (str, "", "SMTP password"),
        "smtp_timeout": (float, 10.0, "seconds for the mail server to answer"),
    },
    "metrics": {
        "token": (str, "", "if set, /metrics asks for 'Authorization: Bearer <token>'; "
                           "empty: open (firewall it to the Prometheus host either way)"),
    },
}


@dataclass
class FleetConfig:
    path: Path | None
    sections: dict[str, dict] = field(default_factory=dict)

    def __getattr__(self, name):
        try:
            return _Section(self.sections[name])
        except KeyError:
            raise AttributeError(name) from None

    @property
    def data_dir(self) -> Path:
        return Path(self.sections["fleet"]["data_dir"])

    @property
    def database_url(self) -> str:
        return self.sections["fleet"]["database_url"] or f"sqlite:///{self.data_dir / 'fleet.sqlite'}"

    @property
    def read_database_url(self) -> str:
        """Where read-only requests read: the replica, else the primary."""
        return self.sections["fleet"]["read_database_url"] or self.database_url

    def resolve(self, value: str) -> Path:
        """A path from the config: relative ones are under data_dir."""
        p = Path(value)
        return p if p.is_absolute() else self.data_dir / p


class _Section:
    def __init__(self, values: dict):
        self.__dict__.update(values)


def _line(text: str, section: str, key: str | None) -> str:
    current = None
    for number, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        m = re.match(r"^\[\s*([A-Za-z0-9_.-]+)\s*\]", s)
        if m:
            current = m.group(1)
            if key is None and current == section:
                return f", line {number}"
        elif current == section and key and re.match(rf"^{re.escape(key)}\s*=", s):
            return f", line {number}"
    return ""


def _coerce(kind: type, value, where: str, key: str):
    if kind is float and type(value) is int:
        value = float(value)
    if kind is list and isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if type(value) is not kind:
        raise ConfigError(f"{where}: '{key}' must be {kind.__name__}, got {value!r}")
    return value


def _from_env(kind: type, text: str):
    if kind is bool:
        return text.strip().lower() in ("1", "true", "yes", "on")
    if kind is int:
        return int(text)
    if kind is float:
        return float(text)
    return text


def load(path: str | Path | None = None, env: dict | None = None, **overrides) -> FleetConfig:
    """The config from `path` (optional), the environment and keyword overrides
    {"section": {"key": value}} (tests), in that order of increasing precedence."""
    env = os.environ if env is None else env
    text, raw = "", {}
    where = "<defaults>"
    if path is not None:
        where = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the configuration: {exc.strerror}") from None
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    for section, table in raw.items():
        if section not in SCHEMA or not isinstance(table, dict):
            raise ConfigError(f"{where}{_line(text, section, None)}: unknown section "
                              f"[{section}] (known: {', '.join(SCHEMA)})")
        for key in table:
            if key not in SCHEMA[section]:
                raise ConfigError(f"{where}{_line(text, section, key)}: unknown key '{key}' in "
                                  f"[{section}] (known: {', '.join(SCHEMA[section])})")
    sections = {}
    for section, keys in SCHEMA.items():
        values = {}
        for key, (kind, default, _) in keys.items():
            name = f"GREENGATE_{section}_{key}".upper()
            if key in overrides.get(section, {}):
                value = _coerce(kind, overrides[section][key], "override", key)
            elif name in env:
                try:
                    value = _coerce(kind, _from_env(kind, env[name]), name, key)
                except ValueError as exc:
                    raise ConfigError(f"environment {name}: {exc}") from None
            elif key in raw.get(section, {}):
                value = _coerce(kind, raw[section][key], f"{where}{_line(text, section, key)}", key)
            else:
                value = list(default) if isinstance(default, list) else default
            values[key] = value
        sections[section] = values
    config = FleetConfig(Path(path) if path else None, sections)
    if config.presence.keepalive <= 0 or config.presence.sweep <= 0:
        raise ConfigError(f"{where}: [presence] keepalive and sweep must be positive")
    if config.web.language not in ("vi", "en"):
        raise ConfigError(f"{where}{_line(text, 'web', 'language')}: [web] language must be "
                          "vi or en")
    if config.reports.language not in ("vi", "en"):
        raise ConfigError(f"{where}{_line(text, 'reports', 'language')}: [reports] language "
                          "must be vi or en")
    if config.fleet.retention_days < 1:
        raise ConfigError(f"{where}{_line(text, 'fleet', 'retention_days')}: [fleet] "
                          "retention_days must be at least 1")
    if config.alerts.poll <= 0 or config.alerts.retry_seconds <= 0 \
            or config.alerts.senders < 1 or config.alerts.max_attempts < 1:
        raise ConfigError(f"{where}: [alerts] poll and retry_seconds must be positive, "
                          "senders and max_attempts at least 1")
    if config.ingest.max_age_days <= 0 or config.ingest.max_ahead_hours <= 0 \
            or config.ingest.confirm_seconds < 0:
        raise ConfigError(f"{where}: [ingest] max_age_days and max_ahead_hours must be "
                          "positive, confirm_seconds not negative")
    if not config.fleet.deployments:
        raise ConfigError(f"{where}: [fleet] deployments must name at least one deployment")
    if config.privacy.grace_days < 0:
        raise ConfigError(f"{where}{_line(text, 'privacy', 'grace_days')}: [privacy] "
                          "grace_days must not be negative")
    _check_identity_paths(config, text, where)
    return config


def _check_identity_paths(config, text: str, where: str) -> None:
    """{identity} is the only placeholder, and cert and key use it alike: a key shared
    by several certificates would not match them."""
    m = config.mqtt
    for key in ("cert", "key"):
        if "{" in m.__dict__[key].replace("{identity}", "") or \
                "}" in m.__dict__[key].replace("{identity}", ""):
            raise ConfigError(f"{where}{_line(text, 'mqtt', key)}: [mqtt] {key} may hold "
                              "`{identity}` and no other {...}")
    if m.key and ("{identity}" in m.cert) != ("{identity}" in m.key):
        raise ConfigError(f"{where}{_line(text, 'mqtt', 'key')}: [mqtt] cert and key must "
                          "both name `{identity}`, or neither")


def reference() -> str:
    """docs/fleet-config.md: the SCHEMA as an admin's reference."""
    out = ["# Fleet configuration", "",
           "One TOML file, named by `greengate-fleet --config FILE` or `GREENGATE_FLEET_CONFIG`",
           "(the web server under gunicorn reads only the variable). Every key can also be set",
           "by environment: `GREENGATE_<SECTION>_<KEY>`, e.g. `GREENGATE_FLEET_DATABASE_URL`;",
           "the environment wins over the file. Unknown sections or keys and wrong types are",
           "refused with a message naming the file and line. Relative paths are under",
           "`data_dir`.", "",
           "<!-- generated by `python -m fleet.config` from fleet/config.py SCHEMA -->"]
    for section, keys in SCHEMA.items():
        out += ["", f"## [{section}]", "", "| key | type | default | environment | meaning |",
                "|---|---|---|---|---|"]
        for key, (kind, default, meaning) in keys.items():
            out.append(f"| `{key}` | {kind.__name__} | `{_toml(default)}` | "
                       f"`GREENGATE_{section.upper()}_{key.upper()}` | {meaning} |")
    return "\n".join(out) + "\n"


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
