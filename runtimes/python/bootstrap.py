"""thaw's Python runtime: loads a handler and serves the runtime protocol.

The contract is docs/protocol.md. thaw starts this file with fd 3 carrying
requests, fd 4 carrying answers, stdout/stderr as the function's logs, the
working directory at the function's code and these variables:

    THAW_HANDLER   "module.function" (default "main.handler")
    THAW_FUNCTION  the function's name      THAW_VERSION  its version
    THAW_TASK_DIR  where the code is (default /var/task; tests override it)

Each frame, either way:

    +----------------+----------------+----------------------+--------------+
    | header_len u32 | body_len u32   | header: JSON object  | body: bytes  |
    | little endian  | little endian  | header_len bytes     | body_len     |
    +----------------+----------------+----------------------+--------------+

While idle the process sits in exactly one blocking read(3, ...): that is
where thaw takes its snapshots, so this loop never polls, never starts a
thread and never arms a timer. Standard library only.
"""

import gc
import hashlib
import importlib
import json
import os
import random
import struct
import sys
import time
import traceback

REQUEST_FD = 3
RESPONSE_FD = 4
PROTOCOL = 1
MAX_HEADER_LEN = 1 << 20
MAX_BODY_LEN = 1 << 30
READ_CHUNK = 1 << 16
MAX_READ = 1 << 20
# Error texts are cut to these lengths (characters) so that an error frame's
# header stays well under MAX_HEADER_LEN even at 4 bytes per character.
MAX_MESSAGE_CHARS = 32 * 1024
MAX_TRACEBACK_CHARS = 128 * 1024
PREFIX = struct.Struct("<II")

# Exit statuses: the handler could not be loaded; the request stream is
# corrupt or thaw stopped reading answers.
EXIT_INIT_ERROR = 1
EXIT_PROTOCOL_ERROR = 2


class ProtocolError(Exception):
    """The request stream cannot be trusted any more."""


def log(msg):
    """A runtime diagnostic on stderr (the function's log)."""
    try:
        sys.stderr.write("thaw-runtime: %s\n" % msg)
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass


class FrameReader:
    """Reads frames from fd 3 with as few read syscalls as possible."""

    def __init__(self, fd):
        self.fd = fd
        self.buf = bytearray()

    def _fill(self, need):
        """Reads until `need` bytes are buffered; False on EOF before that."""
        while len(self.buf) < need:
            # One blocking read; when idle this is the snapshot point.
            want = min(max(READ_CHUNK, need - len(self.buf)), MAX_READ)
            chunk = os.read(self.fd, want)
            if not chunk:
                return False
            self.buf += chunk
        return True

    def _take(self, n):
        out = bytes(memoryview(self.buf)[:n])
        del self.buf[:n]
        return out

    def _read_body(self, n):
        """The next `n` bytes: large bodies are read straight into a buffer
        of their final size (about 3x faster than growing one)."""
        if len(self.buf) >= n or n <= READ_CHUNK:
            if not self._fill(n):
                raise ProtocolError("stream ended in the middle of a frame")
            return self._take(n)
        out = bytearray(n)
        have = len(self.buf)
        out[:have] = self.buf
        self.buf.clear()
        with memoryview(out) as view:
            while have < n:
                got = os.readv(self.fd, [view[have:]])
                if got == 0:
                    raise ProtocolError("stream ended in the middle of a frame")
                have += got
        return bytes(out)

    def next(self):
        """The next (header dict, body bytes), or None on a clean EOF."""
        if not self._fill(PREFIX.size):
            if self.buf:
                raise ProtocolError("stream ended in the middle of a frame")
            return None
        header_len, body_len = PREFIX.unpack_from(self.buf)
        if header_len > MAX_HEADER_LEN:
            raise ProtocolError("frame header of %d bytes is too large" % header_len)
        if body_len > MAX_BODY_LEN:
            raise ProtocolError("frame body of %d bytes is too large" % body_len)
        if not self._fill(PREFIX.size + header_len):
            raise ProtocolError("stream ended in the middle of a frame")
        del self.buf[: PREFIX.size]
        raw_header = self._take(header_len)
        body = self._read_body(body_len)
        try:
            header = json.loads(raw_header.decode("utf-8"))
        except ValueError as e:
            raise ProtocolError("bad frame header: %s" % e) from None
        if not isinstance(header, dict):
            raise ProtocolError("frame header is not a JSON object")
        return header, body


def write_all(fd, data):
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def encode_header(header):
    """The JSON bytes of a frame header. Lone surrogates (from undecodable
    file names, say) become "?": they are not UTF-8 and JSON readers refuse
    them."""
    raw = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace")
    if len(raw) > MAX_HEADER_LEN:
        raise ValueError("answer header of %d bytes exceeds the 1 MiB limit" % len(raw))
    return raw


def send(header, body=b""):
    """Writes one frame to fd 4; `header` is a dict or encode_header() bytes."""
    raw = header if isinstance(header, bytes) else encode_header(header)
    prefix = PREFIX.pack(len(raw), len(body))
    if len(body) <= READ_CHUNK:
        write_all(RESPONSE_FD, prefix + raw + body)
    else:
        write_all(RESPONSE_FD, prefix + raw)
        write_all(RESPONSE_FD, body)


def describe(exc):
    """(type name, message, formatted traceback) of an exception, cut to
    lengths that fit a frame header."""
    name = type(exc).__qualname__
    module = type(exc).__module__
    if module not in ("builtins", "__main__"):
        name = "%s.%s" % (module, name)
    try:
        message = str(exc)
    except Exception:  # a broken __str__ must not take the runtime down
        message = "<unprintable %s>" % name
    tb = exc.__traceback__
    # Drop the runtime's own frames above the user's code.
    while tb is not None and tb.tb_next is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    if tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = exc.__traceback__  # the error is the runtime's: keep it all
    try:
        tb = "".join(traceback.format_exception(type(exc), exc, tb))
    except Exception:  # e.g. an exception whose __str__ raises mid-format
        tb = ""
    return name, message[:MAX_MESSAGE_CHARS], tb[-MAX_TRACEBACK_CHARS:]


class Context:
    """What the handler learns about its invocation."""

    __slots__ = ("invocation_id", "function", "version", "deadline_ms", "headers")

    def __init__(self, invocation_id, function, version, deadline_ms, headers):
        self.invocation_id = invocation_id
        self.function = function
        self.version = version
        self.deadline_ms = deadline_ms
        self.headers = headers

    def remaining_ms(self):
        """Milliseconds left before the deadline (0 once past it), or None
        when the invocation has no deadline."""
        if self.deadline_ms is None:
            return None
        return max(0, self.deadline_ms - int(time.time() * 1000))

    def __repr__(self):
        return "Context(invocation_id=%r, function=%r, version=%r, deadline_ms=%r)" % (
            self.invocation_id,
            self.function,
            self.version,
            self.deadline_ms,
        )


def decode_event(body):
    """JSON when the body is UTF-8 JSON, None when empty, else the bytes."""
    if not body:
        return None
    try:
        return json.loads(body.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError and JSONDecodeError both
        return body


def json_default(value):
    """Lets numpy scalars and arrays (anything with .tolist()) be answered."""
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    raise TypeError("Object of type %s is not JSON serializable" % type(value).__name__)


def encode_body(value, in_response):
    """(body bytes, default content type or None) for a returned value."""
    if value is None and in_response:
        return b"", None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value), "application/octet-stream"
    if isinstance(value, str):
        return value.encode("utf-8"), "text/plain; charset=utf-8"
    raw = json.dumps(value, ensure_ascii=False, allow_nan=False, default=json_default)
    return raw.encode("utf-8"), "application/json"


def encode_result(value, response_type):
    """(status, headers, body) for what the handler returned."""
    if isinstance(value, response_type):
        status = value.status
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            raise ValueError("Response status must be an int in 100..599, not %r" % (status,))
        body, content_type = encode_body(value.body, True)
        headers = {}
        for name, val in (value.headers or {}).items():
            headers[str(name).lower()] = str(val)
    else:
        status = 200
        body, content_type = encode_body(value, False)
        headers = {}
    if content_type is not None and "content-type" not in headers:
        headers["content-type"] = content_type
    if len(body) > MAX_BODY_LEN:
        raise ValueError("answer of %d bytes exceeds the 1 GiB limit" % len(body))
    return status, headers, body


def flush_logs():
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass


class Runtime:
    def __init__(self, handler, thaw_module):
        self.handler = handler
        self.thaw = thaw_module
        self.function = os.environ.get("THAW_FUNCTION", "")
        self.version = os.environ.get("THAW_VERSION", "")

    def invoke(self, header, body):
        inv_id = str(header.get("id", ""))
        deadline = header.get("deadline_ms")
        if isinstance(deadline, bool) or not isinstance(deadline, int):
            deadline = None
        headers = header.get("headers")
        if not isinstance(headers, dict):
            headers = {}
        context = Context(
            inv_id,
            header.get("function") or self.function,
            header.get("version") or self.version,
            deadline,
            headers,
        )
        try:
            value = self.handler(decode_event(body), context)
            status, out_headers, out = encode_result(value, self.thaw.Response)
            raw = encode_header(
                {"type": "result", "id": inv_id, "status": status, "headers": out_headers}
            )
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # SystemExit from a handler is an error too
            err_type, message, tb = describe(e)
            del e
            flush_logs()
            send(
                {
                    "type": "error",
                    "id": inv_id,
                    "error_type": err_type,
                    "message": message,
                    "traceback": tb,
                }
            )
            return
        flush_logs()
        send(raw, out)

    def restored(self, header):
        """Reseeds every generator the runtime owns, then runs the hooks."""
        seed = header.get("seed", "")
        try:
            seed_bytes = bytes.fromhex(seed)
        except (TypeError, ValueError):
            seed_bytes = str(seed).encode("utf-8")
        self.thaw._is_copy = True
        try:
            reseed(seed_bytes + os.urandom(32))
        except Exception as e:
            err_type, message, tb = describe(e)
            del e
            log("reseeding failed:\n%s" % tb.rstrip())
            flush_logs()
            send(
                {
                    "type": "restored",
                    "ok": False,
                    "message": "reseeding failed: %s: %s" % (err_type, message),
                }
            )
            return
        for hook in list(self.thaw._restore_hooks):
            try:
                hook()
            except KeyboardInterrupt:
                raise
            except BaseException as e:
                err_type, message, tb = describe(e)
                del e
                name = getattr(hook, "__qualname__", repr(hook))
                log("restore hook %s failed:\n%s" % (name, tb.rstrip()))
                flush_logs()
                send(
                    {
                        "type": "restored",
                        "ok": False,
                        "message": "restore hook %s raised %s: %s" % (name, err_type, message),
                    }
                )
                return
        flush_logs()
        send({"type": "restored", "ok": True})

    def unknown(self, header):
        kind = header.get("type")
        log("unknown frame type %r" % (kind,))
        send(
            {
                "type": "error",
                "id": str(header.get("id", "")),
                "error_type": "ProtocolError",
                "message": "unknown frame type %r" % (kind,),
                "traceback": "",
            }
        )

    def serve(self, reader):
        while True:
            frame = reader.next()
            if frame is None:
                return
            header, body = frame
            kind = header.get("type")
            if kind == "invoke":
                self.invoke(header, body)
            elif kind == "restored":
                self.restored(header)
            else:
                self.unknown(header)
            del frame, header, body


def reseed(entropy):
    """Gives this copy its own random state (copies share the original's)."""
    random.seed(entropy)
    # tempfile keeps its own generator, renewed only when the pid changes; a
    # copy has the original's pid, so drop it and let it be rebuilt.
    tempfile = sys.modules.get("tempfile")
    if tempfile is not None and hasattr(tempfile, "_name_sequence"):
        tempfile._name_sequence = None
    # OpenSSL keys its generators on the pid, which a copy keeps: without
    # this, ssl.RAND_bytes (and TLS keys) would repeat across copies. Mix
    # fresh OS randomness into its primary generator (only when the process
    # loaded OpenSSL's ssl module; nothing else here reaches its generator).
    _ssl = sys.modules.get("_ssl")
    if _ssl is not None and hasattr(_ssl, "RAND_add"):
        fresh = os.urandom(32)
        _ssl.RAND_add(entropy + fresh, float(len(fresh)))
    numpy = sys.modules.get("numpy")
    np_random = getattr(numpy, "random", None) if numpy is not None else None
    if np_random is not None and hasattr(np_random, "seed"):
        digest = hashlib.sha256(b"numpy" + entropy).digest()
        words = [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 32, 4)]
        np_random.seed(words)


def load_handler(spec):
    """Imports `module.function` and returns the function."""
    module_name, _, attr = spec.rpartition(".")
    if not module_name or not attr:
        raise ValueError("THAW_HANDLER must look like module.function, not %r" % spec)
    module = importlib.import_module(module_name)
    handler = getattr(module, attr)
    if not callable(handler):
        raise TypeError("handler %s is a %s, not a function" % (spec, type(handler).__name__))
    return handler


def setup_process():
    # Children the handler starts (os.system, subprocess with close_fds=False)
    # must not hold the protocol pipes.
    for fd in (REQUEST_FD, RESPONSE_FD):
        try:
            os.set_inheritable(fd, False)
        except OSError as e:
            log("protocol fd %d is not open: %s" % (fd, e))
            sys.exit(EXIT_PROTOCOL_ERROR)
    # Logs are line-based: each line reaches thaw when printed.
    if sys.stdout is not None:
        try:
            sys.stdout.reconfigure(line_buffering=True)
        except (AttributeError, ValueError):
            pass


def main():
    setup_process()
    # Import the helper before the function's directory joins sys.path, so
    # that handlers always share this runtime's `thaw` module.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import thaw

    task_dir = os.environ.get("THAW_TASK_DIR", "/var/task")
    sys.path.insert(0, task_dir)
    spec = os.environ.get("THAW_HANDLER", "main.handler")
    try:
        handler = load_handler(spec)
    except KeyboardInterrupt:
        raise
    except BaseException as e:
        err_type, message, tb = describe(e)
        del e
        log("cannot load handler %s:\n%s" % (spec, tb.rstrip()))
        send(
            {
                "type": "init_error",
                "error_type": err_type,
                "message": message,
                "traceback": tb,
            }
        )
        sys.exit(EXIT_INIT_ERROR)

    # Everything built so far lives as long as the process: keep the cyclic
    # collector off those objects so later collections do not write to (and
    # un-share) every page of a restored copy.
    gc.collect()
    gc.freeze()

    runtime = Runtime(handler, thaw)
    flush_logs()
    send(
        {
            "type": "ready",
            "pid": os.getpid(),
            "runtime": "python3",
            "protocol": PROTOCOL,
            "python": "%d.%d.%d" % sys.version_info[:3],
        }
    )
    try:
        runtime.serve(FrameReader(REQUEST_FD))
    except ProtocolError as e:
        log("corrupt request stream: %s" % e)
        flush_logs()
        sys.exit(EXIT_PROTOCOL_ERROR)
    except BrokenPipeError:
        log("thaw stopped reading answers")
        flush_logs()
        sys.exit(EXIT_PROTOCOL_ERROR)
    flush_logs()


if __name__ == "__main__":
    main()
