"""The trust list on the dashboard (docs/dashboard.md#trust-list): the issuers' document
signer certificates with their kid, subject, validity and key usages; adding one (PEM
or DER, uploaded or pasted) and removing one, each with a confirmation step.

    GET  /lists/trust[?deployment=]     everyone logged in (as GET /api/v1/trust)
    POST /lists/trust/preview           what would change: nothing is changed yet
    POST /lists/trust/apply             the change shown, after an explicit confirm

Admins and operators change (as the API), through fleet/trust_list.py: audited, a new
signed trust bundle, handed to the publisher. As on the status list pages, the session
keeps a digest of the previewed fields and the apply refuses anything else.
"""

from __future__ import annotations

import time

from flask import g, render_template, request, url_for
from flask_babel import gettext as _

from greengate.trust import TrustError

from .. import bundles, trust_list
from ..app import current_fleet, db
from ..auth import current_user
from ..bundles import ListError
from ..models import ADMIN, OPERATOR
from ..publisher import hand_off
from . import bp, page
from .confirmation import confirmed, remember
from .lists_views import _deployment

EDITORS = (OPERATOR,)  # admin always may
MAX_UPLOAD = 64 * 1024  # a certificate is one or two KB
_PREVIEWED = "trust_preview"


def may_change(user) -> bool:
    return user is not None and user.role in EDITORS + (ADMIN,)


def _list_page(fields: dict | None = None, error: str | None = None, status: int = 200):
    deployment = _deployment(request.values.get("deployment") or (fields or {}).get("deployment"))
    session_db = db()
    at = time.time()
    rows = trust_list.entries(session_db, deployment)
    entries = [dict(trust_list.describe(bytes(r.certificate), at), id=r.id,
                    added_by=r.added_by, added_at=r.added_at) for r in rows]
    return render_template(
        "trust_list.html", deployment=deployment,
        deployments=current_fleet().config.fleet.deployments, entries=entries,
        version=bundles.current_version(session_db, deployment, "trust"),
        may_change=may_change(current_user(db())), fields=fields or {}, error=error), status


def _certificate_text() -> str:
    """The pasted text, or the uploaded file (PEM or DER) as PEM."""
    upload = request.files.get("file")
    if upload is not None and upload.filename:
        data = upload.read(MAX_UPLOAD + 1)
        if len(data) > MAX_UPLOAD:
            raise ListError(_("The file is larger than %(kb)d KB: not a certificate.",
                              kb=MAX_UPLOAD // 1024))
        try:
            return trust_list.pem(data)
        except TrustError as exc:
            raise ListError(_("The file is not a certificate: %(why)s", why=str(exc))) from None
    text = request.form.get("certificate", "").replace("\r\n", "\n").strip()
    if not text:
        return ""
    try:
        return trust_list.pem(text)
    except TrustError as exc:
        raise ListError(_("The text is not a certificate: %(why)s", why=str(exc))) from None


def _form(read_upload: bool) -> dict:
    form = request.form
    fields = {"deployment": _deployment(form.get("deployment")),
              "action": form.get("action", ""),
              "kid": form.get("kid", "").strip().lower()[:40],
              "reason": form.get("reason", "").strip()[:1000]}
    fields["certificate"] = _certificate_text() if read_upload else \
        form.get("certificate", "").replace("\r\n", "\n")
    return fields


def _check(fields: dict) -> None:
    if fields["action"] not in ("add", "remove"):
        raise ListError(_("Choose what to do: add or remove a certificate."))
    if fields["action"] == "add" and not fields["certificate"]:
        raise ListError(_("Upload the certificate file (PEM or DER) or paste it."))
    if fields["action"] == "remove" and not fields["kid"]:
        raise ListError(_("Name the certificate to remove by its kid."))
    if not fields["reason"]:
        raise ListError(_("Give a reason: it goes into the audit log with the change."))


@bp.get("/lists/trust")
@page()
def trust_page():
    return _list_page()


@bp.post("/lists/trust/preview")
@page(*EDITORS)
def trust_preview():
    fields = {"deployment": _deployment(request.form.get("deployment"))}
    try:
        fields = _form(read_upload=True)
        _check(fields)
        at = time.time()
        if fields["action"] == "add":
            # the very checks trust_list.add makes, without the change
            der, facts = trust_list.check_signer_certificate(fields["certificate"], at)
            fields["kid"] = facts["kid"]
            shown = [trust_list.describe(der, at)]
            held = [e for e in trust_list.entries(db(), fields["deployment"])
                    if e.kid == facts["kid"] and bytes(e.certificate) == der]
            if held:
                raise ListError(_("This certificate (kid %(kid)s) is in the trust list already.",
                                  kid=facts["kid"]))
        else:
            found = [e for e in trust_list.entries(db(), fields["deployment"])
                     if e.kid == fields["kid"]]
            if not found:
                raise ListError(_("No certificate with kid %(kid)s is in the trust list.",
                                  kid=fields["kid"]))
            shown = [trust_list.describe(bytes(e.certificate), at) for e in found]
    except ListError as exc:
        return _list_page(fields, exc.message, 422 if exc.status in (400, 422) else exc.status)
    remember(_PREVIEWED, fields)
    return render_template("trust_preview.html", fields=fields, shown=shown)


@bp.post("/lists/trust/apply")
@page(*EDITORS)
def trust_apply():
    fields = _form(read_upload=False)
    confirmed(_PREVIEWED, fields,
              _("This change was not previewed as it stands, or it has been "
                "applied already. Start again from the trust list, check the "
                "preview, then confirm."))
    config = current_fleet().config
    try:
        _check(fields)
        if fields["action"] == "add":
            entry, version = trust_list.add(db(), config, fields["deployment"],
                                            fields["certificate"], actor=g.actor,
                                            reason=fields["reason"])
            changed = [trust_list.describe(bytes(entry.certificate))]
        else:
            removed, version = trust_list.remove(db(), config, fields["deployment"],
                                                 fields["kid"], actor=g.actor,
                                                 reason=fields["reason"])
            changed = [trust_list.describe(bytes(e.certificate)) for e in removed]
    except ListError as exc:
        return _list_page(fields, exc.message, 422 if exc.status in (400, 422) else exc.status)
    published = hand_off(current_fleet().publisher, fields["deployment"], {"trust"})
    return render_template("trust_done.html", fields=fields, changed=changed, version=version,
                           published=published,
                           back=url_for("web.trust_page", deployment=fields["deployment"]))
