"""Command lines: `greengate-kiosk verify`, `greengate-provision issuer`, the --help screens.

Every call passes --at: nothing depends on the clock of the day.
"""

import base64
import io
import json
import os
import stat
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from device import cli as kiosk
from fleet import cli as fleet
from provisioning import cli as provision
from provisioning.issuer import Issuer, qr_png

UTC = timezone.utc
ISSUED = datetime(2021, 6, 1, tzinfo=UTC)
EXPIRES = datetime(2022, 6, 1, tzinfo=UTC)
AT = "2021-10-05T08:00:00Z"
FIELDS = {"decision", "reason", "sub_reason", "detail", "type", "kid", "cert_hash"}


def run(capsys, *argv, stdin=None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = kiosk.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def files(es256, ps256, tmp_path_factory):
    d = tmp_path_factory.mktemp("trust")
    (d / "es.pem").write_bytes(es256.pem)
    (d / "es.der").write_bytes(es256.der)
    (d / "ps.pem").write_bytes(ps256.pem)
    (d / "garbage.pem").write_text("this is not a certificate\n")
    return d


@pytest.fixture(scope="module")
def b64(es256, ps256):
    return {"es": base64.b64encode(es256.der).decode(), "ps": base64.b64encode(ps256.der).decode()}


@pytest.fixture(scope="module")
def certs(es256, ps256, person):
    return {
        "v": es256.mint(es256.vaccination(date="2021-08-01", **person), iat=ISSUED, exp=EXPIRES),
        "v_recent": es256.mint(es256.vaccination(date="2021-10-01", **person),
                               iat=ISSUED, exp=EXPIRES),
        "t": es256.mint(es256.test(sampled="2021-10-05T06:00:00Z", **person),
                        iat=ISSUED, exp=EXPIRES),
        "ps": ps256.mint(ps256.vaccination(date="2021-08-01", **person), iat=ISSUED, exp=EXPIRES),
    }


# -- verify: output and exit codes --------------------------------------------------------

def test_json_fields_and_green_exit(capsys, files, certs, es256):
    code, out, err = run(capsys, "verify", "--json", "--trust", str(files / "es.pem"),
                         "--at", AT, certs["v"])
    assert code == 0, err
    result = json.loads(out)
    assert set(result) == FIELDS
    assert result["decision"] == "green" and result["reason"] == "ok"
    assert result["sub_reason"] is None
    assert result["type"] == "v"
    assert result["kid"] == es256.kid.hex()
    assert len(result["cert_hash"]) == 32
    assert out.count("\n") == 1


def test_json_red_exit_1_with_sub_reason(capsys, files, certs, holder):
    code, out, _ = run(capsys, "verify", "--json", "--trust", str(files / "es.pem"),
                       "--at", AT, certs["v_recent"])
    assert code == 1
    result = json.loads(out)
    assert set(result) == FIELDS | {"descriptions"}  # policy_failed: the rule's, per language
    assert (result["decision"], result["reason"], result["sub_reason"]) == \
        ("red", "policy_failed", "vaccination_too_recent")
    assert set(result["descriptions"]) == {"en", "vi"}
    for secret in (holder.family, holder.family_std, holder.given_std, holder.dob):
        assert secret not in out


def test_human_output(capsys, files, certs):
    code, out, _ = run(capsys, "verify", "--trust", str(files / "es.pem"), "--at", AT, certs["v"])
    assert code == 0 and out.startswith("GREEN  ok  ")
    code, out, _ = run(capsys, "verify", "--trust", str(files / "es.pem"), "--at", AT,
                       certs["v_recent"])
    assert code == 1 and out.startswith("RED  policy_failed/vaccination_too_recent  ")


def test_unreadable_payload_is_red_not_usage(capsys, files):
    code, out, _ = run(capsys, "verify", "--json", "--trust", str(files / "es.pem"),
                       "--at", AT, "not a certificate")
    assert code == 1
    assert json.loads(out)["reason"] == "unreadable"


def test_no_trust_is_unknown_issuer(capsys, certs):
    code, out, _ = run(capsys, "verify", "--json", "--at", AT, certs["v"])
    assert code == 1 and json.loads(out)["reason"] == "unknown_issuer"


def test_exit_2_without_payload(capsys, files):
    code, out, err = run(capsys, "verify", "--trust", str(files / "es.pem"), "--at", AT)
    assert code == 2 and out == ""
    assert "PAYLOAD" in err


@pytest.mark.parametrize("at", ["yesterday", "2021-13-01", "", "5"])
def test_exit_2_bad_at(capsys, files, certs, at):
    code, out, err = run(capsys, "verify", "--trust", str(files / "es.pem"), "--at", at, certs["v"])
    assert code == 2 and out == ""
    assert "--at" in err


def test_exit_2_unknown_policy(capsys, files, certs):
    code, out, err = run(capsys, "verify", "--trust", str(files / "es.pem"), "--at", AT,
                         "--policy", "no-such-policy", certs["v"])
    assert code == 2 and out == ""
    assert "hcmc-2021" in err and "accept-valid" in err


def test_exit_2_bad_policy_file(capsys, files, certs, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "x",\n"accept": [}\n')
    code, out, err = run(capsys, "verify", "--trust", str(files / "es.pem"), "--at", AT,
                         "--policy", str(bad), certs["v"])
    assert code == 2 and "line 2" in err


@pytest.mark.parametrize("trust", ["garbage.pem", "not base64 at all!", "MIIB"])
def test_exit_2_unreadable_trust(capsys, files, certs, trust):
    arg = str(files / trust) if trust.endswith(".pem") else trust
    code, out, err = run(capsys, "verify", "--trust", arg, "--at", AT, certs["v"])
    assert code == 2 and out == ""
    assert "trust certificate" in err


def test_exit_2_pem_with_broken_base64(capsys, certs, tmp_path):
    """A PEM whose body is not valid base64 is an unreadable --trust (exit 2), not a crash."""
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nMIIBabc\n-----END CERTIFICATE-----\n")
    code, out, err = run(capsys, "verify", "--trust", str(broken), "--at", AT, certs["v"])
    assert code == 2 and out == ""
    assert "trust certificate" in err


def test_exit_2_argparse_errors(capsys):
    assert kiosk.main(["verify", "--no-such-flag"]) == 2
    assert kiosk.main(["no-such-command"]) == 2
    capsys.readouterr()


# -- verify: --trust forms and --policy ---------------------------------------------------

@pytest.mark.parametrize("form", ["pem file", "der file", "base64 der", "pem text"])
def test_trust_forms(capsys, files, b64, es256, certs, form):
    arg = {"pem file": str(files / "es.pem"), "der file": str(files / "es.der"),
           "base64 der": b64["es"], "pem text": es256.pem.decode()}[form]
    code, out, err = run(capsys, "verify", "--json", "--trust", arg, "--at", AT, certs["v"])
    assert code == 0, err
    assert json.loads(out)["reason"] == "ok"


def test_several_trust_certificates(capsys, files, b64, certs):
    for name in ("v", "ps"):
        code, out, _ = run(capsys, "verify", "--json", "--trust", str(files / "es.pem"),
                           "--trust", b64["ps"], "--at", AT, certs[name])
        assert code == 0 and json.loads(out)["reason"] == "ok"


def test_policy_flag(capsys, files, certs, tmp_path, hcmc_document):
    code, out, _ = run(capsys, "verify", "--json", "--trust", str(files / "es.pem"), "--at", AT,
                       certs["t"])
    assert code == 1 and json.loads(out)["sub_reason"] == "type_not_accepted"
    code, out, _ = run(capsys, "verify", "--json", "--trust", str(files / "es.pem"), "--at", AT,
                       "--policy", "accept-valid", certs["t"])
    assert code == 0 and json.loads(out)["reason"] == "ok"
    doc = hcmc_document()
    doc["vaccination"]["min_days_after_dose"] = 90
    path = tmp_path / "strict.json"
    path.write_text(json.dumps(doc))
    code, out, _ = run(capsys, "verify", "--json", "--trust", str(files / "es.pem"), "--at", AT,
                       "--policy", str(path), certs["v"])
    assert code == 1 and json.loads(out)["sub_reason"] == "vaccination_too_recent"


def test_at_without_zone_is_utc(capsys, files, certs):
    code, out, _ = run(capsys, "verify", "--json", "--trust", str(files / "es.pem"),
                       "--at", "2022-06-01T00:00:00", certs["v"])
    assert code == 0
    code, out, _ = run(capsys, "verify", "--json", "--trust", str(files / "es.pem"),
                       "--at", "2022-06-01T00:00:01", certs["v"])
    assert code == 1 and json.loads(out)["reason"] == "expired"
    code, out, _ = run(capsys, "verify", "--json", "--trust", str(files / "es.pem"),
                       "--at", "2022-06-01T06:59:59+07:00", certs["v"])
    assert code == 0


# -- verify: --image ---------------------------------------------------------------------

def test_image(capsys, files, certs, tmp_path):
    png = tmp_path / "card.png"
    qr_png(certs["v"], png)
    code, out, err = run(capsys, "verify", "--json", "--trust", str(files / "es.pem"),
                         "--at", AT, "--image", str(png))
    assert code == 0, err
    assert json.loads(out)["reason"] == "ok"


def test_image_of_ps256_certificate(capsys, files, certs, tmp_path):
    png = tmp_path / "card.png"
    qr_png(certs["ps"], png)
    code, out, _ = run(capsys, "verify", "--json", "--trust", str(files / "ps.pem"),
                       "--at", AT, "--image", str(png))
    assert code == 0 and json.loads(out)["type"] == "v"


def test_image_without_qr_is_red(capsys, files, tmp_path):
    from PIL import Image
    blank = tmp_path / "blank.png"
    Image.new("L", (200, 200), 255).save(blank)
    code, out, _ = run(capsys, "verify", "--json", "--trust", str(files / "es.pem"),
                       "--at", AT, "--image", str(blank))
    assert code == 1
    result = json.loads(out)
    assert result["reason"] == "unreadable" and "no QR code" in result["detail"]


@pytest.mark.parametrize("name", ["missing.png", "not-an-image.png"])
def test_image_that_cannot_be_read_is_exit_2(capsys, files, tmp_path, name):
    path = tmp_path / name
    if name == "not-an-image.png":
        path.write_text("plain text")
    code, out, err = run(capsys, "verify", "--trust", str(files / "es.pem"), "--at", AT,
                         "--image", str(path))
    assert code == 2 and out == "" and "--image" in err


# -- verify: --batch ---------------------------------------------------------------------

def test_batch_mixes_trust_at_and_policy(capsys, monkeypatch, files, b64, certs):
    lines = [
        json.dumps({"payload": certs["v"]}),                                        # 1 green
        json.dumps({"payload": certs["v"], "at": "2021-08-05T00:00:00Z"}),         # 2 too recent
        json.dumps({"payload": certs["ps"], "trust": [b64["ps"]]}),                 # 3 green
        json.dumps({"payload": certs["ps"]}),                                       # 4 unknown issuer
        '{"payload": "HC1:...", oops',                                              # 5 not JSON
        json.dumps({"payload": certs["t"], "policy": "accept-valid"}),              # 6 green
        json.dumps({"payload": certs["t"]}),                                        # 7 not accepted
        "",                                                                         # 8 blank: skipped
        json.dumps({"payload": 5}),                                                 # 9 bad payload
        json.dumps({"payload": certs["v"], "policy": "no-such-policy"}),            # 10
        json.dumps({"payload": certs["v"], "trust": ["garbage"]}),                  # 11
        json.dumps({"payload": certs["v"], "at": "yesterday"}),                     # 12
        json.dumps(["payload", certs["v"]]),                                        # 13 not an object
        json.dumps({"payload": certs["v"], "trust": [b64["ps"], b64["es"]],
                    "at": "2022-06-01T00:00:01Z", "policy": "accept-valid"}),       # 14 expired
        json.dumps({"payload": certs["v"], "trust": b64["es"]}),                    # 15 trust not a list
        json.dumps({"payload": certs["v"]}),                                        # 16 green again
    ]
    code, out, err = run(capsys, "verify", "--batch", "--trust", str(files / "es.pem"),
                         "--at", AT, stdin="\n".join(lines) + "\n", monkeypatch=monkeypatch)
    assert code == 1, err
    results = [json.loads(line) for line in out.splitlines()]
    assert all(set(r) == FIELDS for r in results)
    got = [(r["reason"], r["sub_reason"]) for r in results]
    assert got == [
        ("ok", None),
        ("policy_failed", "vaccination_too_recent"),
        ("ok", None),
        ("unknown_issuer", None),
        ("unreadable", None),
        ("ok", None),
        ("policy_failed", "type_not_accepted"),
        ("unreadable", None),
        ("unreadable", None),
        ("unreadable", None),
        ("unreadable", None),
        ("unreadable", None),
        ("expired", None),
        ("unreadable", None),
        ("ok", None),
    ]
    details = [r["detail"] for r in results]
    assert details[4].startswith("line 5:")
    assert details[7].startswith("line 9:")
    assert details[8].startswith("line 10:") and "accept-valid" in details[8]
    assert details[9].startswith("line 11:") and "trust" in details[9]
    assert details[10].startswith("line 12:")
    assert details[11].startswith("line 13:")
    assert details[13].startswith("line 15:")


def test_batch_all_green_exits_0(capsys, monkeypatch, files, certs):
    stdin = "\n".join(json.dumps({"payload": certs["v"]}) for _ in range(3)) + "\n"
    code, out, _ = run(capsys, "verify", "--batch", "--trust", str(files / "es.pem"), "--at", AT,
                       stdin=stdin, monkeypatch=monkeypatch)
    assert code == 0
    assert [json.loads(line)["reason"] for line in out.splitlines()] == ["ok"] * 3


def test_batch_bad_default_at_is_exit_2(capsys, monkeypatch, files, certs):
    code, out, err = run(capsys, "verify", "--batch", "--at", "nope", stdin="{}\n",
                         monkeypatch=monkeypatch)
    assert code == 2 and out == "" and "--at" in err


def test_batch_of_2000_lines(capsys, monkeypatch, files, b64, certs):
    kinds = ["v", "v_recent", "ps", "t"]
    lines = []
    for i in range(2000):
        kind = kinds[i % 4]
        item = {"payload": certs[kind]}
        if kind == "ps":
            item["trust"] = [b64["ps"]]
        lines.append(json.dumps(item))
    code, out, _ = run(capsys, "verify", "--batch", "--trust", str(files / "es.pem"), "--at", AT,
                       stdin="\n".join(lines) + "\n", monkeypatch=monkeypatch)
    assert code == 1
    results = out.splitlines()
    assert len(results) == 2000
    expected = {"v": "ok", "v_recent": "policy_failed", "ps": "ok", "t": "policy_failed"}
    for i in (0, 1, 2, 3, 1998, 1999):
        assert json.loads(results[i])["reason"] == expected[kinds[i % 4]]


# -- the installed console script -------------------------------------------------------

def test_console_script(files, certs):
    script = Path(sys.executable).parent / "greengate-kiosk"
    assert script.exists(), f"{script} is not installed (pip install -e .)"
    proc = subprocess.run([str(script), "verify", "--json", "--trust", str(files / "es.pem"),
                           "--at", AT, certs["v"]], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert set(result) == FIELDS and result["decision"] == "green"


# -- --help screens ----------------------------------------------------------------------

@pytest.mark.parametrize("main, argv, name", [
    (fleet.main, ["--help"], "greengate-fleet"),
    (provision.main, ["--help"], "greengate-provision"),
    (kiosk.main, ["--help"], "greengate-kiosk"),
    (kiosk.main, ["verify", "--help"], "--batch"),
    (provision.main, ["issuer", "mint", "--help"], "--first-positive"),
])
def test_help_exits_0(capsys, main, argv, name):
    assert main(argv) == 0
    assert name in capsys.readouterr().out


@pytest.mark.parametrize("main", [fleet.main, provision.main, kiosk.main])
def test_no_command_exits_2(capsys, main):
    assert main([]) == 2
    capsys.readouterr()


@pytest.mark.parametrize("text, words", [
    (None, "cannot read the configuration"),
    ("[kiosk\n", "not valid TOML"),
    ('[kiosk]\nid = "k"\n[bundles]\nfleet_key = "f.pem"\n[mqtt]\nport = 0\n',
     "line 6: 'port' must be 1-65535"),
])
def test_kiosk_run_with_an_unusable_config_exits_2_outside_systemd(capsys, tmp_path,
                                                                   monkeypatch, text, words):
    """The exit-code contract of `run` (device/kiosk.py run()): a person or a script
    gets the message and 2 at once; only under systemd ($NOTIFY_SOCKET) does the kiosk
    stay up showing the config fault (tests/test_source_recovery.py)."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    config = tmp_path / "kiosk.toml"
    if text is not None:
        config.write_text(text)
    code, out, _ = run(capsys, "run", "--config", str(config))
    assert code == 2
    assert out.startswith(f"greengate-kiosk: {config}") and words in out



# -- greengate-provision issuer -------------------------------------------------------------

def provision_run(capsys, *argv):
    code = provision.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_issuer_init(capsys, tmp_path):
    d = tmp_path / "issuer"
    code, out, err = provision_run(capsys, "issuer", "init", "--dir", str(d))
    assert code == 0, err
    assert mode(d / "signer.key") == 0o600
    meta = json.loads((d / "issuer.json").read_text())
    issuer = Issuer.load(d)
    assert meta["kid"] == issuer.kid.hex() and meta["country"] == "VN"
    assert issuer.kid.hex() in out
    assert (d / "signer.pem").read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")


def test_issuer_init_refuses_to_overwrite(capsys, tmp_path):
    d = tmp_path / "issuer"
    assert provision_run(capsys, "issuer", "init", "--dir", str(d))[0] == 0
    key = (d / "signer.key").read_bytes()
    code, out, err = provision_run(capsys, "issuer", "init", "--dir", str(d))
    assert code == 2
    assert "--force" in err and "exists" in err
    assert (d / "signer.key").read_bytes() == key
    code, _, err = provision_run(capsys, "issuer", "init", "--dir", str(d), "--force")
    assert code == 0, err
    assert (d / "signer.key").read_bytes() != key
    assert mode(d / "signer.key") == 0o600


def test_issuer_init_force_tightens_a_loose_key_file(capsys, tmp_path):
    """Replacing a key file that was left world-readable must still leave a 0600 key."""
    d = tmp_path / "issuer"
    d.mkdir()
    loose = d / "signer.key"
    loose.write_text("old key")
    os.chmod(loose, 0o644)
    code, _, err = provision_run(capsys, "issuer", "init", "--dir", str(d), "--force")
    assert code == 0, err
    assert mode(loose) == 0o600


def test_issuer_init_bad_usage(capsys, tmp_path):
    code, _, err = provision_run(capsys, "issuer", "init", "--dir", str(tmp_path / "i"),
                                 "--usage", "x")
    assert code == 2 and "--usage" in err
    assert not (tmp_path / "i" / "signer.key").exists()


@pytest.fixture
def issuer_dir(capsys, tmp_path):
    d = tmp_path / "issuer"
    assert provision_run(capsys, "issuer", "init", "--dir", str(d), "--usage", "v,r")[0] == 0
    return d


def test_issuer_mint_out_writes_txt_and_png(capsys, issuer_dir, tmp_path):
    out_base = tmp_path / "card"
    code, out, err = provision_run(
        capsys, "issuer", "mint", "--dir", str(issuer_dir), "--type", "v", "--date", "2021-08-01",
        "--iat", "2021-06-01T00:00:00Z", "--exp", "2022-06-01T00:00:00Z", "--out", str(out_base))
    assert code == 0, err
    txt, png = Path(f"{out_base}.txt"), Path(f"{out_base}.png")
    assert txt.exists() and png.exists()
    text = txt.read_text().strip()
    assert text.startswith("HC1:")
    # the PNG holds the same certificate
    from device.decoders import decode_image_file
    assert decode_image_file(png) == [text]
    # and the kiosk accepts it with the issuer's certificate as trust
    code, out, _ = run(capsys, "verify", "--json", "--trust", str(issuer_dir / "signer.pem"),
                       "--at", AT, "--image", str(png))
    assert code == 0 and json.loads(out)["reason"] == "ok"


def test_issuer_mint_prints_text(capsys, issuer_dir):
    code, out, err = provision_run(
        capsys, "issuer", "mint", "--dir", str(issuer_dir), "--type", "r",
        "--first-positive", "2021-07-01", "--iat", "2021-07-12T00:00:00Z",
        "--exp", "2022-01-01T00:00:00Z")
    assert code == 0, err
    text = out.strip()
    code, out, _ = run(capsys, "verify", "--json", "--trust", str(issuer_dir / "signer.pem"),
                       "--at", AT, text)
    assert code == 0 and json.loads(out)["type"] == "r"


def test_issuer_usage_is_embedded(capsys, issuer_dir):
    code, out, err = provision_run(
        capsys, "issuer", "mint", "--dir", str(issuer_dir), "--type", "t",
        "--sampled", "2021-10-05T06:00:00Z", "--iat", "2021-10-05T06:00:00Z",
        "--exp", "2021-10-10T00:00:00Z")
    assert code == 0, err
    code, out, _ = run(capsys, "verify", "--json", "--trust", str(issuer_dir / "signer.pem"),
                       "--at", AT, "--policy", "accept-valid", out.strip())
    assert code == 1 and json.loads(out)["reason"] == "wrong_key_usage"


@pytest.mark.parametrize("kind, flag", [("v", "--date"), ("t", "--sampled"),
                                        ("r", "--first-positive")])
def test_issuer_mint_requires_the_type_field(capsys, issuer_dir, kind, flag):
    code, out, err = provision_run(
        capsys, "issuer", "mint", "--dir", str(issuer_dir), "--type", kind,
        "--iat", "2021-06-01T00:00:00Z", "--exp", "2022-06-01T00:00:00Z")
    assert code == 2 and out == ""
    assert flag in err and "required" in err


def test_issuer_mint_bad_iat(capsys, issuer_dir):
    code, out, err = provision_run(
        capsys, "issuer", "mint", "--dir", str(issuer_dir), "--type", "v", "--date", "2021-08-01",
        "--iat", "june", "--exp", "2022-06-01T00:00:00Z")
    assert code == 2 and out == "" and err


def test_issuer_mint_without_issuer(capsys, tmp_path):
    code, out, err = provision_run(
        capsys, "issuer", "mint", "--dir", str(tmp_path / "none"), "--type", "v",
        "--date", "2021-08-01", "--iat", "2021-06-01T00:00:00Z", "--exp", "2022-06-01T00:00:00Z")
    assert code == 2 and "issuer init" in err


@pytest.mark.parametrize("argv", [
    ["greengate-fleet", "--config", "{cfg}", "bundles", "key", "--create"],
    ["greengate-kiosk", "verify", "--at", AT, "HC1:not-a-certificate"],
])
def test_a_reader_that_leaves_early_gets_no_traceback(tmp_path, argv):
    """`greengate-fleet bundles key | head`: stdout is a pipe whose reader is gone before the
    first write. The shell's status for SIGPIPE (141), no traceback."""
    cfg = tmp_path / "fleet.toml"
    cfg.write_text(f'[bundles]\nsigning_key = "{tmp_path / "pki" / "bundle.key"}"\n')
    argv = [str(Path(sys.executable).parent / argv[0])] + [a.format(cfg=cfg) for a in argv[1:]]
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(argv, stdout=write_end, stderr=subprocess.PIPE, text=True,
                              timeout=60)
    finally:
        os.close(write_end)
    assert done.returncode == 141
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
