"""greengate-fleet: the fleet server's command line."""

import argparse
import sys

_LATER = (
    ("serve", "run the fleet web server"),
    ("ingest", "run an MQTT ingest worker"),
    ("db", "database migrations"),
    ("user", "manage dashboard accounts"),
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="greengate-fleet", description="GreenGate fleet server")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, text in _LATER:
        sub.add_parser(name, help=f"{text} [not built yet]")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return 2 if exc.code else 0
    if not args.command:
        parser.print_help()
        return 2
    print(f"greengate-fleet {args.command}: not built yet (see the open issues)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
