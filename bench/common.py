"""What every benchmark prints alongside its figures: machine, date, how to rerun."""

import os
import platform
import sys
import time
from datetime import datetime, timezone


def pin_one_core() -> str:
    """Run on one core, as the targets are stated per core."""
    try:
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        return f"pinned to core {core}"
    except (AttributeError, OSError):
        return "not pinned (no sched_setaffinity)"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()}")


def header(title: str, command: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"== {title}\nmachine: {machine()}\ndate: {stamp}\nreproduce: {command}"


def best_of(fn, repeat: int = 5) -> float:
    """Fastest wall time of several runs: the least disturbed by the rest of the machine."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def python_version_ok() -> None:
    if sys.version_info < (3, 11):
        raise SystemExit("benchmarks need Python 3.11+")
