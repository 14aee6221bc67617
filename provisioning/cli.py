"""greengate-provision: fleet PKI, kiosk enrolment, broker configuration, cards."""

import argparse
import sys

from . import issuer_command

_LATER = (
    ("init", "create the fleet PKI (CA, broker certificate, bundle-signing key)"),
    ("enrol", "enrol a kiosk and produce its bundle or enrolment token"),
    ("retire", "retire a kiosk and revoke its certificate"),
    ("mosquitto-config", "write the Mosquitto TLS and ACL configuration"),
    ("cards", "print personal QR cards and location posters as PDF"),
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="greengate-provision",
                                     description="GreenGate provisioning tools")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    issuer_command.add_parser(sub)
    for name, text in _LATER:
        sub.add_parser(name, help=f"{text} [not built yet]").set_defaults(handler=_not_built)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return 2 if exc.code else 0
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    return args.handler(args)


def _not_built(args) -> int:
    print(f"greengate-provision {args.command}: not built yet (see the open issues)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
