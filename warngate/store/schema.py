"""Tables. The ``deliveries`` table is the queue (transactional outbox).

Times on the hot delivery path are epoch seconds (float): they compare and index the same
way on SQLite and PostgreSQL and cost nothing to convert.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite only makes INTEGER PRIMARY KEY an alias of rowid (autoincrement); BigInteger elsewhere.
BigId = BigInteger().with_variant(Integer(), "sqlite")

regions = Table(
    "regions",
    metadata,
    Column("code", String(32), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("level", String(16), nullable=False),  # county | township | village | grid
    Column("parent_code", String(32), nullable=True, index=True),
    Column("township_code", String(32), nullable=True, index=True),
    Column("village_code", String(32), nullable=True, index=True),
    Column("lat", Float, nullable=True),
    Column("lon", Float, nullable=True),
    Column("polygon", Text, nullable=True),  # GeoJSON geometry
)

contacts = Table(
    "contacts",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("external_id", String(64), nullable=False, unique=True),
    Column("name", String(200), nullable=False),
    #: E.164; NULL for a household without a phone, reached through its bound grid worker.
    Column("phone", String(20), nullable=True),
    Column("role", String(32), nullable=False),
    Column("region_code", String(32), nullable=False),
    Column("township_code", String(32), nullable=True),
    Column("village_code", String(32), nullable=True),
    Column("grid_code", String(32), nullable=True),
    Column("supervisor_id", BigId, ForeignKey("contacts.id"), nullable=True),
    Column("responsible_id", BigId, ForeignKey("contacts.id"), nullable=True),
    Column("vulnerable", Boolean, nullable=False, server_default=text("false")),
    #: Why (elderly living alone, disabled, bed-ridden ...): shown on follow-up lists.
    Column("vulnerable_reason", Text, nullable=True),
    Column("address", Text, nullable=True),
    Column("lang", String(16), nullable=False, server_default="zh-CN"),
    #: Off a township's roster: kept for history, never planned again.
    Column("active", Boolean, nullable=False, server_default=text("true")),
    Index("ix_contacts_role_township", "role", "township_code"),
    Index("ix_contacts_role_village", "role", "village_code"),
    Index("ix_contacts_grid", "grid_code"),
    Index("ix_contacts_phone", "phone"),
)

speakers = Table(
    "speakers",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("region_code", String(32), nullable=False),
    Column("township_code", String(32), nullable=True, index=True),
    Column("village_code", String(32), nullable=True, index=True),
    Column("online", Boolean, nullable=True),
    Column("status_at", Float, nullable=True),
)

alerts = Table(
    "alerts",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("source", String(32), nullable=False),  # cap | composer | hydrology
    Column("sender", String(200), nullable=False),
    Column("identifier", String(200), nullable=False),
    Column("sent", String(40), nullable=False),  # as in CAP, ISO 8601 with offset
    Column("msg_type", String(16), nullable=False, server_default="Alert"),
    Column("references", Text, nullable=True),
    Column("status", String(16), nullable=False, server_default="Actual"),
    Column("level", String(8), nullable=False),
    Column("event", String(200), nullable=False),
    Column("headline", Text, nullable=False),
    Column("description", Text, nullable=False, server_default=""),
    Column("instruction", Text, nullable=False, server_default=""),
    Column("areas", JSON, nullable=False),  # list of region codes asked for
    Column("onset", Float, nullable=True),
    Column("expires", Float, nullable=True),
    Column("raw", Text, nullable=True),  # the source as text, for display
    #: CAP: the message's bytes exactly as received (any encoding); ``raw`` is their text.
    Column("raw_bytes", LargeBinary, nullable=True),
    #: Flaws accepted with the message: [{rule, element, message}] (docs/feeds.md, Leniency).
    Column("warnings", JSON, nullable=True),
    #: Other languages' texts (CAP info blocks): {lang: {event, headline, description,
    #: instruction}}; the columns above hold the primary (Chinese) text.
    Column("translations", JSON, nullable=True),
    Column("state", String(24), nullable=False),
    Column("supersedes_id", BigId, ForeignKey("alerts.id"), nullable=True),
    Column("created_by", String(100), nullable=False),
    Column("approved_by", String(100), nullable=True),
    Column("cancelled_by", String(100), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    # Planning progress: the alert is committed first, its deliveries in chunks that each
    # advance this cursor in the same transaction, so a crash resumes planning exactly.
    Column("plan_stage", Integer, nullable=False, server_default="0"),
    Column("plan_cursor", String(32), nullable=True),
    Column("planned_count", BigInteger, nullable=False, server_default="0"),
    Column("no_recipients", Boolean, nullable=False, server_default=text("false")),
    #: A drill (status Exercise) marked community-wide: households take part too.
    Column("community_drill", Boolean, nullable=False, server_default=text("false")),
    UniqueConstraint("sender", "identifier", "sent", name="uq_alerts_sender_identifier_sent"),
    Index("ix_alerts_state", "state"),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    # No foreign key: alerts are never deleted, every writer inserts deliveries of an alert it
    # has just read in the same transaction, and on PostgreSQL the per-row check was 2.3 s of
    # the 8 s it took to plan a million households.
    Column("alert_id", BigId, nullable=False),
    Column("kind", String(8), nullable=False, server_default="alert"),  # alert|update|cancel
    Column("contact_id", BigId, nullable=True),
    Column("speaker_id", String(64), nullable=True),
    #: For an escalation to a supervisor: the person who did not answer.
    Column("on_behalf_of", BigId, nullable=True),
    #: Set on the rows that stand in for an offline or failed loudspeaker (its village's
    #: fallback call): the fact is a column, so a failed call cannot erase it.
    Column("fallback_for_speaker", String(64), nullable=True),
    Column("role", String(32), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("step", Integer, nullable=False, server_default="0"),
    Column("state", String(16), nullable=False, server_default="planned"),
    Column("priority", Integer, nullable=False),
    #: Position of the recipient within its village: claims take rank 1 of every village
    #: before rank 2 of any, so the first seconds reach every village.
    Column("village_rank", Integer, nullable=False, server_default="0"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("due_at", Float, nullable=False),
    Column("lease_until", Float, nullable=True),
    Column("ack_required", Boolean, nullable=False, server_default=text("false")),
    #: When the policy's next step is due if nobody has acknowledged; NULL when none.
    Column("escalate_at", Float, nullable=True),
    Column("provider_ref", String(64), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("township_code", String(32), nullable=True),
    Column("village_code", String(32), nullable=True),
    Column("grid_code", String(32), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("sent_at", Float, nullable=True),
    Column("delivered_at", Float, nullable=True),
    Column("acked_at", Float, nullable=True),
    #: How the person this row is for was settled: ``self`` (they answered) or ``covered``
    #: (a supervisor, staff or their grid worker answered for them); NULL until then.
    Column("acked_how", String(8), nullable=True),
    #: On the last row of a person who must answer: when their escalation ran out (last step
    #: taken, or no supervisor to call) with nobody answering. The duty officers' alarm of
    #: that sweep lists the people it carries (migration 0010).
    Column("silent_at", Float, nullable=True),
    Index(
        "ix_deliveries_due",
        "channel",
        "priority",
        "village_rank",
        sqlite_where=text("state = 'planned'"),
        postgresql_where=text("state = 'planned'"),
    ),
    Index(
        "ix_deliveries_retry",
        "due_at",
        sqlite_where=text("state = 'retry'"),
        postgresql_where=text("state = 'retry'"),
    ),
    Index(
        "ix_deliveries_lease",
        "lease_until",
        sqlite_where=text("state = 'sending'"),
        postgresql_where=text("state = 'sending'"),
    ),
    Index(
        "ix_deliveries_escalate",
        "escalate_at",
        sqlite_where=text("escalate_at IS NOT NULL"),
        postgresql_where=text("escalate_at IS NOT NULL"),
    ),
    # With the village: the accountability report groups an alert's rows by township and
    # village in index order, without sorting them (migration 0011).
    Index("ix_deliveries_alert_township", "alert_id", "township_code", "village_code"),
    Index(
        "ix_deliveries_silent",
        "alert_id",
        "silent_at",
        sqlite_where=text("silent_at IS NOT NULL"),
        postgresql_where=text("silent_at IS NOT NULL"),
    ),
    Index(
        "ix_deliveries_on_behalf_of",
        "on_behalf_of",
        sqlite_where=text("on_behalf_of IS NOT NULL"),
        postgresql_where=text("on_behalf_of IS NOT NULL"),
    ),
    # Only people who must answer are looked up by person (acks, replies, escalation):
    # households stay out of this index, which keeps planning a million of them cheap.
    Index(
        "ix_deliveries_ack_contact",
        "contact_id",
        "alert_id",
        sqlite_where=text("ack_required"),
        postgresql_where=text("ack_required"),
    ),
    Index(
        "ix_deliveries_speaker",
        "speaker_id",
        sqlite_where=text("speaker_id IS NOT NULL"),
        postgresql_where=text("speaker_id IS NOT NULL"),
    ),
    Index(
        "ix_deliveries_provider_ref",
        "provider_ref",
        sqlite_where=text("provider_ref IS NOT NULL"),
        postgresql_where=text("provider_ref IS NOT NULL"),
    ),
)

#: Every provider event taken in (a status callback, a reply, a key press), by the provider's
#: own id for it: a replay after a restart finds its key here and has no second effect.
provider_events = Table(
    "provider_events",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("source", String(64), nullable=False),  # adapter instance, e.g. "sms-twilio"
    Column("event_key", String(255), nullable=False),  # e.g. "SM123:delivered"
    Column("at", Float, nullable=False),
    UniqueConstraint("source", "event_key", name="uq_provider_events_source_event_key"),
)

receipts = Table(
    "receipts",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("delivery_id", BigId, nullable=False, index=True),
    Column("status", String(24), nullable=False),  # provider's words: delivered, failed, ...
    Column("detail", Text, nullable=True),
    Column("at", Float, nullable=False),
)

acknowledgements = Table(
    "acknowledgements",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("delivery_id", BigId, nullable=False, index=True),
    Column("alert_id", BigId, nullable=False, index=True),
    Column("contact_id", BigId, nullable=True),
    Column("speaker_id", String(64), nullable=True),
    Column("via", String(16), nullable=False),  # sms_reply | dtmf | link | ui | speaker
    Column("detail", Text, nullable=True),
    Column("at", Float, nullable=False),
    #: Whose 叫应 this settles (the person who had to answer) and who answered: ``self``,
    #: ``supervisor`` (on the person's behalf), ``staff`` (recording a call or a visit) or
    #: ``grid_worker`` (in person); ``actor`` names the staff user or contact who recorded.
    Column("person_id", BigId, nullable=True),
    Column("answered_by", String(16), nullable=False, server_default="self"),
    Column("actor", String(100), nullable=True),
    Column("note", Text, nullable=True),
)

#: A household its bound grid worker must reach: its messages failed, it has no phone, or it
#: is vulnerable. One row per alert and household; the grid worker records the outcome.
followups = Table(
    "followups",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("alert_id", BigId, nullable=False),
    Column("household_id", BigId, nullable=False),
    Column("grid_worker_id", BigId, nullable=True),
    Column("reason", String(16), nullable=False),  # failed | no_phone | vulnerable
    Column("township_code", String(32), nullable=True),
    Column("village_code", String(32), nullable=True),
    Column("grid_code", String(32), nullable=True),
    Column("created_at", Float, nullable=False),
    #: When the grid worker was sent the list holding this household.
    Column("notified_at", Float, nullable=True),
    #: informed | evacuated (转移到位) | refused | not_found; NULL while open.
    Column("outcome", String(16), nullable=True),
    Column("people_moved", Integer, nullable=True),
    Column("outcome_at", Float, nullable=True),
    Column("recorded_by", String(100), nullable=True),
    Column("note", Text, nullable=True),
    UniqueConstraint("alert_id", "household_id", name="uq_followups_alert_household"),
    Index("ix_followups_alert_worker", "alert_id", "grid_worker_id"),
    Index("ix_followups_alert_township", "alert_id", "township_code"),
)

#: What people in the field report back: an SMS reply that is not an acknowledgement, or a
#: grid worker's report from the mobile page.
field_reports = Table(
    "field_reports",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("alert_id", BigId, nullable=True, index=True),
    Column("contact_id", BigId, nullable=True),
    Column("phone", String(20), nullable=True),
    Column("role", String(32), nullable=True),
    Column("township_code", String(32), nullable=True, index=True),
    Column("village_code", String(32), nullable=True),
    Column("grid_code", String(32), nullable=True),
    Column("source", String(16), nullable=False),  # sms | mobile | api
    Column("text", Text, nullable=False, server_default=""),
    Column("trapped", Integer, nullable=True),
    Column("evacuated", Integer, nullable=True),
    Column("damage", Text, nullable=True),
    #: When it was passed on to the duty officer (by the policy's field_reports rule).
    Column("forwarded_at", Float, nullable=True),
)

#: 24-hour duty: who is on duty for a township or the county, and when.
duty_shifts = Table(
    "duty_shifts",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("region_code", String(32), nullable=False),
    Column("contact_id", BigId, nullable=False),
    Column("starts_at", Float, nullable=False),
    Column("ends_at", Float, nullable=False),
    #: The handover: who handed over and what they said.
    Column("handed_over_by", String(100), nullable=True),
    Column("handover_note", Text, nullable=True),
    Column("created_at", Float, nullable=False),
    Index("ix_duty_shifts_region_start", "region_code", "starts_at"),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("actor", String(100), nullable=False),
    Column("action", String(32), nullable=False),  # compose | approve | cancel | ingest ...
    Column("alert_id", BigId, nullable=True, index=True),
    Column("detail", JSON, nullable=True),
)

rejected_inputs = Table(
    "rejected_inputs",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("entry_point", String(64), nullable=False),  # e.g. "POST /api/v1/cap"
    Column("source", String(200), nullable=True),  # token name, feed URL, file path
    Column("reason", Text, nullable=False),
    Column("content_type", String(100), nullable=True),
    Column("body", LargeBinary, nullable=True),
    Column("truncated", Boolean, nullable=False, server_default=text("false")),
)

feed_entries = Table(
    "feed_entries",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("feed", String(100), nullable=False),
    #: The entry's id and updated time (ATOM), guid (RSS), or a digest of the message.
    Column("entry_key", String(500), nullable=False),
    Column("url", Text, nullable=True),
    Column("outcome", String(500), nullable=False),
    Column("at", Float, nullable=False),
    UniqueConstraint("feed", "entry_key", name="uq_feed_entries_feed_entry_key"),
)

hydro_readings = Table(
    "hydro_readings",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("station", String(64), nullable=False),
    Column("at", Float, nullable=False),
    Column("level_m", Float, nullable=False),
    Column("received_at", Float, nullable=False),
    UniqueConstraint("station", "at", name="uq_hydro_readings_station_at"),
)

hydro_state = Table(
    "hydro_state",
    metadata,
    Column("station", String(64), primary_key=True),
    Column("colour", String(8), nullable=True),
    Column("pending", String(8), nullable=True),
    Column("pending_count", Integer, nullable=False, server_default="0"),
    Column("last_at", Float, nullable=True),
    Column("episode", Integer, nullable=False, server_default="0"),
    Column("seq", Integer, nullable=False, server_default="0"),
    Column("last_ref", Text, nullable=True),
)

#: An alert in these states is still being delivered: its messages go out, its people are
#: escalated, its links acknowledge.
LIVE_ALERT_STATES = ("dispatching", "active")

ALERT_STATES = (
    "pending_approval",
    "dispatching",
    "active",
    "cancelled",
    "superseded",
    "expired",
    "ignored",
)

DELIVERY_STATES = (
    "planned",
    "retry",
    "sending",
    "sent",
    "delivered",
    "acknowledged",
    "failed",
    "cancelled",
    "superseded",
    "expired",
)
