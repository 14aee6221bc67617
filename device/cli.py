"""greengate-kiosk: the kiosk's command line."""

import argparse
import sys

from . import verify_command


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="greengate-kiosk",
                                     description="GreenGate checkpoint kiosk")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    verify_command.add_parser(sub)
    for name, text in (("run", "run the kiosk (camera → verify → light → report)"),
                       ("selftest", "check lights, camera, clock, broker and bundles")):
        p = sub.add_parser(name, help=f"{text} [not built yet]")
        p.add_argument("--config", metavar="FILE")
        p.set_defaults(handler=_not_built)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return 2 if exc.code else 0
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    return args.handler(args)


def _not_built(args) -> int:
    print(f"greengate-kiosk {args.command}: not built yet (see the open issues)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
