//! Client plugins (`[proxies.plugin]`): each plugin frpc serves, end to end through real frps
//! and frpc processes, and the rule that a plugin (or other key) frpc cannot serve is refused
//! by `frpc verify` and at start, naming the proxy and the key.

use std::time::Duration;

use e2e::*;

/// Runs a binary until it exits (killed after 20 s); returns (exited with success, output).
fn run(program: &str, args: &[&str], dir: &std::path::Path) -> (bool, String) {
    let mut p = Proc::spawn(program, &bin(program), args, dir);
    let status = p.wait_exit(Duration::from_secs(20));
    p.kill();
    (status.is_some_and(|s| s.success()), p.log_text())
}

/// What frpc does not serve (the pprof endpoint): `frpc verify` and `frpc` refuse it, naming
/// the key, before trying the server. (Every plugin type and proxy type is served now, visitor
/// plugins and xtcp included: tests/tests/vnet.rs, tests/tests/xtcp_*.rs.)
#[test]
fn unsupported_plugins_and_keys_are_refused() {
    let env = Env::new();
    let port = free_port();
    let cases = [(
        "webServer.port = 7400\nwebServer.pprofEnable = true\n[[proxies]]\nname = \"ok\"\ntype = \"tcp\"\nlocalPort = 22\n",
        "pprof (key webServer.pprofEnable) is not supported by this frpc yet",
    )];
    for (i, (body, want)) in cases.iter().enumerate() {
        let cfg = format!("serverAddr = \"127.0.0.1\"\nserverPort = {port}\n{body}");
        let path = env.write(&format!("c{i}.toml"), &cfg);
        let path = path.to_str().unwrap();
        for args in [&["verify", "-c", path][..], &["-c", path][..]] {
            let (ok, out) = run("frpc", args, env.path());
            assert!(!ok, "frpc {args:?} accepted:\n{body}\n{out}");
            assert!(
                out.contains(want),
                "frpc {args:?}: want {want:?}, got:\n{out}"
            );
            assert!(!out.contains("syntax is ok"), "{out}");
            assert!(!out.contains("login to the server"), "{out}");
            assert!(!out.contains("start proxy success"), "{out}");
        }
    }
}

/// The proxy table keys for encryption and compression.
const ENC_COMP: &str = "transport.useEncryption = true\ntransport.useCompression = true";

/// A tcp proxy served by a plugin: its name, its remote port, more keys of its table, and its
/// plugin table (TOML lines after `[proxies.plugin]`).
type PluginProxy<'a> = (&'a str, u16, &'a str, String);

/// frps on a free port, and frpc for it with `proxies`; returns both once every proxy has
/// logged "start proxy success".
fn start(env: &Env, proxies: &[PluginProxy]) -> (Proc, Proc) {
    let server = free_port();
    let frps = env.frps("frps", server, "");
    let mut cfg =
        format!("serverAddr = \"127.0.0.1\"\nserverPort = {server}\nlog.level = \"debug\"\n");
    for (name, remote, extra, plugin) in proxies {
        cfg.push_str(&format!(
            "[[proxies]]\nname = \"{name}\"\ntype = \"tcp\"\nremotePort = {remote}\n{extra}\n\
             [proxies.plugin]\n{plugin}\n"
        ));
    }
    let frpc = env.frpc("frpc", &cfg);
    for (name, ..) in proxies {
        frpc.wait_log(
            &format!("[{name}] start proxy success"),
            Duration::from_secs(10),
        );
    }
    (frps, frpc)
}

/// A plugin table: `type = kind`, `localAddr` 127.0.0.1:`port`, and the lines `more`.
fn plugin_to(kind: &str, port: u16, more: &str) -> String {
    format!("type = \"{kind}\"\nlocalAddr = \"127.0.0.1:{port}\"\n{more}")
}

/// [`start`] with two proxies on free ports: "open" served by the plugin table `open`, and
/// "authed" served by `authed` through encryption and compression. Returns (frps, frpc,
/// open's port, authed's port).
fn start_open_and_authed(env: &Env, open: &str, authed: &str) -> (Proc, Proc, u16, u16) {
    let (open_port, authed_port) = (free_port(), free_port());
    let (frps, frpc) = start(
        env,
        &[
            ("open", open_port, "", open.to_string()),
            ("authed", authed_port, ENC_COMP, authed.to_string()),
        ],
    );
    (frps, frpc, open_port, authed_port)
}

/// Reads from `s` until what it read ends with `suffix` (each read within 5 s, `what` naming
/// the wait); returns all it read.
async fn read_until_suffix<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    suffix: &[u8],
    what: &str,
) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    while !got.ends_with(suffix) {
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect(what)
            .unwrap();
        assert!(
            n > 0,
            "{what}: closed after {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    got
}

/// Connects to 127.0.0.1:port, sends `send`, and asserts that the peer closes the connection
/// (EOF or an error) within 5 s without answering; `what` names the case.
async fn assert_closed(port: u16, send: &[u8], what: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(send).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("{what}: not closed"));
    assert!(matches!(n, Ok(0) | Err(_)), "{what}: {n:?}");
}

/// A unix socket echo service at `path`.
async fn unix_echo_server(path: &std::path::Path) {
    let l = tokio::net::UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
}

/// `unix_domain_socket`: bytes go both ways to a unix socket, through encryption and
/// compression; with `proxyProtocolVersion` the socket gets the PROXY header first; a socket
/// nobody listens on is logged in frp's words, and the proxy keeps working.
#[tokio::test(flavor = "multi_thread")]
async fn unix_domain_socket_plugin() {
    let env = Env::new();
    let sock = env.path().join("echo.sock");
    unix_echo_server(&sock).await;
    let (plain, pp, gone) = (free_port(), free_port(), free_port());
    let uds = |path: &std::path::Path| {
        format!(
            "type = \"unix_domain_socket\"\nunixPath = \"{}\"",
            path.display()
        )
    };
    let (_frps, frpc) = start(
        &env,
        &[
            ("uds", plain, ENC_COMP, uds(&sock)),
            (
                "pp",
                pp,
                "transport.proxyProtocolVersion = \"v1\"",
                uds(&sock),
            ),
            ("gone", gone, "", uds(&env.path().join("nobody.sock"))),
        ],
    );
    let data = pattern(300_000, 7);
    let got = echo_exact(plain, &data).await.unwrap();
    assert!(got == data, "echo over the unix socket differs");

    // The echo returns the PROXY header before the bytes.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", pp))
        .await
        .unwrap();
    use tokio::io::AsyncWriteExt;
    s.write_all(b"hello").await.unwrap();
    let got = read_until_suffix(&mut s, b"hello", "echo with PROXY header").await;
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("PROXY TCP4 127.0.0.1 127.0.0.1 "),
        "{text}"
    );
    assert!(text.ends_with("\r\nhello"), "{text}");

    assert_closed(gone, b"", "a socket nobody listens on").await;
    frpc.wait_log("[gone] dial to uds ", Duration::from_secs(5));
    frpc.wait_log(
        "nobody.sock: connect: no such file or directory",
        Duration::from_secs(5),
    );
    // The other proxies are unaffected.
    let got = echo_exact(plain, b"still").await.unwrap();
    assert_eq!(got, b"still");
}

/// Writes a `200` response with `fields` (whole header lines) and `body`, and
/// `Connection: close`, then shuts `s` down.
async fn respond_and_close(s: &mut tokio::net::TcpStream, fields: &str, body: &[u8]) {
    use tokio::io::AsyncWriteExt;
    let resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{fields}Connection: close\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(resp.as_bytes()).await;
    let _ = s.write_all(body).await;
    let _ = s.shutdown().await;
}

/// A tiny HTTP/1.1 server on 127.0.0.1: every request gets `200` with `body` (and
/// `Connection: close`); returns its port.
async fn http_server(body: Vec<u8>) -> u16 {
    let body = std::sync::Arc::new(body);
    tcp_service(move |mut s| {
        let body = body.clone();
        async move {
            let Some(head) = read_head(&mut s).await else {
                return;
            };
            let first = String::from_utf8_lossy(&head)
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            let field = format!("X-Request-Line: {first}\r\n");
            respond_and_close(&mut s, &field, &body).await;
        }
    })
    .await
}

/// Runs curl with `args`; returns (exit code, stdout bytes, stderr text).
async fn curl(args: &[&str]) -> (i32, Vec<u8>, String) {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "20", "--noproxy", ""])
        .args(args)
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("https_proxy")
        .env_remove("all_proxy")
        .env_remove("ALL_PROXY")
        .output()
        .await
        .expect("curl");
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs curl with `args`; asserts that it succeeds with output `want`.
async fn curl_expect(args: &[&str], want: &[u8]) {
    let (code, out, err) = curl(args).await;
    assert_eq!(code, 0, "curl {args:?}: {err}");
    assert!(
        out == want,
        "curl {args:?}: body differs ({} bytes)",
        out.len()
    );
}

/// `socks5`: curl through it by host name (without and with RFC 1929 credentials, through
/// encryption and compression); missing or wrong credentials and a garbage greeting are
/// refused, and the proxy keeps serving others.
#[tokio::test(flavor = "multi_thread")]
async fn socks5_plugin() {
    let env = Env::new();
    let body = pattern(1 << 20, 3);
    let web = http_server(body.clone()).await;
    let (_frps, frpc, open, authed) = start_open_and_authed(
        &env,
        "type = \"socks5\"",
        "type = \"socks5\"\nusername = \"alice\"\npassword = \"s3cret\"",
    );
    let url = format!("http://localhost:{web}/file");
    let open_proxy = format!("127.0.0.1:{open}");
    curl_expect(&["--socks5-hostname", &open_proxy, &url], &body).await;

    let good = format!("socks5h://alice:s3cret@127.0.0.1:{authed}");
    curl_expect(&["-x", &good, &url], &body).await;
    let bad = format!("socks5h://alice:wrong@127.0.0.1:{authed}");
    let (code, _, err) = curl(&["-x", &bad, &url]).await;
    assert_ne!(code, 0, "wrong password accepted");
    assert!(err.contains("rejected"), "{err}");
    let none = format!("socks5h://127.0.0.1:{authed}");
    let (code, _, err) = curl(&["-x", &none, &url]).await;
    assert_ne!(code, 0, "no credentials accepted: {err}");
    let log = frpc.log_text();
    assert!(
        !log.contains("s3cret") && !log.contains("password bytes"),
        "{log}"
    );

    // Garbage instead of a greeting: the connection is closed, nothing else is hurt.
    assert_closed(
        open,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        "garbage greeting",
    )
    .await;
    // A target nobody listens on: the SOCKS reply says so (curl reports it), no hang.
    let dead = format!("http://127.0.0.1:{}/", free_port());
    let (code, _, err) = curl(&["--socks5-hostname", &open_proxy, &dead]).await;
    assert_ne!(code, 0);
    // Reply 5: connection refused.
    assert!(err.contains("(5)"), "{err}");

    curl_expect(&["-x", &good, &url], &body).await;
    curl_expect(&["--socks5-hostname", &open_proxy, &url], &body).await;
}

/// Sends `raw` to 127.0.0.1:port and returns what comes back until the peer closes (5 s).
async fn raw_exchange(port: u16, raw: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (mut r, mut w) = s.split();
    // The peer may answer and close before it has read everything.
    let write = async {
        let _ = w.write_all(raw).await;
    };
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), r.read_to_end(&mut got));
    let _ = tokio::join!(write, read);
    String::from_utf8_lossy(&got).into_owned()
}

/// `http_proxy`: curl forwards plain requests (`-x`) and tunnels with CONNECT (`-p`), with
/// and without credentials (407 with `Proxy-Authenticate: Basic` when missing or wrong);
/// a malformed request gets a 400 and the proxy keeps serving.
#[tokio::test(flavor = "multi_thread")]
async fn http_proxy_plugin() {
    let env = Env::new();
    let body = pattern(1 << 20, 5);
    let web = http_server(body.clone()).await;
    let (_frps, _frpc, open, authed) = start_open_and_authed(
        &env,
        "type = \"http_proxy\"",
        "type = \"http_proxy\"\nhttpUser = \"bob\"\nhttpPassword = \"pw\"",
    );
    let url = format!("http://127.0.0.1:{web}/x?y=1");
    let open_proxy = format!("http://127.0.0.1:{open}");
    let authed_proxy = format!("http://127.0.0.1:{authed}");
    for tunnel in [false, true] {
        let mut args = vec!["-x", &open_proxy, &url];
        if tunnel {
            args.insert(0, "-p");
        }
        curl_expect(&args, &body).await;
        let mut args = vec!["-x", &authed_proxy, "--proxy-user", "bob:pw", &url];
        if tunnel {
            args.insert(0, "-p");
        }
        curl_expect(&args, &body).await;
    }
    // The origin saw an origin-form request line.
    let (_, out, _) = curl(&["-sI", "-x", &open_proxy, &url]).await;
    let head = String::from_utf8_lossy(&out);
    assert!(
        head.contains("X-Request-Line: HEAD /x?y=1 HTTP/1.1"),
        "{head}"
    );
    // Missing or wrong credentials: 407.
    for creds in [None, Some("bob:nope")] {
        for tunnel in [false, true] {
            let mut args = vec!["-o", "/dev/null", "-w", "%{http_code}", "-x", &authed_proxy];
            if let Some(c) = creds {
                args.extend(["--proxy-user", c]);
            }
            if tunnel {
                args.push("-p");
            }
            args.push(&url);
            let (_, out, err) = curl(&args).await;
            if tunnel {
                assert!(err.contains("response 407"), "{args:?}: {err}");
            } else {
                assert_eq!(String::from_utf8_lossy(&out), "407", "{args:?}: {err}");
            }
        }
    }
    let resp = raw_exchange(authed, b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 407 "), "{resp}");
    assert!(resp.contains("Proxy-Authenticate: Basic"), "{resp}");
    // Malformed requests: 400, not a hang.
    let resp = raw_exchange(open, b"CONNECT \x01\x02 bad\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 400 "), "{resp}");
    let resp = raw_exchange(open, b"GET\x01 nonsense\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 400 "), "{resp}");
    // A CONNECT target nobody listens on: 400.
    let dead = format!("CONNECT 127.0.0.1:{} HTTP/1.1\r\n\r\n", free_port());
    let resp = raw_exchange(open, dead.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 400 "), "{resp}");
    // Still serving.
    curl_expect(
        &["-p", "-x", &authed_proxy, "--proxy-user", "bob:pw", &url],
        &body,
    )
    .await;
}

/// Runs curl with `args` and returns the response head and body (`-i`), as text.
async fn curl_text(args: &[&str]) -> String {
    let mut all = vec!["-i", "--path-as-is"];
    all.extend_from_slice(args);
    let (code, out, err) = curl(&all).await;
    assert_eq!(code, 0, "curl {args:?}: {err}");
    String::from_utf8_lossy(&out).into_owned()
}

/// The body of a `curl -i` response (after the first blank line), lowercased.
fn body_lowercase(r: &str) -> String {
    r.split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// A request head `start` (its request line and first fields) with 6000 more fields of
/// 200 bytes: past the 1 MiB head limit.
fn oversized_head(start: &[u8]) -> Vec<u8> {
    let mut huge = start.to_vec();
    for i in 0..6000 {
        huge.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "y".repeat(200)).as_bytes());
    }
    huge.extend_from_slice(b"\r\n");
    huge
}

/// A garbage request line on 127.0.0.1:port gets a `400`, and [`oversized_head`]`(start)` a
/// `431`.
async fn assert_bad_heads_refused(port: u16, start: &[u8]) {
    let resp = raw_exchange(port, b"GET\x01 nonsense\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 400 "), "{resp}");
    let resp = raw_exchange(port, &oversized_head(start)).await;
    assert!(resp.starts_with("HTTP/1.1 431 "), "{resp}");
}

/// Runs [`curl_text`] with `args`; asserts that the response starts with `status` and the
/// request head [`head_echo_server`] echoed (lowercased) with `request_line`; returns that
/// head, lowercased.
async fn curl_echoed_head(args: &[&str], status: &str, request_line: &str) -> String {
    let r = curl_text(args).await;
    assert!(r.starts_with(status), "{r}");
    let seen = body_lowercase(&r);
    assert!(seen.starts_with(request_line), "{seen}");
    seen
}

/// `static_file`: files, a range, a directory listing in Go's format, the redirect of a
/// directory without its slash, 304 for If-Modified-Since, GET only, Basic auth (401 with
/// `WWW-Authenticate`), and never a file above `localPath`: `..` and `%2e%2e` get a `301` to
/// the cleaned path, which is then looked up under `localPath`. A malformed request and
/// oversized headers are refused and the proxy keeps serving.
#[tokio::test(flavor = "multi_thread")]
async fn static_file_plugin() {
    let env = Env::new();
    let root = env.path().join("www");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::create_dir_all(root.join("withindex")).unwrap();
    std::fs::write(env.path().join("secret.txt"), "top secret").unwrap();
    std::fs::write(root.join("a.txt"), "foo\n").unwrap();
    std::fs::write(root.join("noext"), "hello world 0123456789").unwrap();
    std::fs::write(root.join("sub").join("page.html"), "<b>x</b>").unwrap();
    std::fs::write(root.join("we ird&<.txt"), "w").unwrap();
    std::fs::write(root.join("withindex").join("index.html"), "the index").unwrap();
    let big = pattern(3 << 20, 11);
    std::fs::write(root.join("big.bin"), &big).unwrap();
    let (_frps, _frpc, open, authed) = start_open_and_authed(
        &env,
        &format!(
            "type = \"static_file\"\nlocalPath = \"{}\"\nstripPrefix = \"static\"",
            root.display()
        ),
        &format!(
            "type = \"static_file\"\nlocalPath = \"{}\"\n\
             httpUser = \"abc\"\nhttpPassword = \"123\"",
            root.display()
        ),
    );
    let u = format!("http://127.0.0.1:{open}");
    let r = curl_text(&[&format!("{u}/static/a.txt")]).await;
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    assert!(
        r.contains("Content-Type: text/plain; charset=utf-8\r\n"),
        "{r}"
    );
    assert!(r.contains("Accept-Ranges: bytes\r\n"), "{r}");
    assert!(r.contains("Last-Modified: "), "{r}");
    assert!(r.ends_with("\r\n\r\nfoo\n"), "{r}");
    let r = curl_text(&[&format!("{u}/static/sub/page.html")]).await;
    assert!(
        r.contains("Content-Type: text/html; charset=utf-8\r\n"),
        "{r}"
    );
    // No extension: the content type comes from the bytes, as Go sniffs it.
    let r = curl_text(&[&format!("{u}/static/noext")]).await;
    assert!(
        r.contains("Content-Type: text/plain; charset=utf-8\r\n"),
        "{r}"
    );
    let r = curl_text(&["-r", "2-5", &format!("{u}/static/noext")]).await;
    assert!(r.starts_with("HTTP/1.1 206 Partial Content\r\n"), "{r}");
    assert!(r.contains("Content-Range: bytes 2-5/22\r\n"), "{r}");
    assert!(r.ends_with("\r\n\r\nllo "), "{r}");
    let r = curl_text(&["-r", "100-200", &format!("{u}/static/noext")]).await;
    assert!(r.starts_with("HTTP/1.1 416 "), "{r}");
    assert!(r.contains("Content-Range: bytes */22\r\n"), "{r}");
    curl_expect(&[&format!("{u}/static/big.bin")], &big).await;
    curl_expect(
        &["-r", "1000000-1000099", &format!("{u}/static/big.bin")],
        &big[1_000_000..1_000_100],
    )
    .await;
    // Conditional: not modified since tomorrow.
    let later = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(86400));
    let ims = format!("If-Modified-Since: {later}");
    let r = curl_text(&["-H", &ims, &format!("{u}/static/a.txt")]).await;
    assert!(r.starts_with("HTTP/1.1 304 Not Modified\r\n"), "{r}");
    let r = curl_text(&["-H", &ims, &format!("{u}/static/sub/")]).await;
    assert!(r.starts_with("HTTP/1.1 304 Not Modified\r\n"), "{r}");

    // Directories: listed as Go lists them, redirected to their slash, index.html served.
    let r = curl_text(&[&format!("{u}/static/")]).await;
    assert!(
        r.contains("Content-Type: text/html; charset=utf-8\r\n"),
        "{r}"
    );
    let want = "\r\n\r\n<!doctype html>\n<meta name=\"viewport\" content=\"width=device-width\">\n<pre>\n\
        <a href=\"a.txt\">a.txt</a>\n<a href=\"big.bin\">big.bin</a>\n<a href=\"noext\">noext</a>\n\
        <a href=\"sub/\">sub/</a>\n<a href=\"we%20ird&%3C.txt\">we ird&amp;&lt;.txt</a>\n\
        <a href=\"withindex/\">withindex/</a>\n</pre>\n";
    assert!(r.ends_with(want), "{r}");
    let r = curl_text(&[&format!("{u}/static/sub?q=1")]).await;
    assert!(r.starts_with("HTTP/1.1 301 Moved Permanently\r\n"), "{r}");
    assert!(r.contains("Location: sub/?q=1\r\n"), "{r}");
    let (code, out, err) = curl(&["-L", &format!("{u}/static/sub")]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        String::from_utf8_lossy(&out).contains("<a href=\"page.html\">page.html</a>"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    let r = curl_text(&[&format!("{u}/static/withindex/")]).await;
    assert!(r.ends_with("\r\n\r\nthe index"), "{r}");
    let r = curl_text(&[&format!("{u}/static/withindex/index.html")]).await;
    assert!(r.contains("Location: ./\r\n"), "{r}");
    let r = curl_text(&[&format!("{u}/static/a.txt/")]).await;
    assert!(r.contains("Location: ../a.txt\r\n"), "{r}");

    // Outside the prefix, other methods, missing files.
    for (args, want) in [
        (vec![format!("{u}/other")], "HTTP/1.1 404 Not Found\r\n"),
        (vec![format!("{u}/static")], "HTTP/1.1 404 Not Found\r\n"),
        (
            vec![format!("{u}/static/nope")],
            "HTTP/1.1 404 Not Found\r\n",
        ),
        (
            vec!["-X".into(), "POST".into(), format!("{u}/static/a.txt")],
            "HTTP/1.1 405 Method Not Allowed\r\n",
        ),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = curl_text(&args).await;
        assert!(r.starts_with(want), "{args:?}: {r}");
    }
    let r = curl_text(&[&format!("{u}/static/nope")]).await;
    assert!(r.ends_with("\r\n\r\n404 page not found\n"), "{r}");

    // Path traversal: redirected to the clean path, which is outside the prefix or under
    // localPath; the file above localPath is never served.
    for p in [
        "/static/../../etc/passwd",
        "/static/%2e%2e/%2e%2e/etc/passwd",
        "/static/..%2f..%2fetc%2fpasswd",
    ] {
        let r = curl_text(&[&format!("{u}{p}")]).await;
        assert!(r.starts_with("HTTP/1.1 301 "), "{p}: {r}");
        assert!(r.contains("Location: /etc/passwd\r\n"), "{p}: {r}");
        assert!(!r.contains("root:"), "{p}: {r}");
    }
    let ua = format!("http://127.0.0.1:{authed}");
    for p in [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/sub/../../secret.txt",
    ] {
        let (code, out, err) =
            curl(&["-L", "--path-as-is", "-u", "abc:123", &format!("{ua}{p}")]).await;
        assert_eq!(code, 0, "{err}");
        let out = String::from_utf8_lossy(&out);
        assert_eq!(out, "404 page not found\n", "{p}");
    }

    // Basic auth (through encryption and compression).
    let r = curl_text(&[&format!("{ua}/a.txt")]).await;
    assert!(r.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{r}");
    assert!(
        r.contains("Www-Authenticate: Basic realm=\"Restricted\"\r\n"),
        "{r}"
    );
    let r = curl_text(&["-u", "abc:nope", &format!("{ua}/a.txt")]).await;
    assert!(r.starts_with("HTTP/1.1 401 "), "{r}");
    let r = curl_text(&["-u", "abc:123", &format!("{ua}/a.txt")]).await;
    assert!(r.ends_with("\r\n\r\nfoo\n"), "{r}");
    curl_expect(&["-u", "abc:123", &format!("{ua}/big.bin")], &big).await;

    // Bad input: a clear refusal, and the proxy keeps serving.
    assert_bad_heads_refused(open, b"GET /static/a.txt HTTP/1.1\r\nHost: x\r\n").await;
    let r = curl_text(&[&format!("{u}/static/a.txt")]).await;
    assert!(r.ends_with("\r\n\r\nfoo\n"), "{r}");
}

/// An HTTP/1.1 server on 127.0.0.1 that answers each request with its own head as the body
/// (and `Connection: close`), or `big` for `GET /big`; returns its port.
async fn head_echo_server(big: Vec<u8>) -> u16 {
    use tokio::io::AsyncReadExt;
    let big = std::sync::Arc::new(big);
    tcp_service(move |mut s| {
        let big = big.clone();
        async move {
            let Some(mut head) = read_head(&mut s).await else {
                return;
            };
            let mut buf = [0u8; 4096];
            // Read the request body (Content-Length) before answering.
            let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
            let end = text.find("\r\n\r\n").unwrap() + 4;
            let want = text
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            let mut have = head.len() - end;
            while have < want {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => have += n,
                }
            }
            head.truncate(end);
            let body = if head.starts_with(b"GET /big ") {
                big.to_vec()
            } else {
                head
            };
            respond_and_close(&mut s, "", &body).await;
        }
    })
    .await
}

/// A CA-less self-signed certificate for `name`, written as `name.crt`/`name.key` in `dir`.
fn write_cert(dir: &std::path::Path, name: &str) -> (String, String) {
    let ck = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    let crt = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&crt, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    (
        crt.to_str().unwrap().to_string(),
        key.to_str().unwrap().to_string(),
    )
}

/// `http2http`: requests reach localAddr with `hostHeaderRewrite` and `requestHeaders.set`
/// applied and the user's `X-Forwarded-*` dropped (frp's `Rewrite` drops them), through
/// encryption and compression; a dead localAddr is a `502` with frp's warning; malformed and
/// oversized requests are refused (400, 431) and the proxy keeps serving.
/// `https2http`: HTTPS with a generated certificate (`-k`) and a configured one
/// (`--cacert`), HTTP/2 unless `enableHTTP2 = false`; the backend sees `X-Forwarded-For`
/// with the user's address appended, `X-Forwarded-Proto: https` and `X-Forwarded-Host`; a
/// `Host` other than the TLS server name gets `421`.
#[tokio::test(flavor = "multi_thread")]
async fn http2http_and_https2http_plugins() {
    let env = Env::new();
    let big = pattern(2 << 20, 9);
    let backend = head_echo_server(big.clone()).await;
    let (crt, key) = write_cert(env.path(), "example.test");
    let [h2h, dead, s2h, s2h_cert, s2h_h1] = std::array::from_fn(|_| free_port());
    let cert = format!("crtPath = \"{crt}\"\nkeyPath = \"{key}\"");
    let rewrite =
        "hostHeaderRewrite = \"backend.example\"\nrequestHeaders.set.x-from-frp = \"yes\"";
    let (_frps, frpc) = start(
        &env,
        &[
            (
                "h2h",
                h2h,
                ENC_COMP,
                plugin_to("http2http", backend, rewrite),
            ),
            ("dead", dead, "", plugin_to("http2http", free_port(), "")),
            ("s2h", s2h, "", plugin_to("https2http", backend, "")),
            (
                "s2h_cert",
                s2h_cert,
                "",
                plugin_to("https2http", backend, &cert),
            ),
            (
                "s2h_h1",
                s2h_h1,
                "",
                plugin_to("https2http", backend, "enableHTTP2 = false"),
            ),
        ],
    );
    // http2http.
    let u = format!("http://127.0.0.1:{h2h}");
    let seen = curl_echoed_head(
        &[
            "-H",
            "X-Forwarded-For: 2.2.2.2",
            "-H",
            "X-From-Frp: no",
            &format!("{u}/some/path?q=1"),
        ],
        "HTTP/1.1 200 OK\r\n",
        "get /some/path?q=1 http/1.1\r\n",
    )
    .await;
    assert!(seen.contains("\r\nhost: backend.example\r\n"), "{seen}");
    assert!(seen.contains("\r\nx-from-frp: yes\r\n"), "{seen}");
    assert!(!seen.contains("x-from-frp: no"), "{seen}");
    assert!(!seen.contains("x-forwarded"), "{seen}");
    curl_expect(&[&format!("{u}/big")], &big).await;
    let payload = "p".repeat(100_000);
    let (code, out, err) = curl(&["--data-binary", &payload, &format!("{u}/post")]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        String::from_utf8_lossy(&out).starts_with("POST /post HTTP/1.1\r\n"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    let r = curl_text(&[&format!("http://127.0.0.1:{dead}/")]).await;
    assert!(r.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{r}");
    frpc.wait_log(
        "[dead] http: proxy error: dial tcp 127.0.0.1:",
        Duration::from_secs(5),
    );
    frpc.wait_log("connect: connection refused", Duration::from_secs(5));
    assert_bad_heads_refused(h2h, b"GET / HTTP/1.1\r\nHost: x\r\n").await;
    let r = curl_text(&[&format!("{u}/again")]).await;
    assert!(r.contains("GET /again HTTP/1.1"), "{r}");

    // https2http, generated certificate, HTTP/2.
    let seen = curl_echoed_head(
        &[
            "-k",
            "--http2",
            "-H",
            "X-Forwarded-For: 2.2.2.2",
            &format!("https://127.0.0.1:{s2h}/tls?x=1"),
        ],
        "HTTP/2 200",
        "get /tls?x=1 http/1.1\r\n",
    )
    .await;
    assert!(
        seen.contains("\r\nx-forwarded-for: 2.2.2.2, 127.0.0.1\r\n"),
        "{seen}"
    );
    assert!(seen.contains("\r\nx-forwarded-proto: https\r\n"), "{seen}");
    assert!(
        seen.contains(&format!("\r\nx-forwarded-host: 127.0.0.1:{s2h}\r\n")),
        "{seen}"
    );
    assert!(
        seen.contains(&format!("\r\nhost: 127.0.0.1:{s2h}\r\n")),
        "{seen}"
    );
    curl_expect(&["-k", &format!("https://127.0.0.1:{s2h}/big")], &big).await;
    // Without -k the generated certificate is not trusted.
    let (code, _, _) = curl(&[&format!("https://127.0.0.1:{s2h}/")]).await;
    assert_ne!(code, 0);
    // enableHTTP2 = false: HTTP/1.1 only.
    let r = curl_text(&["-k", "--http2", &format!("https://127.0.0.1:{s2h_h1}/")]).await;
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    // The configured certificate verifies; a Host other than the server name gets 421.
    let resolve = format!("example.test:{s2h_cert}:127.0.0.1");
    let url = format!("https://example.test:{s2h_cert}/named");
    let r = curl_text(&["--cacert", &crt, "--resolve", &resolve, &url]).await;
    assert!(r.contains("\r\n\r\nGET /named HTTP/1.1\r\n"), "{r}");
    assert!(
        r.to_ascii_lowercase()
            .contains(&format!("\r\nhost: example.test:{s2h_cert}\r\n")),
        "{r}"
    );
    let r = curl_text(&[
        "--cacert",
        &crt,
        "--resolve",
        &resolve,
        "-H",
        "Host: other.test",
        &url,
    ])
    .await;
    assert!(r.starts_with("HTTP/2 421"), "{r}");
    // Not TLS at all: the connection is closed, the proxy keeps serving.
    let resp = raw_exchange(s2h, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(!resp.contains("200 OK"), "{resp}");
    let r = curl_text(&["-k", &format!("https://127.0.0.1:{s2h}/after")]).await;
    assert!(r.contains("GET /after HTTP/1.1"), "{r}");
}

/// `http2https` and `https2https` in front of an HTTPS service (here frpc's own https2http):
/// the backend gets the request with `hostHeaderRewrite` and `requestHeaders.set`;
/// http2https passes the user's `X-Forwarded-For` on unchanged, https2https appends the
/// user's address; a localAddr that does not speak TLS is a `502`. `tls2raw`: TLS terminated
/// with the configured certificate, plaintext relayed to localAddr, after a PROXY protocol
/// v2 header when the proxy asks for one.
#[tokio::test(flavor = "multi_thread")]
async fn http2https_https2https_and_tls2raw_plugins() {
    use tokio::io::AsyncWriteExt;
    let env = Env::new();
    let backend = head_echo_server(Vec::new()).await;
    let echo = echo_server().await;
    let (crt, key) = write_cert(env.path(), "example.test");
    let [tls_backend, h2s, s2s, notls, raw, raw_pp] = std::array::from_fn(|_| free_port());
    let cert = format!("crtPath = \"{crt}\"\nkeyPath = \"{key}\"");
    let h2s_more = format!(
        "hostHeaderRewrite = \"127.0.0.1:{tls_backend}\"\nrequestHeaders.set.x-via = \"h2s\""
    );
    let s2s_more = format!("{cert}\nrequestHeaders.set.x-via = \"s2s\"");
    let (_frps, frpc) = start(
        &env,
        &[
            (
                "tls_backend",
                tls_backend,
                "",
                plugin_to("https2http", backend, ""),
            ),
            (
                "h2s",
                h2s,
                "transport.useEncryption = true",
                plugin_to("http2https", tls_backend, &h2s_more),
            ),
            (
                "s2s",
                s2s,
                "",
                plugin_to("https2https", tls_backend, &s2s_more),
            ),
            ("notls", notls, "", plugin_to("http2https", echo, "")),
            (
                "raw",
                raw,
                "transport.useCompression = true",
                plugin_to("tls2raw", backend, &cert),
            ),
            (
                "raw_pp",
                raw_pp,
                "transport.proxyProtocolVersion = \"v2\"",
                plugin_to("tls2raw", echo, &cert),
            ),
        ],
    );
    // http2https: the user's X-Forwarded-For passes unchanged to the HTTPS side, whose
    // https2http then appends its own user's address (frpc's, 127.0.0.1).
    let seen = curl_echoed_head(
        &[
            "-H",
            "X-Forwarded-For: 2.2.2.2, 3.3.3.3",
            &format!("http://127.0.0.1:{h2s}/a?b=c"),
        ],
        "HTTP/1.1 200 OK\r\n",
        "get /a?b=c http/1.1\r\n",
    )
    .await;
    assert!(seen.contains("\r\nx-via: h2s\r\n"), "{seen}");
    assert!(
        seen.contains("\r\nx-forwarded-for: 2.2.2.2, 3.3.3.3, 127.0.0.1\r\n"),
        "{seen}"
    );
    // https2https with a configured certificate; the backend sees X-Forwarded-For with the
    // user's address.
    let resolve = format!("example.test:{s2s}:127.0.0.1");
    let seen = curl_echoed_head(
        &[
            "--cacert",
            &crt,
            "--resolve",
            &resolve,
            "-H",
            "X-Forwarded-For: 2.2.2.2",
            &format!("https://example.test:{s2s}/secure"),
        ],
        "HTTP/2 200",
        "get /secure http/1.1\r\n",
    )
    .await;
    assert!(seen.contains("\r\nx-via: s2s\r\n"), "{seen}");
    assert!(
        seen.contains("\r\nx-forwarded-for: 2.2.2.2, 127.0.0.1, 127.0.0.1\r\n"),
        "{seen}"
    );
    assert!(seen.contains("\r\nx-forwarded-proto: https\r\n"), "{seen}");
    // A localAddr that does not speak TLS: 502, and the proxy keeps serving.
    let r = curl_text(&[&format!("http://127.0.0.1:{notls}/")]).await;
    assert!(r.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{r}");
    frpc.wait_log("[notls] http: proxy error: ", Duration::from_secs(5));
    let r = curl_text(&[&format!("http://127.0.0.1:{h2s}/again")]).await;
    assert!(
        body_lowercase(&r).starts_with("get /again http/1.1\r\n"),
        "{r}"
    );

    // tls2raw: HTTPS by curl, plain HTTP at the backend.
    let resolve = format!("example.test:{raw}:127.0.0.1");
    let r = curl_text(&[
        "--cacert",
        &crt,
        "--resolve",
        &resolve,
        &format!("https://example.test:{raw}/raw"),
    ])
    .await;
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    assert!(
        body_lowercase(&r).starts_with("get /raw http/1.1\r\n"),
        "{r}"
    );
    // Not TLS: the handshake fails in frp's words, the proxy keeps serving.
    let resp = raw_exchange(raw, b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(!resp.contains("200 OK"), "{resp}");
    frpc.wait_log("[raw] tls handshake error: ", Duration::from_secs(5));
    // PROXY protocol v2 before the plaintext.
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&crt).unwrap();
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let tls_cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls_cfg));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", raw_pp))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("example.test").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(b"hello").await.unwrap();
    let got = read_until_suffix(&mut tls, b"hello", "echo through tls2raw").await;
    let header = ppp::v2::Header::try_from(&got[..got.len() - 5]).expect("PROXY v2 header");
    match header.addresses {
        ppp::v2::Addresses::IPv4(a) => {
            assert_eq!(a.source_address, std::net::Ipv4Addr::LOCALHOST);
            assert_eq!(a.destination_port, raw_pp);
        }
        other => panic!("{other:?}"),
    }
}

/// An upgrade (`Connection: Upgrade`) goes through http2http and https2http as through Go's
/// reverse proxy: the local service's 101 reaches the user, then both ways are one byte
/// stream (frp's wss transport behind frpc's https2http relies on it).
#[tokio::test(flavor = "multi_thread")]
async fn upgrades_pass_through_http_plugins() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = Env::new();
    // Switches to "echo" and echoes, after checking that the upgrade was asked for.
    let backend = tcp_service(|mut s| async move {
        let Some(head) = read_head(&mut s).await else {
            return;
        };
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        if !(head.contains("connection: upgrade") && head.contains("upgrade: echo")) {
            respond_and_close(&mut s, "", b"no upgrade asked").await;
            return;
        }
        let _ = s
            .write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
            )
            .await;
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    })
    .await;
    let (h2h, s2h) = (free_port(), free_port());
    let (_frps, _frpc) = start(
        &env,
        &[
            ("h2h", h2h, ENC_COMP, plugin_to("http2http", backend, "")),
            (
                "s2h",
                s2h,
                "",
                plugin_to("https2http", backend, "enableHTTP2 = false"),
            ),
        ],
    );
    let request =
        b"GET /ws HTTP/1.1\r\nHost: a.example\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n";
    let data = pattern(300_000, 11);
    // http2http: plain TCP.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", h2h))
        .await
        .unwrap();
    s.write_all(request).await.unwrap();
    let head = read_until_suffix(&mut s, b"\r\n\r\n", "http2http: 101").await;
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    let got = tokio::time::timeout(Duration::from_secs(20), echo_exact_on(s, &data))
        .await
        .expect("http2http: echo after the upgrade")
        .unwrap();
    assert!(got == data, "http2http: echo differs");
    // https2http: the same inside TLS (the plugin's generated certificate).
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(insecure_client_config()));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", s2h))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("a.example").unwrap();
    let mut s = tls.connect(name, tcp).await.expect("TLS to https2http");
    s.write_all(request).await.unwrap();
    let head = read_until_suffix(&mut s, b"\r\n\r\n", "https2http: 101").await;
    assert!(
        String::from_utf8_lossy(&head).starts_with("HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s.write_all(b"hello through tls").await.unwrap();
    let mut got = [0u8; 17];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut got))
        .await
        .expect("https2http: echo after the upgrade")
        .unwrap();
    assert_eq!(&got, b"hello through tls");
}

/// A TLS client config that accepts any certificate (the plugin's is generated).
fn insecure_client_config() -> rustls::ClientConfig {
    #[derive(Debug)]
    struct AnyCert;
    impl rustls::client::danger::ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(std::sync::Arc::new(AnyCert))
    .with_no_client_auth()
}
