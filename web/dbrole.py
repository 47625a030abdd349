"""How the web tier talks to PostgreSQL with as little power as it needs.

Two layers:

1. Session settings: every pooled connection of the web tier reads with
   ``default_transaction_read_only=on`` and a ``statement_timeout``; only the /api/stats cache
   (``stats_cache``, one upsert per 5 s for all workers) goes through a separate one-connection
   pool that may write. A read-only session can still ``SET TRANSACTION READ WRITE``: this
   guards against mistakes, not against an attacker who can run SQL.
2. A read-only role: ``tart_web`` may SELECT tart's tables and views and INSERT/UPDATE
   ``stats_cache``, nothing else. The migration runner creates it (``ensure_roles``) and
   re-grants at every start, so tables and views of later migrations are covered. The embedded
   cluster gives it a password (``<data_dir>/web-db.secret``) and the web tier connects as it;
   with DATABASE_URL the web tier uses TART_WEB_DATABASE_URL if set (e.g. this role, with a
   password its administrator gave it), else DATABASE_URL with layer 1 alone.

``tart_reader`` is the same without the stats cache, for researchers (docs/STORAGE.md).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

WEB_ROLE = "tart_web"
READER_ROLE = "tart_reader"

log = logging.getLogger("tart.dbrole")


def session_conninfo(dsn: str, statement_timeout_ms: int, read_only: bool) -> str:
    """``dsn`` with the web tier's session settings added to any libpq ``options`` it has."""
    options = (conninfo_to_dict(dsn).get("options") or "").split()
    extra = [f"-c statement_timeout={int(statement_timeout_ms)}"]
    if read_only:
        extra.append("-c default_transaction_read_only=on")
    return make_conninfo(dsn, options=" ".join([*options, *extra]))


def with_password_file(dsn: str, path: str | None) -> str:
    """``dsn`` with the password read from ``path`` (the embedded cluster's web-db.secret); the
    supervisor hands gunicorn the file's path, never the password on a command line."""
    if not path:
        return dsn
    with open(path) as f:
        return make_conninfo(dsn, password=f.read().strip())


def create_role_sql(role: str) -> sql.Composed:
    """Create login role ``role`` with no other attribute, unless it exists. Roles belong to the
    whole server: two databases migrating at once may both try, hence the exception handler."""
    return sql.SQL(
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {lit}) THEN "
        "CREATE ROLE {r} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION; END IF; "
        "EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$").format(
            lit=sql.Literal(role), r=sql.Identifier(role))


def grant_sql(role: str, dbname: str, stats_cache: bool) -> list[sql.Composed]:
    """What ``role`` may do in database ``dbname``: read every table and view of schema public.

    A view runs with its owner's rights, so SELECT on ``events`` and the stats views is all the
    role needs for them; SELECT on a partitioned parent covers its partitions (the writer's
    daily ones included). Default privileges cover tables a later migration creates before the
    next start re-grants."""
    r = sql.Identifier(role)
    out = [
        sql.SQL("GRANT CONNECT ON DATABASE {db} TO {r}").format(db=sql.Identifier(dbname), r=r),
        sql.SQL("GRANT USAGE ON SCHEMA public TO {r}").format(r=r),
        sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {r}").format(r=r),
        sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {r}").format(r=r),
    ]
    if stats_cache:
        out.append(sql.SQL("GRANT INSERT, UPDATE ON stats_cache TO {r}").format(r=r))
    return out


# (role, may write stats_cache, role-level statement_timeout: a backstop for other clients of
# tart_web; researchers' long queries get none)
ROLES = ((WEB_ROLE, True, "5s"), (READER_ROLE, False, None))


def ensure_roles(conn: psycopg.Connection, roles: Sequence[tuple[str, bool, str | None]] = ROLES) -> bool:
    """Create (if allowed and missing) and grant tart_web and tart_reader; ``conn`` is the
    migration runner's autocommit connection as the schema owner. Returns whether the first of
    ``roles`` (tart_web) is usable. A user that may not create roles (a managed PostgreSQL without CREATEROLE) is told
    once at info, and the web tier keeps its read-only sessions: never a startup failure."""
    row = conn.execute("SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user").fetchone()
    can_create = bool(row and row[0])
    existing = {r[0] for r in conn.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)",
                                           ([name for name, _, _ in roles],))}
    missing = [name for name, _, _ in roles if name not in existing]
    if missing and not can_create:
        log.info("cannot create database roles (no CREATEROLE); the web tier uses read-only sessions as "
                 "this user", extra={"roles": ",".join(missing), "user": conn.info.user})
    ok: dict[str, bool] = {}
    for name, stats_cache, timeout in roles:
        if name in missing and not can_create:
            ok[name] = False
            continue
        try:
            with conn.transaction():
                if name in missing:
                    conn.execute(create_role_sql(name))
                for stmt in grant_sql(name, conn.info.dbname, stats_cache):
                    conn.execute(stmt)
        except psycopg.errors.InsufficientPrivilege as e:
            log.info("cannot set up database role; the web tier uses read-only sessions",
                     extra={"role": name, "error": str(e).strip()[:200]})
            ok[name] = False
            continue
        ok[name] = True
        if timeout:
            # Needs ADMIN on the role (its creator has it): a role made by an administrator
            # keeps whatever settings they gave it.
            try:
                with conn.transaction():
                    conn.execute(sql.SQL("ALTER ROLE {r} SET statement_timeout = {t}").format(
                        r=sql.Identifier(name), t=sql.Literal(timeout)))
            except psycopg.errors.InsufficientPrivilege:
                pass
    return ok[roles[0][0]]
