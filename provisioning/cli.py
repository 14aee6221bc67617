"""greengate-provision: fleet PKI, kiosk enrolment, broker configuration, cards."""

import argparse
import os
import sys

from . import cards, fleet_commands, issuer_command


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="greengate-provision",
                                     description="GreenGate provisioning tools")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    issuer_command.add_parser(sub)
    fleet_commands.add_parsers(sub)
    cards.add_parser(sub)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return 2 if exc.code else 0
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        status = args.handler(args)
        sys.stdout.flush()  # a closed pipe shows here rather than at exit, where it can't be caught
    except BrokenPipeError:
        return _reader_gone()
    return status


# The shell's status for a process that SIGPIPE ended (128 + 13), as `cat` would give:
# the reader (`| head`) left, which is no error of ours, so no traceback either.
PIPE_CLOSED = 141


def _reader_gone() -> int:
    """stdout's reader went away: say nothing more, and keep Python's exit-time flush of
    stdout from failing again (it would print 'Exception ignored ... BrokenPipeError')."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return PIPE_CLOSED


if __name__ == "__main__":
    sys.exit(main())
