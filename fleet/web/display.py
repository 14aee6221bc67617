"""What the operators' pages (home, kiosks, stats) share: Vietnam time, durations in
words, labels for states and reason codes, API errors shown as pages, the inline SVG
chart. The data itself comes from the JSON API's query functions (fleet/api/), so a page
and the API never disagree about the fleet or about who may see what."""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from flask import render_template
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from markupsafe import Markup, escape

from ..api import ApiError
from . import bp

# The fleet serves Ho Chi Minh City and Hanoi: one zone (ICT, UTC+7, no summer time).
# The API speaks UTC; people on the pages read the time on their wall.
LOCAL_TZ = ZoneInfo("Asia/Ho_Chi_Minh")

STATE_LABELS = {"online": _l("online"), "degraded": _l("degraded"), "offline": _l("offline"),
                "never_seen": _l("never seen"), "retired": _l("retired"),
                "unreachable": _l("unreachable")}
DECISION_LABELS = {"green": _l("green"), "red": _l("red"), "unknown": _l("unreadable")}
# docs/verification.md: reason and sub-reason codes, in words an operator understands
REASON_LABELS = {
    "ok": _l("valid"), "unreadable": _l("QR code unreadable"),
    "unknown_issuer": _l("unknown issuer"), "bad_signature": _l("bad signature"),
    "wrong_key_usage": _l("issuer may not sign this type"),
    "not_yet_valid": _l("not valid yet"), "expired": _l("expired"),
    "invalid_content": _l("invalid content"), "revoked": _l("revoked"),
    "suspended": _l("suspended"), "policy_failed": _l("does not meet the policy"),
    "clock_unknown": _l("kiosk clock unknown"), "out_of_service": _l("kiosk out of service"),
    "place_closed": _l("place closed after a case"),
    # a workers-only kiosk (docs/rosters.md)
    "not_on_roster": _l("not on the workers' roster"),
    "roster_missing": _l("kiosk holds no workers' roster"),
    "type_not_accepted": _l("certificate type not accepted"),
    "incomplete_vaccination": _l("vaccination incomplete"),
    "vaccination_too_recent": _l("vaccinated too recently"),
    "recovery_too_recent": _l("recovered too recently"),
    "recovery_expired": _l("recovery too long ago"), "test_positive": _l("positive test"),
    "test_result_unknown": _l("test result unknown"), "test_in_future": _l("test in the future"),
    "test_type_not_accepted": _l("test type not accepted"), "test_too_old": _l("test too old"),
}


# --- values from the database and the kiosks, in the reader's language ----------------
# The fleet stores presence details and outage causes as the English text fleet/presence.py
# writes (stable: the API, alerts and old rows keep them); the pages translate them here,
# pattern by pattern. What no pattern knows (a kiosk's own words, e.g. an OS error) is
# shown as it came, marked lang="en" and quoted, after a translated label of its kind.
FAULT_LABELS = {"config": _l("configuration"), "storage": _l("storage"),
                "source": _l("camera or scanner"), "lists": _l("lists"), "clock": _l("clock")}
CLOCK_LABELS = {"synced": _l("synchronised"), "floor": _l("time floor only"),
                "unknown": _l("unknown")}
LISTS_LABELS = {"fresh": _l("fresh"), "stale": _l("stale"), "missing": _l("missing")}
CAUSE_LABELS = {"connection lost": _l("connection lost"), "stopped": _l("stopped"),
                "silent": _l("silent"), "retired": _l("retired")}
# fixed texts: fleet/presence.py's, and the kiosk's own fault details (device/kiosk.py,
# device/state.py, device/sources.py) and SQLite's commonest storage errors
DETAIL_LABELS = {
    "connection lost": _l("connection lost"), "stopped": _l("stopped"),
    "retired": _l("retired"), "lists stale": _l("lists stale"),
    "lists missing": _l("lists missing"), "clock unknown": _l("clock unknown"),
    "not enrolled: first heard by the presence tracker":
        _l("not enrolled: first heard by the presence tracker"),
    "no fresh lists for longer than the offline budget":
        _l("no fresh lists for longer than the offline budget"),
    "lists older than the offline budget": _l("lists older than the offline budget"),
    "no trust list, policy or status list yet": _l("no trust list, policy or status list yet"),
    "the pinned fleet key cannot be used: no list can be trusted":
        _l("the pinned fleet key cannot be used: no list can be trusted"),
    "no NTP and no time floor yet": _l("no NTP and no time floor yet"),
    "clock outside the time floor and no NTP": _l("clock outside the time floor and no NTP"),
    "database or disk is full": _l("database or disk is full"),
    "disk I/O error": _l("disk I/O error"), "attempt to write a readonly database":
        _l("attempt to write a readonly database"),
    "No space left on device": _l("No space left on device"),
    "Read-only file system": _l("Read-only file system"),
    "camera lost: it stopped delivering": _l("camera lost: it stopped delivering"),
    "scanner lost: it stopped delivering": _l("scanner lost: it stopped delivering"),
}
_SILENT = re.compile(r"^silent: (?:nothing heard|no heartbeat) for (?P<s>[0-9.]+) s(?P<re> since the fleet "
                     r"\(re\)connected)?$")
_OUTBOX = re.compile(r"^outbox over (?P<n>[0-9]+)$")
_BRIDGE = re.compile(r"^through bridge (?P<name>[a-z0-9-]{1,32})$")
_POLICY = re.compile(r"^policy (?P<assigned>\S+) assigned, (?P<applied>\S+) applied$")
_DEVICE = re.compile(r"^(?P<what>camera|scanner) (?P<how>not found|lost): (?P<why>.+)$")
_FAULT = re.compile(r"^(?P<kind>config|storage|source|lists|clock): (?P<detail>.*)$", re.S)


def _theirs(text: str) -> Markup:
    """Words no pattern knows (a kiosk's, an OS's): as they came, marked as English."""
    return Markup('<q lang="en" class="as-sent">%s</q>') % text


# device/kiosk.py names the writer of the data directory that fails: "<error> (clock)"
_WRITER = re.compile(r"^(?P<error>.+) \((?P<part>clock|session|bundles)\)$")
WRITER_LABELS = {"clock": _l("clock"), "session": _l("session"), "bundles": _l("bundles")}


def _phrase(text: str) -> Markup:
    """One fixed phrase (a kiosk's fault detail) in the reader's language, or as sent."""
    text = text.strip()
    known = DETAIL_LABELS.get(text)
    if known is not None:
        return escape(str(known))
    match = _WRITER.match(text)
    if match:
        return _phrase(match["error"]) + escape(f" ({WRITER_LABELS[match['part']]})")
    match = _DEVICE.match(text)
    if match:
        what = _("camera") if match["what"] == "camera" else _("scanner")
        how = _("not found") if match["how"] == "not found" else _("lost")
        return escape(f"{what} {how}: ") + _phrase(match["why"])
    return _theirs(text)


def _part(text: str) -> Markup:
    known = DETAIL_LABELS.get(text)
    if known is not None:
        return escape(str(known))
    match = _SILENT.match(text)
    if match:
        seconds = match["s"]
        if match["re"]:
            return escape(_("silent: nothing heard for %(s)s s since the fleet (re)connected",
                            s=seconds))
        return escape(_("silent: nothing heard for %(s)s s", s=seconds))
    match = _OUTBOX.match(text)
    if match:
        return escape(_("outbox over %(n)s", n=match["n"]))
    match = _BRIDGE.match(text)
    if match:
        return escape(_("through bridge %(name)s (down)", name=match["name"]))
    match = _POLICY.match(text)
    if match:
        return escape(_("policy %(assigned)s assigned, %(applied)s applied",
                        assigned=match["assigned"], applied=match["applied"]))
    match = _FAULT.match(text)
    if match:
        return escape(f"{FAULT_LABELS[match['kind']]}: ") + _phrase(match["detail"])
    return _theirs(text)


@bp.app_template_filter("detail_label")
def detail_label(value) -> Markup:
    """A kiosk's presence detail (Kiosk.detail, PresenceEvent.detail: "; "-joined reasons
    of fleet/presence.py) in the reader's language; "" for none."""
    if not value:
        return Markup("")
    return Markup("; ").join(_part(part) for part in str(value).split("; ") if part)


@bp.app_template_filter("cause_label")
def cause_label(value) -> Markup:
    """An outage's cause (Outage.cause: the detail's first word(s), fleet/presence.py)."""
    if not value:
        return Markup("—")
    known = CAUSE_LABELS.get(str(value))
    return escape(str(known)) if known is not None else _theirs(str(value))


@bp.app_template_filter("fault_label")
def fault_label(kind) -> str:
    return str(FAULT_LABELS.get(kind, kind or "—"))


@bp.app_template_filter("fault_detail")
def fault_detail(value) -> Markup:
    return _phrase(str(value)) if value else Markup("")


BUNDLE_LABELS = {"trust": _l("trust list"), "policy": _l("policies"),
                 "status": _l("status list")}


@bp.app_template_filter("bundle_label")
def bundle_label(kind) -> str:
    return str(BUNDLE_LABELS.get(kind, kind))


@bp.app_template_filter("clock_label")
def clock_label(value) -> str:
    return "—" if not value else str(CLOCK_LABELS.get(value, value))


@bp.app_template_filter("lists_label")
def lists_label(value) -> str:
    return "—" if not value else str(LISTS_LABELS.get(value, value))


def _epoch(value) -> float | None:
    """Epoch seconds from the API's ISO strings (or numbers); None, and anything that is
    not a time, is None."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except (ValueError, OverflowError):
        return None


@bp.app_template_filter("localtime")
def localtime(value, fmt: str = "%d/%m %H:%M") -> str:
    """Vietnam time; "—" for no time, and for a stored value that is none (a kiosk's ts
    of 1e300 kept before the ingest checked them must not make a page fail)."""
    ts = _epoch(value)
    if ts is None:
        return "—"
    try:
        return datetime.fromtimestamp(ts, timezone.utc).astimezone(LOCAL_TZ).strftime(fmt)
    except (OverflowError, ValueError, OSError):
        return "—"


def utc_offset(at: float) -> int:
    """Seconds Vietnam time is ahead of UTC at `at` (the home page's poller shows its
    "updated at" in Vietnam time whatever the browser's own zone)."""
    moment = datetime.fromtimestamp(at, timezone.utc).astimezone(LOCAL_TZ)
    return int(moment.utcoffset().total_seconds())


@bp.app_template_filter("duration")
def duration(seconds) -> str:
    """Whole minutes at most: the home page's live fragment then changes (and its ETag
    with it) once a minute, not on every poll."""
    try:
        seconds = float(seconds)
    except (TypeError, ValueError, OverflowError):
        return "—"
    if not math.isfinite(seconds):
        return "—"
    minutes = int(max(0.0, seconds) // 60)
    if minutes < 1:
        return _("under a minute")
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    if days:
        return _("%(d)d d %(h)d h", d=days, h=hours)
    if hours:
        return _("%(h)d h %(m)d min", h=hours, m=minutes)
    return _("%(m)d min", m=minutes)


BRIDGE_LABELS = {"connected": _l("connected"), "down": _l("down"),
                 "unknown": _l("not heard yet")}


@bp.app_template_filter("bridge_label")
def bridge_label(state) -> str:
    return str(BRIDGE_LABELS.get(state, state))


@bp.app_template_filter("state_label")
def state_label(state) -> str:
    return str(STATE_LABELS.get(state, state))


@bp.app_template_filter("reason_label")
def reason_label(code) -> str:
    if not code:
        return ""
    return str(REASON_LABELS.get(code, code))


@bp.app_template_filter("decision_label")
def decision_label(code) -> str:
    return str(DECISION_LABELS.get(code, code))


@bp.app_template_filter("percent")
def percent(part, whole) -> str:
    return "—" if not whole else f"{100.0 * part / whole:.0f} %"


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError):
    """The API's query functions raise ApiError: on a page it becomes the error page with
    the same status (404 for another district's kiosk, as in the API, 403 for a filter on
    another district)."""
    message = {404: _("Not found: no such kiosk, location or district."),
               403: _("You may only see your own district.")}.get(exc.status, exc.message)
    return render_template("error.html", status=exc.status, message=message), exc.status


def bar_chart(hours: list[dict], *, label_every: int, label_format: str) -> Markup:
    """Scans per hour as stacked bars (green, red, other), an inline SVG made here: no
    chart library, no CDN, and it prints. Each bar has a <title> (hover, screen readers)."""
    width, height, left, bottom, top = 760, 220, 36, 22, 8
    n = max(1, len(hours))
    peak = max([h["total"] for h in hours] + [1])
    step = (width - left) / n
    bar = max(1.0, step * 0.8)
    plot = height - bottom - top
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{escape(_("Scans per hour"))}" xmlns="http://www.w3.org/2000/svg">',
             f'<line x1="{left}" y1="{top}" x2="{width}" y2="{top}" class="grid"/>',
             f'<text x="{left - 4}" y="{top + 4}" class="axis" text-anchor="end">{peak}</text>',
             f'<line x1="{left}" y1="{top + plot}" x2="{width}" y2="{top + plot}" class="base"/>',
             f'<text x="{left - 4}" y="{top + plot}" class="axis" text-anchor="end">0</text>']
    for i, h in enumerate(hours):
        x = left + i * step + (step - bar) / 2
        y = top + plot
        when = localtime(h["hour"], "%d/%m %H:00")
        tip = escape(_("%(when)s: %(total)d scans, %(green)d green, %(red)d red",
                       when=when, total=h["total"], green=h["green"], red=h["red"]))
        parts.append(f'<g class="hour"><title>{tip}</title>')
        for key in ("green", "red", "other"):
            if h[key]:
                size = plot * h[key] / peak
                y -= size
                parts.append(f'<rect class="{key}" x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" '
                             f'height="{size:.1f}"/>')
        parts.append("</g>")
        if i % label_every == 0:
            parts.append(f'<text x="{x + bar / 2:.1f}" y="{height - 6}" class="axis" '
                         f'text-anchor="middle">{escape(localtime(h["hour"], label_format))}'
                         "</text>")
    parts.append("</svg>")
    return Markup("".join(parts))
