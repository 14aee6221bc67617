"""Test-side stand-in for the fleet's bundle signing: a key and sealed bundles."""

import json
from datetime import datetime, timezone
from importlib import resources

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from greengate import bundle, sealing, status


class FleetKit:
    def __init__(self, deployment: str = "test"):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.deployment = deployment
        # the fleet's holder-sealing pair: the public half travels in the trust bundle
        private = X25519PrivateKey.generate()
        self.opener = sealing.Opener([private])
        self.sealing_key = sealing.SealingKey.from_raw(private.public_key().public_bytes_raw())

    @property
    def public_pem(self) -> bytes:
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def seal(self, kind, version, issued_at, body, key=None) -> bytes:
        if isinstance(issued_at, datetime):
            issued_at = int(issued_at.timestamp())
        return bundle.seal(kind, version, issued_at, body, key or self.key, self.deployment)

    def trust(self, version, issued_at, *issuers, sealing_key=True) -> bytes:
        """sealing_key: True, the kit's own; None: none (a fleet older than sealing)."""
        body = {"certificates": [i.der for i in issuers]}
        key = self.sealing_key if sealing_key is True else sealing_key
        if key is not None:
            body["sealing"] = key.body()
        return self.seal("trust", version, issued_at, body)

    def policy(self, version, issued_at, names=("hcmc-2021", "accept-valid")) -> bytes:
        docs = {n: json.loads(resources.files("greengate").joinpath(f"policies/{n}.json").read_text())
                for n in names}
        return self.seal("policy", version, issued_at, {"policies": docs})

    def status(self, version, issued_at, revoked=(), suspended=()) -> bytes:
        """suspended: (16-byte key, until datetime) pairs."""
        body = status.snapshot_body(revoked, dict(suspended))
        return self.seal("status", version, issued_at, body)

    def delta(self, version, issued_at, base, revoked=(), reinstated=(), suspended=()) -> bytes:
        body = status.delta_body(base, revoked=revoked, suspended=dict(suspended),
                                 reinstated=reinstated)
        return self.seal("status-delta", version, issued_at, body)

    def head(self, version, issued_at, bases=()) -> bytes:
        return self.seal("status-head", version, issued_at, status.head_body(version, bases))


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


__all__ = ["FleetKit", "at", "status"]
