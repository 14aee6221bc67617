"""The status list on the dashboard (docs/dashboard.md#status-lists): the entries, and
revoke / suspend / reinstate with a confirmation step.

    GET  /lists/status[?deployment=&kind=&after=<key>]   everyone logged in (as the API)
    POST /lists/status/preview   what would change: nothing is changed yet
    POST /lists/status/apply     the change shown, after an explicit confirm

Admins, operators and health officials change (as the API). The preview runs the very
change in a transaction that is rolled back (status_lists.preview), so what is shown is
what the confirm does. The confirm carries the same fields back; the session remembers
a digest of the previewed fields and the apply refuses anything else (a changed field, a
second submit, a form that skipped the preview). Both posts carry the CSRF token.
"""

from __future__ import annotations

import re
import time
from datetime import datetime
from zoneinfo import ZoneInfo

from flask import g, render_template, request, url_for
from flask_babel import gettext as _

from .. import bundles, status_lists
from ..app import current_fleet, db
from ..auth import AuthError, current_user
from ..bundles import ListError
from ..models import ADMIN, HEALTH_OFFICIAL, OPERATOR, REVOKED, SUSPENDED
from ..publisher import hand_off
from . import bp, page
from .confirmation import confirmed, remember

EDITORS = (OPERATOR, HEALTH_OFFICIAL)  # admin always may
ACTIONS = ("revoke", "suspend", "reinstate")
PAGE_SIZE = 50
# The deployments (Ho Chi Minh City, Hanoi) are all on Indochina Time, UTC+7 with no
# daylight saving: the pages show and read times there and say so next to each field.
ZONE = ZoneInfo("Asia/Ho_Chi_Minh")
_KEY = re.compile(r"^[0-9a-fA-F]{32}$")
_PREVIEWED = "status_preview"


@bp.app_template_filter("gg_time")
def gg_time(value) -> str:
    """Epoch seconds or an ISO text -> '2021-10-05 15:00:00' in Vietnam time."""
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    else:
        moment = datetime.fromtimestamp(float(value), ZONE)
    return moment.astimezone(ZONE).strftime("%Y-%m-%d %H:%M:%S")


def may_change(user) -> bool:
    return user is not None and user.role in EDITORS + (ADMIN,)


def local_time(text: str, what: str) -> float:
    """A time from a form: 2021-10-20T00:00 (a datetime-local field) is Vietnam time; a
    text with its own zone keeps it."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ListError(_("%(what)s is not a date and time: %(text)s (e.g. 2021-10-20T00:00)",
                          what=what, text=text[:40])) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZONE)
    return moment.timestamp()


def _deployment(value: str | None) -> str:
    deployments = current_fleet().config.fleet.deployments
    if not value:
        return deployments[0]
    if value not in deployments:
        raise AuthError(404, _("No deployment %(name)s; the fleet serves: %(all)s",
                               name=value[:64], all=", ".join(deployments)))
    return value


def _form() -> dict:
    """The change's fields, as previewed and as confirmed (the digest covers them all)."""
    form = request.form
    return {"deployment": _deployment(form.get("deployment")),
            "action": form.get("action", ""),
            "certificates": form.get("certificates", "").replace("\r\n", "\n").strip("\n"),
            "until": form.get("until", "").strip(),
            "reason": form.get("reason", "").strip()}


def _items(fields: dict) -> list[dict]:
    """One certificate a line: its QR text (HC1:...), its status key (32 hex digits) or its
    identifier (ci). QR texts keep their inner spaces (base45 has them)."""
    items = []
    for line in fields["certificates"].split("\n"):
        text = line.strip("\r\t")
        if not text.strip():
            continue
        if text.lstrip().upper().startswith("HC1:"):
            items.append({"qr": text.lstrip()})
        elif _KEY.match(text.strip()):
            items.append({"key": text.strip()})
        else:
            items.append({"ci": text.strip()})
    return items


def _check(fields: dict) -> tuple[list[dict], dict]:
    if fields["action"] not in ACTIONS:
        raise ListError(_("Choose what to do: revoke, suspend or reinstate."))
    items = _items(fields)
    if not items:
        raise ListError(_("Name at least one certificate: its identifier (URN:UVCI:...), its "
                          "QR text (HC1:...) or its status key, one a line."))
    if not fields["reason"]:
        raise ListError(_("Give a reason: it goes into the audit log with the change."))
    kwargs = {"reason": fields["reason"]}
    if fields["action"] == "suspend":
        if not fields["until"]:
            raise ListError(_("A suspension needs its end: fill in 'Suspended until'."))
        kwargs["until"] = local_time(fields["until"], _("Suspended until"))
    return items, kwargs


def _lines(message: str) -> str:
    """The service numbers entries from 1, as the page numbers its lines."""
    return re.sub(r"\bentry (\d+)", lambda m: f"line {m.group(1)}", message)


def _list_page(fields: dict | None = None, error: str | None = None, status: int = 200):
    user = current_user(db())
    deployment = _deployment(request.values.get("deployment") or (fields or {}).get("deployment"))
    kind = request.args.get("kind")
    kind = kind if kind in (REVOKED, SUSPENDED) else None
    after_text = request.args.get("after", "")
    after = bytes.fromhex(after_text) if _KEY.match(after_text) else None
    session_db = db()
    rows = status_lists.entries(session_db, deployment, kind=kind, after=after,
                                limit=PAGE_SIZE + 1)
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    at = time.time()
    return render_template(
        "status_list.html", deployment=deployment,
        deployments=current_fleet().config.fleet.deployments, kind=kind,
        entries=[status_lists.entry_dict(r, at) for r in rows],
        next_after=bytes(rows[-1].key).hex() if more else None, paged=after is not None,
        version=bundles.current_version(session_db, deployment, "status"),
        may_change=may_change(user), fields=fields or {"action": "revoke"}, error=error), status


@bp.get("/lists/status")
@page()
def status_list():
    return _list_page()


@bp.post("/lists/status/preview")
@page(*EDITORS)
def status_preview():
    fields = _form()
    user = current_user(db())
    try:
        items, kwargs = _check(fields)
        result = status_lists.preview(db(), current_fleet().config, fields["deployment"],
                                      fields["action"], items, actor=g.actor,
                                      allow_revoked=user.role == ADMIN, **kwargs)
    except ListError as exc:
        return _list_page(fields, _lines(exc.message), 422 if exc.status == 400 else exc.status)
    now_listed = {}
    for entry in result.entries:
        row = status_lists.entry(db(), fields["deployment"], bytes.fromhex(entry["key"]))
        now_listed[entry["key"]] = status_lists.entry_dict(row) if row is not None else None
    remember(_PREVIEWED, fields)
    return render_template("status_preview.html", fields=fields, result=result,
                           sources=[next(iter(i)) for i in items], now_listed=now_listed,
                           until=kwargs.get("until"))


@bp.post("/lists/status/apply")
@page(*EDITORS)
def status_apply():
    fields = _form()
    confirmed(_PREVIEWED, fields,
              _("This change was not previewed as it stands, or it has been "
                "applied already. Start again from the status list, check the "
                "preview, then confirm."))
    user = current_user(db())
    try:
        items, kwargs = _check(fields)
        if fields["action"] == "reinstate":
            kwargs["allow_revoked"] = user.role == ADMIN
        result = getattr(status_lists, fields["action"])(
            db(), current_fleet().config, fields["deployment"], items, actor=g.actor, **kwargs)
    except ListError as exc:
        return _list_page(fields, _lines(exc.message), 422 if exc.status == 400 else exc.status)
    published = (hand_off(current_fleet().publisher, fields["deployment"], {"status"})
                 if result.changed else "nothing changed")
    return render_template("status_done.html", fields=fields, result=result,
                           published=published,
                           back=url_for("web.status_list", deployment=fields["deployment"]))
