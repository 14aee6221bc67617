"""greengate-kiosk: the kiosk's command line."""

import argparse
import os
import sys

from greengate.pipes import run_command

from . import enrol, rules_command, verify_command


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="greengate-kiosk",
                                     description="GreenGate checkpoint kiosk")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    verify_command.add_parser(sub)
    rules_command.add_parser(sub)
    enrol.add_parser(sub)
    for name, text, module in (("run", "run the kiosk (camera → verify → light → report)", "kiosk"),
                               ("selftest", "check lights, camera, clock, broker and bundles",
                                "selftest")):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--config", metavar="FILE", required=True, help="the kiosk's TOML file")
        p.add_argument("--source", choices=("picamera2", "v4l2", "folder", "scanner"),
                       help="use this frame source instead of the config's [source] kind")
        p.add_argument("--path", help="the source's folder, video, device or port "
                                      "(instead of the config's [source] path)")
        if name == "run":
            p.add_argument("--keep-running", action="store_true",
                           help="when a folder source ends, keep reporting and sending "
                                "heartbeats until stopped (default: report what is left, exit)")
        p.set_defaults(handler=_lazy(module))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return 2 if exc.code else 0
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    return run_command(lambda: args.handler(args))


def _lazy(module: str):
    """Import the kiosk's heavy parts (OpenCV, GPIO) only for the command that needs them."""
    def handler(args) -> int:
        import importlib
        return importlib.import_module(f"device.{module}").run(args)
    return handler


def source_overrides(args) -> dict:
    """--source/--path as config overrides; a path is relative to where the command runs."""
    values = {}
    if getattr(args, "source", None):
        values["kind"] = args.source
    if getattr(args, "path", None):
        path = args.path
        values["path"] = path if "://" in path else os.path.abspath(path)
    return {"source": values} if values else {}


if __name__ == "__main__":
    sys.exit(main())
