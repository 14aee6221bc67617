"""A test issuer: a signer key and certificate that mint real HC1 certificates.

Demos, tests and benchmarks build their cases with it, so every date is an
argument: nothing here reads the clock of the day unless asked to.
"""

import datetime as dt
import json
import os
import secrets
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID, ObjectIdentifier

from greengate import cose, hc1
from greengate.content import CLAIM_EXP, CLAIM_HCERT, CLAIM_IAT, CLAIM_ISS
from greengate.trust import kid_of

USAGE_OID = {"t": "1.3.6.1.4.1.1847.2021.1.1", "v": "1.3.6.1.4.1.1847.2021.1.2",
             "r": "1.3.6.1.4.1.1847.2021.1.3"}
TEST_TYPES = {"naat": "LP6464-4", "rat": "LP217198-3"}
TEST_RESULTS = {"negative": "260415000", "positive": "260373001"}
COVID = "840539006"


def utc(value: str | dt.datetime | dt.date) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.timezone.utc)
    return utc(dt.datetime.fromisoformat(value.replace("Z", "+00:00")))


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to a file that already exists
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


@dataclass
class Issuer:
    key: object
    certificate: x509.Certificate
    country: str = "VN"

    @property
    def der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    @property
    def kid(self) -> bytes:
        return kid_of(self.der)

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @classmethod
    def create(cls, *, alg: str = "ES256", country: str = "VN", name: str = "GreenGate Test Issuer",
               not_before: str | dt.datetime = "2020-01-01T00:00:00Z",
               not_after: str | dt.datetime = "2035-01-01T00:00:00Z",
               usage: str | None = None) -> "Issuer":
        """usage: None for no key-usage OIDs (may sign anything), else e.g. "v" or "vt"."""
        if alg == "ES256":
            key = ec.generate_private_key(ec.SECP256R1())
        elif alg == "PS256":
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            raise ValueError(f"unsupported algorithm {alg}; use ES256 or PS256")
        subject = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, country),
                             x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(utc(not_before)).not_valid_after(utc(not_after)))
        if usage:
            oids = [ObjectIdentifier(USAGE_OID[t]) for t in usage]
            builder = builder.add_extension(x509.ExtendedKeyUsage(oids), critical=False)
        cert = builder.sign(key, hashes.SHA256())
        return cls(key, cert, country)

    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        _write_private(d / "signer.key", self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        (d / "signer.pem").write_bytes(self.pem)
        (d / "issuer.json").write_text(json.dumps({"country": self.country,
                                                   "kid": self.kid.hex()}, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> "Issuer":
        d = Path(directory)
        key = serialization.load_pem_private_key((d / "signer.key").read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate((d / "signer.pem").read_bytes())
        meta = json.loads((d / "issuer.json").read_text())
        return cls(key, cert, meta.get("country", "VN"))

    def sign_claims(self, claims: dict, *, kid_in: str = "protected",
                    alg: int | None = None) -> str:
        payload = cbor2.dumps(claims)
        return hc1.encode(cose.sign(payload, self.key, self.kid, alg=alg, kid_in=kid_in))

    def mint(self, dcc: dict, *, iat, exp, kid_in: str = "protected") -> str:
        """HC1 text for a DCC payload, signed by this issuer."""
        claims = {CLAIM_ISS: self.country, CLAIM_IAT: int(utc(iat).timestamp()),
                  CLAIM_EXP: int(utc(exp).timestamp()), CLAIM_HCERT: {1: dcc}}
        return self.sign_claims(claims, kid_in=kid_in)

    # Payload builders. Names default to a sample Vietnamese holder.
    def _base(self, family: str, given: str, dob: str) -> dict:
        return {"ver": "1.3.0",
                "nam": {"fn": family, "gn": given, "fnt": standard_name(family),
                        "gnt": standard_name(given)},
                "dob": dob}

    def new_ci(self) -> str:
        return f"URN:UVCI:01:{self.country}:{secrets.token_hex(12).upper()}"

    def vaccination(self, *, date: str, dose: int = 1, of: int = 2, product: str = "EU/1/20/1528",
                    family: str = "Nguyễn", given: str = "Văn An", dob: str = "1990-01-01",
                    ci: str | None = None) -> dict:
        dcc = self._base(family, given, dob)
        dcc["v"] = [{"tg": COVID, "vp": "1119349007", "mp": product, "ma": "ORG-100030215",
                     "dn": dose, "sd": of, "dt": date, "co": self.country,
                     "is": "Ministry of Health", "ci": ci or self.new_ci()}]
        return dcc

    def test(self, *, sampled: str, test_type: str = "naat", result: str = "negative",
             family: str = "Nguyễn", given: str = "Văn An", dob: str = "1990-01-01",
             ci: str | None = None) -> dict:
        dcc = self._base(family, given, dob)
        dcc["t"] = [{"tg": COVID, "tt": TEST_TYPES.get(test_type, test_type),
                     "sc": utc(sampled).strftime("%Y-%m-%dT%H:%M:%SZ"),
                     "tr": TEST_RESULTS.get(result, result), "tc": "Test centre",
                     "co": self.country, "is": "Ministry of Health", "ci": ci or self.new_ci()}]
        return dcc

    def recovery(self, *, first_positive: str, valid_from: str | None = None,
                 valid_until: str | None = None, family: str = "Nguyễn", given: str = "Văn An",
                 dob: str = "1990-01-01", ci: str | None = None) -> dict:
        dcc = self._base(family, given, dob)
        first = dt.date.fromisoformat(first_positive)
        dcc["r"] = [{"tg": COVID, "fr": first_positive,
                     "df": valid_from or (first + dt.timedelta(days=11)).isoformat(),
                     "du": valid_until or (first + dt.timedelta(days=180)).isoformat(),
                     "co": self.country, "is": "Ministry of Health", "ci": ci or self.new_ci()}]
        return dcc


_FOLD = str.maketrans({"Đ": "D", "đ": "D"})


def standard_name(name: str) -> str:
    """ICAO 9303 style: strip diacritics, upper case, spaces and hyphens become '<'."""
    plain = unicodedata.normalize("NFKD", name.translate(_FOLD))
    plain = "".join(c for c in plain if not unicodedata.combining(c)).upper()
    return "".join(c if "A" <= c <= "Z" else "<" for c in plain if c.isalpha() or c in " -'")


def qr_png(text: str, path: str | Path, *, scale: int = 4) -> None:
    import segno
    # Error correction Q is what the EU DCC spec recommends for printed codes.
    segno.make(text, error="q", micro=False).save(str(path), scale=scale, border=4)
