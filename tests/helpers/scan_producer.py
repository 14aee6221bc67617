"""A stand-in kiosk process for the MQTT tests: adds scans to an outbox at a
steady rate while a Reporter publishes them, the way the kiosk loop does.

    python tests/helpers/scan_producer.py --outbox o.sqlite --log added.txt \
        --session-file session --kiosk k1 --port 8883 --ca ca.pem --cert k1.pem --key k1.key \
        --prefix run1 --count 200 --rate 50 [--then drain|hold]

Every scan id whose Outbox.add() returned is appended to --log and fsynced
before the next scan, so a test that SIGKILLs this process knows which scans
the outbox promised to deliver. Each scan carries the seq the outbox gave it.
--then drain: after the last scan, wait until the fleet (or the test's
tests/helpers/confirmer.py) has confirmed every row, stop the reporter
gracefully and exit 0. --then hold: keep running (with the reporter connected)
until killed.
"""

import argparse
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from device.outbox import Outbox  # noqa: E402
from device.reporter import Reporter  # noqa: E402
from device.session import SessionCounter  # noqa: E402
from greengate import messages  # noqa: E402


class PrintingCounter(SessionCounter):
    def __call__(self) -> int:
        value = super().__call__()
        print(f"session {value}", flush=True)
        return value


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--outbox", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--session-file", required=True)
    ap.add_argument("--kiosk", default="k1")
    ap.add_argument("--host", default="localhost")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ca")
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--prefix", default="scan")
    ap.add_argument("--count", type=int, default=0)
    ap.add_argument("--rate", type=float, default=50.0)
    ap.add_argument("--replay-rate", type=float, default=200.0)
    ap.add_argument("--confirm-timeout", type=float, default=30.0)
    ap.add_argument("--then", choices=("drain", "hold"), default="drain")
    ap.add_argument("--timeout", type=float, default=40.0)
    ap.add_argument("--keepalive", type=int, default=10,
                    help="MQTT keepalive: the broker sends the will 1.5 x this after the "
                         "kiosk goes quiet (SIGSTOP)")
    args = ap.parse_args()

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s producer %(name)s %(levelname)s %(message)s")
    tls = (args.ca, args.cert, args.key) if args.ca else None
    outbox = Outbox(args.outbox, 100_000)
    reporter = Reporter(outbox, args.kiosk, args.host, args.port, tls=tls,
                        keepalive=args.keepalive,
                        replay_rate=args.replay_rate, session_source=PrintingCounter(args.session_file),
                        backoff=(0.25, 1.0), confirm_timeout=args.confirm_timeout)
    reporter.start()
    topic = messages.scan_topic(args.kiosk)
    log_fd = os.open(args.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    start = time.monotonic()
    for i in range(args.count):
        scan_id = f"{args.prefix}-{i:06d}"
        now = time.time()

        def build(seq, scan_id=scan_id, now=now):
            return messages.encode(messages.scan(
                scan_id=scan_id, kiosk=args.kiosk, ts=now, decision="green", reason="ok",
                sub_reason=None, cert_type="v", cert_hash=None, holder=None,
                policy="hcmc-2021", seq=seq))

        outbox.add(scan_id, topic, build)
        os.write(log_fd, (scan_id + "\n").encode())
        os.fsync(log_fd)
        reporter.notify(scan_id)
        delay = start + (i + 1) / args.rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    os.close(log_fd)
    print("produced", flush=True)
    deadline = time.monotonic() + args.timeout
    if args.then == "hold":
        while time.monotonic() < deadline:
            time.sleep(0.1)
        return 3
    while (outbox.depth() or outbox.summaries()) and time.monotonic() < deadline:
        time.sleep(0.05)
    depth = outbox.depth()
    reporter.stop()
    outbox.close()
    print(f"drained {depth}", flush=True)
    return 0 if depth == 0 else 2


if __name__ == "__main__":
    sys.exit(main())
