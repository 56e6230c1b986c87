"""Versioned schema migrations, applied on start.

Each migration is a list of statements written once for both dialects: ``{pk}`` becomes an
auto-increment primary key, ``{json}`` the JSON column type, ``{real}`` a float type. Times are
stored as ISO 8601 UTC text with a fixed format so they sort and compare as text on both.
Never edit a released migration: add the next one.
"""

from __future__ import annotations

MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (
        1,
        "initial schema",
        [
            """CREATE TABLE raw_records (
                id {pk},
                source TEXT NOT NULL,
                channel TEXT NOT NULL,
                source_ref TEXT NOT NULL,
                received_at TEXT NOT NULL,
                ingested_at TEXT NOT NULL,
                payload {json} NOT NULL,
                attachments {json} NOT NULL,
                raw_blob TEXT,
                state TEXT NOT NULL DEFAULT 'pending',
                state_reason TEXT,
                case_id TEXT,
                processed_at TEXT,
                UNIQUE (source, source_ref)
            )""",
            "CREATE INDEX raw_records_state ON raw_records (state, id)",
            """CREATE TABLE checkpoints (
                source TEXT PRIMARY KEY,
                value {json} NOT NULL,
                updated_at TEXT NOT NULL
            )""",
            """CREATE TABLE connector_stats (
                source TEXT PRIMARY KEY,
                last_run_at TEXT,
                last_success_at TEXT,
                last_error TEXT,
                last_error_at TEXT,
                records_total BIGINT NOT NULL DEFAULT 0,
                duplicates_total BIGINT NOT NULL DEFAULT 0,
                errors_total BIGINT NOT NULL DEFAULT 0
            )""",
            """CREATE TABLE reference_counters (
                day TEXT PRIMARY KEY,
                last BIGINT NOT NULL
            )""",
            """CREATE TABLE cases (
                case_id TEXT PRIMARY KEY,
                reference TEXT NOT NULL UNIQUE,
                source TEXT NOT NULL,
                source_ref TEXT NOT NULL,
                channel TEXT NOT NULL,
                kind TEXT NOT NULL,
                category_code TEXT,
                department TEXT,
                urgency TEXT NOT NULL,
                status TEXT NOT NULL DEFAULT 'new',
                received_at TEXT NOT NULL,
                created_at TEXT NOT NULL,
                updated_at TEXT NOT NULL,
                lat {real},
                lon {real},
                cell TEXT,
                district TEXT,
                street TEXT,
                community TEXT,
                address TEXT,
                reporter_key TEXT,
                fingerprint TEXT,
                needs_review INTEGER NOT NULL DEFAULT 0,
                raw_record_id BIGINT,
                body {json} NOT NULL
            )""",
            "CREATE INDEX cases_received ON cases (received_at)",
            "CREATE INDEX cases_cat_cell ON cases (category_code, cell, received_at)",
            "CREATE INDEX cases_cat_comm ON cases (category_code, community, received_at)",
            "CREATE INDEX cases_cat_addr ON cases (category_code, address, received_at)",
            "CREATE INDEX cases_reporter ON cases (reporter_key, received_at)",
            """CREATE TABLE case_keys (
                key_type TEXT NOT NULL,
                key TEXT NOT NULL,
                case_id TEXT NOT NULL,
                PRIMARY KEY (key_type, key)
            )""",
            """CREATE TABLE case_events (
                id {pk},
                case_id TEXT NOT NULL,
                event_id TEXT NOT NULL,
                at TEXT NOT NULL,
                kind TEXT NOT NULL,
                text TEXT,
                data {json},
                UNIQUE (case_id, event_id)
            )""",
            "CREATE INDEX case_events_case ON case_events (case_id, id)",
            """CREATE TABLE outbox (
                id {pk},
                sink TEXT NOT NULL,
                case_id TEXT NOT NULL,
                kind TEXT NOT NULL,
                event_id TEXT,
                idempotency_key TEXT NOT NULL UNIQUE,
                state TEXT NOT NULL DEFAULT 'pending',
                attempts INTEGER NOT NULL DEFAULT 0,
                next_attempt_at TEXT NOT NULL,
                first_attempt_at TEXT,
                last_attempt_at TEXT,
                last_error {json},
                claimed_by TEXT,
                claimed_until TEXT,
                created_at TEXT NOT NULL,
                delivered_at TEXT,
                remote_id TEXT
            )""",
            "CREATE INDEX outbox_due ON outbox (state, next_attempt_at)",
            "CREATE INDEX outbox_case ON outbox (case_id, sink)",
            """CREATE TABLE receipts (
                id {pk},
                outbox_id BIGINT NOT NULL,
                sink TEXT NOT NULL,
                case_id TEXT NOT NULL,
                idempotency_key TEXT NOT NULL,
                remote_id TEXT,
                status_code INTEGER,
                at TEXT NOT NULL,
                detail {json}
            )""",
            "CREATE INDEX receipts_outbox ON receipts (outbox_id)",
            """CREATE TABLE dead_letters (
                id {pk},
                stage TEXT NOT NULL,
                source TEXT,
                source_ref TEXT,
                reason TEXT NOT NULL,
                blob_sha256 TEXT,
                raw_record_id BIGINT,
                outbox_id BIGINT,
                detail {json},
                created_at TEXT NOT NULL,
                replay_state TEXT NOT NULL DEFAULT 'new',
                replayed_at TEXT,
                replay_result TEXT
            )""",
            "CREATE INDEX dead_letters_state ON dead_letters (replay_state, id)",
            "CREATE INDEX dead_letters_blob ON dead_letters (source, blob_sha256)",
            """CREATE TABLE mapper_state (
                namespace TEXT NOT NULL,
                key TEXT NOT NULL,
                value {json} NOT NULL,
                updated_at TEXT NOT NULL,
                PRIMARY KEY (namespace, key)
            )""",
            """CREATE TABLE locks (
                name TEXT PRIMARY KEY,
                owner TEXT NOT NULL,
                expires_at TEXT NOT NULL
            )""",
        ],
    ),
    (
        2,
        "index only what the store's queries read",
        [
            # (case_id, id) served no query: every read of case_events is by case_id (with
            # event_id, kind or a LIKE on event_id), which the unique (case_id, event_id)
            # index answers as well; the timeline sorts by (at, id), which neither index gives
            "DROP INDEX IF EXISTS case_events_case",
            # the linking lookups compare these columns with = or IN, which never match NULL:
            # rows without the value (no community, no reporter...) need no index entry
            "DROP INDEX IF EXISTS cases_cat_cell",
            "CREATE INDEX cases_cat_cell ON cases (category_code, cell, received_at) "
            "WHERE cell IS NOT NULL",
            "DROP INDEX IF EXISTS cases_cat_comm",
            "CREATE INDEX cases_cat_comm ON cases (category_code, community, received_at) "
            "WHERE community IS NOT NULL",
            "DROP INDEX IF EXISTS cases_cat_addr",
            "CREATE INDEX cases_cat_addr ON cases (category_code, address, received_at) "
            "WHERE address IS NOT NULL",
            "DROP INDEX IF EXISTS cases_reporter",
            "CREATE INDEX cases_reporter ON cases (reporter_key, received_at) "
            "WHERE reporter_key IS NOT NULL",
        ],
    ),
]


def latest_version() -> int:
    """The schema version after all migrations."""
    return MIGRATIONS[-1][0]
