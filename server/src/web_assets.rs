//! The staff web client, embedded: the page, its script and styles, and the SDK compiled to
//! WebAssembly with its wasm-bindgen glue, all built by `build.rs` into `OUT_DIR`. Served at
//! `/` by [`crate::http`] with a strict Content-Security-Policy.

/// One embedded file.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    /// Its URL path (`/app.js`).
    pub path: &'static str,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its bytes.
    pub bytes: &'static [u8],
}

const ASSETS: &[(&str, &str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));

/// The asset served at `path` (`/` is `/index.html`).
pub fn find(path: &str) -> Option<Asset> {
    let path = if path == "/" { "/index.html" } else { path };
    ASSETS
        .iter()
        .find(|(p, _, _)| *p == path)
        .map(|&(path, content_type, bytes)| Asset {
            path,
            content_type,
            bytes,
        })
}

/// The policy for the web client's responses: scripts only from this origin (and the
/// compilation of its WebAssembly module, `'wasm-unsafe-eval'`), no inline script or style,
/// connections only back to this origin (the WebSocket), images from here or `data:` (the
/// TOTP QR code), no plugins, no framing, no form posts, no `<base>`; and DOM sinks only
/// through Trusted Types (the page uses none).
pub const APP_CSP: &str = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'; require-trusted-types-for 'script'";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_app_is_embedded() {
        for path in [
            "/",
            "/app.js",
            "/style.css",
            "/medrelay_web.js",
            "/medrelay_web_bg.wasm",
        ] {
            assert!(find(path).is_some_and(|a| !a.bytes.is_empty()), "{path}");
        }
        assert!(find("/medrelay_web.d.ts").is_none());
        assert!(find("/../Cargo.toml").is_none());
    }

    #[test]
    fn the_page_has_no_inline_script_or_style() {
        let html = find("/").map(|a| String::from_utf8_lossy(a.bytes).into_owned());
        let html = html.unwrap_or_default();
        assert!(html.contains("<script type=\"module\" src=\"/app.js\"></script>"));
        assert!(!html.contains("<style"));
        assert!(!html.contains(" style="));
        assert!(!html.contains("onclick") && !html.contains("javascript:"));
    }
}
