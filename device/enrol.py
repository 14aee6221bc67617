"""`greengate-kiosk enrol --fleet URL --token TOKEN --dir DIR`: the Pi gets its identity.

The private key is made here and never leaves the Pi. Steps:
1. fetch the fleet CA (GET /api/v1/enrol/ca, without trusting the server yet) and check
   it against the pin in the token: a different server, or a man in the middle, fails
   here, before anything is sent;
2. send the token and a CSR over HTTPS verified with that CA (POST /api/v1/enrol);
3. write kiosk.key, kiosk.pem, ca.pem, fleet-bundle.pem and kiosk.toml into DIR (the
   files of an enrolment bundle, greengate/enrolment.py), the key first and 0600.
Exit status: 0 enrolled; 1 the fleet refused or could not be reached; 2 bad usage.
"""

from __future__ import annotations

import json
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from greengate import enrolment

from .files import write_atomic

TIMEOUT = 30.0


class EnrolFailed(Exception):
    pass


def _fetch_ca(base: str) -> bytes:
    # Nothing is trusted yet: the pin in the token decides whether this CA is the fleet's.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(f"{base}/api/v1/enrol/ca", timeout=TIMEOUT,
                                    context=context) as response:
            return response.read()
    except (urllib.error.URLError, OSError) as exc:
        raise EnrolFailed(f"cannot fetch the fleet CA from {base}: {exc}") from None


def _post(base: str, ca_pem: bytes, body: dict) -> dict:
    context = ssl.create_default_context(cadata=ca_pem.decode())
    request = urllib.request.Request(f"{base}/api/v1/enrol", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT, context=context) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("message", "")
        except ValueError:
            message = ""
        raise EnrolFailed(f"the fleet refused the enrolment (HTTP {exc.code}): "
                          f"{message or exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise EnrolFailed(f"cannot reach {base} over verified HTTPS: {exc}") from None


def enrol(base: str, token: str, directory: Path, force: bool = False) -> str:
    """Enrol; returns the kiosk id. EnrolFailed / TokenError say why not."""
    secret, pin = enrolment.parse_token(token)
    directory = Path(directory)
    existing = [n for n in enrolment.FILES if (directory / n).exists()]
    if existing and not force:
        raise EnrolFailed(f"{directory} holds an enrolment already ({', '.join(existing)}); "
                          "--force replaces it")
    base = base.rstrip("/")
    if not base.startswith("https://"):
        raise EnrolFailed(f"--fleet must be an https:// URL, not {base!r}")
    ca_pem = _fetch_ca(base)
    try:
        ca = x509.load_pem_x509_certificate(ca_pem)
    except ValueError:
        raise EnrolFailed(f"{base} did not send a PEM certificate as its CA") from None
    if not enrolment.pin_matches(pin, ca.public_bytes(serialization.Encoding.DER)):
        raise EnrolFailed(f"the CA that {base} sent is not the one this token was made "
                          "for: wrong fleet URL, or someone in between; nothing was sent")
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "greengate kiosk")]))
           .sign(key, hashes.SHA256()))
    answer = _post(base, ca_pem, {"token": token.strip(),
                                  "csr": csr.public_bytes(serialization.Encoding.PEM).decode()})
    try:
        cert = x509.load_pem_x509_certificate(answer["certificate"].encode())
        files = {enrolment.KEY: key.private_bytes(serialization.Encoding.PEM,
                                                  serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()),
                 enrolment.CERT: answer["certificate"].encode(),
                 enrolment.CA: answer["ca"].encode(),
                 enrolment.FLEET_KEY: answer["fleet_key"].encode(),
                 enrolment.CONFIG: answer["config"].encode()}
        kiosk_id = answer["kiosk"]
    except (KeyError, TypeError, ValueError, AttributeError):
        raise EnrolFailed("the fleet's answer is not an enrolment (certificate, ca, "
                          "fleet_key, config)") from None
    if cert.public_key().public_numbers() != key.public_key().public_numbers():
        raise EnrolFailed("the certificate the fleet sent is not for this kiosk's key")
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():  # the key first: nothing is usable without it
        write_atomic(directory / name, data,
                     mode=0o600 if name in (enrolment.KEY, enrolment.CONFIG) else 0o644)
    return kiosk_id


def add_parser(sub) -> None:
    p = sub.add_parser("enrol", help="enrol this kiosk with a one-time token from the fleet",
                       description=__doc__.split("\n")[0])
    p.add_argument("--fleet", required=True, metavar="URL",
                   help="the fleet's HTTPS base URL, e.g. https://fleet.example:8443")
    p.add_argument("--token", required=True, help="the one-time token (gge1.…)")
    p.add_argument("--dir", default="/etc/greengate", type=Path,
                   help="where to write the key, certificates and kiosk.toml "
                        "(default /etc/greengate)")
    p.add_argument("--force", action="store_true", help="replace an existing enrolment")
    p.set_defaults(handler=run)


def run(args) -> int:
    try:
        kiosk_id = enrol(args.fleet, args.token, args.dir, args.force)
    except enrolment.TokenError as exc:
        print(f"greengate-kiosk enrol: {exc}", file=sys.stderr)
        return 2
    except EnrolFailed as exc:
        print(f"greengate-kiosk enrol: {exc}", file=sys.stderr)
        return 1
    print(f"enrolled as kiosk {kiosk_id}: {args.dir / enrolment.CONFIG}")
    return 0
