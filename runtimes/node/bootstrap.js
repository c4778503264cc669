'use strict';
// thaw's Node.js runtime: loads a handler and serves the runtime protocol.
//
// The contract is docs/protocol.md; Node specifics are in docs/runtimes.md.
// thaw starts `node /var/runtime/bootstrap.js` with fd 3 carrying requests,
// fd 4 carrying answers, stdout/stderr as the function's logs and:
//
//     THAW_HANDLER   "file.export" (default "index.handler")
//     THAW_FUNCTION  the function's name      THAW_VERSION  its version
//     THAW_TASK_DIR  where the code is (default /var/task; tests override it)
//
// Each frame, either way:
//
//     +----------------+----------------+----------------------+--------------+
//     | header_len u32 | body_len u32   | header: JSON object  | body: bytes  |
//     | little endian  | little endian  | header_len bytes     | body_len     |
//     +----------------+----------------+----------------------+--------------+
//
// Requests are read on the event loop (fd 3 is a libuv pipe), so timers and
// intervals of the function keep running between invocations; answers are
// written synchronously on fd 4, after console output (synchronous on pipes),
// so a request's log lines reach thaw before its answer.

const fs = require('fs');
const net = require('net');
const path = require('path');
const crypto = require('crypto');
const { pathToFileURL } = require('url');
const v8 = require('v8');
const vm = require('vm');

const thaw = require('./node_modules/thaw');
const internal = thaw[Symbol.for('thaw.runtime')];

const REQUEST_FD = 3;
const RESPONSE_FD = 4;
const PROTOCOL = 1;
const MAX_HEADER_LEN = 1 << 20;
const MAX_BODY_LEN = 1 << 30;
const MAX_MESSAGE_CHARS = 32 * 1024;
const MAX_TRACEBACK_CHARS = 128 * 1024;
const EXIT_INIT_ERROR = 1;
const EXIT_PROTOCOL_ERROR = 2;

function log(msg) {
  try {
    fs.writeSync(2, `thaw-runtime: ${msg}\n`);
  } catch (_) {
    // stderr gone: nothing to tell
  }
}

function writeAll(fd, buf) {
  let off = 0;
  while (off < buf.length) {
    off += fs.writeSync(fd, buf, off, buf.length - off);
  }
}

/** Writes one frame to fd 4. */
function send(header, body = Buffer.alloc(0)) {
  const raw = Buffer.from(JSON.stringify(header), 'utf8');
  if (raw.length > MAX_HEADER_LEN) {
    throw new RangeError(`answer header of ${raw.length} bytes exceeds the 1 MiB limit`);
  }
  const prefix = Buffer.alloc(8);
  prefix.writeUInt32LE(raw.length, 0);
  prefix.writeUInt32LE(body.length, 4);
  writeAll(RESPONSE_FD, body.length <= 65536 ? Buffer.concat([prefix, raw, body]) : Buffer.concat([prefix, raw]));
  if (body.length > 65536) writeAll(RESPONSE_FD, body);
}

class ProtocolError extends Error {}

/** Splits the request stream into frames. */
class FrameReader {
  constructor() {
    this.chunks = [];
    this.length = 0;
  }

  push(chunk) {
    this.chunks.push(chunk);
    this.length += chunk.length;
  }

  flatten() {
    if (this.chunks.length > 1) this.chunks = [Buffer.concat(this.chunks, this.length)];
    return this.chunks[0];
  }

  /** The next complete frame ({header, body}), or null until one is. */
  next() {
    if (this.length < 8) return null;
    const buf = this.flatten();
    const headerLen = buf.readUInt32LE(0);
    const bodyLen = buf.readUInt32LE(4);
    if (headerLen > MAX_HEADER_LEN) throw new ProtocolError(`frame header of ${headerLen} bytes is too large`);
    if (bodyLen > MAX_BODY_LEN) throw new ProtocolError(`frame body of ${bodyLen} bytes is too large`);
    const total = 8 + headerLen + bodyLen;
    if (this.length < total) return null;
    let header;
    try {
      header = JSON.parse(buf.toString('utf8', 8, 8 + headerLen));
    } catch (e) {
      throw new ProtocolError(`bad frame header: ${e.message}`);
    }
    if (header === null || typeof header !== 'object' || Array.isArray(header)) {
      throw new ProtocolError('frame header is not a JSON object');
    }
    const body = Buffer.from(buf.subarray(8 + headerLen, total));
    const rest = buf.subarray(total);
    this.chunks = rest.length ? [rest] : [];
    this.length = rest.length;
    return { header, body };
  }
}

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

/** JSON when the body is UTF-8 JSON, null when empty, else the Buffer. */
function decodeEvent(body) {
  if (body.length === 0) return null;
  try {
    return JSON.parse(strictUtf8.decode(body));
  } catch (_) {
    return body;
  }
}

/** [body, default content type] of a returned value. */
function encodeBody(value, inResponse) {
  if ((value === undefined || value === null) && inResponse) return [Buffer.alloc(0), null];
  if (Buffer.isBuffer(value)) return [value, 'application/octet-stream'];
  if (value instanceof Uint8Array) return [Buffer.from(value), 'application/octet-stream'];
  if (typeof value === 'string') return [Buffer.from(value, 'utf8'), 'text/plain; charset=utf-8'];
  const text = JSON.stringify(value === undefined ? null : value);
  if (text === undefined) throw new TypeError(`a ${typeof value} cannot be answered as JSON`);
  return [Buffer.from(text, 'utf8'), 'application/json'];
}

/** [status, headers, body] of what the handler returned. */
function encodeResult(value) {
  let status = 200;
  let headers = {};
  let body;
  let contentType;
  if (value instanceof internal.Response) {
    status = value.status;
    if (!Number.isInteger(status) || status < 100 || status > 599) {
      throw new RangeError(`response status must be an integer in 100..599, not ${status}`);
    }
    [body, contentType] = encodeBody(value.body, true);
    for (const [k, v] of Object.entries(value.headers || {})) headers[String(k).toLowerCase()] = String(v);
  } else {
    [body, contentType] = encodeBody(value, false);
  }
  if (contentType !== null && !('content-type' in headers)) headers['content-type'] = contentType;
  if (body.length > MAX_BODY_LEN) throw new RangeError(`answer of ${body.length} bytes exceeds the 1 GiB limit`);
  return [status, headers, body];
}

/** A stack without the runtime's own frames below the user's code. */
function userFrames(stack) {
  const lines = stack.split('\n');
  const cut = lines.findIndex((l) => l.includes(__filename));
  return (cut > 0 ? lines.slice(0, cut) : lines).join('\n');
}

/** {error_type, message, traceback} of anything thrown. */
function describe(err) {
  let type;
  let message;
  let traceback = '';
  if (err instanceof Error) {
    type = err.name && err.name !== 'Error' ? err.name : (err.constructor && err.constructor.name) || 'Error';
    message = String(err.message);
    traceback = typeof err.stack === 'string' ? userFrames(err.stack) : '';
  } else {
    type = 'Error';
    try {
      message = typeof err === 'string' ? err : JSON.stringify(err) ?? String(err);
    } catch (_) {
      message = String(err);
    }
  }
  return {
    error_type: type,
    message: message.slice(0, MAX_MESSAGE_CHARS),
    traceback: traceback.slice(-MAX_TRACEBACK_CHARS),
  };
}

class Context {
  constructor(invocationId, fn, version, deadlineMs, headers) {
    this.invocationId = invocationId;
    this.function = fn;
    this.version = version;
    this.deadlineMs = deadlineMs;
    this.headers = headers;
  }

  /** Milliseconds left before the deadline (0 once past it), or null. */
  remainingMs() {
    if (this.deadlineMs === null) return null;
    return Math.max(0, this.deadlineMs - Date.now());
  }
}

// ---- uniqueness after a restore -------------------------------------------

let reseedAddon = null;

/** Loads the OpenSSL reseeding addon (built when the runtime was prepared). */
function loadReseedAddon() {
  const file = path.join(__dirname, 'reseed.node');
  try {
    const mod = { exports: {} };
    process.dlopen(mod, file);
    reseedAddon = mod.exports;
  } catch (e) {
    log(`cannot load ${file}: ${e.message}; restored copies will be refused`);
  }
}

/** A Math.random replacement drawing from a pool filled by OpenSSL. */
function freshMathRandom() {
  const pool = new Uint32Array(512);
  let next = pool.length;
  return function random() {
    if (next + 2 > pool.length) {
      crypto.randomFillSync(pool);
      next = 0;
    }
    const hi = pool[next++] >>> 5; // 27 bits
    const lo = pool[next++] >>> 6; // 26 bits
    return (hi * 67108864 + lo) / 9007199254740992;
  };
}

/**
 * Rounds of the reseeding run in the original before `ready`: 8 × 1,024
 * calls of `crypto.randomInt` are enough for V8 to optimise it, where one
 * round left it interpreted in the snapshot and the copy's 1,024 calls took
 * 1.3-4.5 ms of its `restored` exchange (75-140 µs optimised).
 */
const WARM_RESEED_ROUNDS = 8;

/**
 * Runs the reseeding's code in the original, before `ready`, without
 * replacing its Math.random: the functions it calls (the addon, Node's
 * crypto helpers, the pool generator) are then compiled, and optimised, in
 * the snapshot instead of in every copy. Reseeding the original is
 * harmless; copies reseed again.
 */
function warmReseed() {
  if (reseedAddon === null) return;
  try {
    for (let i = 0; i < WARM_RESEED_ROUNDS; i++) reseedOpenSSL(Buffer.alloc(0));
    freshMathRandom()();
  } catch (e) {
    log(`reseeding at start failed (restored copies will report it): ${e.message}`);
  }
}

/** Gives this copy its own random state (copies share the original's). */
function reseed(seed) {
  reseedOpenSSL(seed);
  // Math.random's state lives in V8 and has no reseed API: replace it.
  Math.random = freshMathRandom();
}

/** Reseeds OpenSSL from the OS and `seed`, and drops Node's crypto caches. */
function reseedOpenSSL(seed) {
  if (reseedAddon === null) throw new Error('the OpenSSL reseeding addon is not loaded');
  const urandom = Buffer.alloc(48);
  const fd = fs.openSync('/dev/urandom', 'r');
  try {
    fs.readSync(fd, urandom, 0, urandom.length, null);
  } finally {
    fs.closeSync(fd);
  }
  // OpenSSL keys its generators on the pid, which a copy keeps: mix fresh
  // OS randomness and thaw's seed into its primary generator and reseed it;
  // the per-thread generators follow on their next use.
  if (!reseedAddon.reseed(Buffer.concat([seed, urandom]))) throw new Error('OpenSSL refused to reseed');
  // crypto.randomUUID and crypto.randomInt serve from caches filled before
  // the snapshot: draw them through one full cycle so they refill.
  for (let i = 0; i < 128; i++) crypto.randomUUID();
  for (let i = 0; i < 1024; i++) crypto.randomInt(2);
}

// ---- settling before the snapshot -----------------------------------------

/**
 * V8's garbage collector without exposing `gc` to the function: the flag is
 * on only while one new context is made, whose `gc` is kept here.
 */
const collectGarbage = (() => {
  try {
    v8.setFlagsFromString('--expose-gc');
    return vm.runInNewContext('gc');
  } catch (e) {
    log(`no garbage collector handle (snapshots keep young garbage): ${e.message}`);
    return null;
  } finally {
    v8.setFlagsFromString('--no-expose-gc');
  }
})();

/**
 * Before a warm-up answer (thaw snapshots right after the last one): a
 * young-generation collection, so the snapshot holds an empty new space. A
 * copy otherwise starts with it nearly full of the warm-up's garbage and
 * scavenges it on its first allocations, copying every surviving object
 * (and so every touched page of the image) before its first answer. Only a
 * minor collection: a full one leaves concurrent sweeping running, which
 * the snapshot would freeze half-done for every copy to finish.
 */
function settleForSnapshot() {
  if (collectGarbage === null) return;
  try {
    collectGarbage({ type: 'minor' });
  } catch (e) {
    log(`young-generation collection before the snapshot failed: ${e.message}`);
  }
}

// ---- the loop ---------------------------------------------------------------

class Runtime {
  constructor(handler) {
    this.handler = handler;
    this.function = process.env.THAW_FUNCTION || '';
    this.version = process.env.THAW_VERSION || '';
  }

  async invoke(header, body) {
    const id = String(header.id ?? '');
    const deadline = Number.isInteger(header.deadline_ms) ? header.deadline_ms : null;
    const headers = header.headers && typeof header.headers === 'object' ? header.headers : {};
    const context = new Context(id, header.function || this.function, header.version || this.version, deadline, headers);
    let answer;
    try {
      const value = await this.handler(decodeEvent(body), context);
      const [status, outHeaders, out] = encodeResult(value);
      answer = [{ type: 'result', id, status, headers: outHeaders }, out];
    } catch (err) {
      answer = [{ type: 'error', id, ...describe(err) }];
    }
    if (id.startsWith('warmup-')) settleForSnapshot();
    send(...answer);
  }

  async restored(header) {
    const seedHex = typeof header.seed === 'string' ? header.seed : '';
    const seed = /^[0-9a-fA-F]*$/.test(seedHex) && seedHex.length % 2 === 0 ? Buffer.from(seedHex, 'hex') : Buffer.from(seedHex);
    internal.setCopy();
    try {
      reseed(seed);
    } catch (err) {
      const d = describe(err);
      log(`reseeding failed: ${d.traceback || d.message}`);
      send({ type: 'restored', ok: false, message: `reseeding failed: ${d.error_type}: ${d.message}` });
      return;
    }
    for (const hook of internal.hooks()) {
      try {
        await hook();
      } catch (err) {
        const d = describe(err);
        const name = hook.name || 'anonymous';
        log(`restore hook ${name} failed: ${d.traceback || d.message}`);
        send({ type: 'restored', ok: false, message: `restore hook ${name} raised ${d.error_type}: ${d.message}` });
        return;
      }
    }
    send({ type: 'restored', ok: true });
  }

  unknown(header) {
    log(`unknown frame type ${JSON.stringify(header.type)}`);
    send({
      type: 'error',
      id: String(header.id ?? ''),
      error_type: 'ProtocolError',
      message: `unknown frame type ${JSON.stringify(header.type)}`,
      traceback: '',
    });
  }

  async handle({ header, body }) {
    if (header.type === 'invoke') return this.invoke(header, body);
    if (header.type === 'restored') return this.restored(header);
    return this.unknown(header);
  }

  /** Reads fd 3 on the event loop; frames are handled one at a time. */
  serve() {
    const reader = new FrameReader();
    const queue = [];
    let busy = false;
    let ended = false;
    const corrupt = (msg) => {
      log(`corrupt request stream: ${msg}`);
      process.exit(EXIT_PROTOCOL_ERROR);
    };
    const pump = async () => {
      if (busy) return;
      busy = true;
      while (queue.length) {
        try {
          await this.handle(queue.shift());
        } catch (err) {
          if (err && err.code === 'EPIPE') {
            log('thaw stopped reading answers');
            process.exit(EXIT_PROTOCOL_ERROR);
          }
          throw err;
        }
      }
      busy = false;
      if (ended) process.exit(0);
    };
    const input = new net.Socket({ fd: REQUEST_FD, readable: true, writable: false });
    input.on('data', (chunk) => {
      reader.push(chunk);
      try {
        for (let f = reader.next(); f !== null; f = reader.next()) queue.push(f);
      } catch (e) {
        corrupt(e.message);
      }
      pump();
    });
    input.on('end', () => {
      if (reader.length > 0) corrupt('stream ended in the middle of a frame');
      ended = true;
      if (!busy) process.exit(0);
    });
    input.on('error', (e) => corrupt(e.message));
  }
}

// ---- loading the handler --------------------------------------------------

class HandlerNotFound extends Error {
  constructor(message) {
    super(message);
    this.name = 'HandlerNotFound';
  }
}

async function loadHandler(spec, taskDir) {
  const dot = spec.lastIndexOf('.');
  if (dot <= 0 || dot === spec.length - 1) {
    throw new HandlerNotFound(`THAW_HANDLER must look like file.export, not ${JSON.stringify(spec)}`);
  }
  const file = spec.slice(0, dot);
  const name = spec.slice(dot + 1);
  const candidates = ['.js', '.mjs', '.cjs'].map((ext) => path.join(taskDir, file + ext));
  const found = candidates.find((p) => fs.existsSync(p));
  if (found === undefined) {
    throw new HandlerNotFound(`no ${file}.js, ${file}.mjs or ${file}.cjs in the function's code`);
  }
  let mod;
  if (found.endsWith('.mjs')) {
    mod = await import(pathToFileURL(found).href);
  } else {
    try {
      mod = require(found);
    } catch (e) {
      if (e && e.code === 'ERR_REQUIRE_ESM') mod = await import(pathToFileURL(found).href);
      else throw e;
    }
  }
  let fn = mod == null ? undefined : mod[name];
  if (fn === undefined && mod != null && mod.default != null) fn = mod.default[name];
  if (typeof fn !== 'function') {
    throw new HandlerNotFound(`${path.basename(found)} exports no function ${JSON.stringify(name)} (found ${fn === undefined ? 'nothing' : typeof fn})`);
  }
  return fn;
}

async function main() {
  for (const fd of [REQUEST_FD, RESPONSE_FD]) {
    try {
      fs.fstatSync(fd);
    } catch (e) {
      log(`protocol fd ${fd} is not open: ${e.message}`);
      process.exit(EXIT_PROTOCOL_ERROR);
    }
  }
  loadReseedAddon();
  const taskDir = process.env.THAW_TASK_DIR || '/var/task';
  const spec = process.env.THAW_HANDLER || 'index.handler';
  let handler;
  try {
    handler = await loadHandler(spec, taskDir);
  } catch (err) {
    const d = describe(err);
    log(`cannot load handler ${spec}:\n${d.traceback || d.message}`);
    send({ type: 'init_error', ...d });
    process.exit(EXIT_INIT_ERROR);
  }
  const runtime = new Runtime(handler);
  warmReseed();
  send({ type: 'ready', pid: process.pid, runtime: 'node20', protocol: PROTOCOL, node: process.version });
  runtime.serve();
}

main();
