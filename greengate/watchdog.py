"""systemd service notifications (sd_notify) without a dependency.

systemd starts a service (the kiosk, the fleet's ingest worker) with
$NOTIFY_SOCKET (Type=notify) and, with WatchdogSec=, $WATCHDOG_USEC. The service
sends READY=1 once its work runs, WATCHDOG=1 at least every watchdog_interval()
seconds, and STOPPING=1 on the way out. Outside systemd every call is a cheap no-op that returns False.

The unit sets NotifyAccess=main: send from the main process (any thread),
never from a forked child.
"""

import os
import socket


def notify(state: str) -> bool:
    """Send one notification ("READY=1", "WATCHDOG=1", ...); True if it was sent."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    elif not address.startswith("/"):  # unset, or a transport we don't speak (vsock:)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode("utf-8", "replace"))
        return True
    except OSError:
        return False


def ready(status_text: str | None = None) -> bool:
    return notify("READY=1" + (f"\nSTATUS={_one_line(status_text)}" if status_text else ""))


def watchdog_ping() -> bool:
    return notify("WATCHDOG=1")


def stopping() -> bool:
    return notify("STOPPING=1")


def status(text: str) -> bool:
    """Free-form status shown by `systemctl status greengate-kiosk`."""
    return notify(f"STATUS={_one_line(text)}")


def watchdog_interval() -> float | None:
    """Seconds between pings (half of WatchdogSec=), or None without a watchdog."""
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):  # meant for another process
        return None
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2_000_000 if usec > 0 else None


def _one_line(text: str) -> str:
    return " ".join(str(text).split())
