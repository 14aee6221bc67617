"""Policies on the dashboard (docs/dashboard.md#policies): the deployment's policies, one
policy's rules, importing an EU rule set (JSON rule files uploaded) as a named policy,
and assigning a policy to kiosks, a location or a district; both changes with a
confirmation step.

    GET  /policies[?deployment=]                   everyone logged in (as the API)
    GET  /policies/<deployment>/<name>             the rules, the kiosks that have it
    POST /policies/import/preview | /apply         admins and operators
    POST /policies/assign/preview | /apply         admins and operators

Changes go through fleet/policies.py (audited, a new signed policy bundle) and are
handed to the publisher, as `greengate-fleet policies import|assign` and the API do.
As on the status list pages, the session keeps a digest of the previewed fields and
the apply refuses anything else. The import's confirm form carries the validated
policy document back (the upload is read once, at the preview).
"""

from __future__ import annotations

import json

from flask import g, render_template, request, url_for
from flask_babel import get_locale
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from sqlalchemy import func, select

from .. import bundles, policies
from ..api import ApiError
from ..api.common import CODE, location_clause, scope
from ..api.fleet_objects import KIOSK_ID
from ..app import current_fleet, db
from ..auth import AuthError, current_user
from ..bundles import ListError
from ..models import ADMIN, OPERATOR, District, Kiosk, Location, RETIRED
from ..publisher import hand_off
from . import bp, page
from .confirmation import confirmed, remember
from .lists_views import _deployment

EDITORS = (OPERATOR,)  # admin always may
MAX_FILES = 200
_IMPORTED = "policy_import_preview"
_ASSIGNED = "policy_assign_preview"
TARGETS = ("kiosks", "location", "district")


def may_change(user) -> bool:
    return user is not None and user.role in EDITORS + (ADMIN,)


def _policies(deployment: str):
    try:
        return policies.all_policies(db(), current_fleet().config, deployment)
    except ListError as exc:
        raise AuthError(exc.status, exc.message) from None


def _assigned_counts(deployment: str) -> dict[str, int]:
    """Kiosks (not retired) per assigned policy, in the caller's scope."""
    stmt = (select(Kiosk.policy, func.count(Kiosk.id))
            .outerjoin(Location, Kiosk.location_id == Location.id)
            .where(Kiosk.deployment == deployment, Kiosk.state != RETIRED)
            .group_by(Kiosk.policy))
    clause = location_clause()
    if clause is not None:
        stmt = stmt.where(clause)
    return dict(db().execute(stmt).all())


def _list_page(deployment: str | None = None, fields: dict | None = None,
               error: str | None = None, status: int = 200):
    deployment = _deployment(deployment or request.values.get("deployment"))
    rows = _policies(deployment)
    return render_template(
        "policy_list.html", deployment=deployment,
        deployments=current_fleet().config.fleet.deployments, policies=rows,
        counts=_assigned_counts(deployment),
        version=bundles.current_version(db(), deployment, "policy"),
        may_change=may_change(current_user(db())), fields=fields or {}, error=error), status


# the EU rule format's fixed words (Type, CertificateType)
RULE_WORDS = {"Acceptance": _l("Acceptance"), "Invalidation": _l("Invalidation"),
              "General": _l("General"), "Test": _l("Test"), "Vaccination": _l("Vaccination"),
              "Recovery": _l("Recovery")}


def _rules(document: dict) -> list[dict]:
    """The rules as the page lists them; the description in the reader's language when the
    rule has one (EU rules carry several), else English, marked as such (lang)."""
    lang = str(get_locale() or "en")
    out = []
    for rule in document.get("rules") or []:
        if not isinstance(rule, dict):
            continue
        descriptions = [d for d in rule.get("Description") or []
                        if isinstance(d, dict) and isinstance(d.get("desc"), str)] \
            if isinstance(rule.get("Description"), list) else []
        chosen = next((d for d in descriptions if d.get("lang") == lang), None) or next(
            (d for d in descriptions if d.get("lang") == "en"), None) or (
            descriptions[0] if descriptions else {"desc": "", "lang": lang})
        words = {k: rule.get(k) if isinstance(rule.get(k), str) else ""
                 for k in ("Type", "CertificateType")}
        out.append({"id": rule.get("Identifier", ""), "version": rule.get("Version", ""),
                    "type": str(RULE_WORDS.get(words["Type"], words["Type"])),
                    "country": rule.get("Country", ""),
                    "certificate": str(RULE_WORDS.get(words["CertificateType"],
                                                      words["CertificateType"])),
                    "desc_lang": str(chosen.get("lang") or "en")[:8],
                    "valid_from": rule.get("ValidFrom", ""), "valid_to": rule.get("ValidTo", ""),
                    "description": str(chosen.get("desc") or "")[:500]})
    return out


def _policy_page(deployment: str, name: str, fields: dict | None = None,
                 error: str | None = None, status: int = 200):
    deployment = _deployment(deployment)
    rows = _policies(deployment)
    row = next((r for r in rows if r.name == name), None)
    if row is None:
        raise AuthError(404, _("Deployment %(dep)s has no policy %(name)s.", dep=deployment,
                               name=name[:64]))
    session_db = db()
    limited = scope()
    districts = select(District).order_by(District.name)
    locations = (select(Location).order_by(Location.name))
    if limited is not None:
        districts = districts.where(District.id == limited)
        locations = locations.where(location_clause())
    holders = (select(Kiosk.id).outerjoin(Location, Kiosk.location_id == Location.id)
               .where(Kiosk.deployment == deployment, Kiosk.policy == name,
                      Kiosk.state != RETIRED).order_by(Kiosk.id).limit(201))
    if limited is not None:
        holders = holders.where(location_clause())
    kiosks = list(session_db.scalars(holders))
    return render_template(
        "policy_view.html", deployment=deployment, policy=row, rules=_rules(row.document),
        document=json.dumps(row.document, indent=2, ensure_ascii=False),
        kiosks=kiosks[:200], more_kiosks=len(kiosks) > 200,
        districts=list(session_db.scalars(districts)),
        locations=list(session_db.scalars(locations)),
        may_change=may_change(current_user(db())), fields=fields or {"target": "kiosks"},
        error=error), status


@bp.get("/policies")
@page()
def policies_page():
    return _list_page()


@bp.get("/policies/<deployment>/<name>")
@page()
def policy_page(deployment, name):
    return _policy_page(deployment, name)


# --- import ------------------------------------------------------------------------------
def _import_fields() -> dict:
    form = request.form
    return {"deployment": _deployment(form.get("deployment")),
            "name": form.get("name", "").strip()[:80],
            "title": form.get("title", "").strip()[:200],
            "reason": form.get("reason", "").strip()[:1000]}


@bp.post("/policies/import/preview")
@page(*EDITORS)
def policy_import_preview():
    fields = _import_fields()
    try:
        if not fields["reason"]:
            raise ListError(_("Give a reason: it goes into the audit log with the change."))
        uploads = [f for f in request.files.getlist("rules") if f.filename]
        if not uploads:
            raise ListError(_("Choose the rule files (JSON, one rule or a list of rules each)."))
        if len(uploads) > MAX_FILES:
            raise ListError(_("At most %(n)d rule files at once.", n=MAX_FILES))
        files = [(f.filename.rsplit("/", 1)[-1][:120], f.read(policies.MAX_RULE_FILE + 1))
                 for f in uploads]
        rules = policies.parse_rule_files(files)
        title = fields["title"] or _("rules imported from %(n)d files", n=len(files))
        document = policies.validate(fields["name"], policies.rule_set(
            fields["name"], rules, title=title))
    except ListError as exc:
        return _list_page(fields["deployment"], fields, exc.message,
                          422 if exc.status in (400, 422) else exc.status)
    existing = next((r for r in _policies(fields["deployment"]) if r.name == fields["name"]),
                    None)
    outcome = "created" if existing is None else (
        "unchanged" if existing.document == document else "updated")
    fields["document"] = json.dumps(document, sort_keys=True, separators=(",", ":"),
                                    ensure_ascii=False)
    remember(_IMPORTED, fields)
    return render_template("policy_import_preview.html", fields=fields, rules=_rules(document),
                           files=[name for name, _data in files], outcome=outcome)


@bp.post("/policies/import/apply")
@page(*EDITORS)
def policy_import_apply():
    fields = _import_fields()
    fields["document"] = request.form.get("document", "")
    confirmed(_IMPORTED, fields,
              _("This change was not previewed as it stands, or it has been "
                "applied already. Start again from the policies, check the "
                "preview, then confirm."))
    try:
        row, version, outcome = policies.put(
            db(), current_fleet().config, fields["deployment"], fields["name"],
            json.loads(fields["document"]), actor=g.actor, reason=fields["reason"])
    except ListError as exc:
        return _list_page(fields["deployment"], fields, exc.message,
                          422 if exc.status in (400, 422) else exc.status)
    published = "nothing changed" if outcome == "unchanged" else hand_off(
        current_fleet().publisher, fields["deployment"], {"policy"})
    return render_template("policy_done.html", what="import", fields=fields, outcome=outcome,
                           version=version, published=published, kiosks=[],
                           back=url_for("web.policy_page", deployment=fields["deployment"],
                                        name=fields["name"]))


# --- assignment --------------------------------------------------------------------------
def _assign_fields() -> dict:
    form = request.form
    target = form.get("target", "")
    return {"deployment": _deployment(form.get("deployment")),
            "name": form.get("name", "").strip()[:80],
            "target": target if target in TARGETS else "",
            "kiosks": " ".join(form.get("kiosks", "").replace(",", " ").split())[:200_000],
            "location": form.get("location", "").strip()[:64],
            "district": form.get("district", "").strip()[:64],
            "reason": form.get("reason", "").strip()[:1000]}


def _targets(fields: dict) -> list[Kiosk]:
    if not fields["reason"]:
        raise ListError(_("Give a reason: it goes into the audit log with the change."))
    session_db = db()
    if fields["target"] == "kiosks":
        ids = fields["kiosks"].split()
        bad = [i for i in ids if not KIOSK_ID.match(i)]
        if not ids or bad:
            raise ListError(_("Name the kiosks by their ids, separated by spaces or commas."))
        return policies.targets(session_db, fields["deployment"], kiosks=ids)
    unchosen = {"location": _("Choose a location."), "district": _("Choose a district.")}
    what = fields["target"]
    if what not in unchosen:
        raise ListError(_("Choose whom to assign the policy to: kiosks, a location or a "
                          "district."))
    code = fields[what]
    found = policies.place_targets(session_db, fields["deployment"], what, code) \
        if CODE.match(code) else None
    if found is None:
        raise ListError(unchosen[what])
    if not found:
        raise ListError(_("No kiosk of this deployment is there (retired kiosks are left "
                          "out)."))
    return found


@bp.post("/policies/assign/preview")
@page(*EDITORS)
def policy_assign_preview():
    fields = _assign_fields()
    try:
        names = [r.name for r in _policies(fields["deployment"])]
        if fields["name"] not in names:
            raise ListError(_("Deployment %(dep)s has no policy %(name)s.",
                              dep=fields["deployment"], name=fields["name"]))
        found = _targets(fields)
    except (ListError, ApiError) as exc:
        if fields["name"] not in names:
            raise AuthError(404, exc.message) from None
        return _policy_page(fields["deployment"], fields["name"], fields, exc.message,
                            422 if exc.status in (400, 422) else exc.status)
    remember(_ASSIGNED, fields)
    return render_template("policy_assign_preview.html", fields=fields,
                           kiosks=[(k.id, k.policy) for k in found],
                           changing=sum(1 for k in found if k.policy != fields["name"]))


@bp.post("/policies/assign/apply")
@page(*EDITORS)
def policy_assign_apply():
    fields = _assign_fields()
    confirmed(_ASSIGNED, fields,
              _("This change was not previewed as it stands, or it has been "
                "applied already. Start again from the policy, check the "
                "preview, then confirm."))
    try:
        found = _targets(fields)
        version, changed = policies.assign(db(), current_fleet().config, fields["name"],
                                           [k.id for k in found], actor=g.actor,
                                           reason=fields["reason"])
    except ListError as exc:
        return _policy_page(fields["deployment"], fields["name"], fields, exc.message,
                            422 if exc.status in (400, 422) else exc.status)
    published = hand_off(current_fleet().publisher, fields["deployment"], {"policy"}) \
        if changed else "nothing changed"
    return render_template("policy_done.html", what="assign", fields=fields,
                           outcome="updated" if changed else "unchanged", version=version,
                           published=published, kiosks=changed,
                           back=url_for("web.policy_page", deployment=fields["deployment"],
                                        name=fields["name"]))
