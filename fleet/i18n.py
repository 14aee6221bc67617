"""Dashboard languages: Vietnamese (the default) and English, through Flask-Babel.

Templates and views mark text with _() (English source text); the Vietnamese is in
fleet/translations/vi/LC_MESSAGES/messages.po. The catalogue is compiled when the
app starts (into data_dir/i18n), so no binary .mo file lives in the repository and
a .po edit is seen at the next start. Extract new strings with
`pybabel extract -F fleet/babel.cfg -o /tmp/messages.pot fleet` and
`pybabel update -i /tmp/messages.pot -d fleet/translations`.

The language: ?lang=vi|en (remembered in the session), else [web] language.
"""

from __future__ import annotations

import os
from pathlib import Path

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from flask import request, session
from flask_babel import Babel

LANGUAGES = ("vi", "en")
SOURCE = Path(__file__).parent / "translations"


def compile_catalogues(target: Path) -> Path:
    """Every .po under SOURCE as .mo under target (same layout); returns target."""
    for po in SOURCE.glob("*/LC_MESSAGES/*.po"):
        mo = target / po.relative_to(SOURCE).with_suffix(".mo")
        if mo.exists() and mo.stat().st_mtime >= po.stat().st_mtime:
            continue
        mo.parent.mkdir(parents=True, exist_ok=True)
        with po.open("rb") as f:
            catalogue = read_po(f, locale=po.parts[-3])
        # several gunicorn workers may compile at once: each its own file, then rename
        tmp = mo.with_suffix(f".{os.getpid()}.tmp")
        with tmp.open("wb") as f:
            write_mo(f, catalogue)
        tmp.replace(mo)
    return target


def init_app(app, config) -> None:
    default = config.web.language

    def select_locale():
        asked = request.args.get("lang")
        if asked in LANGUAGES:
            session["lang"] = asked
            return asked
        return session.get("lang") if session.get("lang") in LANGUAGES else default

    directory = compile_catalogues(config.data_dir / "i18n")
    app.config["BABEL_TRANSLATION_DIRECTORIES"] = str(directory)
    app.config["BABEL_DEFAULT_LOCALE"] = "en"  # the source text
    Babel(app, locale_selector=select_locale)
