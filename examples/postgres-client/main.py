"""A function whose init opens a PostgreSQL connection (pg8000).

The warmed instance is snapshotted with the connection open. Copies cannot
share it: thaw cuts it in every copy (`on_snapshot_connections = "cut"`, the
default), so the copy's first use of the old connection fails like a
connection the server reset. The `on_restore` hook below takes the driver's
ordinary path for that: it notices the dead connection and opens a new one
before the copy answers its first request. The handler also reconnects once
if a query finds the connection gone, which covers a database restart too.
"""

import os

import pg8000.native
import thaw


def connect():
    return pg8000.native.Connection(
        user=os.environ.get("PGUSER", "postgres"),
        host=os.environ.get("PGHOST", "127.0.0.1"),
        port=int(os.environ.get("PGPORT", "5432")),
        database=os.environ.get("PGDATABASE", "postgres"),
        password=os.environ.get("PGPASSWORD"),
        timeout=10,
    )


CONN = connect()
FIRST_BACKEND = CONN.run("SELECT pg_backend_pid()")[0][0]
RESTORES = []


@thaw.on_restore
def reconnect():
    """In a copy: the snapshot's connection was cut; open a new one."""
    global CONN
    try:
        CONN.run("SELECT 1")
        RESTORES.append("still connected")
    except (pg8000.exceptions.InterfaceError, OSError) as e:
        RESTORES.append(type(e).__name__)
    try:
        CONN.close()
    except Exception:
        pass
    CONN = connect()


def query(sql, **params):
    global CONN
    try:
        return CONN.run(sql, **params)
    except (pg8000.exceptions.InterfaceError, OSError):
        CONN = connect()
        return CONN.run(sql, **params)


def handler(event, context):
    n = int((event or {}).get("n", 3))
    rows = query("SELECT g, g * g FROM generate_series(1, :n) AS g", n=n)
    return {
        "squares": [r[1] for r in rows],
        "backend": query("SELECT pg_backend_pid()")[0][0],
        "first_backend": FIRST_BACKEND,
        "copy": thaw.is_copy(),
        "restores": RESTORES,
    }
