// A function whose init opens a PostgreSQL connection (node-postgres, `pg`,
// installed at deploy from package.json and its package-lock.json).
//
// The warmed instance is snapshotted with the connection open. Copies cannot
// share it: thaw cuts it in every copy (`on_snapshot_connections = "cut"`,
// the default), so the copy's socket is a connection the server reset. The
// `thaw.onRestore` hook below notices that through pg's ordinary error path
// (a query on the old client is rejected) and opens a new client before the
// copy answers its first request. The handler also reconnects once when a
// query finds its connection gone, which covers a database restart too.
//
// The connection settings are pg's own environment variables: PGHOST,
// PGPORT, PGUSER, PGDATABASE, PGPASSWORD (set them in thaw.toml's [env]).
const { Client } = require('pg');
const thaw = require('thaw');

// What the copy's hook saw of the snapshot's connection, and the errors pg
// reported on idle clients (a cut socket noticed by the event loop).
const restores = [];
const idleErrors = [];

async function connect() {
  const client = new Client({ connectionTimeoutMillis: 10000 });
  // An idle client whose socket dies emits 'error'; without a listener
  // Node.js would end the process.
  client.on('error', (err) => idleErrors.push(err.message));
  await client.connect();
  return client;
}

async function init() {
  const client = await connect();
  await client.query(
    'CREATE TABLE IF NOT EXISTS thaw_visits (id serial PRIMARY KEY, ' +
      'backend int NOT NULL, copy boolean NOT NULL, at timestamptz NOT NULL DEFAULT now())',
  );
  const { rows } = await client.query('SELECT pg_backend_pid() AS pid');
  return { client, firstBackend: rows[0].pid };
}

// The connection is opened at load; the warm-up waits for it, so the
// snapshot holds it open.
let state = init();

thaw.onRestore(async () => {
  const { client: old, firstBackend } = await state;
  try {
    await old.query('SELECT 1');
    restores.push('still connected');
  } catch (err) {
    restores.push(`cut: ${err.message}`);
  }
  old.end().catch(() => {});
  state = Promise.resolve({ client: await connect(), firstBackend });
});

function isConnectionError(err) {
  // pg's messages for a connection that ended, and socket errors.
  return (
    /Connection terminated|not queryable|closed/i.test(err.message) ||
    ['ECONNRESET', 'EPIPE', 'ECONNREFUSED'].includes(err.code)
  );
}

async function query(text, params) {
  const current = await state;
  try {
    return await current.client.query(text, params);
  } catch (err) {
    if (!isConnectionError(err)) throw err;
    current.client.end().catch(() => {});
    state = Promise.resolve({ client: await connect(), firstBackend: current.firstBackend });
    return (await state).client.query(text, params);
  }
}

exports.handler = async (event) => {
  const n = Number((event && event.n) || 3);
  const squares = await query('SELECT g, g * g AS sq FROM generate_series(1, $1::int) AS g', [n]);
  // A fresh row, written and read back by this instance's connection.
  const visit = await query(
    'INSERT INTO thaw_visits (backend, copy) VALUES (pg_backend_pid(), $1) ' +
      'RETURNING id, backend',
    [thaw.isCopy()],
  );
  const { firstBackend } = await state;
  // The original instance's connection, seen from the server's side.
  const original = await query(
    "SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = $1",
    [firstBackend],
  );
  return {
    squares: squares.rows.map((r) => r.sq),
    row: visit.rows[0].id,
    backend: visit.rows[0].backend,
    first_backend: firstBackend,
    original_connected: original.rows[0].n === 1,
    copy: thaw.isCopy(),
    restores,
    idle_errors: idleErrors,
  };
};
