"""scripts/install-kiosk.sh: the kiosk's first-boot install (enrolment bundle, permissions, unit).

The script runs for real, but into a temporary --root with --no-apt --no-venv
--no-systemctl (and --no-user unless a test builds a fake /etc/passwd under
the root), so nothing on this machine changes.
"""

import gzip
import hashlib
import io
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "install-kiosk.sh"
UNIT = REPO / "systemd" / "greengate-kiosk.service"
NAMES = ["kiosk.toml", "kiosk.key", "kiosk.pem", "ca.pem", "fleet-bundle.pem"]
SAFE = ["--no-apt", "--no-venv", "--no-systemctl"]
is_root = os.geteuid() == 0
needs_root = pytest.mark.skipif(not is_root, reason="chown needs root")


# --- bundles -----------------------------------------------------------------------------

def _pem_key_and_cert(name: str) -> tuple[bytes, bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + timedelta(days=30))
            .sign(key, hashes.SHA256()))
    return (key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()),
            cert.public_bytes(serialization.Encoding.PEM),
            key.public_key().public_bytes(serialization.Encoding.PEM,
                                          serialization.PublicFormat.SubjectPublicKeyInfo))


def bundle_files(kiosk_id: str = "hcm-q7-0001") -> dict[str, bytes]:
    """The five files of an enrolment bundle, as `greengate-provision enrol` writes them."""
    key, cert, _ = _pem_key_and_cert(kiosk_id)
    _, ca, fleet_pub = _pem_key_and_cert("GreenGate fleet CA")
    toml = f"""[kiosk]
id = "{kiosk_id}"
deployment = "hcmc"
data_dir = "/var/lib/greengate"

[mqtt]
host = "fleet.example"
ca = "ca.pem"
cert = "kiosk.pem"
key = "kiosk.key"

[bundles]
fleet_key = "fleet-bundle.pem"
http_url = "https://fleet.example:8443"

[privacy]
pseudonyms = true
"""
    return {"kiosk.toml": toml.encode(), "kiosk.key": key, "kiosk.pem": cert, "ca.pem": ca,
            "fleet-bundle.pem": fleet_pub}


def make_tar(path: Path, files: dict[str, bytes], *, gz: bool = False, dir_entry: bool = True,
             extra=()) -> Path:
    """A tar of greengate/<name> members; extra: (TarInfo, data or None) added as they are."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        if dir_entry:
            info = tarfile.TarInfo("greengate")
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(f"greengate/{name}")
            info.size, info.mode = len(data), 0o600
            tar.addfile(info, io.BytesIO(data))
        for info, data in extra:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    raw = buf.getvalue()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def write_folder(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


# --- running the script ----------------------------------------------------------------------

def run(root: Path, *args, env=None, user=False) -> subprocess.CompletedProcess:
    cmd = ["bash", str(SCRIPT), "--root", str(root), *SAFE, *([] if user else ["--no-user"]), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def refused(proc: subprocess.CompletedProcess, *words: str) -> subprocess.CompletedProcess:
    assert proc.returncode != 0, proc.stdout + proc.stderr
    for word in words:
        assert word in proc.stderr, proc.stderr
    return proc


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root: type, mode, owner, mtime and content hash."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else None
            out[str(p.relative_to(root))] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode),
                                             st.st_uid, st.st_gid, st.st_mtime_ns, digest)
    return out


def regular_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink())


def assert_installed(root: Path, files: dict[str, bytes]):
    etc = root / "etc" / "greengate"
    assert stat.S_IMODE(etc.stat().st_mode) == 0o750
    for name, data in files.items():
        p = etc / name
        assert p.read_bytes() == data, name
        assert stat.S_IMODE(p.stat().st_mode) == 0o640, name
    unit = root / "etc" / "systemd" / "system" / "greengate-kiosk.service"
    assert unit.read_bytes() == UNIT.read_bytes()
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644
    assert not list(etc.glob(".*.new"))


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    r.mkdir()
    return r


# --- the script itself ---------------------------------------------------------------------

def test_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True, timeout=30)


@pytest.mark.skipif(shutil.which("shellcheck") is None,
                    reason="shellcheck is not installed (apt-get install shellcheck)")
def test_shellcheck_finds_nothing():
    # -x follows the sourced scripts/apt-alternatives.sh (paths from the repository root)
    proc = subprocess.run(["shellcheck", "-x", "--severity=style", str(SCRIPT),
                           "scripts/setup.sh"], capture_output=True, text=True, timeout=60,
                          cwd=SCRIPT.parent.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_help_lists_the_enrolment_options():
    proc = ok(subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True,
                             timeout=30))
    for option in ("--bundle", "--boot", "--fleet", "--token", "--force", "--root", "--no-apt",
                   "--no-venv", "--no-systemctl", "--no-user"):
        assert option in proc.stdout


def test_unknown_option_is_refused(root):
    refused(run(root, "--bogus"), "unknown argument: --bogus")


# --- tar bundles -------------------------------------------------------------------------

@pytest.mark.parametrize("name, gz", [("hcm-q7-0001.tar", False),
                                      ("hcm-q7-0001.tar", True),      # gzip without the suffix
                                      ("hcm-q7-0001.tar.gz", True)])
def test_tar_bundle_is_installed(root, tmp_path, name, gz):
    files = bundle_files()
    tar = make_tar(tmp_path / name, files, gz=gz)
    proc = ok(run(root, "--bundle", str(tar)))
    assert_installed(root, files)
    assert "kiosk hcm-q7-0001" in proc.stdout
    assert tar.exists()  # a bundle given by path is the operator's to keep or delete


def test_tar_without_a_directory_entry_or_with_dot_slash_names(root, tmp_path):
    files = bundle_files()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"./greengate/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (tmp_path / "b.tar").write_bytes(buf.getvalue())
    ok(run(root, "--bundle", str(tmp_path / "b.tar")))
    assert_installed(root, files)


def _member(name, kind=tarfile.REGTYPE, data=b"x", linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, (data if kind == tarfile.REGTYPE else None)


@pytest.mark.parametrize("extra, why", [
    (_member("../evil"), "unsafe member '../evil'"),
    (_member("greengate/../../evil"), "unsafe member"),
    (_member("/tmp/evil"), "unsafe member '/tmp/evil'"),
    (_member("greengate/extra.txt"), "unexpected member 'greengate/extra.txt'"),
    (_member("evil"), "unexpected member 'evil'"),
    (_member("greengate/ca.pem", tarfile.SYMTYPE, linkname="/etc/shadow"), "not a regular file"),
    (_member("greengate/kiosk.toml", data=b"[kiosk]\nid='x'\n"), "appears twice"),
])
def test_unsafe_or_unexpected_tar_members_are_refused(root, tmp_path, extra, why):
    tar = make_tar(tmp_path / "bad.tar", bundle_files(), extra=[extra])
    refused(run(root, "--bundle", str(tar)), "refused", why, "Nothing was installed")
    assert regular_files(root) == []
    assert not (root / "etc" / "greengate").exists()
    assert not (tmp_path / "evil").exists() and not (root / "evil").exists()


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE])
def test_links_and_devices_are_refused(root, tmp_path, kind):
    files = bundle_files()
    del files["kiosk.key"]
    link = _member("greengate/kiosk.key", kind, linkname="/etc/shadow")
    tar = make_tar(tmp_path / "bad.tar", files, extra=[link])
    refused(run(root, "--bundle", str(tar)), "is not a regular file")
    assert regular_files(root) == []


@pytest.mark.parametrize("missing", NAMES)
def test_a_missing_file_is_refused(root, tmp_path, missing):
    files = bundle_files()
    del files[missing]
    tar = make_tar(tmp_path / "short.tar", files)
    refused(run(root, "--bundle", str(tar)), f"greengate/{missing} is missing")
    assert regular_files(root) == []


@pytest.mark.parametrize("change, why", [
    ({"kiosk.key": b""}, "kiosk.key is empty"),
    ({"kiosk.toml": b"[kiosk\nid = 1"}, "kiosk.toml is not valid TOML"),
    ({"kiosk.toml": b"[kiosk]\nlocation = 'Q7'\n"}, "[kiosk] id is missing"),
    ({"kiosk.toml": b"[kiosk]\nid = 'a'\n[mqtt]\nkey = 'other.key'\n"},
     "[mqtt] key = 'other.key' is not a file of the bundle"),
])
def test_a_bad_file_is_refused(root, tmp_path, change, why):
    tar = make_tar(tmp_path / "bad.tar", {**bundle_files(), **change})
    refused(run(root, "--bundle", str(tar)), why)
    assert regular_files(root) == []


def test_not_a_tar_file_is_refused(root, tmp_path):
    junk = tmp_path / "x.tar"
    junk.write_bytes(b"PK\x03\x04 this is a zip, not a tar" * 20)
    refused(run(root, "--bundle", str(junk)), "is not a tar file")
    refused(run(root, "--bundle", str(tmp_path / "nope.tar")), "no such file")
    assert regular_files(root) == []


# --- the boot partition ---------------------------------------------------------------------

@pytest.mark.parametrize("where", ["boot/firmware/greengate", "boot/greengate"])
def test_boot_folder_is_found_installed_and_removed(root, where):
    files = bundle_files()
    boot = write_folder(root / where, files)
    (boot.parent / "config.txt").write_text("camera_auto_detect=1\n")
    proc = ok(run(root))
    assert_installed(root, files)
    assert not boot.exists(), "the private key must not stay on the FAT boot partition"
    assert (boot.parent / "config.txt").exists()
    assert f"removed {boot}" in proc.stdout


def test_bookworm_boot_folder_wins_over_the_old_one(root):
    new, old = bundle_files("new-0001"), bundle_files("old-0001")
    write_folder(root / "boot/firmware/greengate", new)
    write_folder(root / "boot/greengate", old)
    ok(run(root))
    assert_installed(root, new)
    assert (root / "boot/greengate/kiosk.key").exists()


def test_explicit_boot_dir_and_other_files_left_in_it(root, tmp_path):
    files = bundle_files()
    part = tmp_path / "bootfs"
    boot = write_folder(part / "greengate", files)
    (boot / "._kiosk.key").write_bytes(b"\0\5\26\7 AppleDouble")
    (boot / "notes.txt").write_text("installed by Lan\n")
    proc = ok(run(root, "--boot", str(part)))  # the partition, or the folder itself
    assert_installed(root, files)
    assert sorted(p.name for p in boot.iterdir()) == ["notes.txt"]
    assert "other files are left in it: notes.txt" in proc.stderr


@pytest.mark.parametrize("missing", ["ca.pem", "fleet-bundle.pem"])
def test_boot_folder_with_a_missing_file_is_kept_and_nothing_installed(root, missing):
    files = bundle_files()
    del files[missing]
    boot = write_folder(root / "boot/firmware/greengate", files)
    refused(run(root), f"{missing} is missing", "Nothing was installed")
    assert sorted(p.name for p in boot.iterdir()) == sorted(files)
    assert not (root / "etc" / "greengate").exists()


def test_boot_folder_with_a_link_is_refused(root, tmp_path):
    files = bundle_files()
    del files["kiosk.key"]
    boot = write_folder(root / "boot/firmware/greengate", files)
    (tmp_path / "elsewhere.key").write_bytes(b"key")
    (boot / "kiosk.key").symlink_to(tmp_path / "elsewhere.key")
    refused(run(root), "kiosk.key is a symbolic link")
    assert not (root / "etc" / "greengate").exists()


# --- an existing enrolment --------------------------------------------------------------------

def test_existing_config_is_kept_without_force_and_replaced_with_it(root, tmp_path):
    first, second = bundle_files("hcm-q7-0001"), bundle_files("hcm-q7-0002")
    ok(run(root, "--bundle", str(make_tar(tmp_path / "1.tar", first))))
    before = snapshot(root)
    tar2 = make_tar(tmp_path / "2.tar", second)
    refused(run(root, "--bundle", str(tar2)), "kiosk hcm-q7-0001", "kiosk hcm-q7-0002", "--force")
    assert snapshot(root) == before
    # The boot partition's folder is not deleted when it was not installed.
    boot = write_folder(root / "boot/firmware/greengate", second)
    refused(run(root), "--force")
    assert (boot / "kiosk.key").exists()
    shutil.rmtree(root / "boot")

    ok(run(root, "--bundle", str(tar2), "--force"))
    assert_installed(root, second)


def test_a_second_run_changes_nothing(root, tmp_path):
    files = bundle_files()
    tar = make_tar(tmp_path / "k.tar.gz", files, gz=True)
    ok(run(root, "--bundle", str(tar)))
    before = snapshot(root)
    proc = ok(run(root, "--bundle", str(tar)))
    assert "already holds this bundle" in proc.stdout
    assert "unit " in proc.stdout and " OK" in proc.stdout
    assert snapshot(root) == before
    # Without any enrolment source the existing config is kept as it is.
    proc = ok(run(root))
    assert "keeping" in proc.stdout
    assert snapshot(root) == before


def test_boot_folder_run_twice(root):
    files = bundle_files()
    write_folder(root / "boot/firmware/greengate", files)
    ok(run(root))
    before = snapshot(root)
    ok(run(root))
    assert snapshot(root) == before


def test_modes_are_repaired_on_an_existing_enrolment(root, tmp_path):
    files = bundle_files()
    ok(run(root, "--bundle", str(make_tar(tmp_path / "k.tar", files))))
    etc = root / "etc" / "greengate"
    etc.chmod(0o755)
    (etc / "kiosk.key").chmod(0o644)
    ok(run(root))
    assert_installed(root, files)


def test_no_enrolment_at_all_says_what_to_do(root):
    refused(run(root), "no enrolment found", "--bundle", "--fleet URL --token TOKEN")
    assert regular_files(root) == []
    # --no-enrol installs the software (here: the unit) and nothing else.
    proc = ok(run(root, "--no-enrol"))
    assert regular_files(root) == ["etc/systemd/system/greengate-kiosk.service"]
    assert "skipped (--no-systemctl)" in proc.stdout


def test_only_one_enrolment_source(root, tmp_path):
    tar = make_tar(tmp_path / "k.tar", bundle_files())
    refused(run(root, "--bundle", str(tar), "--fleet", "https://f:8443", "--token", "t"),
            "only one of")
    refused(run(root, "--bundle", str(tar), "--no-enrol"), "only one of")


# --- ownership -----------------------------------------------------------------------------

@needs_root
def test_files_belong_to_root_and_the_kiosk_group(root, tmp_path):
    (root / "etc").mkdir()
    (root / "etc" / "group").write_text("root:x:0:\ngreengate:x:4242:\n")
    files = bundle_files()
    proc = ok(run(root, "--bundle", str(make_tar(tmp_path / "k.tar", files))))
    assert "root:greengate, 0750 / 0640" in proc.stdout
    etc = root / "etc" / "greengate"
    for p in [etc, *(etc / n for n in NAMES)]:
        st = p.stat()
        assert (st.st_uid, st.st_gid) == (0, 4242), p


def test_without_the_group_it_warns(root, tmp_path):
    proc = ok(run(root, "--bundle", str(make_tar(tmp_path / "k.tar", bundle_files()))))
    assert "group greengate does not exist" in proc.stderr or "not root" in proc.stderr


@needs_root
@pytest.mark.skipif(shutil.which("useradd") is None, reason="useradd (package passwd) is missing")
def test_user_and_groups_are_created_in_the_target_root_only(root, tmp_path):
    """--root with an /etc/passwd: useradd --root works on that tree, not on this machine."""
    etc = root / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (etc / "group").write_text("root:x:0:\nvideo:x:44:\ndialout:x:20:\n")  # no gpio group
    (etc / "gshadow").write_text("root:*::\nvideo:!::\ndialout:!::\n")
    host_user = subprocess.run(["getent", "passwd", "greengate"], capture_output=True, text=True)
    files = bundle_files()
    proc = ok(run(root, "--bundle", str(make_tar(tmp_path / "k.tar", files)), user=True))
    assert "group gpio does not exist" in proc.stderr
    passwd = {line.split(":")[0]: line.split(":") for line in (etc / "passwd").read_text().splitlines()}
    assert passwd["greengate"][5:] == ["/var/lib/greengate", "/usr/sbin/nologin"]
    groups = {line.split(":")[0]: line.split(":") for line in (etc / "group").read_text().splitlines()}
    assert groups["video"][3] == "greengate" and groups["dialout"][3] == "greengate"
    gid = int(groups["greengate"][2])
    assert (root / "etc/greengate/kiosk.key").stat().st_gid == gid
    # Nothing was created on this machine.
    again = subprocess.run(["getent", "passwd", "greengate"], capture_output=True, text=True)
    assert again.returncode == host_user.returncode and again.stdout == host_user.stdout
    # A second run finds the user and its groups.
    before = snapshot(root)
    proc = ok(run(root, "--bundle", str(tmp_path / "k.tar"), user=True))
    assert "user greengate OK" in proc.stdout and "in group video" in proc.stdout
    assert snapshot(root) == before


# --- online enrolment with a token ---------------------------------------------------------

STAND_IN = """#!{python}
import json, os, sys
args = sys.argv[1:]
with open({record!r}, "a") as f:
    f.write(json.dumps(args) + "\\n")
if os.environ.get("STAND_IN_FAIL"):
    print("enrol: the token was already used", file=sys.stderr)
    sys.exit(1)
folder = args[args.index("--dir") + 1]
with open({record!r} + ".mode", "w") as f:
    f.write(oct(os.stat(folder).st_mode & 0o777))
files = json.load(open({files!r}))
for name, text in files.items():
    with open(os.path.join(folder, name), "w") as out:
        out.write(text)
"""


@pytest.fixture
def stand_in(tmp_path):
    """A greengate-kiosk that records its arguments and writes a bundle into --dir."""
    record, files_json = tmp_path / "args.jsonl", tmp_path / "files.json"
    files = bundle_files("hcm-q7-0042")
    files_json.write_text(__import__("json").dumps({k: v.decode() for k, v in files.items()}))
    binary = tmp_path / "greengate-kiosk"
    binary.write_text(STAND_IN.format(python=sys.executable, record=str(record),
                                      files=str(files_json)))
    binary.chmod(0o755)
    return binary, record, files


def _calls(record: Path) -> list[list[str]]:
    import json
    return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []


def test_token_enrolment_runs_greengate_kiosk_enrol(root, stand_in):
    binary, record, files = stand_in
    env = {"GREENGATE_KIOSK_BIN": str(binary)}
    proc = ok(run(root, "--fleet", "https://fleet.example:8443", "--token", "tok-123", env=env))
    [args] = _calls(record)
    assert args[:5] == ["enrol", "--fleet", "https://fleet.example:8443", "--token", "tok-123"]
    assert args[5] == "--dir" and len(args) == 7
    # It enrols into a private staging folder (in /run when it can), removed afterwards.
    staging = Path(args[6])
    assert staging.name.startswith("greengate-enrol.") and not staging.exists()
    assert Path(str(record) + ".mode").read_text() == "0o700"  # the new private key's folder
    assert_installed(root, files)
    assert "tok-123" not in proc.stdout  # the token is not logged
    assert "kiosk hcm-q7-0042 enrolled" in proc.stdout


def test_token_enrolment_failure_installs_nothing(root, stand_in):
    binary, record, _ = stand_in
    env = {"GREENGATE_KIOSK_BIN": str(binary), "STAND_IN_FAIL": "1"}
    refused(run(root, "--fleet", "https://f:8443", "--token", "t", env=env),
            "greengate-kiosk enrol failed", "the token was already used")
    assert not (root / "etc" / "greengate").exists()
    [args] = _calls(record)
    assert not Path(args[6]).exists()


def test_token_enrolment_keeps_an_existing_config_without_force(root, tmp_path, stand_in):
    binary, record, files = stand_in
    env = {"GREENGATE_KIOSK_BIN": str(binary)}
    ok(run(root, "--bundle", str(make_tar(tmp_path / "k.tar", bundle_files()))))
    refused(run(root, "--fleet", "https://f:8443", "--token", "t", env=env), "--force",
            "the token is not used")
    assert _calls(record) == []  # the one-time token was not spent
    ok(run(root, "--fleet", "https://f:8443", "--token", "t", "--force", env=env))
    assert_installed(root, files)


@pytest.mark.parametrize("args, why", [
    (["--fleet", "http://fleet:8080", "--token", "t"], "must be an https:// URL"),
    (["--fleet", "https://fleet:8443"], "--fleet and --token go together"),
    (["--token", "t"], "--fleet and --token go together"),
    (["--token"], "--token needs a value"),
])
def test_token_arguments_are_checked(root, stand_in, args, why):
    binary, record, _ = stand_in
    refused(run(root, *args, env={"GREENGATE_KIOSK_BIN": str(binary)}), why)
    assert _calls(record) == []


def test_token_enrolment_needs_the_installed_package(root):
    refused(run(root, "--fleet", "https://f:8443", "--token", "t",
                env={"GREENGATE_KIOSK_BIN": str(root / "missing")}), "drop --no-venv")


# --- systemd, offline (image building) ------------------------------------------------------

@pytest.mark.skipif(shutil.which("systemctl") is None, reason="systemctl (package systemd) is missing")
def test_root_install_enables_the_unit_offline_once_a_config_is_there(root, tmp_path):
    """Without --no-systemctl, --root runs `systemctl --root DIR enable`: no running systemd needed."""
    cmd = ["bash", str(SCRIPT), "--root", str(root), "--no-apt", "--no-venv", "--no-user"]
    wants = root / "etc/systemd/system/multi-user.target.wants/greengate-kiosk.service"
    proc = ok(subprocess.run([*cmd, "--no-enrol"], capture_output=True, text=True, timeout=120))
    assert "not enabled" in proc.stdout and not wants.is_symlink()
    tar = make_tar(tmp_path / "k.tar", bundle_files())
    ok(subprocess.run([*cmd, "--bundle", str(tar)], capture_output=True, text=True, timeout=120))
    assert wants.is_symlink()
    assert os.readlink(wants) == "/etc/systemd/system/greengate-kiosk.service"
    before = snapshot(root)
    proc = ok(subprocess.run([*cmd, "--bundle", str(tar)], capture_output=True, text=True, timeout=120))
    assert "enabled in" in proc.stdout
    assert snapshot(root) == before
