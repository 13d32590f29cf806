//! `static_file` (`localPath`, `stripPrefix`, `httpUser`, `httpPassword`): an HTTP/1.1 file
//! server on each user connection, answering as frp's router in front of Go's
//! `http.FileServer` does: the path is cleaned first (a path that needed cleaning, `..` or
//! `%2e%2e` included, gets `301` to the cleaned one, so nothing above `localPath` is ever
//! opened), only `GET` under `/stripPrefix/` is routed (`404 page not found`, `405` otherwise),
//! then Basic auth (`401`, after 200 ms), then the file: directories without a trailing slash
//! are redirected to `name/`, listed in Go's `<pre>` format unless they hold `index.html`;
//! files are served by tower-http's `ServeFile` (single ranges, `If-Modified-Since` and
//! friends; several ranges get the whole file, as frp answers them). Symbolic links are
//! followed, as Go's `http.Dir` follows them.

use std::convert::Infallible;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use tower_http::services::ServeFile;
use tracing::debug;

use super::http_proxy::BasicAuth;
use super::{ConnInfo, Plugin, Relay, UserConn};
use crate::config::ClientPluginConfig;

/// Go's `ReadHeaderTimeout` for the plugin's server.
const READ_HEADER_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest request head read (Go's `DefaultMaxHeaderBytes` + 4096); larger gets `431`.
pub(crate) const MAX_HEAD: usize = (1 << 20) + 4096;
/// frp's `SetAuthFailDelay`.
const AUTH_FAIL_DELAY: Duration = Duration::from_millis(200);

struct Inner {
    root: PathBuf,
    /// `/stripPrefix/`, or `/`.
    prefix: String,
    auth: BasicAuth,
}

pub(crate) struct StaticFile {
    inner: Arc<Inner>,
}

impl StaticFile {
    pub(crate) fn new(cfg: &ClientPluginConfig) -> Self {
        let prefix = if cfg.strip_prefix.is_empty() {
            "/".to_string()
        } else {
            format!("/{}/", cfg.strip_prefix)
        };
        StaticFile {
            inner: Arc::new(Inner {
                root: PathBuf::from(&cfg.local_path),
                prefix,
                auth: BasicAuth::new(&cfg.http_user, &cfg.http_password),
            }),
        }
    }
}

impl Plugin for StaticFile {
    fn name(&self) -> &'static str {
        "static_file"
    }

    fn handle(&self, user: UserConn, info: ConnInfo, _relay: Relay) -> BoxFuture<'static, ()> {
        let inner = self.inner.clone();
        async move {
            let mut user = user;
            let svc = hyper::service::service_fn(move |req| {
                let inner = inner.clone();
                async move { Ok::<_, Infallible>(serve(req, &inner).await) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(READ_HEADER_TIMEOUT)
                .title_case_headers(true)
                .max_buf_size(MAX_HEAD)
                .serve_connection(TokioIo::new(&mut user), svc)
                .await;
            if let Err(e) = served {
                debug!("[{}] static_file: {e}", info.proxy);
            }
            super::linger_close(&mut user).await;
        }
        .boxed()
    }
}

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

fn respond(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(
        Full::new(body.into())
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r
}

/// Go's `http.Error` ([`super::go_error`]).
fn go_error(status: StatusCode, msg: &str) -> Response<Body> {
    super::go_error(status, msg).map(|b| b.map_err(|e| match e {}).boxed_unsync())
}

fn not_found() -> Response<Body> {
    go_error(StatusCode::NOT_FOUND, "404 page not found")
}

/// A `301` to `location` (Go's `localRedirect` and gorilla/mux's clean-path redirect).
fn redirect(location: &str, query: Option<&str>) -> Response<Body> {
    let mut location = location.to_string();
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        location.push('?');
        location.push_str(q);
    }
    let mut r = respond(StatusCode::MOVED_PERMANENTLY, Bytes::new());
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// Go's `path.Clean` for a rooted path: no empty, `.` or `..` elements (`..` at the root
/// stays at the root), no trailing slash except for `/` itself.
fn clean(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    format!("/{}", parts.join("/"))
}

/// gorilla/mux's `cleanPath`: `clean`, keeping a trailing slash.
fn mux_clean(p: &str) -> String {
    let mut c = clean(p);
    if p.ends_with('/') && c != "/" {
        c.push('/');
    }
    c
}

/// Go's `path.Base`.
fn base(p: &str) -> &str {
    let t = p.trim_end_matches('/');
    if t.is_empty() {
        return "/";
    }
    t.rsplit('/').next().unwrap_or(t)
}

/// What Go's `url.URL{Path: p}.String()` leaves unescaped in a path.
const PATH: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b',')
    .remove(b'/')
    .remove(b':')
    .remove(b';')
    .remove(b'=')
    .remove(b'@');

fn escape_path(p: &str) -> String {
    let e = utf8_percent_encode(p, PATH).to_string();
    // Go: a first segment with a colon would read as a scheme.
    match e.split('/').next() {
        Some(first) if first.contains(':') => format!("./{e}"),
        _ => e,
    }
}

/// Go's `htmlReplacer`.
fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&#34;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Go's `toHTTPError` for a failed open or stat.
fn open_error(e: &std::io::Error) -> Response<Body> {
    use std::io::ErrorKind::*;
    match e.kind() {
        NotFound | NotADirectory => not_found(),
        PermissionDenied => go_error(StatusCode::FORBIDDEN, "403 Forbidden"),
        _ => go_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "500 Internal Server Error",
        ),
    }
}

async fn serve(req: Request<Incoming>, inner: &Inner) -> Response<Body> {
    let query = req.uri().query().map(str::to_string);
    let path = percent_decode_str(req.uri().path())
        .decode_utf8_lossy()
        .into_owned();
    // gorilla/mux: a path that is not clean is redirected to its clean form first.
    let cleaned = mux_clean(&path);
    if cleaned != path && req.method() != Method::CONNECT {
        return redirect(&escape_path(&cleaned), query.as_deref());
    }
    let Some(rest) = path.strip_prefix(inner.prefix.as_str()) else {
        return not_found();
    };
    if req.method() != Method::GET {
        return respond(StatusCode::METHOD_NOT_ALLOWED, Bytes::new());
    }
    let creds = req.headers().get(header::AUTHORIZATION);
    if !inner.auth.accepts(creds.map(|v| v.as_bytes())) {
        tokio::time::sleep(AUTH_FAIL_DELAY).await;
        let mut r = go_error(StatusCode::UNAUTHORIZED, "Unauthorized");
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"Restricted\""),
        );
        return r;
    }
    // http.StripPrefix, then http.FileServer.
    let url = format!("/{rest}");
    if url.ends_with("/index.html") {
        return redirect("./", query.as_deref());
    }
    let name = clean(&url);
    let mut full = inner.root.clone();
    full.push(name.trim_start_matches('/'));
    let meta = match tokio::fs::metadata(&full).await {
        Ok(m) => m,
        Err(e) => return open_error(&e),
    };
    if meta.is_dir() {
        if !url.ends_with('/') {
            return redirect(&format!("{}/", base(&url)), query.as_deref());
        }
        let index = full.join("index.html");
        match tokio::fs::metadata(&index).await {
            Ok(m) if !m.is_dir() => return serve_file(req, &index).await,
            _ => {}
        }
        return list(&req, &full, meta.modified().ok()).await;
    }
    if url.ends_with('/') {
        return redirect(&format!("../{}", base(&url)), query.as_deref());
    }
    serve_file(req, &full).await
}

/// The content type Go gives `path`: by extension (text types in UTF-8), else from the first
/// bytes (text or not).
fn content_type(path: &Path) -> String {
    if let Some(m) = mime_guess::from_path(path).first() {
        let s = m.essence_str().to_string();
        if m.type_() == mime_guess::mime::TEXT && m.get_param("charset").is_none() {
            return format!("{s}; charset=utf-8");
        }
        return m.to_string();
    }
    let mut head = [0u8; 512];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .unwrap_or(0);
    let head = &head[..n];
    let binary = head
        .iter()
        .any(|&b| matches!(b, 0x00..=0x08 | 0x0b | 0x0e..=0x1a | 0x1c..=0x1f));
    let start: Vec<u8> = head
        .iter()
        .skip_while(|b| b.is_ascii_whitespace())
        .take(14)
        .map(u8::to_ascii_lowercase)
        .collect();
    if start.starts_with(b"<!doctype html") || start.starts_with(b"<html") {
        "text/html; charset=utf-8".into()
    } else if binary {
        "application/octet-stream".into()
    } else {
        "text/plain; charset=utf-8".into()
    }
}

async fn serve_file(req: Request<Incoming>, path: &Path) -> Response<Body> {
    let ct = {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || content_type(&path))
            .await
            .unwrap_or_else(|_| "application/octet-stream".into())
    };
    let mime: mime_guess::Mime = ct
        .parse()
        .unwrap_or(mime_guess::mime::APPLICATION_OCTET_STREAM);
    let (parts, _) = req.into_parts();
    let req = Request::from_parts(parts, ());
    let served = ServeFile::new_with_mime(path, &mime)
        .ignore_multi_range_requests(true)
        .try_call(req)
        .await;
    match served {
        Ok(mut r) => {
            // Go spells the 416 its own way and says why.
            if r.status() == StatusCode::RANGE_NOT_SATISFIABLE {
                let mut e = go_error(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "invalid range: failed to overlap",
                );
                if let Some(cr) = r.headers_mut().remove(header::CONTENT_RANGE) {
                    e.headers_mut().insert(header::CONTENT_RANGE, cr);
                }
                return e;
            }
            // Go's FileServer sends no ETag, and no Content-Type with a 304.
            r.headers_mut().remove(header::ETAG);
            if r.status() == StatusCode::NOT_MODIFIED {
                r.headers_mut().remove(header::CONTENT_TYPE);
            } else if let Ok(v) = HeaderValue::from_str(&ct) {
                r.headers_mut().insert(header::CONTENT_TYPE, v);
            }
            r.map(|b| b.boxed_unsync())
        }
        Err(e) => open_error(&e),
    }
}

/// Go's `dirList`, after its `If-Modified-Since` check.
async fn list(req: &Request<Incoming>, dir: &Path, modified: Option<SystemTime>) -> Response<Body> {
    let modified = modified.filter(|m| *m > SystemTime::UNIX_EPOCH);
    if let (Some(m), Some(since)) = (
        modified,
        req.headers()
            .get(header::IF_MODIFIED_SINCE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok()),
    ) {
        // Go compares at one-second resolution.
        let secs = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        };
        if secs(m) <= secs(since) {
            let mut r = respond(StatusCode::NOT_MODIFIED, Bytes::new());
            if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(m)) {
                r.headers_mut().insert(header::LAST_MODIFIED, v);
            }
            return r;
        }
    }
    let mut names = Vec::new();
    let read = async {
        let mut rd = tokio::fs::read_dir(dir).await?;
        while let Some(e) = rd.next_entry().await? {
            let mut name = e.file_name().to_string_lossy().into_owned();
            // Go's DirEntry.IsDir: the entry itself, not a link's target.
            if e.file_type().await.is_ok_and(|t| t.is_dir()) {
                name.push('/');
            }
            names.push(name);
        }
        Ok::<_, std::io::Error>(())
    };
    if read.await.is_err() {
        return go_error(StatusCode::INTERNAL_SERVER_ERROR, "Error reading directory");
    }
    names.sort();
    let mut body = String::from(
        "<!doctype html>\n<meta name=\"viewport\" content=\"width=device-width\">\n<pre>\n",
    );
    for n in &names {
        body.push_str(&format!(
            "<a href=\"{}\">{}</a>\n",
            escape_path(n),
            html_escape(n)
        ));
    }
    body.push_str("</pre>\n");
    let mut r = respond(StatusCode::OK, body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    if let Some(m) = modified
        && let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(m))
    {
        h.insert(header::LAST_MODIFIED, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_clean_as_go_cleans_them() {
        assert_eq!(clean("/../../etc/passwd"), "/etc/passwd");
        assert_eq!(clean("/a/./b/../c/"), "/a/c");
        assert_eq!(clean("/"), "/");
        assert_eq!(mux_clean("/static/../../x/"), "/x/");
        assert_eq!(mux_clean("/static//a"), "/static/a");
        assert_eq!(mux_clean("/static/"), "/static/");
        assert_eq!(base("/sub/"), "sub");
        assert_eq!(base("/"), "/");
        assert_eq!(escape_path("we ird&<.txt"), "we%20ird&%3C.txt");
        assert_eq!(escape_path("a:b"), "./a:b");
        assert_eq!(html_escape("a&<'\">"), "a&amp;&lt;&#39;&#34;&gt;");
    }
}
