//! The dashboard's static assets, embedded in the binary.
//!
//! The dashboard is a one-page application of plain HTML, CSS and JavaScript
//! modules (no build step). Every file under `web/assets/` that the page uses
//! is compiled into the binary by [`include_bytes!`], so `thaw serve` needs
//! nothing on disk and never fetches anything from elsewhere:
//!
//! ```text
//! web/assets/
//!   index.html             the page (served at `/` and `/ui/`)
//!   app.css                its styles
//!   app.js                 hash router, session prompt, live stream
//!   api.js                 fetch helpers, formatting
//!   charts.js              time-series charts over uPlot
//!   pages/overview.js      #/overview
//!   pages/function.js      #/functions/NAME
//!   pages/deploy.js        #/deploy
//!   pages/store.js         #/store
//!   vendor/uplot/          uPlot 1.6.32 (MIT), from the npm registry
//! ```
//!
//! [`asset`] looks a file up by its path relative to `web/assets/`.

#![forbid(unsafe_code)]

/// One embedded file: its path under `web/assets/`, content type and bytes.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    /// Path relative to `web/assets/`, without a leading `/`.
    pub path: &'static str,
    /// The `content-type` to answer with.
    pub content_type: &'static str,
    /// The file.
    pub bytes: &'static [u8],
}

macro_rules! embed {
    ($($path:literal => $ctype:literal),* $(,)?) => {
        &[$(Asset {
            path: $path,
            content_type: $ctype,
            bytes: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/", $path)),
        }),*]
    };
}

const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// Every embedded file.
pub static ASSETS: &[Asset] = embed! {
    "index.html" => "text/html; charset=utf-8",
    "app.css" => "text/css; charset=utf-8",
    "app.js" => "text/javascript; charset=utf-8",
    "api.js" => "text/javascript; charset=utf-8",
    "charts.js" => "text/javascript; charset=utf-8",
    "pages/overview.js" => "text/javascript; charset=utf-8",
    "pages/function.js" => "text/javascript; charset=utf-8",
    "pages/deploy.js" => "text/javascript; charset=utf-8",
    "pages/store.js" => "text/javascript; charset=utf-8",
    "vendor/uplot/uPlot.esm.js" => "text/javascript; charset=utf-8",
    "vendor/uplot/uPlot.min.css" => "text/css; charset=utf-8",
    "vendor/uplot/LICENSE" => "text/plain; charset=utf-8",
};

/// The embedded file at `path` (relative to `web/assets/`; a leading `/` is
/// ignored, an empty path is `index.html`), with its content type.
pub fn asset(path: &str) -> Option<(&'static str, &'static [u8])> {
    let path = path.trim_start_matches('/');
    let path = if path.is_empty() { "index.html" } else { path };
    ASSETS
        .iter()
        .find(|a| a.path == path)
        .map(|a| (a.content_type, a.bytes))
}

/// The content type a file name implies (used by the tests to check the
/// table above).
pub fn content_type_of(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => HTML,
        Some("css") => CSS,
        Some("js") => JS,
        _ => TEXT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_has_the_type_of_its_name() {
        for a in ASSETS {
            assert_eq!(a.content_type, content_type_of(a.path), "{}", a.path);
            assert!(!a.bytes.is_empty(), "{} is empty", a.path);
        }
    }

    #[test]
    fn lookups() {
        assert_eq!(asset("/").unwrap().0, HTML);
        assert_eq!(asset("app.js").unwrap().0, JS);
        assert!(asset("/vendor/uplot/uPlot.esm.js").is_some());
        assert!(asset("../Cargo.toml").is_none());
        assert!(asset("nope.js").is_none());
    }

    /// Every `import ... from "./x.js"` and every `href`/`src` in the page
    /// names an embedded file, and none points outside the server.
    #[test]
    fn references_resolve_to_embedded_files() {
        for a in ASSETS {
            if !(a.path.ends_with(".js") || a.path.ends_with(".html")) {
                continue;
            }
            let text = std::str::from_utf8(a.bytes).unwrap();
            assert!(
                !text.contains("http://") && !text.contains("https://")
                    || a.path.contains("vendor"),
                "{} names an outside address",
                a.path
            );
            if a.path.contains("vendor") {
                continue;
            }
            let dir = a.path.rsplit_once('/').map_or("", |(d, _)| d);
            for quote in ['"', '\''] {
                for piece in text.split(quote) {
                    // References start with "./", "../" or "/": a bare name
                    // is data (the Deploy form's starting file names), as a
                    // browser takes no bare module specifier without an
                    // import map.
                    let is_ref = (piece.ends_with(".js") || piece.ends_with(".css"))
                        && (piece.starts_with('.') || piece.starts_with('/'));
                    if !is_ref || piece.contains(' ') || piece.contains('\n') {
                        continue;
                    }
                    let target = resolve(dir, piece);
                    assert!(
                        asset(&target).is_some(),
                        "{} refers to {piece} ({target}), which is not embedded",
                        a.path
                    );
                }
            }
        }
    }

    fn resolve(dir: &str, reference: &str) -> String {
        if let Some(abs) = reference.strip_prefix("/ui/") {
            return abs.to_string();
        }
        let mut parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
        for p in reference.split('/') {
            match p {
                "." => {}
                ".." => {
                    parts.pop();
                }
                p => parts.push(p),
            }
        }
        parts.join("/")
    }
}
