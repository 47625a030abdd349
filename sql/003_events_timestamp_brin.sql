-- REST `since`/`until` filter on the event's own time. Events arrive roughly in time order, so a
-- BRIN index (a few pages per partition, nearly free to maintain at ingest) narrows those scans.
CREATE INDEX IF NOT EXISTS events_timestamp_brin ON events USING brin (timestamp);
