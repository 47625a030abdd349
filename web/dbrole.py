"""How the web tier talks to PostgreSQL with as little power as it needs.

Two steps, the first in force now:

1. Session settings (no schema change): every pooled connection of the web tier reads with
   ``default_transaction_read_only=on`` and a ``statement_timeout``; only the /api/stats cache
   (``stats_cache``, one upsert per 5 s for all workers) goes through a separate one-connection
   pool that may write. A read-only session can still ``SET TRANSACTION READ WRITE``: this
   guards against mistakes, not against an attacker who can run SQL.
2. A read-only role (``read_only_role_sql``): SELECT on tart's tables, INSERT/UPDATE on
   ``stats_cache`` only. A migration creates it; the web tier then connects as that role.
"""

from __future__ import annotations

from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

WEB_ROLE = "tart_web"


def session_conninfo(dsn: str, statement_timeout_ms: int, read_only: bool) -> str:
    """``dsn`` with the web tier's session settings added to any libpq ``options`` it has."""
    options = (conninfo_to_dict(dsn).get("options") or "").split()
    extra = [f"-c statement_timeout={int(statement_timeout_ms)}"]
    if read_only:
        extra.append("-c default_transaction_read_only=on")
    return make_conninfo(dsn, options=" ".join([*options, *extra]))


def read_only_role_sql(role: str = WEB_ROLE) -> list[sql.Composed]:
    """The statements a migration runs (as the schema owner) to create the web tier's role.

    SELECT on the partitioned ``events`` parent covers every partition (PostgreSQL checks the
    parent's privileges), so the writer's daily partitions need no grant of their own; default
    privileges cover tables that later migrations create. The role may log in but has no
    password: the embedded cluster admits it over its private socket, an external server needs
    whatever authentication its administrator gives it.
    """
    r = sql.Identifier(role)
    return [
        sql.SQL("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {lit}) THEN "
                "CREATE ROLE {r} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE; END IF; END $$").format(
                    lit=sql.Literal(role), r=r),
        sql.SQL("ALTER ROLE {r} SET statement_timeout = '5s'").format(r=r),
        sql.SQL("GRANT USAGE ON SCHEMA public TO {r}").format(r=r),
        sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {r}").format(r=r),
        sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {r}").format(r=r),
        sql.SQL("GRANT INSERT, UPDATE ON stats_cache TO {r}").format(r=r),
    ]
