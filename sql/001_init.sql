-- tart schema, version 1. Table and column names follow the reference backend so that its
-- "PostgreSQL Direct Access" queries run unchanged.

-- Nodes: one row per Peer ID (hex); a reconnecting node keeps its row.
CREATE TABLE IF NOT EXISTS nodes (
    node_id                TEXT PRIMARY KEY,           -- 64 lowercase hex chars of the Peer ID
    peer_id                TEXT NOT NULL,
    implementation_name    TEXT NOT NULL DEFAULT '',
    implementation_version TEXT NOT NULL DEFAULT '',
    gp_version             TEXT NOT NULL DEFAULT '',
    node_info              JSONB NOT NULL DEFAULT '{}'::jsonb,
    address                TEXT,                       -- telemetry socket peer, "1.2.3.4:5678" / "[::1]:5678"
    connected_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    disconnected_at        TIMESTAMPTZ,
    is_connected           BOOLEAN NOT NULL DEFAULT false,
    event_count            BIGINT NOT NULL DEFAULT 0,
    connection_count       BIGINT NOT NULL DEFAULT 0,
    created_at             TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS nodes_connected_seen ON nodes (is_connected DESC, last_seen_at DESC);

-- Events: partitioned by day of arrival (created_at). Arrival time, not the node's clock, so a
-- node with a wrong clock cannot scatter rows into far partitions.
CREATE TABLE IF NOT EXISTS events (
    id           BIGINT NOT NULL,          -- tart's unique 64-bit id (also the WebSocket id)
    node_id      TEXT NOT NULL,
    event_id     BIGINT NOT NULL,          -- JIP-3 event id (0-based, Dropped-aware)
    event_type   SMALLINT NOT NULL,        -- discriminator
    timestamp    TIMESTAMPTZ NOT NULL,     -- the event's own time (JAM Common Era converted)
    data         JSONB,                    -- the event JSON (NULL when it could not be decoded)
    created_at   TIMESTAMPTZ NOT NULL,     -- when tart received it
    raw          BYTEA,                    -- wire bytes, kept for malformed events and text with U+0000
    decode_error TEXT                      -- NULL for a decoded event
) PARTITION BY RANGE (created_at);

CREATE INDEX IF NOT EXISTS events_id ON events (id);
CREATE INDEX IF NOT EXISTS events_node_id ON events (node_id, id);
CREATE INDEX IF NOT EXISTS events_type_id ON events (event_type, id);

-- Writer progress per ring, committed in the same transaction as the rows it covers, so that a
-- writer restarted after a crash neither loses nor duplicates a batch.
CREATE TABLE IF NOT EXISTS ring_cursors (
    ring_name  TEXT PRIMARY KEY,
    ring_uuid  TEXT NOT NULL,
    position   BIGINT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Each node's latest Status and block heads, kept current by the writer.
CREATE TABLE IF NOT EXISTS node_status (
    node_id          TEXT PRIMARY KEY,
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    num_peers        INTEGER,
    num_val_peers    INTEGER,
    num_sync_peers   INTEGER,
    num_guarantees   INTEGER[],
    num_shards       INTEGER,
    shards_size      BIGINT,
    num_preimages    INTEGER,
    preimages_size   BIGINT,
    best_slot        BIGINT,
    best_hash        TEXT,
    finalized_slot   BIGINT,
    finalized_hash   TEXT,
    is_synced        BOOLEAN
);

-- Per slot: which nodes authored / imported / executed a block there.
CREATE TABLE IF NOT EXISTS blocks (
    slot        BIGINT PRIMARY KEY,
    hash        TEXT,
    authored_by TEXT[] NOT NULL DEFAULT '{}',
    imported_by TEXT[] NOT NULL DEFAULT '{}',
    executed_by TEXT[] NOT NULL DEFAULT '{}',
    first_seen  TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen   TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Hourly rollup (events per node per type per hour), kept longer than the events themselves.
CREATE TABLE IF NOT EXISTS event_stats_hourly (
    hour        TIMESTAMPTZ NOT NULL,
    node_id     TEXT NOT NULL,
    event_type  SMALLINT NOT NULL,
    event_count BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (hour, node_id, event_type)
);

-- Shared cache (e.g. /api/stats), so every web worker serves the same 5-second snapshot.
CREATE TABLE IF NOT EXISTS stats_cache (
    key        TEXT PRIMARY KEY,
    value      JSONB NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Daily partition helper: creates events_YYYYMMDD for the given UTC day if missing. Bounds are
-- computed in UTC whatever the session's TimeZone; the transaction-level advisory lock lets several
-- processes call it at once (CREATE TABLE IF NOT EXISTS alone can still collide in pg_type).
CREATE OR REPLACE FUNCTION tart_ensure_partition(day DATE) RETURNS TEXT
LANGUAGE plpgsql AS $$
DECLARE
    part TEXT := 'events_' || to_char(day, 'YYYYMMDD');
BEGIN
    IF to_regclass(part) IS NULL THEN
        PERFORM pg_advisory_xact_lock(hashtext('tart_ensure_partition'));
        EXECUTE format(
            'CREATE TABLE IF NOT EXISTS %I PARTITION OF events FOR VALUES FROM (%L) TO (%L)',
            part, day::timestamp AT TIME ZONE 'UTC', (day + 1)::timestamp AT TIME ZONE 'UTC');
    END IF;
    RETURN part;
END $$;
