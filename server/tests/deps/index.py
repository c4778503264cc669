"""A package index for server/tests/dependencies.rs, built and served here.

    python3 index.py DIR

builds into DIR, listens on 127.0.0.1 (a free port) and prints
`listening PORT`, then serves until killed:

* a PEP 503 simple index at /simple/<project>/ with two wheels it builds:
  `thawpure` (pure Python, py3-none-any) and `thawbin` (platform-tagged
  py3-none-linux_x86_64, a tiny shared library loaded with ctypes);
* an npm registry at /npm/: the document of `thaw-left-pad` and its
  tarball; DIR/package-lock.json is a lockfile pinning it;
* every request line is appended to DIR/requests.log; while DIR/hold exists,
  requests wait (the test holds the installer to watch the version's
  `building` state).
"""
import base64
import hashlib
import http.server
import io
import json
import os
import subprocess
import sys
import tarfile
import time
import zipfile

DIR = sys.argv[1]
FILES = {}  # path -> (content type, bytes)


def b64(digest):
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def wheel(name, version, tag, files, purelib):
    """A wheel: a zip of the package, METADATA, WHEEL and RECORD."""
    info = f"{name}-{version}.dist-info"
    files = dict(files)
    files[f"{info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        f"Summary: thaw test package\n"
    ).encode()
    files[f"{info}/WHEEL"] = (
        f"Wheel-Version: 1.0\nGenerator: thaw-test\n"
        f"Root-Is-Purelib: {'true' if purelib else 'false'}\nTag: {tag}\n"
    ).encode()
    record = "".join(
        f"{p},sha256={b64(hashlib.sha256(b).digest())},{len(b)}\n"
        for p, b in files.items()
    )
    record += f"{info}/RECORD,,\n"
    files[f"{info}/RECORD"] = record.encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for p, b in files.items():
            zi = zipfile.ZipInfo(p, date_time=(2020, 1, 1, 0, 0, 0))
            zi.external_attr = (0o755 if p.endswith(".so") else 0o644) << 16
            z.writestr(zi, b)
    return f"{name}-{version}-{tag}.whl", out.getvalue()


def shared_library():
    src = os.path.join(DIR, "thawbin.c")
    lib = os.path.join(DIR, "libthawbin.so")
    with open(src, "w") as f:
        f.write("int thawbin_add(int a, int b) { return a + b + 1000; }\n")
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", lib, src], check=True)
    with open(lib, "rb") as f:
        return f.read()


def build(port):
    base = f"http://127.0.0.1:{port}"
    pure = wheel(
        "thawpure",
        "1.0",
        "py3-none-any",
        {"thawpure/__init__.py": b"def greet(name):\n    return 'hello ' + name + ' from thawpure'\n"},
        True,
    )
    binary = wheel(
        "thawbin",
        "1.0",
        "py3-none-linux_x86_64",
        {
            "thawbin/__init__.py": (
                b"import ctypes, os\n"
                b"_lib = ctypes.CDLL(os.path.join(os.path.dirname(__file__), 'libthawbin.so'))\n"
                b"def add(a, b):\n    return _lib.thawbin_add(a, b)\n"
            ),
            "thawbin/libthawbin.so": shared_library(),
        },
        False,
    )
    for project, (fname, data) in [("thawpure", pure), ("thawbin", binary)]:
        sha = hashlib.sha256(data).hexdigest()
        FILES[f"/files/{fname}"] = ("application/octet-stream", data)
        page = f'<!DOCTYPE html><html><body><a href="/files/{fname}#sha256={sha}">{fname}</a></body></html>\n'
        FILES[f"/simple/{project}/"] = ("text/html", page.encode())

    # npm: one package, its tarball and a registry document.
    tgz = io.BytesIO()
    with tarfile.open(fileobj=tgz, mode="w:gz") as t:
        for p, b in [
            ("package/package.json", json.dumps({"name": "thaw-left-pad", "version": "1.0.0", "main": "index.js"}).encode()),
            ("package/index.js", b"module.exports = (s, n) => String(s).padStart(n, '*');\n"),
        ]:
            ti = tarfile.TarInfo(p)
            ti.size = len(b)
            ti.mode = 0o644
            ti.mtime = 1577836800
            t.addfile(ti, io.BytesIO(b))
    tgz = tgz.getvalue()
    tarball = f"{base}/npm/thaw-left-pad/-/thaw-left-pad-1.0.0.tgz"
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(tgz).digest()).decode()
    FILES["/npm/thaw-left-pad/-/thaw-left-pad-1.0.0.tgz"] = ("application/octet-stream", tgz)
    doc = {
        "name": "thaw-left-pad",
        "dist-tags": {"latest": "1.0.0"},
        "versions": {
            "1.0.0": {
                "name": "thaw-left-pad",
                "version": "1.0.0",
                "main": "index.js",
                "dist": {
                    "tarball": tarball,
                    "integrity": integrity,
                    "shasum": hashlib.sha1(tgz).hexdigest(),
                },
            }
        },
    }
    FILES["/npm/thaw-left-pad"] = ("application/json", json.dumps(doc).encode())
    lock = {
        "name": "nodedeps",
        "version": "1.0.0",
        "lockfileVersion": 3,
        "requires": True,
        "packages": {
            "": {"name": "nodedeps", "version": "1.0.0", "dependencies": {"thaw-left-pad": "1.0.0"}},
            "node_modules/thaw-left-pad": {"version": "1.0.0", "resolved": tarball, "integrity": integrity},
        },
    }
    with open(os.path.join(DIR, "package-lock.json"), "w") as f:
        json.dump(lock, f, indent=2)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, head_only):
        with open(os.path.join(DIR, "requests.log"), "a") as f:
            f.write(f"{self.command} {self.path}\n")
        while os.path.exists(os.path.join(DIR, "hold")):
            time.sleep(0.05)
        path = self.path.split("?", 1)[0]
        found = FILES.get(path)
        if found is None and path.startswith("/simple/") and not path.endswith("/"):
            found = FILES.get(path + "/")
        if found is None:
            body = b"not found\n"
            self.send_response(404)
            self.send_header("Content-Type", "text/plain")
        else:
            ctype, body = found
            self.send_response(200)
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head_only:
            self.wfile.write(body)

    def do_GET(self):
        self.answer(False)

    def do_HEAD(self):
        self.answer(True)


def main():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    build(port)
    print(f"listening {port}", flush=True)
    server.serve_forever()


main()
