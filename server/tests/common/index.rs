//! The tests' own package index (server/tests/deps/index.py): a PEP 503
//! simple index with the wheels `thawpure` (pure Python) and `thawbin`
//! (platform-tagged), and an npm registry with `thaw-left-pad`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// The test's own package index (server/tests/deps/index.py), killed on
/// drop.
pub struct Index {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Index {
    /// Builds the index's packages into a temporary folder and serves them
    /// on a free loopback port.
    pub fn start() -> Index {
        let dir = tempfile::Builder::new()
            .prefix("thaw-index")
            .tempdir_in("/var/tmp")
            .unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/deps/index.py");
        let mut child = Command::new("/usr/bin/python3")
            .arg(script)
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the test index");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("index said {line:?}"))
            .parse()
            .unwrap();
        Index { child, dir, port }
    }

    /// The simple index's URL (for `--package-index`).
    pub fn simple(&self) -> String {
        format!("http://127.0.0.1:{}/simple", self.port)
    }

    /// The npm registry's URL (for `--npm-registry`).
    pub fn npm(&self) -> String {
        format!("http://127.0.0.1:{}/npm/", self.port)
    }

    /// Every request line it served.
    pub fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("requests.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Requests wait until [`Index::release`].
    pub fn hold(&self) {
        std::fs::write(self.dir.path().join("hold"), "").unwrap();
    }

    pub fn release(&self) {
        std::fs::remove_file(self.dir.path().join("hold")).unwrap();
    }

    /// A lockfile pinning `thaw-left-pad` 1.0.0 from this index.
    pub fn lockfile(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("package-lock.json")).unwrap()
    }
}

impl Drop for Index {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
