"""The JSON API under /api/v1. Each module registers its routes on `bp`.

Errors are JSON objects {"error": code, "message": a sentence a person can act
on}, with the HTTP status; see docs/api.md.
"""

from flask import Blueprint, jsonify
from werkzeug.exceptions import HTTPException

from ..auth import AuthError

bp = Blueprint("api", __name__, url_prefix="/api/v1")


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message = status, message
        self.code = code or {400: "bad_request", 404: "not_found", 409: "conflict",
                             422: "invalid"}.get(status, "error")


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError):
    return jsonify(error=exc.code, message=exc.message), exc.status


@bp.errorhandler(AuthError)
def _auth_error(exc: AuthError):
    code = "unauthorized" if exc.status == 401 else "forbidden"
    return jsonify(error=code, message=exc.message), exc.status


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException):
    return jsonify(error=exc.name.lower().replace(" ", "_"), message=exc.description), exc.code


# Route modules (each owns its part of the API).
from . import bundles, enrol, fleet_objects, quarantined, status_lists, trace  # noqa: E402,F401
from . import users  # noqa: E402,F401
from . import reports  # noqa: E402,F401
from . import organisations  # noqa: E402,F401
from . import closures  # noqa: E402,F401
from . import rosters  # noqa: E402,F401
