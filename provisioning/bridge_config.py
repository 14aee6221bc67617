"""`greengate-provision bridge`: a district broker bridged to the core (docs/scaling.md).

Writes into OUT, for the district broker's host (like `mosquitto-config` does for the core):

    greengate.conf   the kiosks' TLS listener (this broker's own certificate), the
                     kiosks' ACL, persistence, and Mosquitto's own bridge to the core
    greengate.acl    the kiosk patterns, and this district's crl-follow (no fleet
                     process connects to a district)
    crl-follow.env   for systemd/greengate-crl-follow.service on the district host, which
                     applies the fleet CRL coming down the bridge (crl_follow.py)
    greengate/       ca.pem, server.pem/.key (brokers/NAME in the PKI), crl.pem, and the
                     bridge's client certificate bridge.pem/.key (CN bridge-NAME)

The bridge is Mosquitto's: TLS with a certificate of its own, QoS 1 both ways, a
persistent session on each side (`cleansession false`: the district queues what goes up
while the core is unreachable, the core queues what comes down while the district is),
and the topic rules

    up    gg/v1/kiosk/#                                 scans, summaries, heartbeats, presence
          gg/v1/bridge/NAME/crl                         which CRL the district applies
    down  gg/v1/bundle/#, gg/v1/confirm/#, gg/v1/roster/#   bundles, confirmations, rosters
          gg/v1/crl                                     the fleet CRL (retire puts it there)

Mosquitto's bridge notifications put the bridge's state on the core, retained, under
gg/v1/bridge/NAME/state: "1" once connected, "0" as the bridge's last will there, which
is how the fleet tells a cut bridge from kiosks gone offline (fleet/presence.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from fleet.pki import PKI, PKIError
from greengate import messages

from . import mosquitto_config

UP = ("kiosk/#",)
DOWN = ("bundle/#", "confirm/#", "roster/#")
KEEPALIVE = 20  # seconds: how soon the core notices a silent link and publishes the will
RESTART_CAP = 10  # seconds: the longest wait between the bridge's reconnection attempts


def identity(name: str) -> str:
    return mosquitto_config.BRIDGE_PREFIX + name


def split_address(text: str) -> tuple[str, int]:
    """(host, port) of "host:port" (messages.broker_address); PKIError says what is wrong."""
    try:
        return messages.broker_address(text)
    except messages.MessageError as exc:
        raise PKIError(str(exc)) from None


def bridge_text(name: str, *, core: str, files: Path, keepalive: int = KEEPALIVE,
                restart_cap: int = RESTART_CAP) -> str:
    root = messages.ROOT
    return "\n".join([
        "",
        f"# The bridge to the core broker (greengate-provision bridge {name}): its own",
        "# certificate, QoS 1, a session kept on both sides, the state on the core.",
        f"connection {name}",
        f"address {core}",
        f"bridge_cafile {files / 'ca.pem'}",
        f"bridge_certfile {files / 'bridge.pem'}",
        f"bridge_keyfile {files / 'bridge.key'}",
        "bridge_tls_version tlsv1.2",
        "bridge_protocol_version mqttv311",
        # Mosquitto on both ends: retained flags and loop detection as a bridge, not a client
        "try_private true",
        "cleansession false",
        f"remote_clientid {identity(name)}",
        f"local_clientid {identity(name)}.local",
        f"keepalive_interval {keepalive}",
        # reconnect backoff (base, cap): a bridge per district is no storm for the core,
        # and a restored link carries the district's queue up within seconds
        f"restart_timeout 1 {restart_cap}",
        "start_type automatic",
        "notifications true",
        f"notification_topic {messages.bridge_state_topic(name)}",
        *[f"topic {root}/{t} out 1" for t in UP],
        f"topic {messages.bridge_crl_topic(name)} out 1",
        *[f"topic {root}/{t} in 1" for t in DOWN],
        f"topic {messages.crl_topic()} in 1",
        "",
    ])


def follow_env(name: str, address: str, files: Path) -> str:
    """The environment of systemd/greengate-crl-follow.service on the district host."""
    return "\n".join([
        "# greengate-provision crl-follow on this district broker's host: the fleet CRL",
        "# that comes down the bridge, applied to this broker (docs/scaling.md).",
        f"GG_BRIDGE={name}", f"GG_BROKER={address}", f"GG_FILES={files}", ""])


def write(pki: PKI, out: Path, name: str, *, address: str, core: str, port: int | None = None,
          persistence_dir: str | None = None, bind: str | None = None,
          group: str | None = "mosquitto") -> dict[str, Path]:
    """The district broker's files in OUT. address: host:port its kiosks reach it by (its
    certificate's name; the listener's port unless `port`); core: host:port of the core.
    Issues the bridge identity bridge-NAME when the PKI has none yet."""
    if not messages.BRIDGE_NAME.match(name or ""):
        raise PKIError(f"bridge name {name!r}: 1 to 32 lowercase letters, digits or '-'")
    host, listen_port = split_address(address)
    split_address(core)
    cert, key = pki.identity_paths(identity(name))
    if not cert.exists():
        pki.issue_identity(identity(name), "bridge")
    server_pem, server_key = pki.issue_broker(name, [host])
    out = Path(out)
    paths = mosquitto_config.write(pki, out, port=port or listen_port,
                                   persistence_dir=persistence_dir, bind=bind, group=group,
                                   server=(server_pem, server_key),
                                   acl_identities={identity(name): "follower"})
    files = paths["files"]
    for source, target in ((cert, "bridge.pem"), (key, "bridge.key")):
        shutil.copyfile(source, files / target)
        mosquitto_config.share(files / target, group, 0o640 if target.endswith(".key")
                               else 0o644)
    with open(paths["conf"], "a", encoding="utf-8") as conf:
        conf.write(bridge_text(name, core=core, files=files.resolve()))
    env = out / "crl-follow.env"
    env.write_text(follow_env(name, address, files.resolve()))
    paths["follow"] = env
    # the core's ACL gains the bridge on the next `greengate-provision mosquitto-config`
    # (or here, when the caller rewrites it): its grants come from the PKI's identities
    return paths
