"""A whole kiosk (device.kiosk.Kiosk) for benchmarks, without network or camera.

Its outbox is a real SQLite file in a temporary directory (fsync'd on every
decision, as on the Pi), its lights are gpiozero's MockFactory, its lists are
signed bundles of the bench issuer, and its clock is pinned to `at` with NTP
"synchronised", so the bench certificates get their real decisions. The
reporter is never started: a broker's speed is not the kiosk's.
"""

import json
import tempfile
from datetime import datetime
from importlib import resources
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from greengate import bundle, status

DEPLOYMENT = "bench"


def build(issuer_der: bytes, at: datetime, policy: str = "hcmc-2021"):
    """(kiosk, temporary directory); the caller closes both."""
    from device import config
    from device.clock import Clock
    from device.kiosk import Kiosk

    tmp = tempfile.TemporaryDirectory(prefix="greengate-bench-")
    root = Path(tmp.name)
    fleet = ec.generate_private_key(ec.SECP256R1())
    (root / "fleet.pem").write_bytes(fleet.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    cfg = config.parse(f"""
[kiosk]
id = "bench"
deployment = "{DEPLOYMENT}"
policy = "{policy}"
data_dir = "data"
[indicator]
backend = "mock"
[mqtt]
tls = false
[bundles]
fleet_key = "fleet.pem"
[privacy]
pseudonyms = true
""", root / "kiosk.toml")
    kiosk = Kiosk(cfg)
    issued = int(at.timestamp()) - 3600
    document = json.loads(resources.files("greengate").joinpath(f"policies/{policy}.json").read_text())
    for kind, body in (("trust", {"certificates": [issuer_der]}),
                       ("policy", {"policies": {policy: document}}),
                       ("status", status.snapshot_body())):
        accepted, why = kiosk.store.offer(bundle.seal(kind, 1, issued, body, fleet, DEPLOYMENT),
                                          "bench")
        if not accepted:
            raise RuntimeError(f"bench {kind} bundle refused: {why}")
    kiosk.clock = Clock(root / "data" / "bench-clock.json", 3600.0, now=at.timestamp,
                        ntp=lambda: True)
    return kiosk, tmp
