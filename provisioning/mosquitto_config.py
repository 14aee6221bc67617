"""`greengate-provision mosquitto-config`: the broker's configuration for a fleet.

Writes into OUT (e.g. /etc/mosquitto/conf.d/, the Debian package includes it):

    greengate.conf   one TLS listener; client certificate required and its CN is the
                     username; anonymous refused; the fleet CRL; the ACL; persistence
    greengate.acl    what each identity may publish and read
    greengate/       the files Mosquitto reads: ca.pem, server.pem, server.key, crl.pem
                     (copies: the PKI directory itself stays private to root)

Every client's id is its certificate's CN (`use_identity_as_username` then
`use_username_as_clientid`): a client can only ever take over a session of its own
name, so no kiosk can push another kiosk or a fleet process off the broker.

The ACL (topics in greengate/messages.py; docs/provisioning.md#the-broker-acl) follows
the fleet identities in the PKI's clients/ (their certificates' OU names the role):

    ingest workers   read gg/v1/kiosk/# and gg/v1/bridge/# (bridges' state), write
                     gg/v1/confirm/# and gg/v1/roster/#
    web (bundles)    read and write gg/v1/bundle/#, gg/v1/roster/# and gg/v1/crl (the
                     CRL for the district brokers, put there by retire)
    greengate-fleet  the old shared certificate: all of the above
    bridges          a district broker's bridge (bridge-<name>, docs/scaling.md): write
                     gg/v1/kiosk/# (its kiosks' messages go up) and its own
                     gg/v1/bridge/<name>/state and .../crl; read gg/v1/bundle/#,
                     gg/v1/confirm/#, gg/v1/roster/# and gg/v1/crl (what comes down)
    kiosks (%u)      write gg/v1/kiosk/<own id>/{scan,summary,heartbeat,presence},
                     read gg/v1/bundle/#, gg/v1/confirm/<own id>, gg/v1/roster/<own id>
                     and gg/v1/roster/<own id>/delta

Mosquitto applies the kiosk patterns to every client, so each fleet identity is also
denied what a pattern would give it beyond its role. It checks a will's topic when
the client connects, so a kiosk cannot leave a will under another id either.
"""

from __future__ import annotations

import grp
import os
import shutil
from pathlib import Path

from fleet.pki import FLEET_IDENTITY, PKI, PKIError
from greengate import messages

KIOSK_TOPICS = ("scan", "summary", "heartbeat", "presence")


def _role_lines(name: str, roles: tuple[str, ...]) -> list[str]:
    root = messages.ROOT
    # rosters: the web server publishes them, and the ingest (a worker linked by a scan in
    # enrolment mode changes the roster)
    grants = {"ingest": [f"topic read {root}/kiosk/#", f"topic write {root}/confirm/#",
                         f"topic write {root}/roster/#", f"topic read {root}/bridge/#"],
              # retire and `crl` put the CRL for the district brokers (a web identity)
              "web": [f"topic readwrite {root}/bundle/#", f"topic readwrite {root}/roster/#",
                      f"topic readwrite {messages.crl_topic()}"],
              "bridge": [f"topic write {root}/kiosk/#", f"topic read {root}/bundle/#",
                         f"topic read {root}/confirm/#", f"topic read {root}/roster/#",
                         f"topic read {messages.crl_topic()}",
                         f"topic write {messages.bridge_state_topic(bridge_name(name))}",
                         f"topic write {messages.bridge_crl_topic(bridge_name(name))}"],
              # on a district broker: its crl-follow, under the bridge's certificate
              "follower": [f"topic read {messages.crl_topic()}",
                           f"topic write {messages.bridge_crl_topic(bridge_name(name))}"]}
    lines = [f"user {name}"]
    for role in roles:
        lines += grants[role]
    if "bridge" in roles:  # everything it needs is granted above; the patterns add nothing
        return lines + [""]
    if "follower" in roles:  # nothing of a kiosk's
        return lines + [f"topic deny {root}/kiosk/#", f"topic deny {root}/confirm/#",
                        f"topic deny {root}/bundle/#", f"topic deny {root}/roster/#", ""]
    # what the kiosk patterns below would give this name, and its roles do not need
    if "ingest" in roles:
        lines += [f"topic deny {root}/kiosk/{name}/#"]
    else:
        lines += [f"topic deny {root}/kiosk/#", f"topic deny {root}/confirm/#"]
    if "web" not in roles:
        lines += [f"topic deny {root}/bundle/#"]
    if "web" not in roles and "ingest" not in roles:
        lines += [f"topic deny {root}/roster/#"]
    return lines + [""]


BRIDGE_PREFIX = "bridge-"  # a bridge identity's name: bridge-<bridge name>


def bridge_name(identity: str) -> str:
    return identity[len(BRIDGE_PREFIX):] if identity.startswith(BRIDGE_PREFIX) else identity


def acl_text(fleet_identity: str | None = FLEET_IDENTITY,
             identities: dict[str, str] | None = None) -> str:
    """identities: name -> role ("ingest" or "web"); fleet_identity: the old shared
    certificate's name, given every fleet right (None: not in the ACL)."""
    root = messages.ROOT
    lines = [
        "# GreenGate broker ACL (greengate-provision mosquitto-config). Usernames, and",
        "# client ids, are the client certificates' CN (use_identity_as_username,",
        "# use_username_as_clientid). `topic deny` lines are checked first.",
        "",
    ]
    by_role: dict[str, list[str]] = {}
    for name, role in sorted((identities or {}).items()):
        by_role.setdefault(role, []).append(name)
    if by_role.get("ingest"):
        lines += ["# Ingest workers: read every kiosk's messages, confirm to each kiosk what",
                  "# they committed.", ""]
        for name in by_role["ingest"]:
            lines += _role_lines(name, ("ingest",))
    if by_role.get("web"):
        lines += ["# Bundle publishers (web server workers, `greengate-fleet bundles`): the",
                  "# signed bundles, retained; they read them back to clear stale deltas.", ""]
        for name in by_role["web"]:
            lines += _role_lines(name, ("web",))
    if by_role.get("bridge"):
        lines += ["# District brokers' bridges: their kiosks' messages up, bundles, rosters and",
                  "# confirmations down, and their own connection state (docs/scaling.md).", ""]
        for name in by_role["bridge"]:
            lines += _role_lines(name, ("bridge",))
    if by_role.get("follower"):
        lines += ["# This district's crl-follow (the bridge's certificate): the fleet CRL coming",
                  "# down, and which one this broker applies going up (docs/scaling.md).", ""]
        for name in by_role["follower"]:
            lines += _role_lines(name, ("follower",))
    if fleet_identity and fleet_identity not in (identities or {}):
        lines += ["# The old shared certificate (fleet.pem), for configs from before one",
                  "# identity per process: every fleet right.", ""]
        lines += _role_lines(fleet_identity, ("ingest", "web"))
    lines += ["# Every other identity is a kiosk (%u = its CN): its own topics, the bundles,",
              "# and the fleet's confirmations and its organisation's roster meant for it alone."]
    lines += [f"pattern write {root}/kiosk/%u/{kind}" for kind in KIOSK_TOPICS]
    lines += [f"pattern read {root}/bundle/#", f"pattern read {root}/confirm/%u",
              f"pattern read {root}/roster/%u", f"pattern read {root}/roster/%u/delta"]
    return "\n".join(lines) + "\n"


def conf_text(*, port: int, files: Path, acl: Path, persistence_dir: str | None,
              bind: str | None = None) -> str:
    """persistence_dir None: a file for an include_dir (Debian's conf.d), whose main file
    sets persistence_location already: Mosquitto refuses to start on a second one
    ("Duplicate persistence_location value"). A path: a standalone main file."""
    listener = f"listener {port}" + (f" {bind}" if bind else "")
    if persistence_dir is None:
        location = ["# persistence_location, pid_file and log_dest are the main "
                    "mosquitto.conf's (Debian's",
                    "# sets them): a second persistence_location stops Mosquitto."]
    else:
        location = [f"persistence_location {persistence_dir.rstrip('/')}/"]
    return "\n".join([
        "# GreenGate broker (greengate-provision mosquitto-config). TLS only, every client",
        "# proves who it is with a certificate of the fleet CA; revoked ones are in the CRL",
        "# (re-read on SIGHUP: `greengate-provision retire` does that).",
        "per_listener_settings false",
        listener,
        "protocol mqtt",
        f"cafile {files / 'ca.pem'}",
        f"certfile {files / 'server.pem'}",
        f"keyfile {files / 'server.key'}",
        f"crlfile {files / 'crl.pem'}",
        "tls_version tlsv1.2",
        "require_certificate true",
        "use_identity_as_username true",
        # the client id becomes that username (not reloaded on SIGHUP: a restart)
        "use_username_as_clientid true",
        "allow_anonymous false",
        f"acl_file {acl}",
        "",
        "# Retained bundles, kiosks' will-carrying sessions and the ingest workers' queued",
        "# scans survive a broker restart.",
        "persistence true",
        *location,
        "autosave_interval 60",
        # A fleet outage of a few hours at a busy checkpoint city: the ingest sessions
        # must queue the scans, not drop them (docs/fleet.md#failures).
        "max_queued_messages 1000000",
        "max_queued_bytes 0",
        "",
    ])


def _group_id(group: str | None) -> int | None:
    if not group:
        return None
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        return None


def share(path: Path, group: str | None, mode: int) -> None:
    """A file the broker reads: `mode`, owned by root and the broker's group when that
    group exists (a key then 0640), else private to its owner (a key 0600)."""
    gid = _group_id(group)
    if gid is None and mode & 0o040 and not mode & 0o004:
        mode = 0o600
    os.chmod(path, mode)
    if gid is not None and os.geteuid() == 0:
        os.chown(path, 0, gid)


def write(pki: PKI, out: Path, *, port: int = 8883, persistence_dir: str | None = None,
          bind: str | None = None, group: str | None = "mosquitto",
          server: tuple[Path, Path] | None = None,
          acl_identities: dict[str, str] | None = None) -> dict[str, Path]:
    """Write greengate.conf, greengate.acl and the broker's copies of the PKI files.
    The key is readable by `group` (the broker's) when that group exists.
    persistence_dir None: greengate.conf goes into an include_dir (conf_text).
    server: (certificate, key) of this broker when not the PKI's server.pem (a district
    broker's); acl_identities: the fleet identities the ACL names ({} for none: a
    district broker, where only kiosks connect), None: the PKI's."""
    for name in ("ca.pem", "server.pem", "server.key", "crl.pem"):
        if not pki.path(name).exists():
            raise PKIError(f"{pki.path(name)} is missing: run `greengate-provision init` first")
    out = Path(out)
    files = out / "greengate"
    files.mkdir(parents=True, exist_ok=True)
    share(files, group, 0o750)
    if _group_id(group) is None:
        os.chmod(files, 0o700)
    sources = {"ca.pem": pki.path("ca.pem"), "crl.pem": pki.path("crl.pem"),
               "server.pem": server[0] if server else pki.path("server.pem"),
               "server.key": server[1] if server else pki.path("server.key")}
    for name, mode in (("ca.pem", 0o644), ("server.pem", 0o644), ("crl.pem", 0o644),
                       ("server.key", 0o640)):
        target = files / name
        shutil.copyfile(sources[name], target)
        share(target, group, mode)
    if acl_identities is None:
        acl = write_acl(pki, out / "greengate.acl")
    else:
        acl = _write_atomic(out / "greengate.acl", acl_text(None, acl_identities))
    conf = out / "greengate.conf"
    conf.write_text(conf_text(port=port, files=files.resolve(), acl=acl.resolve(),
                              persistence_dir=persistence_dir, bind=bind))
    return {"conf": conf, "acl": acl, "crl": files / "crl.pem", "files": files}


def write_acl(pki: PKI, path: Path) -> Path:
    """(Re)write the ACL from the PKI's fleet identities, atomically: Mosquitto re-reads
    it on SIGHUP and must never find half a file."""
    return _write_atomic(Path(path), acl_text(FLEET_IDENTITY, pki.identities()))


def _write_atomic(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path
