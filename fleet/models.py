"""The fleet's tables (SQLAlchemy 2.x). The same schema on SQLite and PostgreSQL.

Times are epoch seconds (float, UTC): portable between both databases, cheap
to compare and to bucket by hour, and what the kiosks send. The API turns
them into ISO 8601. Schema changes go through Alembic (fleet/migrations).
"""

from __future__ import annotations

from sqlalchemy import (JSON, BigInteger, Boolean, Float, ForeignKey, Index, Integer, LargeBinary,
                        String, Text, UniqueConstraint)
from sqlalchemy import false as sa_false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Kiosk presence states (docs/fleet.md). Unreachable: connected to a district broker whose
# bridge to the core is down (docs/scaling.md): not heard, but not known to be offline.
NEVER_SEEN, ONLINE, DEGRADED, OFFLINE, RETIRED = "never_seen", "online", "degraded", "offline", "retired"
UNREACHABLE = "unreachable"
STATES = (NEVER_SEEN, ONLINE, DEGRADED, UNREACHABLE, OFFLINE, RETIRED)

# Status-list entry kinds and changes.
REVOKED, SUSPENDED, REINSTATED = "revoked", "suspended", "reinstated"
ORG_STATUSES = ("applied", "approved", SUSPENDED, "closed")

# Roles. A ward officer sees only its ward (user.ward_id), as a district officer sees only
# its district; a manager sees and keeps only its organisation (user.organisation_id).
ADMIN, OPERATOR, DISTRICT_OFFICER, HEALTH_OFFICIAL = "admin", "operator", "district_officer", "health_official"
WARD_OFFICER, MANAGER = "ward_officer", "manager"
ROLES = (ADMIN, OPERATOR, DISTRICT_OFFICER, HEALTH_OFFICIAL, WARD_OFFICER, MANAGER)

# Organisations (docs/organisations.md): kinds and the status path
# applied -> approved -> suspended -> approved ... -> closed.
ORG_KINDS = ("business", "cooperative", "household", "agency")
APPLIED, APPROVED, CLOSED = "applied", "approved", "closed"  # and SUSPENDED (below)
WARD_KINDS = ("phuong", "xa", "thi_tran")  # phường / xã / thị trấn


class Base(DeclarativeBase):
    type_annotation_map = {dict: JSON}


class District(Base):
    __tablename__ = "district"
    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    locations: Mapped[list[Location]] = relationship(back_populates="district")
    wards: Mapped[list[Ward]] = relationship(back_populates="district")


class Ward(Base):
    """A phường, xã or thị trấn: district -> ward -> location."""
    __tablename__ = "ward"
    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16), default="phuong")  # WARD_KINDS
    district_id: Mapped[int] = mapped_column(ForeignKey("district.id"))
    district: Mapped[District] = relationship(back_populates="wards")
    __table_args__ = (Index("ix_ward_district", "district_id"),)


class Location(Base):
    __tablename__ = "location"
    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    address: Mapped[str] = mapped_column(String(400), default="")
    district_id: Mapped[int | None] = mapped_column(ForeignKey("district.id"))
    district: Mapped[District | None] = relationship(back_populates="locations")
    kiosks: Mapped[list[Kiosk]] = relationship(back_populates="location")
    # In a ward of its district (None: not placed in a ward yet, seen by district scope only)
    ward_id: Mapped[int | None] = mapped_column(ForeignKey("ward.id"))
    # The organisation whose control point this is (None: a public place, a road block)
    organisation_id: Mapped[int | None] = mapped_column(ForeignKey("organisation.id"))
    # Only the organisation's roster is admitted here (its kiosks check membership: 0010)
    workers_only: Mapped[bool] = mapped_column(Boolean, default=False,
                                               server_default=sa_false())


class Kiosk(Base):
    """A kiosk and its current presence (the presence tracker writes it on change)."""
    __tablename__ = "kiosk"
    id: Mapped[str] = mapped_column(String(63), primary_key=True)  # the MQTT identity
    location_id: Mapped[int | None] = mapped_column(ForeignKey("location.id"))
    location: Mapped[Location | None] = relationship(back_populates="kiosks")
    deployment: Mapped[str] = mapped_column(String(64), default="default")
    policy: Mapped[str] = mapped_column(String(64), default="hcmc-2021")
    state: Mapped[str] = mapped_column(String(16), default=NEVER_SEEN)
    state_since: Mapped[float | None] = mapped_column(Float)
    detail: Mapped[str] = mapped_column(String(400), default="")  # why degraded / offline
    last_seen: Mapped[float | None] = mapped_column(Float)
    session: Mapped[int] = mapped_column(Integer, default=0)
    heartbeat: Mapped[dict | None] = mapped_column(JSON)  # the last heartbeat as received
    enrolled_at: Mapped[float | None] = mapped_column(Float)
    retired_at: Mapped[float | None] = mapped_column(Float)
    # the district broker it connects to first (a registered bridge's name), the core
    # being its fallback: its kiosk.toml lists both (`enrol --bridge`, docs/scaling.md)
    bridge: Mapped[str | None] = mapped_column(String(32))
    # Gap tracking (fleet/presence.py, docs/fleet.md#gaps), from heartbeats' seq/confirmed:
    # the highest seq the kiosk said it decided; the watermark up to which the fleet has
    # counted what it holds; the decisions in counted windows that the fleet does not hold.
    seq_reported: Mapped[int | None] = mapped_column(BigInteger)
    seq_checked: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    seq_missing: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class Bridge(Base):
    """A district broker's bridge to the core (docs/scaling.md): registered by
    `greengate-provision bridge`, its state written by the presence tracker from the
    core's retained gg/v1/bridge/<name>/state."""
    __tablename__ = "bridge"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    # host:port of the district broker as its kiosks name it (their heartbeats' "broker");
    # None: heard of on the core, never registered
    address: Mapped[str | None] = mapped_column(String(260))
    connected: Mapped[bool | None] = mapped_column(Boolean)  # None: never heard
    since: Mapped[float | None] = mapped_column(Float)
    registered_at: Mapped[float | None] = mapped_column(Float)
    # the CRL its broker applies, as its crl-follow said on gg/v1/bridge/<name>/crl
    # (provisioning/crl_follow.py): CRL Number, when said, and why the newest offered was
    # not applied
    crl_number: Mapped[int | None] = mapped_column(BigInteger)
    crl_at: Mapped[float | None] = mapped_column(Float)
    crl_error: Mapped[str | None] = mapped_column(String(200))


class Scan(Base):
    """One decision of one kiosk. (kiosk_id, scan_id, ts) is the idempotency key: QoS 1
    and outbox replays deliver some scans twice, always with the bytes the kiosk stored,
    so with the same ts; they are stored once. ts is in the key because on PostgreSQL
    the table is partitioned by it (one partition a day, fleet/partitions.py), and a
    unique key there must hold the partition key. The primary key there is (id, ts)."""
    __tablename__ = "scan"
    # bigint on PostgreSQL: a nation's fleet passes 2^31 scans in months (retention drops
    # rows, not sequence numbers); SQLite's integer is 64-bit already
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True, autoincrement=True)
    kiosk_id: Mapped[str] = mapped_column(String(63))
    scan_id: Mapped[str] = mapped_column(String(64))
    ts: Mapped[float] = mapped_column(Float)  # kiosk time of the decision
    received: Mapped[float] = mapped_column(Float)  # fleet time of the commit
    decision: Mapped[str] = mapped_column(String(8))
    reason: Mapped[str] = mapped_column(String(40))
    sub_reason: Mapped[str | None] = mapped_column(String(40))
    cert_type: Mapped[str | None] = mapped_column(String(1))
    cert_hash: Mapped[str | None] = mapped_column(String(64))  # hex, as in the status list
    holder: Mapped[str | None] = mapped_column(String(64))  # keyed pseudonym, hex
    policy: Mapped[str] = mapped_column(String(64))
    # Where the kiosk stood at ingest time: a kiosk moved later keeps its history.
    location_id: Mapped[int | None] = mapped_column(Integer)
    district_id: Mapped[int | None] = mapped_column(Integer)
    seq: Mapped[int | None] = mapped_column(BigInteger)  # the kiosk's sequence number, if sent
    __table_args__ = (
        UniqueConstraint("kiosk_id", "scan_id", "ts", name="uq_scan_kiosk_scan_ts"),
        # covering for the hourly volumes (ts range, count by decision): the stats read
        # hundreds of thousands of rows a day without touching the table
        Index("ix_scan_ts_decision", "ts", "decision"),
        Index("ix_scan_location_ts", "location_id", "ts"),
        Index("ix_scan_district_ts", "district_id", "ts"),  # district stats, officer's scans
        Index("ix_scan_kiosk_ts", "kiosk_id", "ts"),  # silent kiosks, a kiosk's last scan
        Index("ix_scan_cert_hash", "cert_hash"),
        Index("ix_scan_holder", "holder"),
        # gap counting (fleet/gaps.py): what a kiosk's seq window holds. One index only:
        # every index costs the ingest's insert rate.
        Index("ix_scan_kiosk_seq", "kiosk_id", "seq"),
    )


class ScanSummary(Base):
    """Decisions a kiosk could only count (its outbox was full): added to the volumes."""
    __tablename__ = "scan_summary"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kiosk_id: Mapped[str] = mapped_column(String(63))
    summary_id: Mapped[str] = mapped_column(String(64))
    hour: Mapped[int] = mapped_column(Integer)
    decision: Mapped[str] = mapped_column(String(8))
    reason: Mapped[str] = mapped_column(String(40))
    count: Mapped[int] = mapped_column(Integer)
    first: Mapped[float] = mapped_column(Float)
    last: Mapped[float] = mapped_column(Float)
    location_id: Mapped[int | None] = mapped_column(Integer)
    district_id: Mapped[int | None] = mapped_column(Integer)
    __table_args__ = (UniqueConstraint("kiosk_id", "summary_id", name="uq_summary_kiosk_id"),
                      Index("ix_summary_hour", "hour"))


class ScanHour(Base):
    """Scans of one closed UTC hour counted per place, decision and reason: what the
    dashboard's day figures read instead of the day's scans (fleet/scan_hours.py). The
    rollup (`greengate-fleet scans rollup`) rewrites an hour's rows whole."""
    __tablename__ = "scan_hour"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True, autoincrement=True)
    hour: Mapped[int] = mapped_column(Integer)  # epoch seconds of its start
    district_id: Mapped[int | None] = mapped_column(Integer)
    location_id: Mapped[int | None] = mapped_column(Integer)
    decision: Mapped[str] = mapped_column(String(8))
    reason: Mapped[str] = mapped_column(String(40))
    sub_reason: Mapped[str | None] = mapped_column(String(40))
    count: Mapped[int] = mapped_column(Integer)
    __table_args__ = (Index("ix_scan_hour_hour", "hour"),)


class ScanHourDirty(Base):
    """An hour rolled up already that got scans since (a kiosk's outbox replayed late):
    read from the scans until the rollup counts it again and deletes this row."""
    __tablename__ = "scan_hour_dirty"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True, autoincrement=True)
    hour: Mapped[int] = mapped_column(Integer)
    at: Mapped[float] = mapped_column(Float)
    __table_args__ = (Index("ix_scan_hour_dirty_hour", "hour"),)


class ScanRollup(Base):
    """One row: every hour before `through` is counted in scan_hour (or marked dirty)."""
    __tablename__ = "scan_rollup"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    through: Mapped[int] = mapped_column(Integer)
    at: Mapped[float] = mapped_column(Float)  # when the rollup last moved `through`


QUARANTINE_KINDS = ("scan", "summary", "heartbeat", "presence", "bridge", "unknown")


class QuarantinedMessage(Base):
    """A message the ingest refused (it did not parse, or its row could not be written
    for a reason of its own): kept for a human, never retried (fleet/quarantine.py).
    Every text column holds only what fleet/quarantine.py cleaned and truncated."""
    __tablename__ = "quarantine"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    received: Mapped[float] = mapped_column(Float)  # fleet time
    kiosk_id: Mapped[str | None] = mapped_column(String(63))  # None: the topic named none
    topic: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(20))  # QUARANTINE_KINDS
    reason: Mapped[str] = mapped_column(String(40))  # a short label
    detail: Mapped[str] = mapped_column(String(300), default="")  # the sentence
    raw: Mapped[bytes] = mapped_column(LargeBinary)  # the first RAW_BYTES of the payload
    size: Mapped[int] = mapped_column(Integer)  # the whole payload's length
    __table_args__ = (Index("ix_quarantine_kiosk_received", "kiosk_id", "received"),
                      Index("ix_quarantine_received", "received"))


class PresenceEvent(Base):
    """Every presence transition of every kiosk."""
    __tablename__ = "presence_event"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kiosk_id: Mapped[str] = mapped_column(String(63))
    at: Mapped[float] = mapped_column(Float)
    previous: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    session: Mapped[int] = mapped_column(Integer, default=0)
    detail: Mapped[str] = mapped_column(String(400), default="")
    __table_args__ = (Index("ix_presence_kiosk_at", "kiosk_id", "at"),)


class Outage(Base):
    """A kiosk offline from `started` until `ended` (None while it lasts)."""
    __tablename__ = "outage"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kiosk_id: Mapped[str] = mapped_column(String(63))
    started: Mapped[float] = mapped_column(Float)
    ended: Mapped[float | None] = mapped_column(Float)
    cause: Mapped[str] = mapped_column(String(200), default="")  # last will, timeout, stop
    __table_args__ = (Index("ix_outage_kiosk_started", "kiosk_id", "started"),)


class StatusEntry(Base):
    """The current status of one certificate in one deployment's list."""
    __tablename__ = "status_entry"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    deployment: Mapped[str] = mapped_column(String(64))
    key: Mapped[bytes] = mapped_column(LargeBinary(16))  # first 16 bytes of SHA-256(ci)
    ci: Mapped[str | None] = mapped_column(String(200))  # when the fleet was told it
    kind: Mapped[str] = mapped_column(String(16))  # revoked | suspended
    until: Mapped[float | None] = mapped_column(Float)  # suspended until
    reason: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    __table_args__ = (UniqueConstraint("deployment", "key", name="uq_status_deployment_key"),)


class StatusChange(Base):
    """What changed in which list version: deltas are folded from these."""
    __tablename__ = "status_change"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    deployment: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)  # the list version this change is part of
    key: Mapped[bytes] = mapped_column(LargeBinary(16))
    kind: Mapped[str] = mapped_column(String(16))  # revoked | suspended | reinstated
    until: Mapped[float | None] = mapped_column(Float)
    __table_args__ = (Index("ix_status_change_dep_version", "deployment", "version"),)


class TrustEntry(Base):
    """An issuer (DSC) certificate kiosks trust."""
    __tablename__ = "trust_entry"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    deployment: Mapped[str] = mapped_column(String(64))
    kid: Mapped[str] = mapped_column(String(16))  # hex of the 8-byte key id
    certificate: Mapped[bytes] = mapped_column(LargeBinary)  # DER
    subject: Mapped[str] = mapped_column(String(400), default="")
    country: Mapped[str] = mapped_column(String(2), default="")
    not_after: Mapped[float | None] = mapped_column(Float)
    added_by: Mapped[str] = mapped_column(String(100))
    added_at: Mapped[float] = mapped_column(Float)
    removed_at: Mapped[float | None] = mapped_column(Float)
    removed_by: Mapped[str | None] = mapped_column(String(100))


class Policy(Base):
    """A named entry policy (greengate/policy.py documents) of one deployment."""
    __tablename__ = "policy"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    deployment: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(64))
    document: Mapped[dict] = mapped_column(JSON)
    updated_by: Mapped[str] = mapped_column(String(100))
    updated_at: Mapped[float] = mapped_column(Float)
    __table_args__ = (UniqueConstraint("deployment", "name", name="uq_policy_deployment_name"),)


class ValueSet(Base):
    """One EU value set (its JSON document) of one deployment (fleet/value_sets.py)."""
    __tablename__ = "value_set"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    deployment: Mapped[str] = mapped_column(String(64))
    value_set_id: Mapped[str] = mapped_column(String(64))
    document: Mapped[dict] = mapped_column(JSON)
    updated_by: Mapped[str] = mapped_column(String(100))
    updated_at: Mapped[float] = mapped_column(Float)
    __table_args__ = (UniqueConstraint("deployment", "value_set_id",
                                       name="uq_value_set_deployment_id"),)


class PublishedBundle(Base):
    """Every bundle the fleet signed: served over HTTP, republished retained on MQTT."""
    __tablename__ = "bundle"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    deployment: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # trust | policy | status | status-delta | status-head
    version: Mapped[int] = mapped_column(Integer)
    base: Mapped[int | None] = mapped_column(Integer)  # status-delta: applies on this version
    issued_at: Mapped[int] = mapped_column(Integer)
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    etag: Mapped[str] = mapped_column(String(64))  # hex SHA-256 of raw
    __table_args__ = (Index("ix_bundle_dep_kind_version", "deployment", "kind", "version"),)


class ListVersion(Base):
    """One version of one deployment's trust list, policies or status list: who made it,
    why, how many entries changed. The unique key is what keeps two concurrent changes
    from taking the same version number (the loser retries, fleet/bundles.py)."""
    __tablename__ = "list_version"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    deployment: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # trust | policy | status
    version: Mapped[int] = mapped_column(Integer)
    at: Mapped[float] = mapped_column(Float)
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(64))  # status.revoke, trust.add, refresh, ...
    changes: Mapped[int] = mapped_column(Integer, default=0)
    __table_args__ = (UniqueConstraint("deployment", "kind", "version",
                                       name="uq_list_version_dep_kind_version"),)


class User(Base):
    __tablename__ = "user_account"  # "user" is reserved in PostgreSQL
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(100), unique=True)
    password_hash: Mapped[str] = mapped_column(String(300))
    role: Mapped[str] = mapped_column(String(32))
    district_id: Mapped[int | None] = mapped_column(ForeignKey("district.id"))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Float)
    # Login cookies carry the generation they were made in; logout, disabling and a new
    # password raise it, which ends every session of the user
    # (docs/dashboard.md#ending-sessions).
    session_generation: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    ward_id: Mapped[int | None] = mapped_column(ForeignKey("ward.id"))  # ward officers
    organisation_id: Mapped[int | None] = mapped_column(ForeignKey("organisation.id"))  # managers


class ApiToken(Base):
    """A bearer token for automation; only its SHA-256 is stored."""
    __tablename__ = "api_token"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id"))
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[float] = mapped_column(Float)
    last_used: Mapped[float | None] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float)


class AuditLog(Base):
    """Who changed what, when and why: lists, policies, trust, devices, users."""
    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(Float)
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(200), default="")
    detail: Mapped[dict | None] = mapped_column(JSON)
    __table_args__ = (Index("ix_audit_at", "at"),)


class KioskCertificate(Base):
    """A client certificate the fleet CA issued to a kiosk (fleet/pki.py). Retiring
    the kiosk revokes them all; the broker's CRL is made from the revoked ones."""
    __tablename__ = "kiosk_certificate"
    serial: Mapped[str] = mapped_column(String(40), primary_key=True)  # hex
    kiosk_id: Mapped[str] = mapped_column(String(63))
    issued_at: Mapped[float] = mapped_column(Float)
    not_after: Mapped[float] = mapped_column(Float)
    via: Mapped[str] = mapped_column(String(16))  # bundle | token
    revoked_at: Mapped[float | None] = mapped_column(Float)
    __table_args__ = (Index("ix_kiosk_certificate_kiosk", "kiosk_id"),)


class EnrolmentToken(Base):
    """A one-time enrolment token (docs/provisioning.md): only its SHA-256 is stored;
    `used_at` is set in the same statement that checks it is still unused."""
    __tablename__ = "enrolment_token"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    kiosk_id: Mapped[str] = mapped_column(String(63))
    created_at: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str] = mapped_column(String(100))
    expires_at: Mapped[float] = mapped_column(Float)
    used_at: Mapped[float | None] = mapped_column(Float)
    used_from: Mapped[str | None] = mapped_column(String(64))


class EnrolmentAttempt(Base):
    """Failed token exchanges, for the per-address rate limit."""
    __tablename__ = "enrolment_attempt"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(Float)
    address: Mapped[str] = mapped_column(String(64))
    __table_args__ = (Index("ix_enrolment_attempt_address_at", "address", "at"),)


class LoginFailure(Base):
    """Failed dashboard logins, for the per-account and per-address limits."""
    __tablename__ = "login_failure"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(Float)
    username: Mapped[str] = mapped_column(String(100))
    address: Mapped[str] = mapped_column(String(64))
    __table_args__ = (Index("ix_login_failure_username_at", "username", "at"),
                      Index("ix_login_failure_address_at", "address", "at"),
                      Index("ix_login_failure_username_address_at", "username", "address", "at"))


# --- alerts (fleet/alerts.py, docs/dashboard.md#alerts) -------------------------------
# Rule kinds, and what happened to an episode.
KIOSK_OFFLINE, DISTRICT_LOSS = "kiosk_offline", "district_loss"
BRIDGE_DOWN = "bridge_down"  # a district broker's bridge to the core (docs/scaling.md)
ALERT_KINDS = (KIOSK_OFFLINE, DISTRICT_LOSS, BRIDGE_DOWN)


class AlertRule(Base):
    """Who is told when a kiosk goes offline, or a district loses more than
    `threshold` % of its kiosks; all districts (district_id NULL) or one. Admins edit
    rules; they are disabled, never deleted, so the notifications keep their rule."""
    __tablename__ = "alert_rule"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(16))  # kiosk_offline | district_loss | bridge_down
    district_id: Mapped[int | None] = mapped_column(ForeignKey("district.id"))
    threshold: Mapped[float | None] = mapped_column(Float)  # district_loss: percent
    webhook_url: Mapped[str] = mapped_column(String(500), default="")
    emails: Mapped[str] = mapped_column(String(1000), default="")  # comma-separated
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_by: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[float] = mapped_column(Float)
    updated_by: Mapped[str] = mapped_column(String(100))
    updated_at: Mapped[float] = mapped_column(Float)


class AlertEpisode(Base):
    """One thing a rule alerted on: a kiosk's outage (outage_id; the unique key makes
    "each outage alerts once per rule" a property of the database), a district's
    loss from crossing the threshold until it falls back, or a district bridge down
    (bridge) until it is back. `resolution` is set when it
    ends: recovered (a recovery is sent), or retired / rule disabled / out of scope
    (nothing is sent)."""
    __tablename__ = "alert_episode"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rule_id: Mapped[int] = mapped_column(ForeignKey("alert_rule.id"))
    kiosk_id: Mapped[str | None] = mapped_column(String(63))
    district_id: Mapped[int | None] = mapped_column(Integer)
    outage_id: Mapped[int | None] = mapped_column(Integer)
    bridge: Mapped[str | None] = mapped_column(String(32))  # bridge_down: its name
    started: Mapped[float] = mapped_column(Float)  # the outage's start / the crossing
    alerted_at: Mapped[float] = mapped_column(Float)
    ended_at: Mapped[float | None] = mapped_column(Float)
    resolution: Mapped[str | None] = mapped_column(String(32))
    __table_args__ = (UniqueConstraint("rule_id", "outage_id", name="uq_alert_episode_outage"),
                      Index("ix_alert_episode_open", "rule_id", "ended_at"))


class AlertDelivery(Base):
    """One message (alert or recovery) to one target (the webhook, or one address).
    The payload is frozen when the message is decided, so a retry sends the same
    thing. status: pending (next_at: when to try) | sent | failed (gave up) |
    cancelled (its rule was disabled)."""
    __tablename__ = "alert_delivery"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    episode_id: Mapped[int] = mapped_column(ForeignKey("alert_episode.id"))
    event: Mapped[str] = mapped_column(String(16))  # alert | recovery
    channel: Mapped[str] = mapped_column(String(8))  # webhook | email
    target: Mapped[str] = mapped_column(String(500))
    payload: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_at: Mapped[float | None] = mapped_column(Float)
    sent_at: Mapped[float | None] = mapped_column(Float)
    last_error: Mapped[str] = mapped_column(String(400), default="")
    __table_args__ = (UniqueConstraint("episode_id", "event", "channel", "target",
                                       name="uq_alert_delivery_message"),
                      Index("ix_alert_delivery_status_next", "status", "next_at"),
                      Index("ix_alert_delivery_created", "created_at"))


# --- organisations, rosters, compliance (docs/organisations.md) -----------------------
class Organisation(Base):
    """A business, cooperative, household business or agency that a district lets open;
    its control points are locations (location.organisation_id), its kiosks theirs."""
    __tablename__ = "organisation"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(300))
    tax_code: Mapped[str | None] = mapped_column(String(20), unique=True)  # mã số thuế
    kind: Mapped[str] = mapped_column(String(16))  # ORG_KINDS
    sector: Mapped[str] = mapped_column(String(100), default="")
    district_id: Mapped[int] = mapped_column(ForeignKey("district.id"))
    ward_id: Mapped[int | None] = mapped_column(ForeignKey("ward.id"))
    contact_name: Mapped[str] = mapped_column(String(200), default="")
    contact_phone: Mapped[str] = mapped_column(String(40), default="")
    contact_email: Mapped[str] = mapped_column(String(200), default="")
    status: Mapped[str] = mapped_column(String(16), default="applied")  # ORG_STATUSES
    status_since: Mapped[float] = mapped_column(Float)
    approved_at: Mapped[float | None] = mapped_column(Float)
    quota: Mapped[int | None] = mapped_column(Integer)  # workers the district allows
    # while suspended: why, and which role may lift it (ward_officer after a case, ...)
    suspended_reason: Mapped[str] = mapped_column(String(400), default="")
    lift_by: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[float] = mapped_column(Float)
    __table_args__ = (Index("ix_organisation_district_status", "district_id", "status"),
                      Index("ix_organisation_ward_status", "ward_id", "status"))


class OrganisationStatusChange(Base):
    """The organisation's status history: every change, by whom and why."""
    __tablename__ = "organisation_status_change"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisation.id"))
    at: Mapped[float] = mapped_column(Float)
    old_status: Mapped[str | None] = mapped_column(String(16))
    new_status: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(100))
    reason: Mapped[str] = mapped_column(String(400), default="")
    detail: Mapped[dict | None] = mapped_column(JSON)  # quota, lift_by, the case, ...
    __table_args__ = (Index("ix_org_status_change_org_at", "organisation_id", "at"),)


class Worker(Base):
    """One person on an organisation's roster. The fleet keeps the display name and job;
    kiosks get only keyed hashes of the holder (docs/rosters.md). holder_key: the
    fleet-side holder identifier (linked by a scan in enrolment mode or by an uploaded QR
    text); cert_key: a certificate identifier's key when only that was uploaded."""
    __tablename__ = "worker"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisation.id"))
    display_name: Mapped[str] = mapped_column(String(200))
    job: Mapped[str] = mapped_column(String(200), default="")
    holder_key: Mapped[str | None] = mapped_column(String(64))
    cert_key: Mapped[str | None] = mapped_column(String(64))
    linked_at: Mapped[float | None] = mapped_column(Float)
    linked_via: Mapped[str | None] = mapped_column(String(16))  # kiosk | csv | api
    created_at: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str] = mapped_column(String(100))
    removed_at: Mapped[float | None] = mapped_column(Float)
    __table_args__ = (Index("ix_worker_org", "organisation_id", "removed_at"),
                      Index("ix_worker_holder", "organisation_id", "holder_key"))


class RosterEnrolment(Base):
    """Enrolment mode a manager opened on one of the organisation's kiosks: the next
    certificate scanned there (green or not) links `worker_id` (or a new worker)."""
    __tablename__ = "roster_enrolment"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisation.id"))
    kiosk_id: Mapped[str] = mapped_column(String(63))
    worker_id: Mapped[int | None] = mapped_column(ForeignKey("worker.id"))
    opened_by: Mapped[str] = mapped_column(String(100))
    opened_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    closed_at: Mapped[float | None] = mapped_column(Float)
    result: Mapped[str | None] = mapped_column(String(200))  # linked | expired | cancelled | ...
    __table_args__ = (Index("ix_roster_enrolment_kiosk_open", "kiosk_id", "closed_at"),)


class Reminder(Base):
    """A reminder an officer gave an organisation (not checking, not scanning...):
    counted; past three the organisation is flagged for a stop."""
    __tablename__ = "reminder"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisation.id"))
    at: Mapped[float] = mapped_column(Float)
    actor: Mapped[str] = mapped_column(String(100))
    note: Mapped[str] = mapped_column(String(400), default="")
    __table_args__ = (Index("ix_reminder_org_at", "organisation_id", "at"),)


class WeeklyReport(Base):
    """A district's or a ward's weekly compliance report, as made (figures kept, PDF and
    CSV as sent): one per scope and week; made again on demand replaces it."""
    __tablename__ = "weekly_report"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(String(16))  # district | ward
    scope_id: Mapped[int] = mapped_column(Integer)
    week: Mapped[str] = mapped_column(String(10))  # the Monday it starts, YYYY-MM-DD (UTC+7)
    language: Mapped[str] = mapped_column(String(8), default="vi")
    made_at: Mapped[float] = mapped_column(Float)
    figures: Mapped[dict] = mapped_column(JSON)
    pdf: Mapped[bytes] = mapped_column(LargeBinary)
    csv: Mapped[str] = mapped_column(Text)
    emailed_at: Mapped[float | None] = mapped_column(Float)
    __table_args__ = (UniqueConstraint("scope", "scope_id", "week", "language",
                                       name="uq_weekly_report"),)
