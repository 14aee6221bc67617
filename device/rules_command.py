"""`greengate-kiosk rules`: the CertLogic engine from the command line.

`--batch` is a stable interface for other tools and our conformance checks:
JSON lines `{"logic": <expression>, "data": <data context>}` on stdin, one line
`{"value": <result>}` or `{"error": "<sentence>"}` per input line on stdout, in
order (a blank line gives an error line too, so line N answers line N). Exit
status 0 unless stdin cannot be read.

`--rule FILE --payload FILE [--at ISO8601]` is for a person trying a rule (or a
rule set: a policy document, or a JSON list of rules) against a certificate's
DCC payload, as JSON or as the HC1 text. It prints each rule's outcome; exit
0 if every applicable rule passes, 1 if one fails, 2 on bad usage.
"""

import json
import sys
from datetime import datetime
from pathlib import Path

from greengate import certlogic
from greengate import policy as policies

# one --at syntax and one usage error for every kiosk command
from .verify_command import UsageError, parse_at

EXIT_PASS, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
MAX_LINE = 4 * 1024 * 1024  # one input line; EU payloads and rules are a few KB


def batch_line(line: str | bytes) -> dict:
    """The answer to one input line; never raises."""
    if len(line) > MAX_LINE:
        return {"error": f"line is longer than {MAX_LINE} bytes"}
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            return {"error": f"not UTF-8 text (byte {exc.start + 1})"}
    try:
        item = json.loads(line)
    except json.JSONDecodeError as exc:
        return {"error": f"not JSON: {exc.msg} at column {exc.colno}"}
    except RecursionError:
        return {"error": "not usable JSON: it nests too deeply"}
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        return {"error": f"not usable JSON: {exc}"[:200]}
    if not isinstance(item, dict) or "logic" not in item:
        return {"error": 'each line must be a JSON object {"logic": ..., "data": ...}'}
    try:
        value = certlogic.evaluate(item["logic"], item.get("data"))
        return {"value": certlogic.to_json(value)}
    except certlogic.CertLogicError as exc:
        return {"error": str(exc)}


def run_batch(lines, out) -> int:
    write = out.write
    for line in lines:
        answer = batch_line(line)
        try:
            text = json.dumps(answer, ensure_ascii=False, allow_nan=False)
        except (ValueError, TypeError, RecursionError):  # a data value JSON cannot carry
            text = json.dumps({"error": "the result cannot be written as JSON"})
        write(text + "\n")
    out.flush()
    return EXIT_PASS


# -- trying a rule ----------------------------------------------------------------------

def _read_json(path: str, what: str):
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{what} {path}: not UTF-8 text") from None
    except OSError as exc:
        raise UsageError(f"{what} {path}: cannot read: {exc.strerror}") from None
    stripped = text.strip()
    if what == "--payload" and stripped.startswith("HC1:"):
        return _payload_from_hc1(stripped, path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{what} {path}: line {exc.lineno} column {exc.colno}: {exc.msg}") \
            from None
    except RecursionError:
        raise UsageError(f"{what} {path}: JSON nests too deeply") from None


def _payload_from_hc1(text: str, path: str) -> dict:
    """The DCC inside an HC1 text (signature not checked: this tries rules only)."""
    from greengate import cose, hc1
    from greengate.content import CLAIM_HCERT
    try:
        claims = cose.loads(cose.parse(hc1.decode(text)).payload)
        dcc = claims[CLAIM_HCERT][1]
    except Exception as exc:  # any damage in the text is a usage error, not a traceback
        raise UsageError(f"--payload {path}: cannot read the HC1 text: {exc}") from None
    return _jsonable(dcc)


def _jsonable(node):
    if isinstance(node, dict):
        return {str(k): _jsonable(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_jsonable(v) for v in node]
    if isinstance(node, datetime):
        return node.isoformat()
    return node


def _rules_of(doc, path: str) -> policies.Policy:
    """A policy document, a single EU rule, or a list of rules, as a Policy."""
    if isinstance(doc, dict) and "Identifier" in doc:
        doc = [doc]
    if isinstance(doc, list):
        doc = {"name": Path(path).stem, "rules": doc}
    try:
        return policies.from_document(doc)
    except policies.PolicyError as exc:
        raise UsageError(f"--rule {path}: {exc}") from None


def try_rules(policy: policies.Policy, payload, at: datetime, out) -> int:
    """Every rule's outcome on the payload at `at`, one line each."""
    if not isinstance(payload, dict):
        raise UsageError("--payload must hold a DCC payload (a JSON object with ver, nam, "
                         "dob and one of v/t/r)")
    kinds = [t for t in ("v", "t", "r") if payload.get(t)]
    cert_type = kinds[0] if len(kinds) == 1 else None
    local = at.astimezone(policy.timezone)
    external = {"validationClock": local.isoformat(), "validationDate": local.date().isoformat(),
                "countryCode": "VN", "valueSets": _valuesets()}
    data = {"payload": payload, "external": external}
    failed = 0
    in_force = policy.applicable(policy.rules, at, None)
    for rule in policy.rules:
        if cert_type is not None and not rule.applies_to(cert_type):
            out.write(f"SKIP  {rule.identifier}: only for {rule.certificate_type} "
                      "certificates\n")
            continue
        if rule not in in_force:
            why = ("not in force at this time" if not rule.in_force(at) else
                   "a newer version applies" if rule.type == "Acceptance" else
                   "an invalidation rule of another country")
            out.write(f"SKIP  {rule.identifier} {rule.version}: {why}\n")
            continue
        try:
            value = certlogic.evaluate(rule.logic, data, validated=True)
            ok = value is True
            result = json.dumps(certlogic.to_json(value), ensure_ascii=False)
        except certlogic.CertLogicError as exc:
            ok, result = False, f"error: {exc}"
        failed += not ok
        out.write(f"{'PASS' if ok else 'FAIL'}  {rule.identifier}: {rule.description()}"
                  f"{'' if ok else f'  [{result}]'}\n")
        for language, text in sorted(rule.descriptions.items()):
            if language != policies.LANGUAGE and not ok:
                out.write(f"      {language}: {text}\n")
    verdict = "passes" if not failed else f"fails ({failed} rule{'s' if failed > 1 else ''})"
    out.write(f"{'GREEN' if not failed else 'RED'}  the payload {verdict} at "
              f"{at.isoformat()}\n")
    return EXIT_PASS if not failed else EXIT_FAIL


def _valuesets() -> dict:
    try:
        from greengate.valuesets import ValueSets
        return ValueSets.default().as_external()
    except Exception:  # value sets are optional here: a rule reading them then fails visibly
        return {}


def run(args) -> int:
    try:
        if args.batch:
            if args.rule or args.payload:
                raise UsageError("--batch reads everything from stdin; drop --rule/--payload")
            return run_batch(sys.stdin.buffer, sys.stdout)
        if not (args.rule and args.payload):
            raise UsageError("give --batch, or --rule FILE and --payload FILE")
        policy = _rules_of(_read_json(args.rule, "--rule"), args.rule)
        payload = _read_json(args.payload, "--payload")
        return try_rules(policy, payload, parse_at(args.at), sys.stdout)
    except UsageError as exc:
        print(f"greengate-kiosk rules: {exc}", file=sys.stderr)
        return EXIT_USAGE


def add_parser(sub) -> None:
    p = sub.add_parser(
        "rules", help="evaluate CertLogic rules (batch for tools, or try a rule on a payload)",
        description="Evaluate CertLogic business rules. --batch: JSON lines "
                    '{"logic", "data"} on stdin, one {"value"} or {"error"} line out per line. '
                    "--rule/--payload: try a rule (or rule set) on a DCC payload; exit 0 "
                    "passes, 1 fails, 2 bad usage.")
    p.add_argument("--batch", action="store_true",
                   help='read JSON lines {"logic": ..., "data": ...} from stdin')
    p.add_argument("--rule", metavar="FILE",
                   help="an EU-format rule, a list of rules, or a policy document (JSON)")
    p.add_argument("--payload", metavar="FILE",
                   help="the DCC payload as JSON, or a file holding the HC1 text")
    p.add_argument("--at", metavar="ISO8601", help="validation time (default: now)")
    p.set_defaults(handler=run)
