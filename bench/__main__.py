"""python -m bench [NAME [OPTIONS]]: run one benchmark with its options, or all of them."""

import sys

from . import dashboard, decode, ingest, status, verify

BENCHMARKS = {"verify": verify.main, "decode": decode.main, "status": status.main,
              "ingest": ingest.main, "dashboard": dashboard.main}


def main(argv: list[str]) -> int:
    if argv and argv[0] in BENCHMARKS:
        return BENCHMARKS[argv[0]](argv[1:])
    if argv:
        print(f"unknown benchmark {argv[0]!r}; have: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    status = 0
    for run in BENCHMARKS.values():
        status |= run([])
        print()
    return status


sys.exit(main(sys.argv[1:]))
