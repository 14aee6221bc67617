"""The docs run: every ```sh block of README.md, docs/fleet.md and docs/provisioning.md,
in order, as a new admin would type them, against a real Mosquitto.

A block runs unless the HTML comment just above it says otherwise, with a reason:

    <!-- walkthrough: skip (why) -->     not run (apt, systemd, a second web server)
    <!-- walkthrough: broker (why) -->   not run; the test starts Mosquitto instead, on
                                         Debian's stock mosquitto.conf (tests/data/debian/)
                                         including the conf.d the docs' mosquitto-config wrote

What the test changes, so that a run touches nothing outside a temporary directory and
no fixed port: /etc/…, /var/…, /run/…, /tmp/… (and /media, /opt, /srv) move under a
fake root; HOME is a fresh folder; the work starts in a folder holding a link to the
checkout's .venv (the docs' `. .venv/bin/activate`); `fleet.example` becomes
`localhost`; `systemctl reload mosquitto` signals the test's broker; the well-known ports (8883, 8080, 8000, 8443, 9101) become free ones.
Each block runs in its own `bash -e`, carrying the previous block's directory and
exported variables; `&` jobs stay up until the end of the document chain. A failing
command names its file and line. README.md and docs/fleet.md share one fleet (fleet.md
works on the fleet the README set up); docs/provisioning.md starts from nothing.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.broker import free_port
from tests.test_mosquitto_debian import DebianBroker, moved

ROOT = Path(__file__).resolve().parent.parent
CHAINS = {"readme-and-fleet": ("README.md", "docs/fleet.md"),
          "provisioning": ("docs/provisioning.md",)}
PORTS = (8883, 8080, 8000, 8443, 9101)
MARKER = re.compile(r"<!--\s*walkthrough:\s*(\w+)\s*(.*?)\s*-->")
FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
BLOCK_SECONDS = 60


@dataclass
class Block:
    file: str
    line: int  # of the block's first command line
    lang: str
    text: str
    marker: str | None = None
    reason: str = ""

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def blocks(relative: str, base: Path = ROOT) -> list[Block]:
    """The fenced blocks of a Markdown file, with the walkthrough marker above each."""
    lines = (base / relative).read_text(encoding="utf-8").splitlines()
    found, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(2)
        j = i + 1
        while j < len(lines) and not re.match(r"^\s*```\s*$", lines[j]):
            j += 1
        marker = reason = None
        k = start - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        if k >= 0 and (mm := MARKER.search(lines[k])):
            marker, reason = mm.group(1), mm.group(2)
        indent = len(m.group(1))
        text = "\n".join(line[indent:] for line in lines[start + 1:j])
        found.append(Block(relative, start + 2, lang, text, marker, reason or ""))
        i = j + 1
    return found


def runnable(block: Block) -> bool:
    return block.lang in ("sh", "bash")


def test_every_marker_is_known_and_has_a_reason():
    """A block may only be left out for a stated reason, and only sh blocks run."""
    for files in CHAINS.values():
        for name in files:
            for block in blocks(name):
                if block.marker is None:
                    continue
                assert block.marker in ("skip", "broker"), \
                    f"{block.where}: unknown walkthrough marker {block.marker!r}"
                assert re.fullmatch(r"\(.+\)", block.reason), \
                    f"{block.where}: walkthrough {block.marker} needs a reason in brackets"
                assert runnable(block), f"{block.where}: a marker on a block that never runs"


class Walk:
    """One document chain's sandbox: fake root, HOME, work folder, state between blocks."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.root = tmp / "root"
        self.home = tmp / "home"
        self.work = tmp / "checkout"
        self.state = tmp / "state"
        for folder in (self.root / "tmp", self.home, self.work, self.state):
            folder.mkdir(parents=True, exist_ok=True)
        (self.work / ".venv").symlink_to(ROOT / ".venv")
        self.ports = {port: free_port() for port in PORTS}
        (self.state / "cwd").write_text(str(self.work))
        (self.state / "env.sh").write_text("")
        self.groups: list[int] = []
        self.count = 0
        self.broker: DebianBroker | None = None
        self.env = {key: value for key, value in os.environ.items()
                    if not key.startswith(("GREENGATE_", "VIRTUAL_ENV", "PYTEST"))}
        # systemctl: the broker is no systemd unit here; `reload mosquitto` does what
        # Debian's unit does (ExecReload: kill -HUP of the pid in its pid_file)
        stubs = tmp / "bin"
        stubs.mkdir()
        (stubs / "systemctl").write_text(
            "#!/bin/sh\n"
            'case "$1 $2" in\n'
            f'  "reload mosquitto") exec kill -HUP "$(cat {self.root}/run/mosquitto/'
            'mosquitto.pid)";;\n'
            '  *) echo "walkthrough: systemctl $* is not available here" >&2; exit 1;;\n'
            "esac\n")
        (stubs / "systemctl").chmod(0o755)
        self.env.update(HOME=str(self.home), LANG="C.UTF-8",
                        PATH=f"{stubs}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:"
                             "/sbin:/bin")

    def rewrite(self, text: str) -> str:
        text = moved(text, self.root)
        text = text.replace("fleet.example", "localhost")
        for port, free in self.ports.items():
            text = re.sub(rf"(?<!\d){port}(?!\d)", str(free), text)
        return text

    def run(self, block: Block) -> None:
        body = self.rewrite(block.text)
        head = [
            "set -eE -o pipefail",
            f'cd "$(cat {self.state}/cwd)"',
            f". {self.state}/env.sh",
            "trap 'echo \"walkthrough-failed-line $LINENO: $BASH_COMMAND\" >&2' ERR",
        ]
        tail = [f"export -p > {self.state}/env.next", f"mv {self.state}/env.next "
                f"{self.state}/env.sh", f"pwd > {self.state}/cwd"]
        self.count += 1
        stem = f"block-{self.count:02d}-{Path(block.file).stem}-{block.line}"
        script = self.tmp / f"{stem}.sh"
        script.write_text("\n".join(head + [body] + tail) + "\n")
        log = self.tmp / f"{stem}.log"
        with open(log, "wb") as out:
            # its own session: the block's `&` jobs share its process group, which the
            # end of the test ends; a file, not a pipe, so they cannot hold the run open
            proc = subprocess.Popen(["bash", str(script)], cwd=self.work, env=self.env,
                                    stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.groups.append(proc.pid)
        try:
            status = proc.wait(BLOCK_SECONDS)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{block.where}: the block ran longer than {BLOCK_SECONDS} s "
                        f"(a command that never ends needs `&`):\n{log.read_text()[-3000:]}",
                        pytrace=False)
        output = log.read_text(errors="replace")
        if status != 0:
            m = re.search(r"walkthrough-failed-line (\d+): (.*)", output)
            where = block.where
            if m:
                where = f"{block.file}:{block.line + int(m.group(1)) - len(head) - 1}"
            pytest.fail(f"{where}: the docs' command failed (exit {status}) "
                        f"{'`' + m.group(2) + '`' if m else ''}\n{output[-4000:]}"
                        f"{self.broker_log()}", pytrace=False)

    def start_broker(self, block: Block) -> None:
        broker = DebianBroker(self.root, self.ports[8883])
        if not (broker.conf_d / "greengate.conf").exists():
            pytest.fail(f"{block.where}: the broker is (re)started before the docs wrote "
                        f"{broker.conf_d}/greengate.conf", pytrace=False)
        self.broker = broker
        try:
            broker.start()
        except AssertionError as exc:
            pytest.fail(f"{block.where}: Mosquitto does not start on Debian's "
                        f"mosquitto.conf with the docs' conf.d: {exc}", pytrace=False)

    def broker_log(self) -> str:
        if self.broker is None:
            return ""
        return "\n--- mosquitto log ---\n" + self.broker.log_text()[-2000:]

    def close(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            alive = False
            for group in self.groups:
                try:
                    os.killpg(group, sig)
                    alive = True
                except ProcessLookupError:
                    pass
            if alive and sig == signal.SIGTERM:
                time.sleep(1.0)
        if self.broker is not None:
            self.broker.stop()


@pytest.mark.parametrize("chain", sorted(CHAINS))
def test_the_docs_run_top_to_bottom(chain, tmp_path):
    walk = Walk(tmp_path)
    ran = 0
    try:
        for name in CHAINS[chain]:
            for block in blocks(name):
                if not runnable(block) or block.marker == "skip":
                    continue
                if block.marker == "broker":
                    walk.start_broker(block)
                else:
                    walk.run(block)
                ran += 1
    finally:
        walk.close()
    assert ran >= 3, f"{chain}: only {ran} blocks ran: are the blocks still marked ```sh?"


def test_a_broken_doc_fails_with_its_file_and_line(tmp_path):
    """The harness itself: a command that fails is reported at its own line of the
    Markdown, with the rewritten paths; state carries from one block to the next."""
    doc = tmp_path / "doc.md"
    doc.write_text("# A doc\n\n```sh\nexport WHERE=/etc/greengate\nmkdir -p $WHERE\n```\n\n"
                   "Text.\n\n```sh\ntest -d \"$WHERE\"\nfalse   # line 12\necho never\n```\n")
    walk = Walk(tmp_path / "walk")
    first, second = blocks("doc.md", base=tmp_path)
    assert (first.line, second.line) == (4, 11)
    try:
        walk.run(first)
        assert (walk.root / "etc" / "greengate").is_dir()  # moved under the fake root
        with pytest.raises(pytest.fail.Exception, match=r"doc\.md:12: the docs' command "
                                                         r"failed \(exit 1\) `false`"):
            walk.run(second)
    finally:
        walk.close()
