"""Why a fleet process cannot reach the broker, said at once and in words a person can
act on (the ingest worker, the bundle publisher).

paho retries a failed connection on its own and says nothing about it: a TLS failure
(a broker certificate that does not name `[mqtt] host`, a CA other than `[mqtt] ca`, a
client certificate the broker refuses) left `greengate-fleet ingest` logging only
"started" for minutes. `Trouble.attach(client)` hooks paho's connection-failure paths:

    a failed TCP/TLS connect    on_connect_fail, inside paho's `except OSError`: the
                                exception itself (sys.exc_info)
    a TLS alert from the broker the client's handshake passed (TLS 1.3 sends the client
                                certificate's verdict later) and paho's first read fails:
                                paho logs it at ERROR, then calls on_disconnect without
                                a CONNACK ever having come: `closed()` tells that apart
    a CONNACK refusal           `refused(reason)` from the owner's on_connect

Each failure is logged with host:port, the error text and a hint at the config key to
look at; a repeat of the same reason is logged at most once per `repeat_every` seconds
(with how many attempts failed meanwhile), a new reason at once.

`permanent` says whether waiting can help: TLS verdicts and CONNACK refusals do not
change by themselves, a broker that is down or restarting does. One-shot commands
(`greengate-fleet bundles ...`) give up on a permanent reason at once, on others after
a few seconds (fleet/publisher.py).
"""

from __future__ import annotations

import logging
import socket
import ssl
import sys
import threading
import time

REPEAT_EVERY = 60.0  # seconds between log lines about the same failing reason

# OpenSSL's verify codes (X509_V_ERR_*) a fleet admin meets, and what to do about them
_VERIFY_HINTS = {
    62: "the broker's certificate does not name [mqtt] host {host!r}: connect by a name "
        "the certificate holds, or reissue it (`greengate-provision init --host NAME`)",
    64: "the broker's certificate does not name [mqtt] host {host!r}: connect by a name "
        "the certificate holds, or reissue it (`greengate-provision init --host NAME`)",
    10: "the broker's certificate has expired",
    9: "the broker's certificate is not valid yet (is this machine's clock right?)",
    18: "the broker's certificate is not signed by [mqtt] ca {ca}",
    19: "the broker's certificate is not signed by [mqtt] ca {ca}",
    20: "the broker's certificate is not signed by [mqtt] ca {ca}",
    21: "the broker's certificate is not signed by [mqtt] ca {ca}",
}
# the broker's TLS alerts about the certificate this process presented
_ALERTS = ("ALERT_UNKNOWN_CA", "ALERT_BAD_CERTIFICATE", "ALERT_CERTIFICATE_REQUIRED",
           "ALERT_CERTIFICATE_REVOKED", "ALERT_CERTIFICATE_EXPIRED",
           "ALERT_CERTIFICATE_UNKNOWN", "ALERT_UNSUPPORTED_CERTIFICATE",
           "ALERT_ACCESS_DENIED", "ALERT_DECRYPT_ERROR", "ALERT_HANDSHAKE_FAILURE")


def _short(text: str) -> str:
    """OpenSSL's text without its source-file position."""
    text = " ".join(str(text).split())
    cut = text.rfind(" (_ssl.c:")
    return text[:cut] if cut > 0 else text[:300]


class Trouble:
    def __init__(self, what: str, config, logger: logging.Logger, *,
                 repeat_every: float = REPEAT_EVERY, clock=time.monotonic):
        self.what = what  # "ingest worker 1", "bundle publisher"
        self.host = config.mqtt.host
        self.port = config.mqtt.port
        self.where = f"{self.host}:{self.port}"
        self.ca = repr(config.mqtt.ca) if config.mqtt.ca else "(the system's CAs)"
        self.cert = repr(config.mqtt.cert)
        self.log = logger
        self.repeat_every = repeat_every
        self.clock = clock
        self.reason: str | None = None  # the last failure's reason, None once connected
        self.permanent = False
        self.failures = 0  # since the last successful connection
        self.first_failure: float | None = None  # clock() of the first of them
        self._logged_reason: str | None = None
        self._logged_at = 0.0
        self._unlogged = 0  # repeats not logged since the last line
        self._socket_error: str | None = None  # paho's last ERROR line of this attempt
        self._refused = False
        self._lock = threading.Lock()
        self._listeners = []

    # --- hooking paho --------------------------------------------------------------------
    def attach(self, client) -> None:
        """Take over on_connect_fail and paho's logger (only its ERROR lines are read)."""
        client.on_connect_fail = lambda _c, _u: self.connect_failed(sys.exc_info()[1])
        client.logger = _PahoErrors(self)

    def on_failure(self, callback) -> None:
        """callback(reason, permanent) after every failure (the one-shot publisher's)."""
        self._listeners.append(callback)

    def _paho_error(self, text: str) -> None:
        if text.startswith("failed to receive on socket") or "SSL" in text:
            self._socket_error = text.split(": ", 1)[-1]

    # --- the failure kinds ----------------------------------------------------------------
    def connect_failed(self, exc: BaseException | None) -> None:
        """The TCP connect or the TLS handshake failed."""
        reason, permanent = self.explain(exc)
        self._failed(reason, permanent)

    def closed(self, reason) -> None:
        """The connection ended before the broker's CONNACK (call from on_disconnect when
        the owner was not connected)."""
        text, self._socket_error = self._socket_error, None
        if self._refused:  # paho closes after a refusing CONNACK: one failure, not two
            self._refused = False
            return
        if text and any(alert in text for alert in _ALERTS):
            self._failed(f"the broker refused this process's client certificate ([mqtt] cert "
                         f"{self.cert}): {_short(text)}", True)
        elif text:
            self._failed(f"TLS failed: {_short(text)}", "SSL" in text)
        else:
            self._failed(f"the broker closed the connection before accepting it ({reason}); "
                         "its log says why", False)

    def refused(self, reason) -> None:
        """CONNACK with a failure reason (not authorised, banned, ...)."""
        self._refused = True
        self._failed(f"the broker refused the connection: {reason} (the certificate's name is "
                     "the MQTT user the broker's ACL knows: `greengate-provision "
                     "mosquitto-config`)", True)

    def connected(self) -> None:
        with self._lock:
            failures, was = self.failures, self.reason
            self.reason, self.permanent, self.failures = None, False, 0
            self.first_failure = None
            self._logged_reason, self._unlogged, self._socket_error = None, 0, None
            self._refused = False
        if was is not None:
            self.log.info("%s reached MQTT %s after %d failed attempt(s)", self.what,
                          self.where, failures)

    def explain(self, exc: BaseException | None) -> tuple[str, bool]:
        """(what went wrong, for a person; permanent?) of a connect's exception."""
        if isinstance(exc, ssl.SSLCertVerificationError):
            hint = _VERIFY_HINTS.get(getattr(exc, "verify_code", None))
            detail = _short(getattr(exc, "verify_message", "") or exc)
            if hint:
                return f"{hint.format(host=self.host, ca=self.ca)} ({detail})", True
            return f"the broker's certificate was refused: {detail}", True
        if isinstance(exc, ssl.SSLError):
            text = _short(exc)
            if any(alert in text for alert in _ALERTS):
                return (f"the broker refused this process's client certificate ([mqtt] cert "
                        f"{self.cert}): {text}"), True
            return f"TLS failed: {text} (is {self.where} a TLS listener?)", True
        if isinstance(exc, ConnectionRefusedError):
            return "connection refused: is Mosquitto running and listening on that port?", False
        if isinstance(exc, socket.gaierror):
            return f"the host name {self.host!r} does not resolve ({exc.strerror})", False
        if isinstance(exc, (TimeoutError, socket.timeout)):
            return "no answer (a firewall, or the wrong host?)", False
        if exc is None:
            return "the connection failed", False
        return f"{type(exc).__name__}: {_short(exc)}", False

    def _failed(self, reason: str, permanent: bool) -> None:
        now = self.clock()
        with self._lock:
            self.reason, self.permanent = reason, permanent
            self.failures += 1
            if self.first_failure is None:
                self.first_failure = now
            due = reason != self._logged_reason or now - self._logged_at >= self.repeat_every
            repeats = self._unlogged
            if due:
                self._logged_reason, self._logged_at, self._unlogged = reason, now, 0
            else:
                self._unlogged += 1
        if due:
            again = f" ({repeats} more failed attempt(s) since the last line)" if repeats else ""
            self.log.error("%s cannot connect to MQTT %s: %s; retrying%s", self.what,
                           self.where, reason, again)
        for callback in list(self._listeners):
            callback(reason, permanent)


class _PahoErrors:
    """A stand-in for paho's logger: keeps its ERROR lines (the socket's TLS error) and
    drops the rest at the cost of one comparison (paho logs every packet at DEBUG)."""

    def __init__(self, trouble: Trouble):
        self._trouble = trouble

    def log(self, level, fmt, *args) -> None:
        if level >= logging.ERROR:
            try:
                self._trouble._paho_error(fmt % args if args else str(fmt))
            except (TypeError, ValueError):
                pass
