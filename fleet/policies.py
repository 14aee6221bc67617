"""The checkpoint policies of a deployment (service layer, no Flask).

Policies are CertLogic rule sets (greengate/policy.py documents), validated
here exactly as the kiosk will read them, and distributed together in one
signed `policy` bundle with each kiosk's assigned policy; a kiosk applies the
one assigned to it, else the one its config names. A deployment starts with
the built-in policies (greengate/policies/*.json). Every change is audited and
makes a new policy bundle version.

Also `greengate-fleet policies import DIR --name N` (a folder of EU-format rule
files, one rule per file as countries publish them) and `policies assign`.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from sqlalchemy import select

from greengate import policy as greengate_policy

from . import audit, bundles
from .bundles import ListError
from .models import RETIRED, Kiosk, Policy

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def all_policies(session, config, deployment: str, now: float | None = None) -> list[Policy]:
    """Every policy of the deployment (the built-ins seeded on first use)."""
    bundles.check_deployment(config, deployment)
    rows = list(session.scalars(select(Policy).where(Policy.deployment == deployment)
                                .order_by(Policy.name)))
    if not rows:
        bundles.ensure_issued(session, config, deployment, now=now)  # seeds, signs the built-ins
        rows = list(session.scalars(select(Policy).where(Policy.deployment == deployment)
                                    .order_by(Policy.name)))
    return rows


def validate(name: str, document) -> dict:
    if not NAME.match(name or ""):
        raise ListError(f"policy name {name!r} is not allowed: letters, digits, '.', '_' and "
                        "'-', at most 64, starting with a letter or digit", 400)
    if not isinstance(document, dict):
        raise ListError("a policy is a JSON object (see docs/verification.md#policies)", 400)
    document = dict(document)
    if document.setdefault("name", name) != name:
        raise ListError(f"the document is named {document['name']!r} but is sent as {name!r}; "
                        "make them equal")
    try:
        greengate_policy.from_document(document)
    except greengate_policy.PolicyError as exc:
        raise ListError(f"invalid policy {name!r}: {exc}") from None
    if greengate_policy.is_legacy(document):
        # still accepted from older tools, stored as its rule set: one format in the fleet
        # (migration 0007 converted the stored ones)
        document = greengate_policy.convert_legacy(document)
    return document


def put(session, config, deployment: str, name: str, document, *, actor: str,
        reason: str = "", now: float | None = None, key=None) -> tuple[Policy, int, str]:
    """Create or replace a policy; (row, policy version, "created" | "updated" |
    "unchanged"). Commits; an unchanged document makes no new version."""
    bundles.check_deployment(config, deployment)
    document = validate(name, document)
    at = time.time() if now is None else float(now)
    signer = key or bundles.load_signing_key(config)

    def work():
        bundles.seed_policies(session, deployment, at)
        row = session.scalars(select(Policy).where(Policy.deployment == deployment,
                                                   Policy.name == name)).first()
        created = row is None
        if created:
            row = Policy(deployment=deployment, name=name)
            session.add(row)
        elif row.document == document:
            return row, None, "unchanged"
        previous = None if created else row.document
        row.document, row.updated_by, row.updated_at = document, actor, at
        version = bundles.issue(session, config, deployment, "policy", key=signer, actor=actor,
                                action="policy.put", at=at, changes=1)
        audit.record(session, actor, "policy.create" if created else "policy.update",
                     f"{deployment}/{name}", reason=reason, version=version,
                     previous=previous, document=document)
        return row, version, "created" if created else "updated"

    row, version, outcome = bundles.in_transaction(session, work)
    if version is None:
        version = bundles.current_version(session, deployment, "policy")
    return row, version, outcome


# --- importing an EU rule set --------------------------------------------------------
MAX_RULE_FILE = 1024 * 1024  # a published rule is a few KB


def read_rules(path: str | Path) -> list[tuple[str, dict]]:
    """(file name, rule) for every *.json file of a folder, in name order. A file holds one
    rule object (as countries publish them) or a list of them. ListError names the file."""
    folder = Path(path)
    if not folder.is_dir():
        raise ListError(f"{folder} is not a folder of EU rule files", 400)
    files = []
    for file in sorted(folder.glob("*.json")):
        try:
            files.append((file.name, file.read_bytes()))
        except OSError as exc:
            raise ListError(f"rule file {file.name}: cannot read it: {exc.strerror}") from None
    if not files:
        raise ListError(f"{folder} holds no *.json rule file", 400)
    return parse_rule_files(files)


def parse_rule_files(files) -> list[tuple[str, dict]]:
    """(file name, rule) of (file name, bytes) pairs in name order (the dashboard's
    upload, a folder's files); ListError names the file."""
    rules: list[tuple[str, dict]] = []
    seen: dict[tuple, str] = {}
    for name, data in sorted(files, key=lambda f: f[0]):
        if len(data) > MAX_RULE_FILE:
            raise ListError(f"rule file {name}: larger than {MAX_RULE_FILE // 1024} KB")
        try:
            doc = json.loads(data.decode("utf-8"))
        except UnicodeDecodeError:
            raise ListError(f"rule file {name}: not UTF-8 text") from None
        except RecursionError:
            raise ListError(f"rule file {name}: nested too deeply") from None
        except json.JSONDecodeError as exc:
            raise ListError(f"rule file {name}: not JSON ({exc.msg}, line "
                            f"{exc.lineno})") from None
        for rule in doc if isinstance(doc, list) else [doc]:
            if not isinstance(rule, dict) or not isinstance(rule.get("Identifier"), str) \
                    or not rule["Identifier"]:
                raise ListError(f"rule file {name}: a rule is a JSON object with an "
                                "'Identifier' (the EU rule format)")
            key = (rule["Identifier"], str(rule.get("Version")))
            if key in seen:
                raise ListError(f"rule {key[0]} version {key[1]} is in both {seen[key]} and "
                                f"{name}")
            seen[key] = name
            rules.append((name, rule))
    if not rules:
        raise ListError("no rule file was given", 400)
    return rules


def rule_set(name: str, rules: list[tuple[str, dict]], *, title: str = "",
             timezone: str = "UTC") -> dict:
    """The policy document of imported rules; each rule is validated on its own first so
    that the error names the file as well as the rule."""
    def document(items):
        return {"name": name, "title": title, "timezone": timezone, "rules": items}

    for file, rule in rules:
        try:
            greengate_policy.from_document(document([rule]))
        except greengate_policy.PolicyError as exc:
            raise ListError(f"rule file {file}: {exc}") from None
    return document([rule for _, rule in rules])


def import_rules(session, config, deployment: str, name: str, folder: str | Path, *,
                 actor: str, title: str | None = None, timezone: str = "UTC",
                 reason: str = "", now: float | None = None,
                 key=None) -> tuple[Policy, int, str, int]:
    """Read, validate and store a folder of EU rules as policy `name`; (row, policy
    version, outcome, rules). Anything invalid: ListError and nothing stored or signed."""
    rules = read_rules(folder)
    title = title if title is not None else f"rules imported from {Path(folder).name}"
    document = rule_set(name, rules, title=title, timezone=timezone)
    row, version, outcome = put(session, config, deployment, name, document, actor=actor,
                                reason=reason or f"imported {len(rules)} rule(s)", now=now,
                                key=key)
    return row, version, outcome, len(rules)


# --- assigning a policy to kiosks -----------------------------------------------------
def assign(session, config, name: str, kiosk_ids, *, actor: str, reason: str = "",
           now: float | None = None, key=None, resend=()) -> tuple[int | None, list[str]]:
    """Assign policy `name` to these kiosks (each in a deployment that has it); the new
    policy bundle carries the assignment. (policy version or None, kiosks changed).
    resend: kiosks (of kiosk_ids) that had `name` already but report applying another
    (assigned before assignments were signed): a new bundle is signed for them too.
    Commits; all or nothing."""
    at = time.time() if now is None else float(now)
    kiosk_ids = list(dict.fromkeys(kiosk_ids))
    if not kiosk_ids:
        raise ListError("name at least one kiosk", 400)
    kiosks = []
    known: dict[str, list[str]] = {}  # deployment -> its policies (a district: one query)
    for kiosk_id in kiosk_ids:
        kiosk = session.get(Kiosk, kiosk_id)
        if kiosk is None:
            raise ListError(f"no kiosk {kiosk_id!r}", 404)
        if kiosk.state == RETIRED:
            raise ListError(f"kiosk {kiosk_id!r} is retired", 409)
        if kiosk.deployment not in known:
            known[kiosk.deployment] = [p.name for p in all_policies(session, config,
                                                                    kiosk.deployment, now=at)]
        names = known[kiosk.deployment]
        if name not in names:
            raise ListError(f"deployment {kiosk.deployment!r} of kiosk {kiosk_id!r} has no "
                            f"policy {name!r}; its policies: {', '.join(names)}", 404)
        kiosks.append(kiosk)
    signer = key or bundles.load_signing_key(config)

    def work():
        changed: dict[str, list[str]] = {}
        for kiosk in kiosks:
            if kiosk.policy != name:
                audit.record(session, actor, "kiosk.update", kiosk.id, reason=reason,
                             policy=[kiosk.policy, name])
                kiosk.policy = name
                changed.setdefault(kiosk.deployment, []).append(kiosk.id)
            elif kiosk.id in resend:
                audit.record(session, actor, "policy.resend", kiosk.id, reason=reason,
                             policy=name)
                changed.setdefault(kiosk.deployment, []).append(kiosk.id)
        version = None
        for deployment in sorted(changed):
            version = bundles.issue(session, config, deployment, "policy", key=signer,
                                    actor=actor, action="policy.assign", at=at,
                                    changes=len(changed[deployment]))
        return version, [k for ids in changed.values() for k in ids]

    return bundles.in_transaction(session, work)


def targets(session, deployment: str, *, kiosks=None, location_id: int | None = None,
            district_id: int | None = None) -> list[Kiosk]:
    """The kiosks of `deployment` an assignment names: these ids (each must exist, be in
    the deployment and not be retired), or every kiosk not retired at a location or in a
    district (by id), in id order."""
    from .models import Location
    if kiosks is not None:
        found = []
        for kiosk_id in dict.fromkeys(kiosks):
            kiosk = session.get(Kiosk, kiosk_id)
            if kiosk is None:
                raise ListError(f"no kiosk {kiosk_id!r}", 404)
            if kiosk.state == RETIRED:
                raise ListError(f"kiosk {kiosk_id!r} is retired", 409)
            if kiosk.deployment != deployment:
                raise ListError(f"kiosk {kiosk_id!r} is in deployment {kiosk.deployment!r}, "
                                f"not {deployment!r}")
            found.append(kiosk)
        return sorted(found, key=lambda k: k.id)
    query = select(Kiosk).where(Kiosk.deployment == deployment, Kiosk.state != RETIRED)
    if location_id is not None:
        query = query.where(Kiosk.location_id == location_id)
    elif district_id is not None:
        query = query.join(Location, Kiosk.location_id == Location.id).where(
            Location.district_id == district_id)
    else:
        raise ListError("name the kiosks, a location or a district", 400)
    return list(session.scalars(query.order_by(Kiosk.id)))


def place_targets(session, deployment: str, what: str, code: str) -> list[Kiosk] | None:
    """The kiosks `targets` finds at the location or district (`what`) with this code;
    None when there is no such place (each front end words that its own way)."""
    from .models import District, Location
    model = {"location": Location, "district": District}[what]
    place = session.scalar(select(model.id).where(model.code == code))
    return None if place is None else targets(session, deployment, **{f"{what}_id": place})


# --- greengate-fleet policies ... ----------------------------------------------------
def _named_kiosks(session, config, args) -> list[str]:
    """The kiosk ids `policies assign` names: --kiosk ids, or a location's or a district's
    kiosks of the deployment (by code, as the API and the dashboard name them)."""
    named = [flag for flag, value in (("--kiosk", args.kiosk), ("--location", args.location),
                                      ("--district", args.district)) if value]
    if len(named) != 1:
        raise ListError("name at least one kiosk (--kiosk ID), or a location (--location "
                        "CODE) or a district (--district CODE): one of the three", 400)
    if args.kiosk:
        return args.kiosk
    deployment = bundles.command_deployment(config, args.deployment)
    what, code = ("location", args.location) if args.location else ("district", args.district)
    found = place_targets(session, deployment, what, code)
    if found is None:
        raise ListError(f"no {what} with code {code!r}", 404)
    if not found:
        raise ListError(f"no kiosk of deployment {deployment!r} is at {what} {code!r} "
                        "(retired ones are left out)", 404)
    return [kiosk.id for kiosk in found]


def run(config, args) -> int:
    """greengate-fleet policies import DIR --name N | assign NAME --kiosk ID... |
    assign NAME --location CODE | assign NAME --district CODE"""
    from .db import make_engine, make_sessions

    engine = make_engine(config.database_url)
    try:
        return _run(config, args, make_sessions(engine))
    finally:
        engine.dispose()


def _run(config, args, sessions) -> int:
    import sys

    try:
        with sessions() as session:
            if args.action == "import":
                deployment = bundles.command_deployment(config, args.deployment)
                name = args.name or Path(args.target).name
                row, version, outcome, count = import_rules(
                    session, config, deployment, name, args.target, actor="cli",
                    title=args.title, timezone=args.timezone, reason=args.reason or "")
                print(f"{deployment}: policy {name!r} {outcome} ({count} rule(s)), policy "
                      f"bundle v{version}")
                changed = outcome != "unchanged"
                deployments = [deployment]
            else:
                version, kiosks = assign(session, config, args.target,
                                         _named_kiosks(session, config, args),
                                         actor="cli", reason=args.reason or "")
                print(f"policy {args.target!r} assigned to {', '.join(kiosks)}, policy "
                      f"bundle v{version}" if kiosks else
                      f"policy {args.target!r} was already assigned to those kiosks")
                changed = bool(kiosks)
                deployments = sorted({session.get(Kiosk, k).deployment for k in kiosks})
    except ListError as exc:
        print(f"greengate-fleet: {exc.message}", file=sys.stderr)
        return 2
    if not changed or args.no_publish:
        return 0
    status = 0
    for deployment in deployments:
        problem = bundles.publish_now(config, sessions, deployment, {"policy"}, args.timeout)
        if problem:
            print(f"greengate-fleet: {deployment}: not published to MQTT ({problem}); the "
                  "policy bundle is in the database and kiosks' HTTP fallback serves it",
                  file=sys.stderr)
            status = 1
        else:
            print(f"{deployment}: published")
    return status
