-- Live node connections, one row per TCP connection (conn_id is unique; its low 6 bits name the
-- acceptor's ring). nodes.is_connected is true while a node has at least one row here, so a node
-- connected twice at once stays connected until both connections are gone, and an acceptor that
-- died without saying goodbye (its successor writes a RING_RESET) leaves no ghost connections.
CREATE TABLE IF NOT EXISTS node_connections (
    conn_id      BIGINT PRIMARY KEY,
    node_id      TEXT NOT NULL,
    connected_at TIMESTAMPTZ NOT NULL,
    address      TEXT
);
CREATE INDEX IF NOT EXISTS node_connections_node ON node_connections (node_id);
