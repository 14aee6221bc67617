"""Words a service says that both the API and the pages show: the API in English (the
msgid, filled in), a page in its own language (the catalogue's msgstr, filled in).

    raise OrganisationError(Text(N_("ward '%(code)s' is not in district '%(district)s'"),
                                 code=ward.code, district=district.code))

A Text *is* the English string (a str subclass), so the API, the audit log, the logs and
every test that reads `exc.message` see what they saw before; a page calls
`translated(message)` (or the template filter `said`). A parameter that is itself a Text
(a role: `Text(org.lift_by)`; an organisation's status: `status_word(org.status)`) is
translated too, so a Vietnamese sentence does not carry an English word. N_ marks the msgid for `pybabel extract` (a default keyword);
the Vietnamese is in fleet/translations/vi/LC_MESSAGES/messages.po.
"""

from __future__ import annotations


def N_(message: str) -> str:
    return message


class Text(str):
    """English text that remembers its msgid and parameters for a translation later."""

    msgid: str
    params: dict

    def __new__(cls, msgid: str, **params):
        self = super().__new__(cls, msgid % params if params else msgid)
        self.msgid, self.params = msgid, params
        return self

    def __reduce__(self):  # kept whole through pickling (the session, a worker pool)
        return (_rebuild, (self.msgid, self.params))

    def translated(self, translations=None) -> str:
        """In the request's language (flask_babel), or in `translations`' (a gettext
        translations object) when given."""
        if translations is None:
            from flask_babel import get_translations
            translations = get_translations()
        params = {k: v.translated(translations) if isinstance(v, Text) else v
                  for k, v in self.params.items()}
        said = self._said(translations)
        return said % params if params else said

    def _said(self, translations) -> str:
        return translations.ugettext(self.msgid)


def pgettext(context: str, message: str) -> str:
    """Marks a msgid with its context for `pybabel extract` (a default keyword)."""
    return message


class Word(Text):
    """A value (an organisation's status) said in English as it is stored, translated
    with its context: "applied" of an organisation is not "applied" of a policy."""

    context: str

    def __new__(cls, value: str, context: str):
        self = super().__new__(cls, value)
        self.context = context
        return self

    def __reduce__(self):
        return (Word, (self.msgid, self.context))

    def _said(self, translations) -> str:
        return translations.upgettext(self.context, self.msgid)


STATUS = "organisation status"
_STATUS_WORDS = (pgettext("organisation status", "applied"),
                 pgettext("organisation status", "approved"),
                 pgettext("organisation status", "suspended"),
                 pgettext("organisation status", "closed"))


def status_word(status: str) -> Word:
    """An organisation's status as a parameter of a Text."""
    return Word(status, STATUS)


def _rebuild(msgid, params):
    return Text(msgid, **params)


def translated(message) -> str:
    """A page's words for `message`: a Text in the request's language, any other text
    as it is (a refusal not yet given its msgid reads in English rather than not at all)."""
    return message.translated() if isinstance(message, Text) else message
