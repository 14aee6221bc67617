"""Alerts (admins only): the rules, and what was sent or failed (docs/dashboard.md#alerts).

    GET  /alerts                 rules, a form (new, or ?edit=ID), recent deliveries
    POST /alerts                 create (rule_id empty) or change a rule
    POST /alerts/<id>/enabled    enable or disable a rule (enabled=1|0)

The JSON API for the same rules lives here too (/api/v1/alerts/..., admins, bearer
token or the login cookie with X-CSRF-Token): its own small blueprint, registered
with the dashboard's, with JSON errors like the rest of the API (docs/api.md).
Every change goes through fleet.alerts.apply_rule(): one set of checks, one audit.
"""

from __future__ import annotations

import time

from flask import Blueprint, g, jsonify, redirect, render_template, request, url_for
from flask_babel import gettext as _
from markupsafe import Markup
from sqlalchemy import or_, select

from ..alerts import FAILED, PENDING, RuleError, apply_rule, rule_dict
from ..app import current_fleet, db
from ..auth import AuthError, require
from ..models import ADMIN, ALERT_KINDS, AlertDelivery, AlertEpisode, AlertRule, District
from . import bp, page

RECENT = 50  # deliveries shown on the page


def _form_values(form) -> dict:
    return {"name": form.get("name", ""), "kind": form.get("kind", ""),
            "district": form.get("district", ""), "threshold": form.get("threshold") or None,
            "webhook_url": form.get("webhook_url", ""), "emails": form.get("emails", ""),
            "enabled": form.get("enabled") == "1"}


def _deliveries(session, where=None, limit=RECENT):
    stmt = (select(AlertDelivery, AlertEpisode, AlertRule)
            .join(AlertEpisode, AlertDelivery.episode_id == AlertEpisode.id)
            .join(AlertRule, AlertEpisode.rule_id == AlertRule.id)
            .order_by(AlertDelivery.id.desc()).limit(limit))
    if where is not None:
        stmt = stmt.where(where)
    return session.execute(stmt).all()


def dispatcher_email(session) -> dict:
    """What the database shows of the *dispatcher's* e-mail setting. The dispatcher is
    its own process with its own configuration file; this web server's [alerts] may
    differ, so the page says what the dispatcher did: its newest e-mail message, or its
    newest alert for a rule naming addresses that went out with no e-mail (its
    smtp_host is empty). {"state": "on"|"off"|"unknown", "at", "status", "rule"}."""
    mail = session.execute(select(AlertDelivery.created_at, AlertDelivery.status)
                           .where(AlertDelivery.channel == "email")
                           .order_by(AlertDelivery.id.desc()).limit(1)).first()
    has_mail = (select(AlertDelivery.id).where(AlertDelivery.episode_id == AlertEpisode.id,
                                                AlertDelivery.channel == "email").exists())
    # an alert decided after the rule's last edit (so the rule named the addresses then)
    skipped = session.execute(
        select(AlertEpisode.alerted_at, AlertRule.name)
        .join(AlertRule, AlertEpisode.rule_id == AlertRule.id)
        .where(AlertRule.emails != "", AlertEpisode.alerted_at >= AlertRule.updated_at,
               ~has_mail)
        .order_by(AlertEpisode.alerted_at.desc()).limit(1)).first()
    if skipped is not None and (mail is None or skipped.alerted_at > mail.created_at):
        return {"state": "off", "at": skipped.alerted_at, "rule": skipped.name}
    if mail is not None:
        return {"state": "on", "at": mail.created_at, "status": mail.status}
    return {"state": "unknown"}


def _page(session, form=None, error=None, editing=None, status=200):
    rules = [rule_dict(session, r) for r in session.scalars(select(AlertRule)
                                                            .order_by(AlertRule.id))]
    districts = session.scalars(select(District).order_by(District.code)).all()
    problems = _deliveries(session, or_(AlertDelivery.status == FAILED,
                                        (AlertDelivery.status == PENDING)
                                        & (AlertDelivery.attempts > 0)))
    config = current_fleet().config.alerts
    return render_template("alerts.html", rules=rules, districts=districts, kinds=ALERT_KINDS,
                           form=form, error=error, editing=editing,
                           recent=_deliveries(session), problems=problems,
                           email_here=config.smtp_host,
                           code=lambda text: Markup("<code>%s</code>") % text,
                           email=dispatcher_email(session),
                           grace=config.grace_seconds), status


@bp.route("/alerts", methods=["GET", "POST"])
@page(ADMIN)
def alerts():
    session = db()
    if request.method == "GET":
        editing = request.args.get("edit", type=int)
        form = None
        if editing is not None:
            rule = session.get(AlertRule, editing)
            if rule is None:
                raise AuthError(404, _("There is no such alert rule."))
            form = rule_dict(session, rule)
            form["emails"] = ", ".join(form["emails"])
        return _page(session, form=form, editing=editing)
    values = _form_values(request.form)
    rule_id = request.form.get("rule_id", type=int)
    rule = session.get(AlertRule, rule_id) if rule_id else None
    if rule_id and rule is None:
        raise AuthError(404, _("There is no such alert rule."))
    try:
        apply_rule(session, rule, values, actor=g.actor, now=time.time())
    except RuleError as exc:
        session.rollback()
        return _page(session, form=values, error=str(exc), editing=rule_id, status=422)
    session.commit()
    return redirect(url_for("web.alerts"))


@bp.post("/alerts/<int:rule_id>/enabled")
@page(ADMIN)
def alert_enabled(rule_id):
    session = db()
    rule = session.get(AlertRule, rule_id)
    if rule is None:
        raise AuthError(404, _("There is no such alert rule."))
    try:
        apply_rule(session, rule, {"enabled": request.form.get("enabled") == "1"},
                   actor=g.actor, now=time.time())
    except RuleError as exc:  # a rule stored before a check existed
        session.rollback()
        return _page(session, error=str(exc), status=422)
    session.commit()
    return redirect(url_for("web.alerts"))


# --- the JSON API ---------------------------------------------------------------------
api = Blueprint("alerts_api", __name__, url_prefix="/api/v1/alerts")


@bp.record_once
def _register_api(state):
    state.app.register_blueprint(api)


@api.errorhandler(AuthError)
def _api_auth_error(exc: AuthError):
    code = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found"}.get(exc.status, "error")
    return jsonify(error=code, message=exc.message), exc.status


def _iso_rule(rule: dict) -> dict:
    from ..api.common import iso
    return {**rule, "created_at": iso(rule["created_at"]), "updated_at": iso(rule["updated_at"])}


def _json_body() -> dict:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise AuthError(400, "send a JSON object (Content-Type: application/json)")
    return body


def _change(rule: AlertRule | None):
    session = db()
    created = rule is None
    try:
        rule = apply_rule(session, rule, _json_body(), actor=g.actor, now=time.time())
    except RuleError as exc:
        session.rollback()
        return jsonify(error="invalid", message=str(exc)), 422
    session.commit()
    return jsonify(_iso_rule(rule_dict(session, rule))), 201 if created else 200


@api.get("/rules")
@require(ADMIN)
def api_rules():
    session = db()
    return jsonify(rules=[_iso_rule(rule_dict(session, r))
                          for r in session.scalars(select(AlertRule).order_by(AlertRule.id))])


@api.post("/rules")
@require(ADMIN)
def api_create_rule():
    return _change(None)


def _rule_or_404(rule_id: int) -> AlertRule:
    rule = db().get(AlertRule, rule_id)
    if rule is None:
        raise AuthError(404, f"no alert rule {rule_id}")
    return rule


@api.get("/rules/<int:rule_id>")
@require(ADMIN)
def api_rule(rule_id):
    return jsonify(_iso_rule(rule_dict(db(), _rule_or_404(rule_id))))


@api.patch("/rules/<int:rule_id>")
@require(ADMIN)
def api_change_rule(rule_id):
    return _change(_rule_or_404(rule_id))


@api.get("/deliveries")
@require(ADMIN)
def api_deliveries():
    """The latest deliveries (?status=pending|sent|failed|cancelled, ?limit= up to 500)."""
    from ..api.common import iso
    status = request.args.get("status")
    limit = min(max(request.args.get("limit", 100, type=int), 1), 500)
    rows = _deliveries(db(), AlertDelivery.status == status if status else None, limit)
    return jsonify(deliveries=[{
        "id": d.id, "rule": r.id, "episode": e.id, "event": d.event, "channel": d.channel,
        "target": d.target, "status": d.status, "attempts": d.attempts,
        "created_at": iso(d.created_at), "sent_at": iso(d.sent_at),
        "next_at": iso(d.next_at), "last_error": d.last_error, "text": d.payload.get("text"),
    } for d, e, r in rows])


__all__ = ["alerts", "alert_enabled", "api"]
