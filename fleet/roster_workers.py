"""An organisation's workers: the fleet side of the roster (docs/rosters.md).

The manager keeps each worker's display name and job; the link to the person is a key
the kiosks can check without a name (fleet/rosters.py):

- holder_key: rosters.holder_entry_hex of the holder's ICAO-standardised (family,
  given, date of birth): matches every certificate of that person, so a new dose or a
  new test does not drop them. Linked by a QR text ("HC1:...", decoded and verified
  with the deployment's trust list here) or by one scan at a kiosk of the
  organisation in enrolment mode (the ingest, `EnrolmentWatch` / `link_enrolment`).
- cert_key: rosters.cert_entry_hex of a certificate identifier, when only that is
  known: it matches that one certificate, so the page offers re-linking by a scan.

Only an approved organisation has a roster, at most `Organisation.quota` workers not
removed. Every change is audited and re-issues the roster bundle in the same
transaction (rosters.publish); the caller commits, then hands what it returns to
`notify` so the publisher sends it.

Service layer, no Flask: WorkerError carries the HTTP status an API answers.
"""

from __future__ import annotations

import csv
import io
import time
import unicodedata
from dataclasses import dataclass, field

from sqlalchemy import func, or_, select, update

from greengate import cose, hc1
from greengate import roster as roster_format
from greengate.content import check_plausibility, parse_claims
from greengate.trust import TrustError, TrustList, load_signer

from . import audit, bundles, organisations, rosters
from .refusals import N_, Text, status_word
from .models import APPROVED, SUSPENDED, Organisation, RosterEnrolment, TrustEntry, Worker

MAX_NAME = 200
MAX_CI = 100  # a DCC's ci is at most 80 characters (schema); a little room, no more
MAX_CSV_BYTES = 4 * 1024 * 1024  # ~5,000 rows of QR texts; a roster is far smaller
MAX_CSV_ROWS = 10_000
CSV_COLUMNS = ("display_name", "job", "qr", "ci")
ENROL_MINUTES = (1, 15)  # how long an enrolment may stay open, at least / at most
ENROL_DEFAULT = 5
ENROL_REFRESH = 3.0  # seconds between the ingest's reloads of the open enrolments


class WorkerError(Exception):
    """A roster change refused; `status` is the HTTP status an API answers."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.message, self.status = message, status


# --- reading ---------------------------------------------------------------------------
def active_count(session, org: Organisation) -> int:
    return session.scalar(select(func.count(Worker.id)).where(
        Worker.organisation_id == org.id, Worker.removed_at.is_(None))) or 0


def list_workers(session, org: Organisation, include_removed: bool = False) -> list[Worker]:
    stmt = select(Worker).where(Worker.organisation_id == org.id)
    if not include_removed:
        stmt = stmt.where(Worker.removed_at.is_(None))
    return list(session.scalars(stmt.order_by(Worker.display_name, Worker.id)))


def worker_of(session, org: Organisation, worker_id) -> Worker:
    worker = session.get(Worker, worker_id) if isinstance(worker_id, int) else None
    if worker is None or worker.organisation_id != org.id or worker.removed_at is not None:
        raise WorkerError(Text(N_("no worker %(worker)s on the roster of %(code)s"),
                               worker=repr(worker_id)[:40], code=org.code), 404)
    return worker


def link_kind(worker: Worker) -> str | None:
    """holder (every certificate of the person), certificate (that one only) or None."""
    return "holder" if worker.holder_key else "certificate" if worker.cert_key else None


def worker_dict(worker: Worker) -> dict:
    """A worker as the API shows it: never its keys."""
    return {"id": worker.id, "display_name": worker.display_name, "job": worker.job,
            "linked": link_kind(worker), "linked_via": worker.linked_via,
            "linked_at": worker.linked_at, "created_at": worker.created_at,
            "created_by": worker.created_by, "removed_at": worker.removed_at}


# --- checks ----------------------------------------------------------------------------
def _clean(value, name: str, *, required: bool, limit: int = MAX_NAME) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise WorkerError(Text(N_("%(field)s must be text"), field=name))
    # one line (tabs and newlines become spaces), composed: a name typed on one system
    # and pasted from another compares equal
    value = unicodedata.normalize("NFC", " ".join(value.split()))
    if required and not value:
        raise WorkerError(Text(N_("%(field)s must not be empty"), field=name))
    if len(value) > limit:
        raise WorkerError(Text(N_("%(field)s is %(n)s characters; at most %(limit)s"),
                               field=name, n=len(value), limit=limit))
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn") for c in value):
        raise WorkerError(Text(N_("%(field)s holds a control or unassigned character"),
                               field=name))
    return value


def check_ci(ci) -> str:
    if not isinstance(ci, str):
        raise WorkerError(Text(N_("a certificate identifier (ci) must be text")))
    ci = ci.strip()
    if not ci or len(ci) > MAX_CI or not ci.isprintable() or any(c.isspace() for c in ci):
        raise WorkerError(Text(N_("%(ci)s is not a certificate identifier (1-%(max)s "
                                  "printable characters without spaces, like "
                                  "URN:UVCI:01:VN:...)"), ci=repr(ci[:40]), max=MAX_CI))
    return ci


def _open_for_roster(org: Organisation, what: str) -> None:
    if org.status != APPROVED:
        raise WorkerError(Text(N_("organisation %(code)s is %(status)s: only an approved "
                                  "organisation has a roster, so %(what)s is refused"),
                               code=org.code, status=status_word(org.status), what=what), 409)


def _changeable(org: Organisation) -> None:
    """Renaming and removing also while suspended (a roster kept for the reopening)."""
    if org.status not in (APPROVED, SUSPENDED):
        raise WorkerError(Text(N_("organisation %(code)s is %(status)s: its roster cannot "
                                  "change"), code=org.code, status=status_word(org.status)), 409)


def _lock(session, org: Organisation) -> None:
    """Serialise roster changes of one organisation (the quota is a count): the row
    lock on PostgreSQL; SQLite has one writer at a time anyway."""
    session.execute(select(Organisation.id).where(Organisation.id == org.id).with_for_update())


def _quota_left(session, org: Organisation) -> int:
    return (org.quota or 0) - active_count(session, org)


# --- linking ---------------------------------------------------------------------------
class Linker:
    """Turns a QR text or a ci into the keys stored on a worker. The trust list is that
    of the deployments of the organisation's kiosks (all configured ones when it has
    none yet), read once per Linker: a CSV of many QR texts reads it once."""

    def __init__(self, session, config, org: Organisation):
        self.session, self.config, self.org = session, config, org
        self._trust: TrustList | None = None
        self._key: bytes | None = None  # the organisation's roster key, derived once

    def trust(self) -> TrustList:
        if self._trust is None:
            deployments = sorted({k.deployment for k in organisations.kiosks_of(
                self.session, self.org)}) or list(self.config.fleet.deployments)
            trust = TrustList()
            for der in self.session.scalars(select(TrustEntry.certificate).where(
                    TrustEntry.deployment.in_(deployments), TrustEntry.removed_at.is_(None))):
                try:
                    trust.add(load_signer(der))
                except TrustError:  # a stored certificate that no longer parses signs nothing
                    continue
            self._trust = trust
        return self._trust

    def holder_of_qr(self, text) -> tuple[tuple[str, str, str], str]:
        """((family, given, dob), ci) of a QR text whose signature a trusted issuer made;
        WorkerError otherwise. An expired certificate is accepted: it still names its
        holder, and every later certificate of that holder matches the same key."""
        if not isinstance(text, str) or not text.strip():
            raise WorkerError(Text(N_("the QR text is empty")))
        try:
            sign1 = cose.parse(hc1.decode(text.strip()))
            kid = sign1.kid
        except Exception as exc:  # any bytes: a clear refusal, never a crash
            raise WorkerError(Text(N_("the QR text is not a readable health certificate "
                                      "(%(why)s)"),
                                   why=getattr(exc, 'detail', None) or exc.__class__.__name__)
                              ) from None
        if not isinstance(kid, bytes) or len(kid) != cose.KID_LENGTH:
            raise WorkerError(Text(N_("the QR's certificate names no signer key (kid)")))
        for signer in self.trust().candidates(kid):
            try:
                sign1.verify(signer.public_key)
                break
            except Exception:
                continue
        else:
            raise WorkerError(Text(N_("the QR's certificate is not signed by an issuer in the "
                                      "trust list (kid %(kid)s): forged, or of an issuer not "
                                      "trusted here"), kid=kid.hex()))
        try:
            cert = parse_claims(cose.loads(sign1.payload))
            check_plausibility(cert)
        except Exception as exc:
            raise WorkerError(Text(N_("the QR's certificate content is invalid (%(why)s)"),
                                   why=getattr(exc, 'detail', None) or exc.__class__.__name__)
                              ) from None
        if not (cert.family or cert.given):
            raise WorkerError(Text(N_("the QR's certificate has no standardised name to "
                                      "recognise its holder by")))
        # exactly the tuple the kiosk's Verifier seals (greengate/verifier.py: holder)
        return (cert.family, cert.given, cert.dob), cert.ci

    def keys(self, qr=None, ci=None) -> tuple[str | None, str | None]:
        """(holder_key, cert_key) for a QR text or a ci (exactly one)."""
        if qr is not None and ci is not None:
            raise WorkerError(Text(N_("link by a QR text or by a certificate identifier, not "
                                      "both")))
        if qr is not None:
            holder, _ci = self.holder_of_qr(qr)
            if self._key is None:
                try:
                    self._key = rosters.org_key(self.config, self.org.code, self.session)
                except rosters.RosterError as exc:
                    raise WorkerError(str(exc), 503) from None
            # = rosters.holder_entry_hex, without deriving the key again for every row
            return roster_format.holder_entry(self._key, holder).hex(), None
        if ci is not None:
            return None, rosters.cert_entry_hex(check_ci(ci))
        return None, None


def _taken(session, org: Organisation, holder_key, cert_key, but: int | None = None):
    """The active worker already linked to this holder or certificate, or None."""
    conditions = []
    if holder_key:
        conditions.append(Worker.holder_key == holder_key)
    if cert_key:
        conditions.append(Worker.cert_key == cert_key)
    if not conditions:
        return None
    stmt = select(Worker).where(Worker.organisation_id == org.id, Worker.removed_at.is_(None),
                                or_(*conditions))
    if but is not None:
        stmt = stmt.where(Worker.id != but)
    return session.scalars(stmt.limit(1)).first()


def _refuse_taken(other: Worker | None) -> None:
    if other is not None:
        raise WorkerError(Text(N_("this person or certificate is on the roster already, as "
                                  "worker %(id)s (%(name)s)"), id=other.id,
                               name=other.display_name), 409)


# --- changes ---------------------------------------------------------------------------
def _publish(session, config, org: Organisation, actor: str, at: float) -> list:
    try:
        return list(rosters.publish(session, config, org, actor=actor, at=at) or [])
    except bundles.ListError as exc:  # no signing key or roster secret: not set up (503)
        raise WorkerError(exc.message, exc.status) from None


def add_worker(session, config, org: Organisation, *, display_name, job="", actor: str,
               qr=None, ci=None, via: str = "api", at: float | None = None
               ) -> tuple[Worker, list]:
    """A new worker (linked by `qr` or `ci`, or not yet); (worker, what to notify)."""
    at = time.time() if at is None else at
    _open_for_roster(org, Text(N_("adding a worker")))
    name = _clean(display_name, "display_name", required=True)
    job = _clean(job, "job", required=False)
    _lock(session, org)
    if _quota_left(session, org) < 1:
        raise WorkerError(Text(N_("the roster of %(code)s is full: %(quota)s workers, the "
                                  "quota the district allowed"), code=org.code,
                               quota=org.quota), 409)
    holder_key, cert_key = Linker(session, config, org).keys(qr, ci)
    _refuse_taken(_taken(session, org, holder_key, cert_key))
    linked = holder_key is not None or cert_key is not None
    worker = Worker(organisation_id=org.id, display_name=name, job=job, holder_key=holder_key,
                    cert_key=cert_key, linked_at=at if linked else None,
                    linked_via=via if linked else None, created_at=at, created_by=actor)
    session.add(worker)
    session.flush()
    audit.record(session, actor, "roster.add", org.code, worker=worker.id, name=name,
                 linked=link_kind(worker), via=via)
    return worker, _publish(session, config, org, actor, at)


def update_worker(session, config, org: Organisation, worker: Worker, *, actor: str,
                  display_name=None, job=None, qr=None, ci=None, via: str = "api",
                  at: float | None = None) -> tuple[Worker, list]:
    """Rename, change the job, or (re-)link by a QR text or a ci."""
    at = time.time() if at is None else at
    _changeable(org)
    changes = {}
    if display_name is not None:
        worker.display_name = changes["name"] = _clean(display_name, "display_name",
                                                       required=True)
    if job is not None:
        worker.job = changes["job"] = _clean(job, "job", required=False)
    published: list = []
    if qr is not None or ci is not None:
        _open_for_roster(org, Text(N_("linking a worker")))
        _lock(session, org)
        holder_key, cert_key = Linker(session, config, org).keys(qr, ci)
        _refuse_taken(_taken(session, org, holder_key, cert_key, but=worker.id))
        worker.holder_key, worker.cert_key = holder_key, cert_key
        worker.linked_at, worker.linked_via = at, via
        changes["linked"] = link_kind(worker)
        changes["via"] = via
    if not changes:
        raise WorkerError(Text(N_("nothing to change: send display_name, job, qr or ci")))
    audit.record(session, actor, "roster.update", org.code, worker=worker.id, **changes)
    if "linked" in changes:
        published = _publish(session, config, org, actor, at)
    return worker, published


def remove_worker(session, config, org: Organisation, worker: Worker, *, actor: str,
                  at: float | None = None) -> list:
    """Off the roster (kept, with removed_at, for the history); what to notify."""
    at = time.time() if at is None else at
    _changeable(org)
    _lock(session, org)
    worker.removed_at = at
    # an enrolment waiting to link this worker ends with it
    session.execute(update(RosterEnrolment).where(
        RosterEnrolment.worker_id == worker.id, RosterEnrolment.closed_at.is_(None))
        .values(closed_at=at, result="cancelled"))
    audit.record(session, actor, "roster.remove", org.code, worker=worker.id,
                 name=worker.display_name)
    return _publish(session, config, org, actor, at)


# --- CSV -------------------------------------------------------------------------------
@dataclass
class CsvRow:
    line: int
    display_name: str
    job: str
    qr: str | None
    ci: str | None
    holder_key: str | None = None
    cert_key: str | None = None

    @property
    def linked(self) -> str | None:
        return "holder" if self.holder_key else "certificate" if self.cert_key else None


@dataclass
class Import:
    """What a CSV does (or would do): its rows, the errors by line (line 0: the file),
    the quota. `ok` only when there is no error and the rows fit the quota."""
    rows: list[CsvRow] = field(default_factory=list)
    errors: list[tuple[int, str]] = field(default_factory=list)
    roster: int = 0  # workers on the roster before
    quota: int = 0
    status: int = 200  # 422 bad rows, 409 over the quota or not approved
    workers: list = field(default_factory=list)  # the Worker rows made (not a dry run)
    published: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict:
        return {"ok": self.ok, "rows": len(self.rows), "roster": self.roster,
                "quota": self.quota, "after": self.roster + (len(self.rows) if self.ok else 0),
                "errors": [{"line": n, "message": m} for n, m in self.errors],
                "preview": [{"line": r.line, "display_name": r.display_name, "job": r.job,
                             "linked": r.linked} for r in self.rows]}


def parse_csv(data) -> tuple[list[CsvRow], list[tuple[int, str]]]:
    """Rows and errors of a roster CSV (total: any bytes give rows or named errors).

    A header row names the columns: display_name (required), job, qr, ci (any order,
    any case); UTF-8 with or without a BOM; `,` or `;` between fields (the header's
    choice). Each row: a display name, a job (may be empty), and a QR text or a
    certificate identifier (not both; neither: linked later by a scan). Blank lines are
    skipped. Line numbers are the file's (a quoted field spanning lines counts them)."""
    errors: list[tuple[int, str]] = []
    if not isinstance(data, (bytes, bytearray)):
        return [], [(0, Text(N_("send the CSV file's bytes")))]
    if len(data) > MAX_CSV_BYTES:
        return [], [(0, Text(N_("the file is %(n)s bytes; at most %(max)s are taken"),
                                n=len(data), max=MAX_CSV_BYTES))]
    try:
        text = bytes(data).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = bytes(data)[:exc.start].count(b"\n") + 1
        return [], [(line, Text(N_("the file is not UTF-8 text (save it as CSV UTF-8)")))]
    if "\x00" in text:
        line = text[:text.index("\x00")].count("\n") + 1
        return [], [(line, Text(N_("the file holds a NUL byte: it is not a CSV text file")))]
    if not text.strip():
        return [], [(0, Text(N_("the file is empty: it needs a header row (display_name, job, "
                                "qr, ci) and a row per worker")))]
    first = text.lstrip("\r\n").split("\n", 1)[0]
    delimiter = ";" if first.count(";") > first.count(",") else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    header: list[str] | None = None
    rows: list[CsvRow] = []
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            errors.append((reader.line_num, Text(N_("not valid CSV here (%(why)s); nothing after "
                                                    "it was read"), why=str(exc))))
            break
        line = reader.line_num
        if not any(f.strip() for f in fields):
            continue
        if header is None:
            header = [f.strip().lower().lstrip("\ufeff") for f in fields]
            unknown = [h for h in header if h not in CSV_COLUMNS]
            if unknown:
                errors.append((line, Text(N_("unknown column %(column)s: the columns are "
                                               "%(columns)s"), column=repr(unknown[0][:40]),
                                            columns=", ".join(CSV_COLUMNS))))
                return [], errors
            if len(set(header)) != len(header):
                errors.append((line, Text(N_("a column is named twice in the header"))))
                return [], errors
            if "display_name" not in header:
                errors.append((line, Text(N_("the header has no display_name column (the first "
                                               "row names the columns: display_name, job, qr, "
                                               "ci)"))))
                return [], errors
            continue
        if len(rows) + len(errors) >= MAX_CSV_ROWS:
            errors.append((line, Text(N_("more than %(max)s rows: split the file"),
                                        max=MAX_CSV_ROWS)))
            break
        if len(fields) != len(header):
            errors.append((line, Text(N_("%(n)s fields; the header has %(columns)s"),
                                        n=len(fields), columns=len(header))))
            continue
        values = dict(zip(header, fields))
        try:
            name = _clean(values.get("display_name"), "display_name", required=True)
            job = _clean(values.get("job"), "job", required=False)
            qr = (values.get("qr") or "").strip() or None
            ci = (values.get("ci") or "").strip() or None
            if qr is not None and ci is not None:
                raise WorkerError(Text(N_("give a QR text or a certificate identifier, not both")))
            if qr is not None and len(qr) > hc1.MAX_TEXT:
                raise WorkerError(Text(N_("the QR text is %(n)s characters, more than any QR "
                                          "code holds"), n=len(qr)))
            if ci is not None:
                ci = check_ci(ci)
        except WorkerError as exc:
            errors.append((line, exc.message))
            continue
        rows.append(CsvRow(line, name, job, qr, ci))
    if header is None and not errors:
        errors.append((0, Text(N_("the file has no header row"))))
    elif not rows and not errors:
        errors.append((0, Text(N_("the file has a header but no worker"))))
    return rows, errors


def import_csv(session, config, org: Organisation, data, *, actor: str,
               dry_run: bool = False, at: float | None = None) -> Import:
    """All or nothing: every row is checked (QR texts verified, duplicates in the file and
    on the roster, the quota) before anything is written; one error refuses the file.
    A dry run stops there and writes nothing."""
    at = time.time() if at is None else at
    out = Import(roster=active_count(session, org), quota=org.quota or 0)
    if org.status != APPROVED:
        out.errors.append((0, Text(N_("organisation %(code)s is %(status)s: only an approved "
                                        "organisation has a roster"), code=org.code,
                                     status=status_word(org.status))))
        out.status = 409
        return out
    rows, errors = parse_csv(data)
    out.rows, out.errors = rows, errors
    if errors:
        out.status = 422
        return out
    if not dry_run:
        _lock(session, org)
        out.roster = active_count(session, org)
    linker = Linker(session, config, org)
    seen: dict[str, int] = {}
    on_roster: dict[str, Worker] = {}  # holder and cert keys of the roster: one query
    for worker in list_workers(session, org):
        for key in (worker.holder_key, worker.cert_key):
            if key:
                on_roster[key] = worker
    for row in rows:
        try:
            row.holder_key, row.cert_key = linker.keys(row.qr, row.ci)
        except WorkerError as exc:
            out.errors.append((row.line, exc.message))
            continue
        for key in (row.holder_key, row.cert_key):
            if key is None:
                continue
            if key in seen:
                out.errors.append((row.line, Text(N_("the same person or certificate as line "
                                                       "%(line)s"), line=seen[key])))
                break
            seen[key] = row.line
            other = on_roster.get(key)
            if other is not None:
                out.errors.append((row.line, Text(N_("on the roster already, as worker %(id)s "
                                                       "(%(name)s)"), id=other.id,
                                                    name=other.display_name)))
                break
    if out.errors:
        out.status = 422
        return out
    if out.roster + len(rows) > out.quota:
        out.errors.append((0, Text(N_("%(rows)s workers and the %(roster)s on the roster make "
                                        "%(total)s, more than the quota of %(quota)s: nothing "
                                        "was added"), rows=len(rows), roster=out.roster,
                                     total=out.roster + len(rows), quota=out.quota)))
        out.status = 409
        return out
    if dry_run:
        return out
    for row in rows:
        linked = row.holder_key is not None or row.cert_key is not None
        worker = Worker(organisation_id=org.id, display_name=row.display_name, job=row.job,
                        holder_key=row.holder_key, cert_key=row.cert_key,
                        linked_at=at if linked else None, linked_via="csv" if linked else None,
                        created_at=at, created_by=actor)
        session.add(worker)
        out.workers.append(worker)
    session.flush()
    audit.record(session, actor, "roster.import", org.code, rows=len(rows),
                 workers=[w.id for w in out.workers],
                 linked=sum(1 for r in rows if r.linked))
    out.published = _publish(session, config, org, actor, at)
    return out


# --- enrolment mode --------------------------------------------------------------------
def open_enrolment(session, config, org: Organisation, *, kiosk_id: str, actor: str,
                   worker_id: int | None = None, display_name=None, job="",
                   minutes: int = ENROL_DEFAULT, at: float | None = None
                   ) -> tuple[RosterEnrolment, list]:
    """The next certificate scanned at `kiosk_id` (one of the organisation's) within
    `minutes` links `worker_id`, or a new worker named `display_name` (added now,
    unlinked, counted in the quota). One open enrolment per kiosk: a new one replaces
    it. (enrolment, what to notify: a new worker re-issues nothing yet, so [])."""
    at = time.time() if at is None else at
    _open_for_roster(org, Text(N_("enrolment")))
    if type(minutes) is not int or not ENROL_MINUTES[0] <= minutes <= ENROL_MINUTES[1]:
        raise WorkerError(Text(N_("an enrolment stays open %(min)s to %(max)s minutes"),
                               min=ENROL_MINUTES[0], max=ENROL_MINUTES[1]))
    kiosk = next((k for k in organisations.kiosks_of(session, org) if k.id == kiosk_id), None)
    if kiosk is None:
        raise WorkerError(Text(N_("kiosk %(kiosk)s is not at a control point of %(code)s"),
                               kiosk=repr(str(kiosk_id)[:63]), code=org.code), 422)
    if (worker_id is None) == (display_name is None):
        raise WorkerError(Text(N_("name the worker to link (worker) or the new worker's "
                                  "display_name")))
    published: list = []
    if worker_id is not None:
        worker = worker_of(session, org, worker_id)
    else:
        worker, published = add_worker(session, config, org, display_name=display_name,
                                       job=job, actor=actor, via="kiosk", at=at)
    session.execute(update(RosterEnrolment).where(
        RosterEnrolment.kiosk_id == kiosk.id, RosterEnrolment.closed_at.is_(None))
        .values(closed_at=at, result="replaced"))
    enrolment = RosterEnrolment(organisation_id=org.id, kiosk_id=kiosk.id, worker_id=worker.id,
                                opened_by=actor, opened_at=at, expires_at=at + 60.0 * minutes)
    session.add(enrolment)
    session.flush()
    audit.record(session, actor, "roster.enrol", org.code, kiosk=kiosk.id, worker=worker.id,
                 enrolment=enrolment.id, minutes=minutes)
    return enrolment, published


def enrolment_outcome(enrolment: RosterEnrolment, now: float) -> str:
    """open, linked, expired, cancelled, replaced, duplicate, ..."""
    if enrolment.closed_at is None:
        return "open" if enrolment.expires_at > now else "expired"
    return enrolment.result or "closed"


def recent_enrolments(session, org: Organisation, limit: int = 20) -> list[RosterEnrolment]:
    return list(session.scalars(
        select(RosterEnrolment).where(RosterEnrolment.organisation_id == org.id)
        .order_by(RosterEnrolment.opened_at.desc(), RosterEnrolment.id.desc()).limit(limit)))


def enrolment_dict(enrolment: RosterEnrolment, now: float) -> dict:
    return {"id": enrolment.id, "kiosk": enrolment.kiosk_id, "worker": enrolment.worker_id,
            "opened_by": enrolment.opened_by, "opened_at": enrolment.opened_at,
            "expires_at": enrolment.expires_at, "closed_at": enrolment.closed_at,
            "outcome": enrolment_outcome(enrolment, now)}


class EnrolmentWatch:
    """The ingest's view of the open enrolments: kiosk id -> (enrolment id, opened_at,
    expires_at), reloaded at most every ENROL_REFRESH seconds by one indexed query.
    Per scan the ingest asks `get(kiosk)`: a dict look-up, nothing more (the hot path
    stays as cheap as before for every kiosk not in enrolment mode)."""

    def __init__(self, engine, refresh: float = ENROL_REFRESH, clock=time.time,
                 monotonic=time.monotonic):
        self.engine, self.refresh = engine, refresh
        self.clock, self.monotonic = clock, monotonic
        self.open: dict[str, tuple[int, float, float]] = {}
        self._loaded: float | None = None

    def due(self) -> bool:
        return self._loaded is None or self.monotonic() - self._loaded >= self.refresh

    def reload(self) -> None:
        now = self.clock()
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(RosterEnrolment.kiosk_id, RosterEnrolment.id, RosterEnrolment.opened_at,
                       RosterEnrolment.expires_at)
                .where(RosterEnrolment.closed_at.is_(None), RosterEnrolment.expires_at > now)
                .order_by(RosterEnrolment.opened_at)).all()
        self.open = {kiosk: (eid, opened, expires) for kiosk, eid, opened, expires in rows}
        self._loaded = self.monotonic()

    def postpone(self) -> None:
        """A reload failed: keep what is held, try again after `refresh` seconds."""
        self._loaded = self.monotonic()

    def get(self, kiosk: str, ts: float) -> int | None:
        """The enrolment a scan of `kiosk` at kiosk time `ts` falls in, or None."""
        entry = self.open.get(kiosk)
        if entry is None or not entry[1] <= ts <= entry[2]:
            return None
        return entry[0]

    def forget(self, kiosk: str) -> None:
        """Linked: later scans of the kiosk are ordinary ones (until the next reload)."""
        self.open.pop(kiosk, None)


def link_enrolment(session, config, kiosk: str, identity: bytes, *,
                   scanned_at: float | None = None, at: float | None = None
                   ) -> tuple[str, int | None, list]:
    """The ingest's half: a scan at `kiosk` made (kiosk time `scanned_at`) inside the
    window of its open enrolment, whose sealed holder opened to `identity`. Links the
    enrolment's worker (linked_via "kiosk"), closes the enrolment, re-issues the roster.
    Returns (outcome, organisation id, deployments whose roster was re-issued: for
    rosters.kiosk_messages after the commit). The outcome: linked; duplicate:<id> (the person
    is that other worker already; the enrolment closes); none (no enrolment open for
    that scan: closed or replaced since the ingest's last look); not_approved, removed
    (the enrolment closes). The window is the scan's time, not the commit's: a batch
    committed a moment after the window closed still links. The caller commits."""
    at = time.time() if at is None else at
    scanned_at = at if scanned_at is None else scanned_at
    enrolment = session.scalars(select(RosterEnrolment).where(
        RosterEnrolment.kiosk_id == kiosk, RosterEnrolment.closed_at.is_(None),
        RosterEnrolment.opened_at <= scanned_at, RosterEnrolment.expires_at >= scanned_at)
        .order_by(RosterEnrolment.opened_at.desc()).limit(1).with_for_update()).first()
    if enrolment is None:
        return "none", None, []
    org = session.get(Organisation, enrolment.organisation_id)
    worker = session.get(Worker, enrolment.worker_id) if enrolment.worker_id else None
    outcome, published = "linked", []
    if org is None or org.status != APPROVED:
        outcome = "not_approved"
    elif worker is None or worker.removed_at is not None:
        outcome = "removed"
    else:
        holder_key = rosters.identity_entry_hex(config, org.code, identity, session)
        other = _taken(session, org, holder_key, None, but=worker.id)
        if other is not None:
            outcome = f"duplicate:{other.id}"
        else:
            worker.holder_key, worker.cert_key = holder_key, None
            worker.linked_at, worker.linked_via = at, "kiosk"
            published = _publish(session, config, org, f"kiosk:{kiosk}", at)
    enrolment.closed_at, enrolment.result = at, outcome
    audit.record(session, f"kiosk:{kiosk}", "roster.enrolled", org.code if org else "",
                 enrolment=enrolment.id, worker=enrolment.worker_id, outcome=outcome)
    return outcome, enrolment.organisation_id, published


# --- after the commit ------------------------------------------------------------------
def notify(publisher, published) -> None:
    """Hand the deployments rosters.publish returned to the app's publisher, after the
    commit (without one, the publisher sends the current rosters when it starts)."""
    if published:
        rosters.notify(publisher, published)

