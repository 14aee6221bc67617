"""The Flask application factory: config in, app out; no module-level state.

    app = create_app(fleet.config.load("fleet.toml"))

The app holds one `Fleet` (config, engine, session factory) in
app.extensions["greengate"]; request handlers reach it through `current_fleet()`.

Read replica ([fleet] read_database_url, docs/fleet.md#read-replica): `db()` is the one
seam every view gets its session from. A GET/HEAD/OPTIONS request reads from the
replica; every other method, and who the caller is (`primary_db()`: a revoked token or
a disabled user must be refused at once, and a token's use is written), go to the
primary. A read request that tries to write through the replica's session fails loudly.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta

from flask import Flask, abort, current_app, g, request
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.middleware.proxy_fix import ProxyFix

from . import config as config_module
from .db import make_engine, make_sessions


# Endpoints that take a body from anyone (no login): the smaller body limit.
ANONYMOUS_WRITES = frozenset({"web.login", "api.enrol"})


@dataclass
class Fleet:
    config: config_module.FleetConfig
    engine: Engine
    sessions: sessionmaker[Session]
    publisher: object | None = None  # fleet.publisher.Publisher, when MQTT is configured
    read_engine: Engine | None = None  # the replica's, when [fleet] read_database_url is set
    read_sessions: sessionmaker[Session] | None = None


def create_app(config: config_module.FleetConfig | None = None, *, publisher=None) -> Flask:
    config = config or config_module.load()
    app = Flask("fleet")
    engine = make_engine(config.database_url)
    fleet = Fleet(config, engine, make_sessions(engine), publisher)
    if config.sections["fleet"]["read_database_url"]:
        fleet.read_engine = make_engine(config.read_database_url)
        fleet.read_sessions = make_sessions(fleet.read_engine)
        event.listen(fleet.read_sessions, "before_flush", _read_only)
    app.extensions["greengate"] = fleet
    app.config["SECRET_KEY"] = config.fleet.secret_key or _secret_key(config)
    app.config["JSON_SORT_KEYS"] = False
    app.config.update(SESSION_COOKIE_NAME="greengate", SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SAMESITE="Lax",
                      SESSION_COOKIE_SECURE=config.web.secure_cookies,
                      PERMANENT_SESSION_LIFETIME=timedelta(hours=config.web.session_hours),
                      MAX_CONTENT_LENGTH=config.web.max_body_bytes)
    if config.web.trusted_proxies > 0:
        # only then: otherwise anyone could name any address in the header and dodge the
        # per-address login limits
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=config.web.trusted_proxies)

    @app.before_request
    def _body_limit():
        """A body over the limit gets 413 before anything reads it; the routes anyone
        may call without a login get the smaller limit."""
        limit = (config.web.max_anonymous_body_bytes
                 if request.endpoint in ANONYMOUS_WRITES else config.web.max_body_bytes)
        request.max_content_length = limit  # also bounds a body sent without a length
        if request.content_length is not None and request.content_length > limit:
            abort(413, f"the request body is {request.content_length} bytes; this route "
                       f"takes at most {limit}")

    from . import i18n
    i18n.init_app(app, config)
    from .api import bp as api_bp
    app.register_blueprint(api_bp)
    from .web import bp as web_bp
    app.register_blueprint(web_bp)
    from .metrics import bp as metrics_bp
    app.register_blueprint(metrics_bp)

    @app.teardown_appcontext
    def _close_session(_exc):
        for name in ("db", "primary_db"):
            session = g.pop(name, None)
            if session is not None:
                session.close()

    return app


def current_fleet() -> Fleet:
    return current_app.extensions["greengate"]


def db() -> Session:
    """The request's session (closed at the end of the request): the read replica's for
    a GET/HEAD/OPTIONS request when one is configured, else the primary's."""
    if "db" not in g:
        fleet = current_fleet()
        if fleet.read_sessions is not None and request.method in READ_METHODS:
            g.db = fleet.read_sessions()
        else:
            g.db = primary_db()
    return g.db


def primary_db() -> Session:
    """The primary's session, whatever the method: for who the caller is (fleet.auth),
    and for anything that writes."""
    if "primary_db" not in g:
        g.primary_db = current_fleet().sessions()
    return g.primary_db


READ_METHODS = ("GET", "HEAD", "OPTIONS")


def _read_only(session, _flush_context, _instances):
    if session.new or session.dirty or session.deleted:
        raise RuntimeError("a read-only request (GET) tried to write through the read "
                           "replica's session; write in a POST, or use primary_db()")


def _secret_key(config) -> str:
    """Generated once and kept in data_dir, so sessions survive restarts."""
    path = config.data_dir / "secret_key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        key = secrets.token_hex(32)
        path.write_text(key)
        path.chmod(0o600)
        return key
