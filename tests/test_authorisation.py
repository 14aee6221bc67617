"""Who may call what: every route of the app (`app.url_map`: the JSON API, the dashboard
pages, metrics, static files), every role, on SQLite and PostgreSQL.

The expectation comes from RULES below, matched on method and path; a route that no rule
matches FAILS the test, so a new page or endpoint cannot go in unprotected by accident:
add its rule (who may use it) here. For each route and caller:

- anonymous: 401 from the API, a redirect to /login from a page (or the rule's `anon`);
- a role the rule does not list: 403, as a role refusal (not a CSRF one);
- a role it lists: neither 401 nor 403, and no server error (the placeholder ids in the
  path may well give 400/404/422: authorisation comes first);
- a public route: the same status for anonymous as for an admin.

A district officer without a district, a ward officer without a ward and a manager without
an organisation get 403 on every route that is not public, as an API caller and on the
pages (with nothing to limit them to, a route that forgot the scope would show them
everything). A manager's world is its own organisation: it is refused every fleet-wide
route (a rule that does not name MANAGER); the ward officer may what the district officer
may (its ward's share, tests/test_ward_scope.py).

New routes of other modules: give each a Rule below (EVERYONE is every fleet-wide role;
add MANAGER where a manager may use it, e.g. its organisation's pages and roster).

And every non-GET dashboard route refuses a request without the CSRF token, as does every
non-GET API route called with the login cookie but without the X-CSRF-Token header.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

from fleet import auth, bundles
from fleet.models import District, Organisation, Ward

PASSWORD = "correct horse battery"
ADMIN, OPERATOR, OFFICER, HEALTH = "admin", "operator", "district_officer", "health_official"
WARD, MANAGER = "ward_officer", "manager"
EVERYONE = frozenset({ADMIN, OPERATOR, OFFICER, HEALTH, WARD})  # every fleet-wide role
PUBLIC = "public"
ROLES = (ADMIN, OPERATOR, OFFICER, HEALTH, WARD, MANAGER)
NO_DISTRICT = "officer_without_district"  # a district officer's account with no district
NO_WARD = "ward_officer_without_ward"
NO_ORGANISATION = "manager_without_organisation"
UNANCHORED = {NO_DISTRICT: OFFICER, NO_WARD: WARD, NO_ORGANISATION: MANAGER}


@dataclass(frozen=True)
class Rule:
    methods: str  # "GET", "POST|PATCH", "*"
    pattern: str  # a regex on the route's rule text, e.g. ^/api/v1/audit$
    who: frozenset | str  # the roles that may (admins are listed where they may), or PUBLIC
    anon: str | None = None  # what anonymous gets if not the default: "401" | "login"

    def matches(self, method: str, path: str) -> bool:
        return (self.methods == "*" or method in self.methods.split("|")) and \
            re.search(self.pattern, path) is not None


def roles(*names):
    return frozenset(names)


# First match wins. Keep it in the order of the app: public, API, pages.
RULES = [
    # public: no login by design (docs/api.md, docs/bundles.md, docs/dashboard.md)
    Rule("GET", r"^/api/v1/bundles/", PUBLIC),  # signed; kiosks trust the key, not the caller
    Rule("GET", r"^/api/v1/enrol/ca$", PUBLIC),
    Rule("POST", r"^/api/v1/enrol$", PUBLIC),  # the one-time token is the credential
    Rule("GET", r"^/metrics$", PUBLIC),  # firewalled, or [metrics] token
    Rule("GET", r"^/static/", PUBLIC),
    Rule("GET|POST", r"^/login$", PUBLIC),
    Rule("POST", r"^/logout$", PUBLIC),
    # the JSON API
    Rule("GET", r"^/api/v1/audit$", roles(ADMIN)),
    Rule("*", r"^/api/v1/(users|tokens)(/|$)", roles(ADMIN)),
    Rule("*", r"^/api/v1/trace$", roles(ADMIN, HEALTH)),
    # a case closes the workplace (C, fleet/api/closures.py): those who trace cases
    Rule("POST", r"^/api/v1/organisations/<code>/suspend-for-case$", roles(ADMIN, HEALTH)),
    Rule("*", r"^/api/v1/alerts/", roles(ADMIN)),
    Rule("POST", r"^/api/v1/status/", roles(ADMIN, OPERATOR, HEALTH)),
    Rule("GET", r"^/api/v1/quarantine$", roles(ADMIN, OPERATOR, OFFICER, WARD)),  # raw bytes
    Rule("POST|PATCH|PUT|DELETE",
         r"^/api/v1/(districts|locations|kiosks|trust|policies|valuesets)(/|$)",
         roles(ADMIN, OPERATOR)),
    # compliance watch and weekly reports (H4, fleet/api/reports.py): the watchers
    Rule("*", r"^/api/v1/(reports/|organisations/<code>/reminders$)",
         roles(ADMIN, OPERATOR, OFFICER, WARD)),
    # worker rosters (RF, fleet/api/rosters.py): the manager keeps its own, district and
    # ward officers read those of their area
    Rule("GET", r"^/api/v1/organisations/<code>/(workers|enrolments)$",
         roles(ADMIN, OPERATOR, OFFICER, WARD, MANAGER)),
    Rule("POST|PATCH|DELETE", r"^/api/v1/organisations/<code>/(workers|enrolments)(/|$)",
         roles(ADMIN, OPERATOR, MANAGER)),
    # organisations and wards (O, fleet/api/organisations.py): the district decides, a
    # ward officer or a health official may suspend (and lift what names them), a manager reads
    # its own organisation
    Rule("POST", r"^/api/v1/organisations/<code>/status$", roles(ADMIN, OPERATOR, OFFICER, WARD,
                                                                  HEALTH)),
    Rule("POST|PATCH", r"^/api/v1/(organisations|wards)(/<code>)?$",
         roles(ADMIN, OPERATOR, OFFICER)),
    Rule("GET", r"^/api/v1/organisations(/<code>)?$", EVERYONE | {MANAGER}),
    Rule("GET", r"^/api/v1/wards(/<code>)?$", EVERYONE),
    Rule("GET", r"^/api/v1/kiosks(/<kiosk_id>)?$", EVERYONE | {MANAGER}),  # its own kiosks
    Rule("GET", r"^/api/v1/(districts|locations|kiosks|presence|bridges|outages|scans|stats|status|"
                r"trust|policies|valuesets)(/|$)", EVERYONE),
    # the dashboard
    Rule("GET", r"^/live/home$", EVERYONE | {MANAGER}, anon="401"),  # a script: no redirect
    Rule("GET", r"^/(kiosks(/<kiosk_id>)?)?$", EVERYONE | {MANAGER}),  # its own kiosks
    Rule("GET", r"^/(stats|lists/status)$", EVERYONE),
    Rule("POST", r"^/lists/status/(preview|apply)$", roles(ADMIN, OPERATOR, HEALTH)),
    Rule("GET", r"^/(lists/trust|policies|policies/<deployment>/<name>|valuesets)$", EVERYONE),
    Rule("POST", r"^/(lists/trust|policies/import|policies/assign)/(preview|apply)$",
         roles(ADMIN, OPERATOR)),
    Rule("*", r"^/(compliance|reports)(/|$)", roles(ADMIN, OPERATOR, OFFICER, WARD)),  # H4
    # worker rosters (RF, fleet/web/roster_views.py)
    Rule("GET", r"^/roster$", roles(ADMIN, MANAGER)),
    Rule("GET", r"^/organisations/<code>/roster$", roles(ADMIN, OPERATOR, OFFICER, WARD, MANAGER)),
    Rule("POST", r"^/organisations/<code>/roster/", roles(ADMIN, OPERATOR, MANAGER)),
    # organisations and wards (O, fleet/web/organisation_views.py)
    Rule("GET", r"^/organisations(/<code>)?$", EVERYONE | {MANAGER}),
    Rule("GET|POST", r"^/organisations/new$", roles(ADMIN, OPERATOR, OFFICER)),
    Rule("POST", r"^/organisations/<code>/status/(preview|apply)$",
         roles(ADMIN, OPERATOR, OFFICER, WARD, HEALTH)),
    Rule("POST", r"^/organisations/<code>/remind$", roles(ADMIN, OPERATOR, OFFICER, WARD)),
    # the record (PATCH's deciders) and the control points (the locations API's roles)
    Rule("POST", r"^/organisations/<code>/edit$", roles(ADMIN, OPERATOR, OFFICER)),
    Rule("POST", r"^/organisations/<code>/places/(preview|apply)$", roles(ADMIN, OPERATOR)),
    Rule("GET", r"^/wards$", EVERYONE),
    Rule("POST", r"^/wards$", roles(ADMIN, OPERATOR, OFFICER)),
    Rule("GET", r"^/audit$", roles(ADMIN)),
    Rule("GET|POST", r"^/trace$", roles(ADMIN, HEALTH)),
    Rule("POST", r"^/trace/suspend$", roles(ADMIN, HEALTH)),  # C: suspend after a case
    Rule("GET|POST", r"^/alerts(/|$)", roles(ADMIN)),
    Rule("GET|POST", r"^/(users|tokens)(/|$)", roles(ADMIN)),
]

# Values for the path's placeholders: real where a wrong one would end the request before
# the role check could matter (it never should), harmless elsewhere.
PLACEHOLDERS = {"deployment": "test", "key": "0" * 32, "kid": "00" * 8, "filename": "app.css",
                "kind": "trust"}


def concrete(rule) -> str:
    def value(match):
        converter, name = match.group(1), match.group(2)
        if converter and converter.startswith("int"):
            return "999999"
        return PLACEHOLDERS.get(name, "nothing-here")
    return re.sub(r"<(?:(\w+(?:\([^)]*\))?):)?(\w+)>", value, rule.rule)


def routes(app):
    """(method, rule text, concrete path, is_api) for every route and method."""
    for rule in app.url_map.iter_rules():
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            yield method, rule.rule, concrete(rule), rule.rule.startswith("/api/")


def rule_for(method, path):
    return next((r for r in RULES if r.matches(method, path)), None)


class Callers:
    """A Flask test client per role, logged in to the dashboard, with its CSRF token, and
    the role's API token."""

    def __init__(self, app, sessions):
        self.app = app
        self.tokens, self.clients, self.csrf = {}, {}, {}
        with sessions() as s:
            district = District(code="q1", name="Quận 1")
            s.add(district)
            s.flush()
            ward = Ward(code="q1-bn", name="Bến Nghé", district_id=district.id)
            organisation = Organisation(code="org1", name="Công ty A", kind="business",
                                        district_id=district.id, status="approved",
                                        status_since=0.0, created_at=0.0)
            s.add_all([ward, organisation])
            s.flush()
            for role in ROLES:
                user = auth.create_user(
                    s, role, PASSWORD, role, district.id if role == OFFICER else None,
                    ward_id=ward.id if role == WARD else None,
                    organisation_id=organisation.id if role == MANAGER else None)
                s.flush()
                self.tokens[role] = {"Authorization": f"Bearer {auth.create_token(s, user, 't')}"}
            # roles without their anchor: accounts.py refuses to make them, auth.py must cope
            for name, role in UNANCHORED.items():
                user = auth.create_user(s, name, PASSWORD, role, None)
                s.flush()
                self.tokens[name] = {
                    "Authorization": f"Bearer {auth.create_token(s, user, 't')}"}
            s.commit()
        for role in ROLES + tuple(UNANCHORED):
            self.clients[role], self.csrf[role] = self.logged_in(role)
        self.clients[None], self.csrf[None] = self.anonymous()

    def anonymous(self):
        client = self.app.test_client()
        return client, token_of(client, "/login")

    def logged_in(self, role):
        client = self.app.test_client()
        response = client.post("/login", data={"csrf_token": token_of(client, "/login"),
                                               "username": role, "password": PASSWORD})
        assert response.status_code == 302, f"{role} cannot log in: {response.status_code}"
        return client, token_of(client, "/lists/status")


def token_of(client, path):
    html = client.get(path).get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def call(callers, who, method, path, is_api, csrf=True):
    """One request as `who` (None: anonymous): the API with the role's bearer token, a
    page with the role's login cookie and (for a change) its CSRF token."""
    if is_api and who is not None:
        return callers.clients[None].open(path, method=method, headers=callers.tokens[who])
    client = callers.clients[who]
    data = {"csrf_token": callers.csrf[who]} if csrf and method != "GET" else None
    return client.open(path, method=method, data=data)


def is_login_redirect(response) -> bool:
    return response.status_code in (302, 303) and "/login" in response.headers.get("Location", "")


def is_csrf_refusal(response) -> bool:
    return response.status_code == 403 and "CSRF" in response.get_data(as_text=True)


@pytest.fixture
def callers(fleet_app, fleet_db, fleet_config):
    bundles.ensure_signing_key(fleet_config)  # bundles answer (not 503) for the public check
    return Callers(fleet_app, fleet_db)


def test_every_route_has_a_rule_every_role_gets_what_it_says_and_changes_need_csrf(
        callers, fleet_app):
    unruled = [f"{m} {r}" for m, r, _, _ in routes(fleet_app) if rule_for(m, r) is None]
    assert not unruled, (
        "routes without an authorisation rule: " + ", ".join(unruled) + ". Add a Rule for "
        "each to RULES in tests/test_authorisation.py saying which roles may use it (or "
        "PUBLIC, if it must work without a login).")
    problems = []
    for method, rule_text, path, is_api in routes(fleet_app):
        rule = rule_for(method, rule_text)
        where = f"{method} {path} (rule {rule.pattern})"
        if rule.who == PUBLIC:
            if is_api:
                anonymous = call(callers, None, method, path, True)
                as_admin = call(callers, ADMIN, method, path, True)
            else:
                # fresh sessions: the public POST (logout) ends the admin's sessions, all of them
                anonymous, as_admin = (
                    client.open(path, method=method,
                                data={"csrf_token": token} if method != "GET" else None)
                    for client, token in (callers.anonymous(), callers.logged_in(ADMIN)))
            if method != "GET" and not is_api:  # logout ends every admin session
                callers.clients[ADMIN], callers.csrf[ADMIN] = callers.logged_in(ADMIN)
            if anonymous.status_code in (403, 500) or \
                    anonymous.status_code != as_admin.status_code:
                problems.append(f"{where}: public, but anonymous got {anonymous.status_code} "
                                f"and an admin {as_admin.status_code}")
            continue
        anonymous = call(callers, None, method, path, is_api)
        expected_anon = rule.anon or ("401" if is_api else "login")
        if expected_anon == "401" and anonymous.status_code != 401:
            problems.append(f"{where}: anonymous got {anonymous.status_code}, expected 401")
        if expected_anon == "login" and not is_login_redirect(anonymous):
            problems.append(f"{where}: anonymous got {anonymous.status_code}, expected a "
                            "redirect to /login")
        for role in ROLES:
            response = call(callers, role, method, path, is_api)
            status = response.status_code
            if role in rule.who:
                if status in (401, 403) or status >= 500:
                    problems.append(f"{where}: {role} may, but got {status}: "
                                    f"{response.get_data(as_text=True)[:200]}")
            elif status != 403 or is_csrf_refusal(response):
                problems.append(f"{where}: {role} may not, but got {status}")
        for unanchored in UNANCHORED:
            response = call(callers, unanchored, method, path, is_api)
            if response.status_code != 403 or is_csrf_refusal(response):
                problems.append(f"{where}: {unanchored} got {response.status_code}, "
                                "expected 403")
    assert not problems, "\n".join(problems)
    # (one test with the CSRF check below: each database set-up with five logins costs
    # seconds)
    check_csrf_everywhere(callers, fleet_app)


def check_csrf_everywhere(callers, fleet_app):
    """Every change without the CSRF token is refused when made with a login cookie."""
    problems = []
    for method, rule_text, path, is_api in routes(fleet_app):
        if method == "GET":
            continue
        rule = rule_for(method, rule_text)
        if is_api and rule is not None and rule.who == PUBLIC:
            continue  # no cookie involved: the enrolment token is the credential
        callers_to_try = [None, ADMIN] if not is_api else [ADMIN]
        for who in callers_to_try:
            # the login cookie (a page's session) and no token, neither field nor header
            response = callers.clients[who].open(path, method=method, data={})
            if not is_csrf_refusal(response):
                problems.append(f"{method} {path} as {who or 'anonymous'} without a CSRF "
                                f"token: {response.status_code}, expected a 403 CSRF refusal")
    assert not problems, "changes accepted without a CSRF token:\n" + "\n".join(problems)
