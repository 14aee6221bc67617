"""`greengate-kiosk verify`: the verification engine from the command line.

Other tools and the support desk call this; its flags, JSON fields and exit
codes (0 green, 1 red, 2 bad usage) are a stable interface.
"""

import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from greengate import policy as policies
from greengate.decision import Decision, Reason, red
from greengate.trust import TrustError, TrustList, load_signer
from greengate.verifier import Verifier

EXIT_GREEN, EXIT_RED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    pass


def parse_at(text: str | None) -> datetime:
    if text is None:
        return datetime.now(timezone.utc)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--at {text!r} is not an ISO 8601 time, e.g. 2021-10-05T08:00:00Z") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def read_certificate(arg: str) -> bytes | str:
    """--trust takes a file (PEM, DER or base64 DER) or the base64/PEM text itself."""
    path = Path(arg)
    try:
        if path.is_file():
            return path.read_bytes()
    except OSError:
        pass
    return arg


class Engines:
    """Verifiers cached by (trust certificates, policy), so --batch parses each once."""

    def __init__(self):
        self._trust: dict[tuple, TrustList] = {}
        self._policy: dict[str, policies.Policy] = {}
        self._verifier: dict[tuple, Verifier] = {}

    def get(self, trust: tuple, policy_name: str) -> Verifier:
        key = (trust, policy_name)
        verifier = self._verifier.get(key)
        if verifier is None:
            if trust not in self._trust:
                try:
                    self._trust[trust] = TrustList(load_signer(read_certificate(c)) for c in trust)
                except TrustError as exc:
                    raise UsageError(f"trust certificate: {exc}") from None
            if policy_name not in self._policy:
                try:
                    self._policy[policy_name] = policies.load(policy_name)
                except policies.PolicyError as exc:
                    raise UsageError(str(exc)) from None
            verifier = self._verifier[key] = Verifier(self._trust[trust], self._policy[policy_name])
        return verifier


def human(decision: Decision) -> str:
    light = "GREEN" if decision.green else "RED"
    reason = str(decision.reason)
    if decision.sub_reason:
        reason += f"/{decision.sub_reason}"
    return f"{light}  {reason}  {decision.detail}"


def payload_from_image(path: str) -> str | None:
    from .decoders import decode_image_file
    try:
        texts = decode_image_file(path)
    except OSError as exc:
        raise UsageError(f"--image {path}: {exc}") from None
    return next((t for t in texts if t.startswith("HC1:")), texts[0] if texts else None)


def run(args) -> int:
    engines = Engines()
    try:
        if args.batch:
            return run_batch(args, engines, sys.stdin, sys.stdout)
        if args.image:
            payload = payload_from_image(args.image)
        elif args.payload is not None:
            payload = args.payload
        else:
            raise UsageError("give a PAYLOAD, --image FILE or --batch")
        at = parse_at(args.at)
        verifier = engines.get(tuple(args.trust), args.policy)
    except UsageError as exc:
        print(f"greengate-kiosk verify: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if payload is None:
        decision = red(Reason.UNREADABLE, "no QR code found in the image")
    else:
        decision = verifier.verify(payload, at)
    print(json.dumps(as_json(decision, verifier), ensure_ascii=False) if args.json
          else human(decision))
    return EXIT_GREEN if decision.green else EXIT_RED


def as_json(decision: Decision, verifier: Verifier | None) -> dict:
    """The decision; for policy_failed also the failing rule's description in every
    language the rule has ({"en": ..., "vi": ...}), the detail being the English one."""
    out = decision.to_dict()
    if decision.reason == Reason.POLICY_FAILED and verifier is not None:
        out["descriptions"] = verifier.policy.descriptions(decision.sub_reason)
    return out


def run_batch(args, engines: Engines, lines, out) -> int:
    default_at = parse_at(args.at)
    default_trust = tuple(args.trust)
    all_green = True
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            decision = _batch_line(line, engines, default_trust, args.policy, default_at)
        except UsageError as exc:
            decision = red(Reason.UNREADABLE, f"line {number}: {exc}")
        all_green &= decision.green
        out.write(json.dumps(decision.to_dict(), ensure_ascii=False) + "\n")
    out.flush()
    return EXIT_GREEN if all_green else EXIT_RED


def _batch_line(line: str, engines: Engines, trust: tuple, policy_name: str, at: datetime) -> Decision:
    try:
        item = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UsageError(f"not JSON: {exc.msg}") from None
    if not isinstance(item, dict) or not isinstance(item.get("payload"), str):
        raise UsageError('each line must be an object with a "payload" string')
    if "trust" in item:
        if not isinstance(item["trust"], list) or not all(isinstance(t, str) for t in item["trust"]):
            raise UsageError('"trust" must be a list of base64 DER strings')
        trust = tuple(item["trust"])
    if "at" in item:
        at = parse_at(item["at"] if isinstance(item["at"], str) else repr(item["at"]))
    if "policy" in item:
        if not isinstance(item["policy"], str):
            raise UsageError('"policy" must be a policy name or file')
        policy_name = item["policy"]
    return engines.get(trust, policy_name).verify(item["payload"], at)


def add_parser(sub) -> None:
    p = sub.add_parser("verify", help="verify a health certificate offline",
                       description="Verify an HC1 health certificate offline and print the decision. "
                                   "Exit status: 0 green, 1 red, 2 bad usage.")
    p.add_argument("payload", nargs="?", help="the QR text, starting with HC1:")
    p.add_argument("--image", metavar="FILE", help="read the QR code from a photo")
    p.add_argument("--batch", action="store_true",
                   help='read JSON lines {"payload", "trust", "at", "policy"} from stdin, '
                        "print one JSON result per line")
    p.add_argument("--trust", metavar="CERT", action="append", default=[],
                   help="signer certificate (file or text; PEM, DER or base64 DER); repeatable")
    p.add_argument("--at", metavar="ISO8601", help="validation time (default: now)")
    p.add_argument("--policy", metavar="NAME|FILE", default="hcmc-2021",
                   help=f"checkpoint policy: {', '.join(policies.BUILTIN)} or a JSON file "
                        "(default: hcmc-2021)")
    p.add_argument("--json", action="store_true", help="print the decision as JSON")
    p.set_defaults(handler=run)
