"""The EU value sets a deployment's kiosks verify with (service layer, no Flask).

A value set is one EU JSON document as the EU publishes it
(`{"valueSetId", "valueSetDate", "valueSetValues": {code: {...}}}`); the fleet
keeps one row per value set and deployment (ValueSet), signs them all as one
`valuesets` bundle (fleet/bundles.py) and distributes it like the trust list.
A deployment starts with the copy vendored in the repository; admins replace
value sets from a folder of EU files (`greengate-fleet valuesets replace DIR`,
docs/lists.md#value-sets). Every change is audited and makes a new version.
"""

from __future__ import annotations

import json
import re
import time
from importlib import resources
from pathlib import Path

from sqlalchemy import select

from greengate import valuesets as greengate_valuesets

from . import audit, bundles
from .bundles import ListError
from .models import ValueSet

ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_FILE = 4 * 1024 * 1024  # the largest EU value set (country codes) is about 40 KB
MAX_CODE = 128


def parse(name: str, data: bytes) -> dict:
    """One EU value-set file -> its document, or ListError naming the file and the fault."""
    if len(data) > MAX_FILE:
        raise ListError(f"value set {name}: larger than {MAX_FILE // 1024 // 1024} MB")
    try:
        doc = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ListError(f"value set {name}: not UTF-8 text") from None
    except RecursionError:
        raise ListError(f"value set {name}: nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise ListError(f"value set {name}: not JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(doc, dict):
        raise ListError(f"value set {name}: not a JSON object")
    vid = doc.get("valueSetId")
    if not isinstance(vid, str) or not ID.match(vid):
        raise ListError(f"value set {name}: 'valueSetId' is missing or not a name of letters, "
                        "digits, '.', '_' and '-' (at most 64)")
    values = doc.get("valueSetValues")
    if not isinstance(values, dict):
        raise ListError(f"value set {name} ({vid}): 'valueSetValues' is missing or not an "
                        "object of code -> entry")
    for code, entry in values.items():
        if not code or len(code) > MAX_CODE:
            raise ListError(f"value set {name} ({vid}): code {code[:MAX_CODE]!r} is empty or "
                            f"longer than {MAX_CODE}")
        if not isinstance(entry, dict):
            raise ListError(f"value set {name} ({vid}): code {code!r} is not an object")
    if "valueSetDate" in doc and not isinstance(doc["valueSetDate"], str):
        raise ListError(f"value set {name} ({vid}): 'valueSetDate' is not text")
    try:
        greengate_valuesets.parse_document(doc)  # what the kiosk will read, exactly
    except greengate_valuesets.ValueSetError as exc:
        raise ListError(f"value set {name}: {exc}") from None
    return doc


def read_folder(path: str | Path) -> dict[str, dict]:
    """Every *.json file of a folder, by valueSetId. Anything wrong: ListError, nothing read."""
    folder = Path(path)
    if not folder.is_dir():
        raise ListError(f"{folder} is not a folder of EU value-set JSON files", 400)
    docs: dict[str, dict] = {}
    seen: dict[str, str] = {}
    for file in sorted(folder.glob("*.json")):
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise ListError(f"value set {file.name}: cannot read it: {exc.strerror}") from None
        doc = parse(file.name, data)
        vid = doc["valueSetId"]
        if vid in docs:
            raise ListError(f"value set {vid!r} is in both {seen[vid]} and {file.name}")
        docs[vid], seen[vid] = doc, file.name
    if not docs:
        raise ListError(f"{folder} holds no *.json value-set file", 400)
    return docs


def vendored() -> dict[str, dict]:
    """The EU value sets shipped in the repository (greengate/data/dcc-valuesets)."""
    folder = resources.files("greengate").joinpath("data", "dcc-valuesets")
    return read_folder(Path(str(folder)))


def seed(session, deployment: str, at: float) -> int:
    """On first use a deployment gets the vendored value sets."""
    if session.scalars(select(ValueSet.id).where(ValueSet.deployment == deployment)
                       .limit(1)).first() is not None:
        return 0
    docs = vendored()
    for vid, doc in sorted(docs.items()):
        session.add(ValueSet(deployment=deployment, value_set_id=vid, document=doc,
                             updated_by=bundles.SYSTEM, updated_at=at))
    session.flush()
    return len(docs)


def current(session, deployment: str) -> dict[str, dict]:
    return {row.value_set_id: row.document for row in session.scalars(
        select(ValueSet).where(ValueSet.deployment == deployment)
        .order_by(ValueSet.value_set_id))}


def replace(session, config, deployment: str, docs: dict[str, dict], *, actor: str,
            reason: str = "", now: float | None = None, key=None) -> tuple[int, list[str]]:
    """Replace the value sets with these ids (others are kept: a rule that names a value
    set must not lose it because a folder was partial); (version, ids changed). Commits;
    nothing changed makes no new version."""
    bundles.check_deployment(config, deployment)
    if not docs:
        raise ListError("no value sets given", 400)
    at = time.time() if now is None else float(now)
    signer = key or bundles.load_signing_key(config)

    def work():
        seed(session, deployment, at)
        rows = {r.value_set_id: r for r in session.scalars(
            select(ValueSet).where(ValueSet.deployment == deployment))}
        changed = []
        for vid, doc in sorted(docs.items()):
            row = rows.get(vid)
            if row is None:
                row = ValueSet(deployment=deployment, value_set_id=vid)
                session.add(row)
            elif row.document == doc:
                continue
            row.document, row.updated_by, row.updated_at = doc, actor, at
            changed.append(vid)
        if not changed:
            return None, []
        version = bundles.issue(session, config, deployment, "valuesets", key=signer,
                                actor=actor, action="valuesets.replace", at=at,
                                changes=len(changed))
        audit.record(session, actor, "valuesets.replace", deployment, reason=reason,
                     version=version, value_sets=changed,
                     dates={v: docs[v].get("valueSetDate") for v in changed})
        return version, changed

    version, changed = bundles.in_transaction(session, work)
    if version is None:
        version = bundles.current_version(session, deployment, "valuesets")
    return version, changed


# --- greengate-fleet valuesets replace DIR ---------------------------------------------
def run(config, args) -> int:
    import sys

    from .db import make_engine, make_sessions

    engine = make_engine(config.database_url)
    sessions = make_sessions(engine)
    try:
        try:
            deployment = bundles.command_deployment(config, args.deployment)
            docs = read_folder(args.folder)
            with sessions() as session:
                version, changed = replace(session, config, deployment, docs, actor="cli",
                                           reason=args.reason or "")
        except ListError as exc:
            print(f"greengate-fleet: {exc.message}", file=sys.stderr)
            return 2
        if not changed:
            print(f"{deployment}: value sets unchanged (valuesets bundle v{version})")
            return 0
        print(f"{deployment}: replaced {', '.join(changed)}; valuesets bundle v{version}")
        if args.no_publish:
            return 0
        problem = bundles.publish_now(config, sessions, deployment, {"valuesets"}, args.timeout)
        if problem:
            print(f"greengate-fleet: {deployment}: not published to MQTT ({problem}); the "
                  "bundle is in the database and kiosks' HTTP fallback serves it",
                  file=sys.stderr)
            return 1
        print(f"{deployment}: published")
        return 0
    finally:
        engine.dispose()
