"""Every benchmark in one run, then bench/REPORT.md: their figures side by side.

    python -m bench report [--only verify,decode,...] [--output FILE] [--quick]

Runs each benchmark's own main() with its defaults, in this process, one after the
other (its output still goes to the terminal, and is captured), then writes the
report: machine, date, git commit and the command; a summary of the key figures and
of every target (met / MISSED); then one section per benchmark with its figures as
tables, its targets, how to reproduce it alone, and its whole output. Benchmarks
that pin themselves to one core get the process's CPU affinity back afterwards, so
the next one (the broker, gunicorn, PostgreSQL) sees the machine as it is.

--quick runs tiny sizes (a smoke test of the report itself; its figures mean nothing).
"""

from __future__ import annotations

import argparse
import io
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import redirect_stdout
from datetime import datetime, timezone
from pathlib import Path

from . import dashboard, decode, ingest, outage, status, verify
from .common import machine

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "bench" / "REPORT.md"
PY = ".venv/bin/python"

# name, title, main, quick arguments
BENCHES = [
    ("verify", "Verifications per second", verify.main,
     ["--n", "60", "--repeat", "1"]),
    ("decode", "QR decoding: each backend and the kiosk pipeline", decode.main,
     ["--n", "12", "--bursts", "4", "--sweep", "0"]),
    ("status", "Status lists: size, delta, look-up vs a set and a Bloom filter", status.main,
     ["--n", "20000", "--also", "0", "--suspended", "0", "--delta", "1000", "--lookups",
      "5000"]),
    ("ingest", "Fleet ingest and its confirmations vs Mosquitto's bare delivery", ingest.main,
     ["--quick"]),
    ("outage", "Outage detection delay (kill -9 / freeze -> offline on the API)", outage.main,
     ["--keepalives", "2", "--kills", "1", "--freezes", "1", "--sweep", "1"]),
    ("dashboard", "Dashboard and kiosks API on a 10k-kiosk / 10M-scan SQLite fleet",
     dashboard.main,
     ["--kiosks", "200", "--scans", "20000", "--requests", "20", "--max-seconds", "2",
      "--data-dir", str(Path(tempfile.gettempdir()) / "greengate-bench-report-quick")]),
]


class Tee(io.TextIOBase):
    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self):
        for s in self.streams:
            s.flush()


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, text=True, capture_output=True).stdout.strip()
        return head + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


# --- parsing each benchmark's output into tables -------------------------------------------
def _num(text: str) -> float:
    return float(text.replace(",", ""))


def figures_verify(out: str) -> list[tuple[str, str]]:
    rows = []
    for alg, rate, us in re.findall(r"^(\w+):\s+(\d+) verifications/s\s+\(([\d.]+) µs each\)",
                                    out, re.M):
        rows.append((f"{alg} verifications/s (one core)", f"{int(rate):,} /s ({us} µs each)"))
    return rows


def table_verify(out: str) -> str:
    algs = re.findall(r"^(\w+):\s+(\d+) verifications/s\s+\(([\d.]+) µs each\)", out, re.M)
    if not algs:
        return ""
    lines = ["| algorithm | verifications/s | µs each | signature alone |", "|---|---:|---:|---:|"]
    sig = re.findall(r"signature checks alone, back to back: ([\d.]+) µs", out)
    for i, (alg, rate, us) in enumerate(algs):
        lines.append(f"| {alg} | {int(rate):,} | {us} | {sig[i] + ' µs' if i < len(sig) else ''} |")
    stages = re.findall(r"^    (\S.*?)\s{2,}([\d.-]+) µs$", out, re.M)
    if stages and len(algs) == 2 and len(stages) % 2 == 0:
        half = len(stages) // 2
        lines += ["", f"| stage (µs per certificate) | {algs[0][0]} | {algs[1][0]} |",
                  "|---|---:|---:|"]
        for (name, a), (_, b) in zip(stages[:half], stages[half:]):
            lines.append(f"| {name} | {a} | {b} |")
    return "\n".join(lines)


DECODE_ROW = re.compile(r"^(\S+)\s+([\d.]+)% \(\s*\d+\)\s+([\d.]+) ms\s+([\d.]+) ms\s+"
                        r"([\d.]+)% \(\s*\d+\)$", re.M)


def figures_decode(out: str) -> list[tuple[str, str]]:
    rows = []
    for label, rate, med, p95, burst in DECODE_ROW.findall(out):
        rows.append((f"decode {label}", f"{rate} % of frames, {1000 / float(med):.1f} frames/s "
                     f"(median {med} ms, p95 {p95} ms), bursts {burst} %"))
    m = re.search(r"^pipeline\s+median ([\d.]+) ms, p95 ([\d.]+) ms", out, re.M)
    o = re.search(r"^overhead\s+median ([+\-\d.]+)%", out, re.M)
    if m:
        rows.append(("kiosk pipeline (decode+verify+outbox+lights)",
                     f"{1000 / float(m.group(1)):.1f} frames/s (median {m.group(1)} ms, "
                     f"p95 {m.group(2)} ms){f', {o.group(1)} % over the bare decoder' if o else ''}"))
    return rows


def table_decode(out: str) -> str:
    rows = DECODE_ROW.findall(out)
    if not rows:
        return ""
    lines = ["| decoder | frames decoded | frames/s (1/median) | median per frame | "
             "p95 per frame | 3-frame bursts decoded |", "|---|---:|---:|---:|---:|---:|"]
    for label, rate, med, p95, burst in rows:
        lines.append(f"| {label} | {rate} % | {1000 / float(med):.1f} | {med} ms | {p95} ms | "
                     f"{burst} % |")
    bare = re.search(r"^bare decoder\s+median ([\d.]+) ms, p95 ([\d.]+) ms", out, re.M)
    pipe = re.search(r"^pipeline\s+median ([\d.]+) ms, p95 ([\d.]+) ms", out, re.M)
    if bare and pipe:
        lines += ["", "| kiosk path (same frames, interleaved) | frames/s (1/median) | median | "
                  "p95 |", "|---|---:|---:|---:|"]
        for name, m in (("bare decoder (auto)", bare), ("kiosk pipeline: decode, verify, "
                                                        "outbox + fsync, lights", pipe)):
            lines.append(f"| {name} | {1000 / float(m.group(1)):.1f} | {m.group(1)} ms | "
                         f"{m.group(2)} ms |")
    return "\n".join(lines)


# consumer, live, (publish), [(confirmed)], drain, [(confirmed)], live vs bare, drain vs bare:
# the confirmed columns ("-" where nothing confirms) are absent from outputs before issue 12
INGEST_ROW = re.compile(r"^(\S.*?)\s{2,}([\d,]+)\s+([\d,]+)(?:\s+([\d,]+|-))?\s+([\d,]+)"
                        r"(?:\s+([\d,]+|-))?\s+(\d+)%\s+(\d+)%$", re.M)
# offered, published, reached, committed, scans, p50, p95, max, missing, duplicate, ids
INGEST_PACED = re.compile(r"^\s*([\d,]+)\s+([\d,]+)\s+(yes|NO)\s+([\d,]+)\s+([\d,]+)\s+"
                          r"([\d.]+|-)\s+([\d.]+|-)\s+([\d.]+|-)\s+(\d+)\s+(\d+)\s+([\d.]+)$",
                          re.M)
INGEST_COST = re.compile(r"one SQLite worker, this run, rate with confirms (\w+) vs off: "
                         r"live ([+\-\d.]+%), drain ([+\-\d.]+%)")
INGEST_CPU = re.compile(r"^  cpu per scan, (.+?): consumer live (\d+) µs, drain (\d+) µs; "
                        r"broker live (\d+) µs, drain (\d+) µs$", re.M)
INGEST_DELETE = re.compile(r"^kiosk side, measured apart.*?: (Outbox\.confirm of \d+ id\(s\)).*?"
                           r"(p50 [\d.]+ ms, p95 [\d.]+ ms)", re.M)


def figures_ingest(out: str) -> list[tuple[str, str]]:
    rows = INGEST_ROW.findall(out)
    bare = next((r for r in rows if r[0].startswith("bare")), None)
    out_rows = []
    if bare:
        out_rows.append(("Mosquitto bare delivery", f"live {bare[1]}/s, drain {bare[4]}/s"))
    for r in rows:
        if r[0].startswith("worker"):
            confirmed = (f"; confirmed at the kiosks live {r[3]}/s, drain {r[5]}/s"
                         if r[3] and r[3] != "-" else "")
            out_rows.append((f"ingest {r[0]}", f"live {r[1]}/s ({r[6]} % of bare), drain "
                             f"{r[4]}/s ({r[7]} % of bare){confirmed}"))
    for name, live, drain, _, _ in INGEST_CPU.findall(out):
        if name.startswith("worker, sqlite"):
            out_rows.append((f"ingest CPU per scan, {name}", f"worker live {live} µs, "
                             f"drain {drain} µs"))
    for cost in INGEST_COST.finditer(out):
        out_rows.append((f"ingest: one SQLite worker, rate with confirms {cost.group(1)} vs "
                         f"off (same run)", f"live {cost.group(2)}, drain {cost.group(3)}"))
    for (offered, published, reached, committed, n, p50, p95, mx, missing, dup,
         ids) in INGEST_PACED.findall(out):
        out_rows.append((f"confirmation latency, {offered}/s offered (one SQLite worker)",
                         f"p50 {p50} ms, p95 {p95} ms, max {mx} ms; published {published}/s"
                         f"{'' if reached == 'yes' else ' (offered rate NOT reached)'}, "
                         f"committed {committed}/s; {missing} missing, {dup} duplicate"))
    delete = INGEST_DELETE.search(out)
    if delete:
        out_rows.append(("kiosk outbox delete on a confirmation (apart)",
                         f"{delete.group(1)}: {delete.group(2)}"))
    return out_rows


def table_ingest(out: str) -> str:
    rows = INGEST_ROW.findall(out)
    if not rows:
        return ""
    lines = ["| consumer | live /s | (publish /s) | (confirmed /s) | drain /s | (confirmed /s) | "
             "live vs bare | drain vs bare |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r[0]} | {r[1]} | {r[2]} | {r[3] or '-'} | {r[4]} | {r[5] or '-'} | "
                     f"{r[6]} % | {r[7]} % |")
    cpu = INGEST_CPU.findall(out)
    if cpu:
        lines += ["", "CPU per scan, least of the runs (µs; less disturbed by a busy machine than "
                  "the rates):", "", "| consumer | consumer live | consumer drain | broker live | "
                  "broker drain |", "|---|---:|---:|---:|---:|"]
        for name, *values in cpu:
            lines.append(f"| {name} | " + " | ".join(values) + " |")
    paced = INGEST_PACED.findall(out)
    if paced:
        lines += ["", "Confirmation latency (publish -> confirmation received by the kiosk) at "
                  "a fixed offered rate, one SQLite worker:", "",
                  "| offered /s | published /s | reached | committed /s | scans | p50 ms | "
                  "p95 ms | max ms | missing | duplicate | ids per confirmation |",
                  "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in paced:
            lines.append("| " + " | ".join(r) + " |")
    delete = INGEST_DELETE.search(out)
    if delete:
        lines += ["", f"Kiosk side, measured apart (not in the latency above): "
                  f"{delete.group(1)}, {delete.group(2)}."]
    return "\n".join(lines)


def _status_blocks(out: str) -> list[str]:
    return re.split(r"^-- ", out, flags=re.M)[1:]


def figures_status(out: str) -> list[tuple[str, str]]:
    rows = []
    blocks = _status_blocks(out)
    if not blocks:
        return rows
    first = blocks[0]
    n = re.match(r"([\d,]+) random entries", first)
    snap = re.search(r"keyset payload [\d,]+ B = ([\d.]+) B/entry; signed bundle [\d,]+ B = "
                     r"([\d.]+) B/entry", first)
    if n and snap:
        rows.append((f"status list, {n.group(1)} entries",
                     f"{snap.group(2)} B/entry signed ({snap.group(1)} B/entry payload)"))
    d = next((b for b in blocks if b.startswith("delta")), "")
    dm = re.search(r"delta adding ([\d,]+) revocations.*\nsigned bundle ([\d,]+) B", d)
    if dm:
        rows.append((f"status delta, +{dm.group(1)} revocations", f"{dm.group(2)} B signed"))
    look = {name: re.search(rf"^{re.escape(name)}\s+([\d.]+) MB\s+(\d+) ns\s+(\d+) ns", first,
                            re.M)
            for name in ("StatusList (this)", "Python set, 16 B keys", "Bloom filter, p=1e-12")}
    if all(look.values()):
        rows.append(("status look-up hit/miss: StatusList vs set vs Bloom",
                     " vs ".join(f"{m.group(2)}/{m.group(3)} ns" for m in look.values())
                     + " (memory " + " vs ".join(f"{m.group(1)} MB" for m in look.values())
                     + ")"))
    return rows


def table_status(out: str) -> str:
    lines = []
    for block in _status_blocks(out):
        head = block.splitlines()[0]
        if block.startswith("delta"):
            m = re.search(r"signed bundle ([\d,]+) B \(target ([\d,]+)\); revoked keyset "
                          r"([\d,]+) B, (\S+); entropy bound ([\d,]+) B", block)
            a = re.search(r"built in (\d+) ms; kiosk apply_delta ([\d.]+) ms", block)
            if m:
                lines += [f"**{head}**", "", "| signed delta bundle | target | keyset | method | "
                          "entropy bound | kiosk apply |", "|---:|---:|---:|---|---:|---:|",
                          f"| {m.group(1)} B | {m.group(2)} B | {m.group(3)} B | "
                          f"{m.group(4).rstrip(';')} | {m.group(5)} B | "
                          f"{a.group(2) + ' ms' if a else ''} |", ""]
            continue
        snap = re.search(r"keyset payload ([\d,]+) B = ([\d.]+) B/entry; signed bundle ([\d,]+) B "
                         r"= ([\d.]+) B/entry", block)
        lines += [f"**{head}**", ""]
        if snap:
            lines += [f"snapshot: signed bundle {snap.group(3)} B = **{snap.group(4)} B/entry** "
                      f"(keyset payload {snap.group(1)} B = {snap.group(2)} B/entry)", ""]
        lines += ["| structure | memory | look-up hit | look-up miss |", "|---|---:|---:|---:|"]
        for name in ("StatusList (this)", "Python set, 16 B keys", "Bloom filter, p=1e-12"):
            m = re.search(rf"^{re.escape(name)}\s+([\d.]+) MB\s+(\d+) ns\s+(\d+) ns", block,
                          re.M)
            if m:
                lines.append(f"| {name} | {m.group(1)} MB | {m.group(2)} ns | {m.group(3)} ns |")
        lines.append("")
    return "\n".join(lines).strip()


OUTAGE_ROW = re.compile(r"^\s*([\d.]+) s\s+(kill|freeze)\s+(\d+)\s+([\d.]+)s\s+([\d.]+)s\s+"
                        r"([\d.]+)s\s+([\d.]+)s\s+(.*)$", re.M)


def figures_outage(out: str) -> list[tuple[str, str]]:
    return [(f"outage detection, {'kill -9' if how == 'kill' else 'frozen kiosk'}, keepalive "
             f"{k} s", f"median {med} s, p95 {p95} s, max {mx} s (bound {bound} s; {fired})")
            for k, how, n, med, p95, mx, bound, fired in OUTAGE_ROW.findall(out)]


def table_outage(out: str) -> str:
    rows = OUTAGE_ROW.findall(out)
    if not rows:
        return ""
    lines = ["| keepalive | event | runs | median | p95 | max | bound 1.5 × keepalive + sweep | "
             "fired first |", "|---:|---|---:|---:|---:|---:|---:|---|"]
    for k, how, n, med, p95, mx, bound, fired in rows:
        lines.append(f"| {k} s | {'kill -9' if how == 'kill' else 'freeze (SIGSTOP)'} | {n} | "
                     f"{med} s | {p95} s | {mx} s | {bound} s | {fired} |")
    return "\n".join(lines) + ("\n\nkill -9: the kernel closes the TCP connection, the broker "
                               "publishes the last will at once (\"connection lost\"), whatever "
                               "the keepalive. Frozen: nothing closes the connection; the "
                               "broker's keepalive check (will) and the fleet's silence timer "
                               "(\"silent\", next sweep) race, both counting 1.5 × keepalive "
                               "from the last message heard.")


DASH_ROW = re.compile(r"^(\S.*?)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+ [kM]B)"
                      r"(?:\s+[\d.]+)?\s+(met|MISSED|ERROR.*)$", re.M)


def figures_dashboard(out: str) -> list[tuple[str, str]]:
    rows = DASH_ROW.findall(out)
    if not rows:
        return []
    worst = max(rows, key=lambda r: float(r[3]))
    return [("dashboard/API p95, worst endpoint", f"{worst[3]} ms ({worst[0].strip()}), "
             f"{sum(r[6] == 'met' for r in rows)} of {len(rows)} endpoints p95 <= 300 ms")]


def table_dashboard(out: str) -> str:
    rows = DASH_ROW.findall(out)
    if not rows:
        return ""
    lines = ["| endpoint | requests | p50 ms | p95 ms | max ms | size | p95 <= 300 ms |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for label, n, p50, p95, mx, size, verdict in rows:
        lines.append(f"| `{label.strip()}` | {n} | {p50} | {p95} | {mx} | {size} | {verdict} |")
    return "\n".join(lines)


FIGURES = {"verify": figures_verify, "decode": figures_decode, "status": figures_status,
           "ingest": figures_ingest, "outage": figures_outage, "dashboard": figures_dashboard}
TABLES = {"verify": table_verify, "decode": table_decode, "status": table_status,
          "ingest": table_ingest, "outage": table_outage, "dashboard": table_dashboard}
VERDICT = re.compile(r"\b(meets|MISSES|met|MISSED)\b")


def targets(out: str) -> list[tuple[str, bool]]:
    """Every line of the output that gives a verdict (meets/MISSES, met/MISSED), with
    whether it was met; the dashboard's per-endpoint rows are in its table instead."""
    found = []
    for line in out.splitlines():
        verdicts = VERDICT.findall(line)
        if verdicts and not DASH_ROW.match(line):
            found.append((line.strip(), all(v in ("meets", "met") for v in verdicts)))
    return found


def reproduce_line(name: str, out: str) -> str:
    m = re.search(r"^reproduce: (.*)$", out, re.M)
    own = f"{PY} -m bench {name}"
    if m and "-m bench" in m.group(1) and "make bench" not in m.group(1):
        line = m.group(1).strip()
        return f"{PY} {line[len('python '):]}" if line.startswith("python ") else line
    return own


# --- running ----------------------------------------------------------------------------------
def run_all(names: list[str], quick: bool) -> list[dict]:
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    results = []
    for name, title, main, quick_args in BENCHES:
        if name not in names:
            continue
        argv = list(quick_args) if quick else []
        buf = io.StringIO()
        print(f"\n##### bench {name} {' '.join(argv)}".rstrip(), flush=True)
        start = time.perf_counter()
        status, error = 0, None
        try:
            with redirect_stdout(Tee(sys.stdout, buf)):
                status = main(argv) or 0
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - one failing bench must not lose the rest
            status, error = 1, "".join(traceback.format_exception(exc))
            print(error, file=sys.stderr)
        finally:
            if affinity is not None:
                os.sched_setaffinity(0, affinity)  # benchmarks pin themselves to one core
        results.append({"name": name, "title": title, "argv": argv, "out": buf.getvalue(),
                        "seconds": time.perf_counter() - start, "status": status,
                        "error": error})
    return results


def render(results: list[dict], command: str, started: datetime, total: float) -> str:
    lines = ["# GreenGate benchmark report", "",
             "Generated by `make bench` (`bench/report.py`); do not edit by hand.", "",
             "| | |", "|---|---|",
             f"| machine | {machine()} |",
             f"| date | {started.strftime('%Y-%m-%d %H:%M UTC')} |",
             f"| commit | {git_commit()} |",
             f"| command | `{command}` |",
             f"| total run time | {total / 60:.1f} min ({total:.0f} s) |", "",
             "Every figure below comes from this one run, on this machine, at this date. "
             "Each section says how to reproduce it alone.", "",
             "## Summary", "", "| benchmark | figure | result |", "|---|---|---|"]
    for r in results:
        figs = FIGURES[r["name"]](r["out"])
        if r["error"]:
            figs.append(("(failed)", "see its section"))
        for label, value in figs:
            lines.append(f"| {r['name']} | {label} | {value} |")
    lines += ["", "### Targets", "", "| benchmark | target | verdict |", "|---|---|---|"]
    for r in results:
        for text, ok in targets(r["out"]):
            lines.append(f"| {r['name']} | {text.replace('|', '/')} | "
                         f"{'met' if ok else '**MISSED**'} |")
    for r in results:
        lines += ["", f"## {r['title']} (`{r['name']}`)", "",
                  f"Reproduce: `{reproduce_line(r['name'], r['out'])}` "
                  f"(ran {r['seconds']:.0f} s{', exit status ' + str(r['status']) if r['status'] else ''}).",
                  ""]
        table = TABLES[r["name"]](r["out"])
        if table:
            lines += [table, ""]
        t = targets(r["out"])
        if t:
            lines += ["Targets:", ""] + [f"- {'met' if ok else '**MISSED**'}: {text}"
                                         for text, ok in t] + [""]
        if r["error"]:
            lines += ["**The benchmark failed:**", "", "```", r["error"].rstrip(), "```", ""]
        lines += ["<details><summary>Full output</summary>", "", "```",
                  r["out"].rstrip(), "```", "", "</details>"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(b[0] for b in BENCHES),
                        help="comma-separated benchmarks (default: all)")
    parser.add_argument("--output", default=str(REPORT))
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes: checks the report, the figures mean nothing")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = set(names) - {b[0] for b in BENCHES}
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    command = "make bench  (= .venv/bin/python -m bench report"
    extra = (" --quick" if args.quick else "") + \
        (f" --only {args.only}" if len(names) < len(BENCHES) else "")
    command += extra + ")"
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    results = run_all(names, args.quick)
    total = time.perf_counter() - t0
    text = render(results, command, started, total)
    Path(args.output).write_text(text)
    print(f"\nreport: {args.output}; total run time {total / 60:.1f} min ({total:.0f} s)")
    return 1 if any(r["error"] for r in results) else 0
