"""python -m bench [NAME [OPTIONS]]: run one benchmark with its options, or all of them
and write bench/REPORT.md (`python -m bench` = `python -m bench report`, what `make bench`
runs)."""

import sys

from . import (compliance, dashboard, decode, ingest, outage, partitions, report, roster,
               status, tiers, verify)

BENCHMARKS = {"verify": verify.main, "decode": decode.main, "status": status.main,
              "ingest": ingest.main, "outage": outage.main, "dashboard": dashboard.main,
              "compliance": compliance.main, "roster": roster.main, "tiers": tiers.main,
              "partitions": partitions.main,
              "report": report.main}


def main(argv: list[str]) -> int:
    if argv and argv[0] in BENCHMARKS:
        return BENCHMARKS[argv[0]](argv[1:])
    if argv:
        print(f"unknown benchmark {argv[0]!r}; have: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    return report.main([])


sys.exit(main(sys.argv[1:]))
