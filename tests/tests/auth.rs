//! Authentication end to end: `auth.method = "oidc"` against a local OIDC provider (discovery,
//! JWKS, client-credentials token endpoint; see `e2e::oidc`), and `auth.tokenSource` (file,
//! exec behind `--allow-unsafe TokenSourceExec`). Refusals carry frp's words.

use std::sync::atomic::Ordering;
use std::time::Duration;

use e2e::oidc::{CLIENT_ID, CLIENT_SECRET, Issue, Provider};
use e2e::*;

const WAIT: Duration = Duration::from_secs(15);

/// Starts frps with `extra` config lines and command-line `args`; waits for it to serve.
fn start_frps(env: &Env, name: &str, port: u16, extra: &str, args: &[&str]) -> Proc {
    let cfg = format!(
        "bindAddr = \"127.0.0.1\"\nbindPort = {port}\nproxyBindAddr = \"127.0.0.1\"\nlog.level = \"debug\"\n{extra}\n{}",
        engine_table()
    );
    let path = env.write(&format!("{name}.toml"), &cfg);
    let mut all = vec!["-c", path.to_str().unwrap()];
    all.extend_from_slice(args);
    let p = Proc::spawn(name, &bin("frps"), &all, env.path());
    p.wait_log("start frps success", WAIT);
    p
}

/// Runs a binary to its end (killed after 20 s); returns (success, output).
fn run_to_end(env: &Env, program: &str, args: &[&str]) -> (bool, String) {
    let mut p = Proc::spawn(program, &bin(program), args, env.path());
    let status = p.wait_exit(Duration::from_secs(20));
    p.kill();
    (status.is_some_and(|s| s.success()), p.log_text())
}

/// An frpc config: `auth` lines, one tcp proxy `echo` from `remote` to `local`.
fn frpc_cfg(server: u16, auth: &str, fail_exit: bool, local: u16, remote: u16) -> String {
    format!(
        r#"serverAddr = "127.0.0.1"
serverPort = {server}
loginFailExit = {fail_exit}
log.level = "debug"
transport.heartbeatInterval = 1
{auth}

[[proxies]]
name = "echo"
type = "tcp"
localIP = "127.0.0.1"
localPort = {local}
remotePort = {remote}
"#
    )
}

fn oidc_client(provider: &Provider, secret: &str, scopes: &str) -> String {
    format!(
        "auth.method = \"oidc\"\nauth.additionalScopes = [{scopes}]\nauth.oidc.clientID = \"{CLIENT_ID}\"\n\
         auth.oidc.clientSecret = \"{secret}\"\nauth.oidc.tokenEndpointURL = \"{}\"",
        provider.token_endpoint()
    )
}

/// An frpc that logs in to frps on `bind` by OIDC (`scopes`), once its `echo` proxy from
/// `echo` to `remote` has started.
fn oidc_frpc(
    env: &Env,
    provider: &Provider,
    bind: u16,
    scopes: &str,
    echo: u16,
    remote: u16,
) -> Proc {
    let frpc = env.frpc(
        "frpc",
        &frpc_cfg(
            bind,
            &oidc_client(provider, CLIENT_SECRET, scopes),
            true,
            echo,
            remote,
        ),
    );
    frpc.wait_log("[echo] start proxy success", WAIT);
    frpc
}

fn oidc_server(provider: &Provider, scopes: &str, extra: &str) -> String {
    format!(
        "auth.method = \"oidc\"\nauth.additionalScopes = [{scopes}]\nauth.oidc.issuer = \"{}\"\n\
         auth.oidc.audience = \"frps\"\n{extra}",
        provider.issuer()
    )
}

/// Starts frpc with `cfg`, expecting its first login to fail: returns its output.
fn refused_login(env: &Env, name: &str, cfg: &str) -> String {
    let path = env.write(&format!("{name}.toml"), cfg);
    let (ok, out) = run_to_end(env, "frpc", &["-c", path.to_str().unwrap()]);
    assert!(!ok, "{name}: frpc should have exited 1:\n{out}");
    assert!(
        out.contains("login to the server failed: "),
        "{name}: {out}"
    );
    out
}

/// Login, heartbeats and work connections authenticated by OIDC: the proxy works, the server
/// accepts every ping, and a token with `expires_in` is fetched once and reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_login_heartbeats_and_work_conns() {
    let env = Env::new();
    let provider = Provider::start().await;
    let echo = echo_server().await;
    let (bind, remote) = (free_port(), free_port());
    let scopes = r#""HeartBeats", "NewWorkConns""#;
    let frps = start_frps(&env, "frps", bind, &oidc_server(&provider, scopes, ""), &[]);
    let frpc = oidc_frpc(&env, &provider, bind, scopes, echo, remote);
    let got = roundtrip_eventually(remote, b"hello oidc", WAIT).await;
    assert_eq!(got, b"hello oidc");
    frpc.wait_log_n("send heartbeat to server", 3, WAIT);
    frpc.wait_log_n("receive heartbeat from server", 2, WAIT);
    let got = roundtrip(remote, b"again").await.unwrap();
    assert_eq!(got, b"again");
    let log = frps.log_text();
    assert!(!log.contains("invalid ping"), "{log}");
    assert!(!log.contains("invalid NewWorkConn"), "{log}");
    assert_eq!(
        provider.token_requests.load(Ordering::SeqCst),
        1,
        "a token with expires_in is cached"
    );
    // JWKS fetched once, on the first verification.
    assert_eq!(provider.jwks_requests.load(Ordering::SeqCst), 1);
}

/// A token response without `expires_in` is never reused: each heartbeat fetches a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_token_without_expires_in_is_fetched_each_time() {
    let env = Env::new();
    let provider = Provider::start().await;
    provider.set_issue(Issue {
        expires_in: None,
        ..Issue::default()
    });
    let echo = echo_server().await;
    let (bind, remote) = (free_port(), free_port());
    let scopes = r#""HeartBeats""#;
    let _frps = start_frps(&env, "frps", bind, &oidc_server(&provider, scopes, ""), &[]);
    let frpc = oidc_frpc(&env, &provider, bind, scopes, echo, remote);
    let after_login = provider.token_requests.load(Ordering::SeqCst);
    frpc.wait_log_n("receive heartbeat from server", 3, WAIT);
    let after_pings = provider.token_requests.load(Ordering::SeqCst);
    assert!(
        after_pings >= after_login + 2,
        "{after_login} token requests after login, {after_pings} after 3 pings"
    );
    assert_eq!(roundtrip(remote, b"x").await.unwrap(), b"x");
}

/// A wrong client secret: the token endpoint refuses, and frpc says so in oauth2's words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_wrong_secret_is_refused() {
    let env = Env::new();
    let provider = Provider::start().await;
    let bind = free_port();
    let _frps = start_frps(&env, "frps", bind, &oidc_server(&provider, "", ""), &[]);
    let out = refused_login(
        &env,
        "frpc",
        &frpc_cfg(
            bind,
            &oidc_client(&provider, "wrong-secret", ""),
            true,
            1,
            free_port(),
        ),
    );
    assert!(
        out.contains(r#"couldn't generate OIDC token for login: oauth2: "invalid_client""#),
        "{out}"
    );
    assert_eq!(provider.token_requests.load(Ordering::SeqCst), 0);
}

/// Tokens frps must refuse — wrong audience, expired, signed by a key the issuer does not
/// publish — each with go-oidc's words; then a key rotation at the provider is picked up
/// (the JWKS is fetched again for the new key id) and logins succeed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_refusals_and_key_rotation() {
    let env = Env::new();
    let provider = Provider::start().await;
    let echo = echo_server().await;
    let bind = free_port();
    let frps = start_frps(&env, "frps", bind, &oidc_server(&provider, "", ""), &[]);
    let client = oidc_client(&provider, CLIENT_SECRET, "");
    // A good login first: the key set is fetched once and cached.
    let remote = free_port();
    let first = env.frpc("first", &frpc_cfg(bind, &client, true, echo, remote));
    first.wait_log("[echo] start proxy success", WAIT);
    assert_eq!(roundtrip_eventually(remote, b"first", WAIT).await, b"first");
    assert_eq!(provider.jwks_requests.load(Ordering::SeqCst), 1);
    drop(first);
    let cases = [
        (
            "audience",
            Issue {
                audience: "someone-else".into(),
                ..Issue::default()
            },
            r#"invalid OIDC token in login: oidc: expected audience "frps" got ["someone-else"]"#,
        ),
        (
            "expired",
            Issue {
                exp_in: -600,
                ..Issue::default()
            },
            "invalid OIDC token in login: oidc: token is expired (Token Expiry: ",
        ),
        (
            "unknown-key",
            Issue {
                unknown_key: true,
                ..Issue::default()
            },
            "invalid OIDC token in login: failed to verify signature: failed to verify id token signature",
        ),
    ];
    for (name, issue, want) in cases {
        provider.set_issue(issue);
        let out = refused_login(
            &env,
            name,
            &frpc_cfg(bind, &client, true, echo, free_port()),
        );
        assert!(out.contains(want), "{name}: {out}");
        frps.wait_log(want, WAIT);
    }
    // The unknown key made frps fetch the key set again (its kid was cached, its signature
    // did not verify); the claim checks refused the others before any key was needed.
    let fetched = provider.jwks_requests.load(Ordering::SeqCst);
    assert_eq!(fetched, 2, "first use + refetch for the unknown key");

    provider.set_issue(Issue::default());
    provider.rotate();
    let remote = free_port();
    let frpc = env.frpc("rotated", &frpc_cfg(bind, &client, true, echo, remote));
    frpc.wait_log("[echo] start proxy success", WAIT);
    assert_eq!(
        roundtrip_eventually(remote, b"rotated", WAIT).await,
        b"rotated"
    );
    assert_eq!(provider.jwks_requests.load(Ordering::SeqCst), fetched + 1);
}

/// `skipExpiryCheck` and `skipIssuerCheck` let such tokens in; the audience check stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_skip_checks() {
    let env = Env::new();
    let provider = Provider::start().await;
    let echo = echo_server().await;
    let (bind, remote) = (free_port(), free_port());
    let _frps = start_frps(
        &env,
        "frps",
        bind,
        &oidc_server(
            &provider,
            "",
            "auth.oidc.skipExpiryCheck = true\nauth.oidc.skipIssuerCheck = true",
        ),
        &[],
    );
    provider.set_issue(Issue {
        exp_in: -600,
        ..Issue::default()
    });
    let client = oidc_client(&provider, CLIENT_SECRET, "");
    let frpc = env.frpc("frpc", &frpc_cfg(bind, &client, true, echo, remote));
    frpc.wait_log("[echo] start proxy success", WAIT);
    assert_eq!(roundtrip_eventually(remote, b"late", WAIT).await, b"late");
}

/// frps cannot start when the issuer's discovery document cannot be had.
#[test]
fn oidc_issuer_unreachable_stops_frps() {
    let env = Env::new();
    let bind = free_port();
    let dead = free_port();
    let path = env.write(
        "frps.toml",
        &format!(
            "bindAddr = \"127.0.0.1\"\nbindPort = {bind}\nauth.method = \"oidc\"\nauth.oidc.issuer = \"http://127.0.0.1:{dead}\"\n"
        ),
    );
    let (ok, out) = run_to_end(&env, "frps", &["-c", path.to_str().unwrap()]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "create OIDC verifier for issuer \"http://127.0.0.1:{dead}\""
        )),
        "{out}"
    );
    assert!(!is_listening(bind));
}

// --- token sources -----------------------------------------------------------------------------

fn file_source(path: &std::path::Path) -> String {
    format!(
        "auth.tokenSource.type = \"file\"\nauth.tokenSource.file.path = \"{}\"",
        path.display()
    )
}

/// Tokens read from files on both sides (whitespace trimmed), and a literal against a file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_token_sources() {
    let env = Env::new();
    let echo = echo_server().await;
    let server_file = env.write("server_token", "  shared-token-789\n");
    let client_file = env.write("client_token", "shared-token-789");
    let (bind, remote) = (free_port(), free_port());
    let _frps = start_frps(&env, "frps", bind, &file_source(&server_file), &[]);
    let frpc = env.frpc(
        "frpc",
        &frpc_cfg(bind, &file_source(&client_file), true, echo, remote),
    );
    frpc.wait_log("[echo] start proxy success", WAIT);
    assert_eq!(roundtrip_eventually(remote, b"file", WAIT).await, b"file");
    let remote = free_port();
    let frpc2 = env.frpc(
        "literal",
        &frpc_cfg(
            bind,
            "auth.token = \"shared-token-789\"",
            true,
            echo,
            remote,
        )
        .replace("name = \"echo\"", "name = \"literal\""),
    );
    frpc2.wait_log("[literal] start proxy success", WAIT);
    assert_eq!(roundtrip_eventually(remote, b"lit", WAIT).await, b"lit");
}

/// Different tokens from the two files: frps refuses the login with frp's words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mismatched_token_sources_are_refused() {
    let env = Env::new();
    let server_file = env.write("server_token", "server-token");
    let client_file = env.write("client_token", "client-token");
    let bind = free_port();
    let _frps = start_frps(&env, "frps", bind, &file_source(&server_file), &[]);
    let out = refused_login(
        &env,
        "frpc",
        &frpc_cfg(bind, &file_source(&client_file), true, 1, free_port()),
    );
    assert!(
        out.contains("token in login doesn't match token from configuration"),
        "{out}"
    );
}

/// A token file that does not exist stops frps (and frpc) at start, naming the file.
#[test]
fn missing_token_file_stops_frps_and_frpc() {
    let env = Env::new();
    let missing = env.path().join("non_existent_token");
    let bind = free_port();
    let want = format!(
        "failed to resolve auth.tokenSource: failed to read file {m}: open {m}: no such file or directory",
        m = missing.display()
    );
    let path = env.write(
        "frps.toml",
        &format!("bindPort = {bind}\n{}\n", file_source(&missing)),
    );
    let (ok, out) = run_to_end(&env, "frps", &["-c", path.to_str().unwrap()]);
    assert!(!ok && out.contains(&want), "{out}");
    assert!(!is_listening(bind));
    let path = env.write(
        "frpc.toml",
        &frpc_cfg(bind, &file_source(&missing), false, 1, free_port()),
    );
    let (ok, out) = run_to_end(&env, "frpc", &["-c", path.to_str().unwrap()]);
    assert!(!ok && out.contains(&want), "{out}");
}

/// `type = "exec"` is refused without `--allow-unsafe TokenSourceExec` (by `verify` and at
/// start, frps and frpc); with it, the command's output is the token on both sides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_token_sources_need_allow_unsafe() {
    let env = Env::new();
    let script = env.write("token.sh", "#!/bin/sh\nprintf '%s\\n' \"$1\"\n");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let exec = format!(
        "auth.tokenSource.type = \"exec\"\nauth.tokenSource.exec.command = \"{}\"\nauth.tokenSource.exec.args = [\"exec-shared-value\"]",
        script.display()
    );
    let refused = "unsafe feature \"TokenSourceExec\" is not enabled";
    let bind = free_port();
    let frps_cfg = env.write("frps.toml", &format!("bindPort = {bind}\n{exec}\n"));
    let frps_cfg = frps_cfg.to_str().unwrap();
    for args in [vec!["verify", "-c", frps_cfg], vec!["-c", frps_cfg]] {
        let (ok, out) = run_to_end(&env, "frps", &args);
        assert!(!ok && out.contains(refused), "frps {args:?}: {out}");
    }
    let (ok, out) = run_to_end(
        &env,
        "frps",
        &["verify", "-c", frps_cfg, "--allow-unsafe=TokenSourceExec"],
    );
    assert!(ok && out.contains("syntax is ok"), "{out}");
    let echo = echo_server().await;
    let remote = free_port();
    let frpc_cfg_path = env.write("frpc.toml", &frpc_cfg(bind, &exec, true, echo, remote));
    let frpc_cfg_path = frpc_cfg_path.to_str().unwrap();
    let (ok, out) = run_to_end(&env, "frpc", &["verify", "-c", frpc_cfg_path]);
    assert!(!ok && out.contains(refused), "frpc verify: {out}");

    let _frps = start_frps(
        &env,
        "frps-run",
        bind,
        &exec,
        &["--allow-unsafe", "TokenSourceExec"],
    );
    let frpc = Proc::spawn(
        "frpc",
        &bin("frpc"),
        &["-c", frpc_cfg_path, "--allow-unsafe=TokenSourceExec"],
        env.path(),
    );
    frpc.wait_log("[echo] start proxy success", WAIT);
    assert_eq!(roundtrip_eventually(remote, b"exec", WAIT).await, b"exec");
}
