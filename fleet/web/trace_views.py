"""Contact tracing on the dashboard (health officials and admins, as the API): a case's
certificate (its QR text scanned or pasted, its identifier, or its status key) or a
holder pseudonym, and a period -> where and when it was scanned and who else was
scanned there around then; on the page, or as CSV (docs/dashboard.md#tracing).

The form is POSTed (with the CSRF token), never a GET: a certificate identifier or QR
text in a URL would land in browser history and access logs. Each query, shown or
downloaded, is audited by fleet/api/trace.run_trace before any result is sent.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta

from flask import render_template, request
from flask_babel import gettext as _
from sqlalchemy import select

from .. import closures
from ..api.closures import suspend
from ..api.trace import csv_response, run_trace
from ..app import current_fleet, db
from ..bundles import ListError
from ..models import APPROVED, HEALTH_OFFICIAL, Location
from ..organisations import OrganisationError
from . import bp, page
from .lists_views import ZONE, local_time

_KEY = re.compile(r"^[0-9a-fA-F]{32}$")
DEFAULT_DAYS = 14  # the usual look-back of an exposure


def _defaults() -> dict:
    end = datetime.fromtimestamp(time.time(), ZONE).replace(second=0, microsecond=0)
    start = (end - timedelta(days=DEFAULT_DAYS)).replace(hour=0, minute=0)
    return {"certificate": "", "holder": "", "from": start.strftime("%Y-%m-%dT%H:%M"),
            "to": end.strftime("%Y-%m-%dT%H:%M"),
            "minutes": f"{current_fleet().config.web.trace_minutes:g}", "same_holder": ""}


def _params(fields: dict) -> dict:
    """The page's fields as the API's: the certificate field takes a QR text, a status key
    or an identifier; times are Vietnam time unless they carry a zone."""
    params = {"minutes": fields["minutes"], "same_holder": fields["same_holder"]}
    text = fields["certificate"].strip("\r\n\t ")
    if text and fields["holder"]:
        raise ListError(_("Give either a certificate or a holder pseudonym, not both."))
    if text.upper().startswith("HC1:"):
        params["qr"] = text
    elif _KEY.match(text):
        params["key"] = text
    elif text:
        params["ci"] = text
    elif fields["holder"]:
        params["holder"] = fields["holder"]
    else:
        raise ListError(_("Name the case: scan or paste its QR code, or type its certificate "
                          "identifier, or give a holder pseudonym."))
    for name, label in (("from", _("From")), ("to", _("To"))):
        if not fields[name]:
            raise ListError(_("Give the period to trace: fill in %(field)s.", field=label))
        params[name] = str(local_time(fields[name], label))
    return params


@bp.route("/trace", methods=["GET", "POST"])
@page(HEALTH_OFFICIAL)
def trace_page():
    if request.method == "GET":
        return render_template("trace.html", fields=_defaults(), result=None, error=None)
    form = request.form
    fields = {name: form.get(name, "").strip() if name != "certificate" else
              form.get(name, "") for name in ("certificate", "holder", "from", "to",
                                              "minutes", "same_holder")}
    download = form.get("format") == "csv"
    try:
        result = run_trace(_params(fields), "csv" if download else "page")
    except ListError as exc:
        return render_template("trace.html", fields=fields, result=None,
                               error=exc.message), 422 if exc.status == 400 else exc.status
    if download:
        return csv_response(result)
    found = result.as_dict()
    response = render_template("trace.html", fields=fields, result=found, error=None,
                               workplaces=_workplaces(found))
    return response, 200, {"Cache-Control": "no-store"}


def _workplaces(result: dict) -> list[dict]:
    """The organisations whose control points the case's traced visits include: each may
    be suspended from here while approved (docs/organisations.md)."""
    codes = {v["location"]["code"] for v in result["visits"] if v["location"]}
    if not codes:
        return []
    from . import organisation_views  # the organisation pages' status names
    names = getattr(organisation_views, "STATUS_NAMES", {})
    ids = db().scalars(select(Location.id).where(Location.code.in_(codes))).all()
    return [{"code": org.code, "name": org.name, "status": org.status,
             "status_name": str(names.get(org.status, org.status)), "locations": where,
             "can_suspend": org.status == APPROVED}
            for org, where in closures.organisations_at(db(), ids)]


@bp.post("/trace/suspend")
@page(HEALTH_OFFICIAL)
def trace_suspend():
    """Suspend an organisation the traced case visited (the case and the period as the
    trace form named them; fleet/api/closures.suspend checks the visit again)."""
    form = request.form
    fields = {name: form.get(name, "").strip() if name != "certificate" else
              form.get(name, "") for name in ("certificate", "holder", "from", "to",
                                              "minutes", "same_holder")}
    code = form.get("organisation", "").strip()
    try:
        params = {k: v for k, v in _params(fields).items() if k != "minutes"}
        params["case_ref"] = form.get("case_ref", "")
        done = suspend(db(), code, params)
    except (ListError, OrganisationError) as exc:
        return render_template("trace.html", fields=fields, result=None,
                               error=exc.message), 422 if exc.status == 400 else exc.status
    return render_template("trace.html", fields=fields, result=None, error=None,
                           suspended=done), 200, {"Cache-Control": "no-store"}
