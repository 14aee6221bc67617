"""The fleet's PKI, in one directory (docs/provisioning.md#the-fleet-pki).

    ca.pem, ca.key                 the fleet CA: signs kiosk client certificates, the
                                   server certificate and the fleet's own client certificate
    server.pem, server.key         the broker's (and the fleet web server's) TLS certificate
    fleet.pem, fleet.key           the old shared MQTT identity of the fleet's services
                                   (CN greengate-fleet), for configs from before
                                   clients/ (docs/provisioning.md#fleet-identities)
    clients/NAME.pem, NAME.key     one MQTT identity per fleet process (CN = NAME = its
                                   client id; OU = fleet-<role>, which the broker ACL
                                   follows): <prefix>-ingest-<worker>, <prefix>-web-<n>
    bundle-signing.key, .pub.pem   signs trust list, policies, status lists; kiosks pin
                                   the public half
    pseudonym.key                  hex secret of the holder pseudonyms: the fleet's ingest
                                   derives them; no kiosk has it (docs/privacy.md). The
                                   holder-sealing keys kiosks seal to are made by the fleet
                                   on first use, in sealing/ (fleet/sealing_keys.py)
    brokers/NAME/server.pem, .key  a district broker's own TLS certificate (its host names),
                                   `greengate-provision bridge` (docs/scaling.md)
    crl.pem                        revoked kiosk certificates, for Mosquitto's crlfile
    fleet.json                     the hosts init was given (broker host and port, web URL
                                   as kiosks reach them): what `enrol` writes into kiosk.toml

EC P-256 throughout (small, fast on a Pi). Private keys are written 0600 in a 0700
directory; nothing is overwritten unless the caller says so.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from greengate.messages import KIOSK_ID as IDENTITY  # a client id is a kiosk id's kind of name

FLEET_IDENTITY = "greengate-fleet"  # CN of the old shared certificate; the default prefix
CLIENTS = "clients"  # one certificate per fleet process
# role -> what its processes are; the ACL (mosquitto_config.py) gives each role its topics
ROLES = {"ingest": "an ingest worker", "web": "a bundle publisher (a web server worker, "
                                              "`greengate-fleet bundles`)",
         "bridge": "a district broker's bridge to the core broker"}
BROKERS = "brokers"  # district brokers' server certificates
ROLE_OU = "fleet-"  # OU of a fleet identity's certificate: fleet-<role>
# gunicorn runs 4 workers with a publisher each; a reload briefly doubles them; the
# hourly `bundles refresh` and an admin's run need one each
DEFAULT_WEB = 10
EPHEMERAL_MINUTES = 5  # the retire step's certificate (retire.py)
CA_DAYS = 20 * 365
SERVER_DAYS = 825
CLIENT_DAYS = 825
# Mosquitto (OpenSSL) refuses every client once the CRL's nextUpdate has passed, so a
# CRL nobody regenerated must not lock the whole fleet out: it is re-signed at every
# retire and at every `greengate-provision crl`, and valid for a year meanwhile.
CRL_DAYS = 365

KEY_FILES = ("ca.key", "server.key", "fleet.key", "bundle-signing.key", "pseudonym.key")
SIGNING_KEY = "bundle-signing.key"
ENDPOINTS = "fleet.json"


class PKIError(Exception):
    pass


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Atomically, with its mode from the start (a key is never readable by others)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(cn: str, unit: str | None = None) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "GreenGate"),
                      *([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit)]
                        if unit else []),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _attribute(cert: x509.Certificate, oid) -> str | None:
    values = cert.subject.get_attributes_for_oid(oid)
    return str(values[0].value) if values else None


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


@dataclass
class PKI:
    dir: Path
    reused_signing_key: bool = False  # init kept a bundle-signing key found in dir

    def path(self, name: str) -> Path:
        return self.dir / name

    # --- loading ---------------------------------------------------------------------
    def _load_key(self, name: str):
        try:
            return serialization.load_pem_private_key(self.path(name).read_bytes(), None)
        except FileNotFoundError:
            raise PKIError(f"{self.path(name)} is missing: create the PKI with "
                           "`greengate-provision init`") from None

    def _load_cert(self, name: str) -> x509.Certificate:
        try:
            return x509.load_pem_x509_certificate(self.path(name).read_bytes())
        except FileNotFoundError:
            raise PKIError(f"{self.path(name)} is missing: create the PKI with "
                           "`greengate-provision init`") from None

    @property
    def ca_cert(self) -> x509.Certificate:
        return self._load_cert("ca.pem")

    def ca_pem(self) -> bytes:
        return self.path("ca.pem").read_bytes()

    def ca_fingerprint(self) -> str:
        """SHA-256 of the CA certificate (DER), hex: what an enrolment token pins."""
        return hashlib.sha256(self.ca_cert.public_bytes(serialization.Encoding.DER)).hexdigest()

    def bundle_public_pem(self) -> bytes:
        return self.path("bundle-signing.pub.pem").read_bytes()

    # --- issuing ---------------------------------------------------------------------
    def _sign(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        ca_key, ca = self._load_key("ca.key"), self.ca_cert
        return (builder.issuer_name(ca.subject)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    ca_key.public_key()), critical=False)
                .sign(ca_key, hashes.SHA256()))

    def issue_client(self, cn: str, public_key, days: int = CLIENT_DAYS, *,
                     unit: str | None = None,
                     lifetime: dt.timedelta | None = None) -> x509.Certificate:
        """A TLS client certificate with CN = the identity Mosquitto uses as username (and
        as client id)."""
        now = _now()
        return self._sign(
            x509.CertificateBuilder()
            .subject_name(_name(cn, unit)).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + (lifetime or dt.timedelta(days=days)))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False,
                                         content_commitment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False))

    def issue_kiosk(self, kiosk_id: str, days: int = CLIENT_DAYS):
        """A new key and certificate for a kiosk (the enrolment-bundle path)."""
        key = ec.generate_private_key(ec.SECP256R1())
        return key, self.issue_client(kiosk_id, key.public_key(), days)

    def sign_csr(self, csr_pem: bytes, kiosk_id: str, days: int = CLIENT_DAYS) -> x509.Certificate:
        """The token path: the kiosk made its key and sent a CSR. Whatever subject it asked
        for, the certificate names the kiosk the token was made for."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError:
            raise PKIError("the certificate request is not a PEM CSR") from None
        if not csr.is_signature_valid:
            raise PKIError("the certificate request's signature does not verify")
        key = csr.public_key()
        if isinstance(key, ec.EllipticCurvePublicKey):
            if key.curve.name not in ("secp256r1", "secp384r1"):
                raise PKIError(f"EC curve {key.curve.name} is not accepted (P-256 or P-384)")
        elif isinstance(key, rsa.RSAPublicKey):
            if key.key_size < 2048:
                raise PKIError(f"RSA key of {key.key_size} bits is too small (2048 or more)")
        else:
            raise PKIError("only EC (P-256, P-384) and RSA keys are accepted")
        return self.issue_client(kiosk_id, key, days)

    def ephemeral(self, cn: str, minutes: float = EPHEMERAL_MINUTES):
        """(key, certificate) valid for `minutes`, never written anywhere: the retire
        step's way to end a kiosk's live session under the kiosk's own name."""
        key = ec.generate_private_key(ec.SECP256R1())
        return key, self.issue_client(cn, key.public_key(),
                                      lifetime=dt.timedelta(minutes=minutes))

    def issue_server(self, subject: str, hosts: list[str], public_key,
                     days: int = SERVER_DAYS) -> x509.Certificate:
        """A broker's TLS server certificate for `hosts` (DNS names or IP addresses)."""
        now = _now()
        return self._sign(
            x509.CertificateBuilder()
            .subject_name(_name(subject)).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False))

    def broker_paths(self, name: str) -> tuple[Path, Path]:
        return (self.path(BROKERS) / name / "server.pem",
                self.path(BROKERS) / name / "server.key")

    def issue_broker(self, name: str, hosts: list[str]) -> tuple[Path, Path]:
        """brokers/NAME/server.pem and .key: a district broker's certificate for the host
        names its kiosks reach it by (made anew each time: the host list may change)."""
        if not hosts:
            raise PKIError("a broker's certificate needs at least one host name")
        cert_path, key_path = self.broker_paths(name)
        cert_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        _write(key_path, _key_pem(key), 0o600)
        _write(cert_path, _cert_pem(self.issue_server(hosts[0], hosts, key.public_key())),
               0o644)
        return cert_path, key_path

    # --- fleet identities (one per process) ------------------------------------------
    def identity_paths(self, name: str) -> tuple[Path, Path]:
        return self.path(CLIENTS) / f"{name}.pem", self.path(CLIENTS) / f"{name}.key"

    def issue_identity(self, name: str, role: str, days: int = CLIENT_DAYS) -> Path:
        """clients/NAME.pem and .key for one fleet process; PKIError if it exists."""
        if role not in ROLES:
            raise PKIError(f"unknown role {role!r} (known: {', '.join(ROLES)})")
        if not IDENTITY.match(name):
            raise PKIError(f"identity {name!r} is not valid: 1 to 63 letters, digits, '_', "
                           "'.' or '-', starting with a letter or digit")
        cert_path, key_path = self.identity_paths(name)
        if cert_path.exists():
            raise PKIError(f"{cert_path} exists already")
        cert_path.parent.mkdir(mode=0o700, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        _write(key_path, _key_pem(key), 0o600)
        _write(cert_path, _cert_pem(self.issue_client(name, key.public_key(), days,
                                                      unit=ROLE_OU + role)), 0o644)
        return cert_path

    def identities(self) -> dict[str, str]:
        """name -> role of every fleet identity in clients/ (by its certificate's OU)."""
        found = {}
        for pem in sorted(self.path(CLIENTS).glob("*.pem")):
            try:
                cert = x509.load_pem_x509_certificate(pem.read_bytes())
            except ValueError:
                raise PKIError(f"{pem} is not a PEM certificate") from None
            unit = _attribute(cert, NameOID.ORGANIZATIONAL_UNIT_NAME) or ""
            name = _attribute(cert, NameOID.COMMON_NAME)
            if unit.startswith(ROLE_OU) and unit[len(ROLE_OU):] in ROLES and name:
                found[name] = unit[len(ROLE_OU):]
        return found

    def next_number(self, prefix: str, role: str) -> int:
        """One more than the highest N of <prefix>-<role>-N."""
        stem = f"{prefix}-{role}-"
        numbers = [int(n[len(stem):]) for n in self.identities()
                   if n.startswith(stem) and n[len(stem):].isdigit()]
        return max(numbers, default=0) + 1

    # --- revocation ------------------------------------------------------------------
    def write_crl(self, revoked: list[tuple[int, dt.datetime]], extra: list[Path] = ()) -> bytes:
        """Re-sign crl.pem listing exactly `revoked` (serial, when); also copy it to each
        path in `extra` (the broker's copy)."""
        ca_key, ca = self._load_key("ca.key"), self.ca_cert
        now = _now()
        # the CRL Number orders CRLs for the district brokers (provisioning/crl_follow.py):
        # milliseconds, and always past the last one even if the clock went back
        try:
            before = crl_number(self.path("crl.pem").read_bytes()) or 0
        except (OSError, ValueError):
            before = 0
        number = max(before + 1, time.time_ns() // 1_000_000)
        builder = (x509.CertificateRevocationListBuilder()
                   .issuer_name(ca.subject).last_update(now)
                   .next_update(now + dt.timedelta(days=CRL_DAYS))
                   .add_extension(x509.CRLNumber(number), critical=False))
        for serial, when in sorted(revoked):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial)
                .revocation_date(when).build())
        pem = builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
        for target in (self.path("crl.pem"), *map(Path, extra)):
            _write(target, pem, 0o644)
        return pem

    def revoked_serials(self) -> set[int]:
        crl = x509.load_pem_x509_crl(self.path("crl.pem").read_bytes())
        return {entry.serial_number for entry in crl}


def crl_number(pem: bytes) -> int | None:
    """The CRL Number of a PEM CRL (None: a CRL without one, from before it was written);
    ValueError when `pem` is no CRL."""
    crl = x509.load_pem_x509_crl(pem)
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return None


def _existing_signing_key(path: Path):
    """The bundle-signing key `greengate-fleet bundles key --create` made before init, or
    None. Kiosks may pin it already, so init keeps it rather than refuse or replace it."""
    if not path.exists():
        return None
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), None)
    except (ValueError, TypeError) as exc:
        raise PKIError(f"{path} is not an unencrypted PEM private key ({exc}): move it away "
                       "or use --force") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise PKIError(f"{path} is not an EC P-256 key (bundles are ES256): move it away or "
                       "use --force")
    return key


def write_endpoints(directory: Path, *, hosts: list[str], broker_port: int,
                    http_url: str) -> Path:
    """fleet.json: where kiosks reach this fleet, as the admin told init."""
    path = Path(directory) / ENDPOINTS
    _write(path, (json.dumps({"hosts": list(hosts), "broker_host": hosts[0],
                              "broker_port": int(broker_port), "http_url": http_url},
                             indent=2) + "\n").encode(), 0o644)
    return path


def read_endpoints(directory: Path) -> dict:
    """fleet.json as written by init; {} when there is none (a PKI from before it) or it
    is unreadable, so callers fall back to the fleet configuration."""
    try:
        data = json.loads((Path(directory) / ENDPOINTS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    found = {}
    if isinstance(data.get("broker_host"), str) and data["broker_host"]:
        found["broker_host"] = data["broker_host"]
    if type(data.get("broker_port")) is int and 0 < data["broker_port"] < 65536:
        found["broker_port"] = data["broker_port"]
    if isinstance(data.get("http_url"), str):
        found["http_url"] = data["http_url"]
    return found


def init(directory: Path, hosts: list[str], *, force: bool = False,
         prefix: str = FLEET_IDENTITY, web: int = DEFAULT_WEB, broker_port: int = 8883,
         http_url: str = "") -> PKI:
    """Create the fleet PKI in `directory` (PKIError if keys exist and not force), with
    the identities <prefix>-ingest-1 and <prefix>-web-1 .. -<web>. A bundle-signing key
    alone (from `greengate-fleet bundles key --create`) is kept: pki.reused_signing_key."""
    if not hosts:
        raise PKIError("name at least one --host: the broker's (and fleet web server's) DNS "
                       "name or IP address as kiosks will reach it")
    directory = Path(directory)
    existing = [name for name in KEY_FILES
                if name != SIGNING_KEY and (directory / name).exists()]
    if existing and not force:
        raise PKIError(f"{directory} holds keys already ({', '.join(existing)}); replacing "
                       "them cuts every enrolled kiosk off. Use --force to do it anyway.")
    signing = None if force else _existing_signing_key(directory / SIGNING_KEY)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    pki = PKI(directory)
    pki.reused_signing_key = signing is not None
    now = _now()

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("GreenGate fleet CA")
    ca = (x509.CertificateBuilder()
          .subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=CA_DAYS))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, key_cert_sign=True,
                                       crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False,
                                       decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    _write(pki.path("ca.key"), _key_pem(ca_key), 0o600)
    _write(pki.path("ca.pem"), _cert_pem(ca), 0o644)

    server_key = ec.generate_private_key(ec.SECP256R1())
    server = pki.issue_server(hosts[0], hosts, server_key.public_key())
    _write(pki.path("server.key"), _key_pem(server_key), 0o600)
    _write(pki.path("server.pem"), _cert_pem(server), 0o644)

    fleet_key = ec.generate_private_key(ec.SECP256R1())
    _write(pki.path("fleet.key"), _key_pem(fleet_key), 0o600)
    _write(pki.path("fleet.pem"),
           _cert_pem(pki.issue_client(FLEET_IDENTITY, fleet_key.public_key())), 0o644)

    if signing is None:
        signing = ec.generate_private_key(ec.SECP256R1())
        _write(pki.path(SIGNING_KEY), _key_pem(signing), 0o600)
    else:  # made 0600 by the fleet, but make sure
        os.chmod(pki.path(SIGNING_KEY), 0o600)
    _write(pki.path("bundle-signing.pub.pem"), signing.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo), 0o644)
    _write(pki.path("pseudonym.key"), (secrets.token_hex(32) + "\n").encode(), 0o600)
    clients = pki.path(CLIENTS)
    if clients.exists():  # --force: the old CA's identities are worthless now
        for old in clients.glob("*"):
            old.unlink()
    pki.issue_identity(f"{prefix}-ingest-1", "ingest")
    for number in range(1, web + 1):
        pki.issue_identity(f"{prefix}-web-{number}", "web")
    pki.write_crl([])
    write_endpoints(directory, hosts=hosts, broker_port=broker_port, http_url=http_url)
    return pki
