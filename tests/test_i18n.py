"""Every text the dashboard marks for translation has its Vietnamese (the default
language): a page half in English is a defect for the officers who use it."""

from __future__ import annotations

from pathlib import Path

from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
from babel.messages.pofile import read_po

ROOT = Path(__file__).resolve().parent.parent
CATALOGUE = ROOT / "fleet" / "translations" / "vi" / "LC_MESSAGES" / "messages.po"
METHODS = [("**/templates/**.html", "jinja2.ext:babel_extract"), ("**.py", "python")]
# babel's own keywords and the lazy ones the pages' tables of labels use (display.py)
KEYWORDS = {**DEFAULT_KEYWORDS, "_l": None, "lazy_gettext": None}


def marked() -> dict[str, str]:
    """msgid -> where it is used first."""
    found = {}
    for filename, lineno, message, _comments, _context in extract_from_dir(
            ROOT / "fleet", METHODS, options_map={"**/templates/**.html": {}},
            keywords=KEYWORDS):
        ids = message if isinstance(message, tuple) else (message,)
        for msgid in ids:
            if msgid:
                found.setdefault(msgid, f"fleet/{filename}:{lineno}")
    return found


def test_every_marked_text_has_its_vietnamese():
    with CATALOGUE.open("rb") as f:
        catalogue = read_po(f, locale="vi")
    translated = {m.id if isinstance(m.id, str) else m.id[0]: m.string for m in catalogue
                  if m.id}
    used = marked()
    assert len(used) > 100  # the extraction itself works
    missing = {msgid: where for msgid, where in used.items() if not translated.get(msgid)}
    assert not missing, "no Vietnamese in messages.po for: " + "; ".join(
        f"{where}: {msgid!r}" for msgid, where in sorted(missing.items(), key=lambda i: i[1]))


# --- values from the database and the code, on every page ------------------------------
# Pages in Vietnamese (the default) with a fleet in every state, every fault kind, outages
# of every cause and every heartbeat value (tests/everystate.py, written by the real
# presence tracker), scanned for English: a word of the English source texts (the
# catalogue's msgids) or of the English values the fleet stores, outside what is not
# language (codes, ids: <code>) and outside a kiosk's own words the pages quote as sent
# (<q lang="en">, fleet/web/display.py).
import re  # noqa: E402
from html.parser import HTMLParser  # noqa: E402

import pytest  # noqa: E402

from fleet import auth  # noqa: E402
from tests import everystate  # noqa: E402
from tests.fleetdata import NOW  # noqa: E402

PASSWORD = "correct horse battery"
# ASCII words that are Vietnamese too, or names: never a sign of an untranslated text
ALLOWED = {"camera", "greengate", "ntp", "utc", "ict", "api", "cpu", "hcmc", "strict",
           "test", "json", "pem", "der", "kid", "csv", "url", "smtp", "webhook", "email",
           "mail", "web", "hai", "con", "bao", "tin", "nam", "chi", "cho", "ban"}
SKIPPED = {"code", "script", "style", "q", "svg", "title"}  # q: only with lang="en"
VOID = {"br", "input", "img", "meta", "link", "hr", "col", "area", "base", "source", "wbr"}


class _Text(HTMLParser):
    """Visible text, without <code>, scripts, styles, and elements marked lang="en"."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts, self.stack = [], []

    def handle_starttag(self, tag, attrs):
        if tag in VOID:
            return
        attrs = dict(attrs)
        # <html lang=…> is the page's language, not a quotation inside it
        skip = tag in SKIPPED and (tag != "q" or attrs.get("lang") == "en") \
            or (attrs.get("lang") == "en" and tag != "html")
        self.stack.append((tag, skip))

    def handle_endtag(self, tag):
        while self.stack:
            open_tag, _skip = self.stack.pop()
            if open_tag == tag:
                break

    def handle_data(self, data):
        if not any(skip for _tag, skip in self.stack):
            self.parts.append(data)


def visible(html: str) -> str:
    parser = _Text()
    parser.feed(html)
    return re.sub(r"\s+", " ", " ".join(parser.parts))


def english_vocabulary(extra=()) -> set[str]:
    with CATALOGUE.open("rb") as f:
        catalogue = read_po(f, locale="vi")
    words = set()
    for m in catalogue:
        for msgid in (m.id if isinstance(m.id, tuple) else (m.id,)):
            if msgid:
                words.update(w.lower() for w in re.findall(r"[A-Za-z]{3,}", re.sub(
                    r"%\(\w+\)[sd]", " ", msgid)))
    for text in extra:
        words.update(w.lower() for w in re.findall(r"[A-Za-z]{3,}", text or ""))
    return words - ALLOWED


def english_in(text: str, vocabulary: set[str]) -> list[str]:
    """ASCII-only words of 3+ letters that are English source words."""
    found = []
    for token in re.findall(r"\w+", text):
        if len(token) >= 3 and token.isascii() and token.isalpha() \
                and token.lower() in vocabulary:
            found.append(token)
    return found


def stored_english(sessions) -> list[str]:
    """Every English text the fleet stored: details, causes, heartbeat values."""
    from sqlalchemy import select

    from fleet.models import Kiosk, Outage, PresenceEvent
    with sessions() as s:
        texts = [d for (d,) in s.execute(select(Kiosk.detail))]
        texts += [d for (d,) in s.execute(select(PresenceEvent.detail))]
        texts += [c for (c,) in s.execute(select(Outage.cause))]
        for (hb,) in s.execute(select(Kiosk.heartbeat)):
            if isinstance(hb, dict):
                texts += [hb.get("clock"), hb.get("lists")]
                texts += [f.get("kind") for f in hb.get("faults") or []]
    return [t for t in texts if t]


@pytest.fixture
def every_state(fleet_app, fleet_db):
    ids = everystate.build(fleet_db)
    with fleet_db() as s:
        auth.create_user(s, "lan", PASSWORD, "admin")  # a name, not an English word
        s.commit()
    fleet_app.config["GREENGATE_CLOCK"] = lambda: NOW
    ids.app, ids.sessions = fleet_app, fleet_db
    return ids


def login(app, user="lan"):
    client = app.test_client()
    html = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)
    response = client.post("/login", data={"csrf_token": token, "username": user,
                                           "password": PASSWORD})
    assert response.status_code == 302
    return client


def test_the_fleet_stores_every_cause_and_value_the_pages_must_translate(every_state):
    """The fixture is what it claims: if presence.py's texts change, this says so."""
    stored = set(stored_english(every_state.sessions))
    for expected in ("connection lost", "stopped", "silent", "lists stale", "lists missing",
                     "clock unknown", "outbox over 1000", "silent: nothing heard for 45 s",
                     "silent: nothing heard for 45 s since the fleet (re)connected",
                     "storage: database or disk is full", "floor", "fresh", "stale",
                     "synced", "unknown", "missing", "retired",
                     "policy strict assigned, hcmc-2021 applied"):
        assert expected in stored or any(expected in t.split("; ") for t in stored), expected


def test_every_page_shows_the_fleets_values_in_vietnamese(every_state):
    web = login(every_state.app)
    vocabulary = english_vocabulary(stored_english(every_state.sessions))
    assert {"lost", "stopped", "silent", "stale", "synced", "floor", "fresh", "storage",
            "heard", "outbox"} <= vocabulary
    pages = ["/", "/kiosks", "/kiosks?state=degraded", "/kiosks?state=offline", "/stats",
             "/alerts"] + [f"/kiosks/{kid}" for kid in every_state.kiosks]
    problems = {}
    for url in pages:
        response = web.get(url)
        assert response.status_code == 200, url
        words = english_in(visible(response.get_data(as_text=True)), vocabulary)
        if words:
            problems[url] = sorted(set(words))
    assert not problems, f"English on Vietnamese pages: {problems}"
    # and the scan itself finds English when there is some
    english = web.get("/kiosks/vi-storage?lang=en").get_data(as_text=True)
    assert {"storage", "Last", "heartbeat"} <= set(english_in(visible(english), vocabulary))


def test_a_kiosks_own_words_are_quoted_as_sent(every_state):
    """A detail no pattern knows (here a configuration problem) is shown as the kiosk
    sent it, marked lang="en", after its kind in Vietnamese."""
    html = login(every_state.app).get("/kiosks/vi-config").get_data(as_text=True)
    assert 'cấu hình: <q lang="en" class="as-sent">[mqtt] port must be 1 to 65535</q>' in html
    storage = login(every_state.app).get("/kiosks/vi-storage").get_data(as_text=True)
    assert "bộ nhớ lưu trữ: cơ sở dữ liệu hoặc ổ đĩa đã đầy" in storage
    faults = login(every_state.app).get("/kiosks/vi-faults").get_data(as_text=True)
    assert "bộ nhớ lưu trữ: lỗi đọc/ghi ổ đĩa (đồng hồ); đồng hồ: chưa có NTP" in faults
