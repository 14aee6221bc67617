"""Every text the dashboard marks for translation has its Vietnamese (the default
language): a page half in English is a defect for the officers who use it."""

from __future__ import annotations

from pathlib import Path

from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

ROOT = Path(__file__).resolve().parent.parent
CATALOGUE = ROOT / "fleet" / "translations" / "vi" / "LC_MESSAGES" / "messages.po"
METHODS = [("**/templates/**.html", "jinja2.ext:babel_extract"), ("**.py", "python")]


def marked() -> dict[str, str]:
    """msgid -> where it is used first."""
    found = {}
    for filename, lineno, message, _comments, _context in extract_from_dir(
            ROOT / "fleet", METHODS, options_map={"**/templates/**.html": {}}):
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
