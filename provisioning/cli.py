"""greengate-provision: fleet PKI, kiosk enrolment, broker configuration, cards."""

import argparse
import sys

from greengate.pipes import run_command

from . import cards, crl_follow, fleet_commands, issuer_command


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="greengate-provision",
                                     description="GreenGate provisioning tools")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    issuer_command.add_parser(sub)
    fleet_commands.add_parsers(sub)
    cards.add_parser(sub)
    crl_follow.add_parser(sub)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return 2 if exc.code else 0
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    return run_command(lambda: args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
