"""Preview, then confirm: the pattern of every page that changes a list or an account.

    remember(KEY, fields)                  # the preview was shown for these fields
    confirmed(KEY, fields, _("… start again from …"))   # the apply: raises 409 unless
                                                        # exactly these were previewed

The session keeps a digest of the previewed fields, and the apply refuses anything else:
a changed field, a second submit (one confirm, one change), a form that skipped the preview.
"""

from __future__ import annotations

import hashlib
import json

from flask import request, session

from ..auth import AuthError


def digest(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def remember(key: str, fields: dict) -> None:
    session[key] = digest(fields)


def confirmed(key: str, fields: dict, refusal: str) -> None:
    """The apply of a previewed change; `refusal` (translated) says where to start again."""
    if request.form.get("confirm") != "yes" or session.get(key) != digest(fields):
        raise AuthError(409, refusal)
    session.pop(key, None)
