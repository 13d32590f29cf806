//! frpc's store (`store.path`) end to end: proxies and visitors created, listed, read, updated
//! and deleted through `/api/store/*` on a running frpc, with bytes through them; the store
//! file kept across a restart; frp's refusals and codes; store entries next to the config
//! file's and across `/api/reload`.

use std::time::{Duration, Instant};

use control::admin::StatusResp;
use control::admin::api_client::AdminClient;
use control::config::WebServerConfig;
use e2e::admin_api::{
    admin_client, admin_common_toml, banner_server, read_eventually, tcp_proxy_toml, wait_status,
};
use e2e::*;
use http::{Method, StatusCode};
use serde_json::{Value, json};

const TOKEN: &str = "store-e2e";

fn common(server_port: u16, admin_port: u16, store: bool) -> String {
    let store = if store {
        "store.path = \"store.json\"\n"
    } else {
        ""
    };
    admin_common_toml(server_port, TOKEN, admin_port, "admin", "pw") + store
}

fn api(admin_port: u16) -> AdminClient {
    admin_client(admin_port, "admin", "pw")
}

/// One call: the status and the body (JSON when it parses, else a JSON string of the text).
async fn call(api: &AdminClient, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let (status, bytes) = api
        .raw(method, path, body.map(|b| b.to_string().into()))
        .await
        .unwrap();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status.as_u16(), v)
}

async fn api_get(api: &AdminClient, path: &str) -> (u16, Value) {
    call(api, Method::GET, path, None).await
}

async fn api_post(api: &AdminClient, path: &str, body: Value) -> (u16, Value) {
    call(api, Method::POST, path, Some(body)).await
}

async fn api_put(api: &AdminClient, path: &str, body: Value) -> (u16, Value) {
    call(api, Method::PUT, path, Some(body)).await
}

async fn api_delete(api: &AdminClient, path: &str) -> (u16, Value) {
    call(api, Method::DELETE, path, None).await
}

/// frp's error body: `{"Code": code, "Msg": msg}`.
fn frp_error(code: u16, msg: &str) -> Value {
    json!({"Code": code, "Msg": msg})
}

fn tcp_def(name: &str, local_port: u16, remote_port: u16) -> Value {
    json!({"name": name, "type": "tcp",
           "tcp": {"localIP": "127.0.0.1", "localPort": local_port, "remotePort": remote_port}})
}

async fn wait_admin(api: &AdminClient) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while api.status().await.is_err() {
        assert!(Instant::now() < deadline, "admin API never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn running(s: &StatusResp, name: &str) -> bool {
    s.values()
        .flatten()
        .any(|p| p.name == name && p.status == "running")
}

fn wait_closed(port: u16) {
    assert!(
        wait_port_closed(port, Duration::from_secs(10)),
        "port {port} still open"
    );
}

fn stored(env: &Env) -> Value {
    serde_json::from_slice(&std::fs::read(env.path().join("store.json")).unwrap()).unwrap()
}

/// The `name`s of a JSON array of definitions.
fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_api_creates_lists_gets_updates_and_deletes_proxies_and_visitors() {
    let env = Env::new();
    let echo = echo_server().await;
    let bind = free_port();
    let admin = free_port();
    let (r1, r2, r_file, v_port) = (free_port(), free_port(), free_port(), free_port());
    let _frps = env.frps("frps", bind, &format!("auth.token = \"{TOKEN}\""));
    let frpc = env.frpc(
        "frpc",
        &format!(
            "{}{}",
            common(bind, admin, true),
            tcp_proxy_toml("file", echo, r_file)
        ),
    );
    let api = api(admin);
    wait_admin(&api).await;

    // Create: answered with the stored definition; bytes flow through the new proxy.
    let (code, body) = api_post(&api, "/api/store/proxies", tcp_def("api-tcp", echo, r1)).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["name"], "api-tcp");
    assert_eq!(body["type"], "tcp");
    assert_eq!(body["tcp"]["remotePort"], r1);
    assert_eq!(
        roundtrip_eventually(r1, b"through the store proxy", Duration::from_secs(10)).await,
        b"through the store proxy"
    );
    frpc.wait_log("store: created proxy \"api-tcp\"", Duration::from_secs(5));
    assert_eq!(stored(&env)["proxies"][0]["remotePort"], r1);

    // The name is taken now.
    let (code, body) = api_post(&api, "/api/store/proxies", tcp_def("api-tcp", echo, r2)).await;
    assert_eq!(
        (code, body),
        (
            409,
            frp_error(409, "conflict: already exists: proxy \"api-tcp\"")
        )
    );

    // List and get show the store's proxies only (not the config file's).
    let (code, body) = api_get(&api, "/api/store/proxies").await;
    assert_eq!(code, 200);
    assert_eq!(names(&body["proxies"]), ["api-tcp"]);
    let (code, body) = api_get(&api, "/api/store/proxies/api-tcp").await;
    assert_eq!(code, 200);
    assert_eq!(body["tcp"]["localPort"], echo);
    let (code, body) = api_get(&api, "/api/store/proxies/nope").await;
    assert_eq!(
        (code, body),
        (404, frp_error(404, "not found: proxy \"nope\""))
    );

    // /api/status marks the store's proxy.
    wait_status(&api, "both running", |s| {
        running(s, "api-tcp") && running(s, "file")
    })
    .await;
    let s = api.status().await.unwrap();
    let source = |n: &str| {
        s.values()
            .flatten()
            .find(|p| p.name == n)
            .unwrap()
            .source
            .clone()
    };
    assert_eq!(
        (source("api-tcp").as_str(), source("file").as_str()),
        ("store", "")
    );
    // frp's per-proxy config endpoint: the running config, whichever source it came from.
    let (code, body) = api_get(&api, "/api/proxy/api-tcp/config").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["tcp"]["remotePort"], r1);
    let (code, body) = api_get(&api, "/api/proxy/file/config").await;
    assert_eq!((code, &body["tcp"]["remotePort"]), (200, &json!(r_file)));
    assert_eq!(
        api_get(&api, "/api/proxy/nope/config").await,
        (404, frp_error(404, "proxy \"nope\" not found"))
    );

    // Update: the proxy moves to its new remote port.
    let (code, body) = api_put(
        &api,
        "/api/store/proxies/api-tcp",
        tcp_def("api-tcp", echo, r2),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["tcp"]["remotePort"], r2);
    roundtrip_eventually(r2, b"moved", Duration::from_secs(10)).await;
    wait_closed(r1);
    assert_eq!(stored(&env)["proxies"][0]["remotePort"], r2);
    let (code, body) = api_put(&api, "/api/store/proxies/ghost", tcp_def("ghost", echo, r1)).await;
    assert_eq!(
        (code, body),
        (404, frp_error(404, "not found: not found: proxy \"ghost\""))
    );

    // A visitor through the API reaches an stcp proxy created through the API.
    let (code, body) = api_post(
        &api,
        "/api/store/proxies",
        json!({"name": "secret", "type": "stcp",
                    "stcp": {"localPort": echo, "secretKey": "sk"}}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = api_post(
        &api,
        "/api/store/visitors",
        json!({"name": "visit", "type": "stcp",
                    "stcp": {"serverName": "secret", "secretKey": "sk",
                             "bindAddr": "127.0.0.1", "bindPort": v_port}}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["stcp"]["serverName"], "secret");
    assert_eq!(
        roundtrip_eventually(v_port, b"via the visitor", Duration::from_secs(10)).await,
        b"via the visitor"
    );
    let (code, body) = api_get(&api, "/api/store/visitors").await;
    assert_eq!(code, 200);
    assert_eq!(body["visitors"][0]["name"], "visit");
    let (code, body) = api_get(&api, "/api/visitor/visit/config").await;
    assert_eq!((code, &body["stcp"]["bindPort"]), (200, &json!(v_port)));
    let (code, _) = api_delete(&api, "/api/store/visitors/visit").await;
    assert_eq!(code, 200);
    wait_closed(v_port);

    // Delete: the port closes; a second delete finds nothing.
    let (code, body) = api_delete(&api, "/api/store/proxies/api-tcp").await;
    assert_eq!((code, body), (200, Value::String(String::new())));
    wait_closed(r2);
    frpc.wait_log("store: deleted proxy \"api-tcp\"", Duration::from_secs(5));
    let (code, body) = api_delete(&api, "/api/store/proxies/api-tcp").await;
    assert_eq!(
        (code, body),
        (
            404,
            frp_error(404, "not found: not found: proxy \"api-tcp\"")
        )
    );
    assert_eq!(names(&stored(&env)["proxies"]), ["secret"]);
    assert!(stored(&env).get("visitors").is_none());
    // The config file's proxy was never touched.
    roundtrip_eventually(r_file, b"file proxy", Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_refuses_what_frp_refuses_with_its_codes() {
    let env = Env::new();
    let bind = free_port();
    let admin = free_port();
    let admin_off = free_port();
    let _frps = env.frps("frps", bind, &format!("auth.token = \"{TOKEN}\""));
    let _frpc = env.frpc("frpc", &common(bind, admin, true));
    let _plain = env.frpc("plain", &common(bind, admin_off, false));
    let api = self::api(admin);
    wait_admin(&api).await;

    let post = |body: Value| {
        let api = api.clone();
        async move { api_post(&api, "/api/store/proxies", body).await }
    };
    assert_eq!(
        post(json!({"name": "bad", "type": "tcp", "udp": {"localPort": 1234}})).await,
        (
            400,
            frp_error(400, "proxy type block \"udp\" does not match type \"tcp\"")
        )
    );
    assert_eq!(
        post(json!({"name": "bad", "type": "tcp"})).await,
        (
            400,
            frp_error(400, "exactly one proxy type block is required")
        )
    );
    assert_eq!(
        post(json!({"type": "tcp", "tcp": {}})).await,
        (400, frp_error(400, "proxy name is required"))
    );
    assert_eq!(
        post(json!({"name": "w", "type": "http", "http": {"localPort": 80}})).await,
        (
            400,
            frp_error(
                400,
                "invalid argument: validation error: subdomain and custom domains should not be both empty"
            )
        )
    );
    let (code, body) = api
        .raw(Method::POST, "/api/store/proxies", Some("{not json".into()))
        .await
        .unwrap();
    assert_eq!(code, StatusCode::BAD_REQUEST);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(
        v["Msg"].as_str().unwrap().starts_with("parse JSON error: "),
        "{v}"
    );
    assert_eq!(
        api_post(
            &api,
            "/api/store/visitors",
            json!({"name": "v", "type": "stcp", "xtcp": {}})
        )
        .await,
        (
            400,
            frp_error(
                400,
                "visitor type block \"xtcp\" does not match type \"stcp\""
            )
        )
    );

    // An update's body must name the proxy of its path.
    let (code, _) = post(tcp_def("proxy-a", 1, free_port())).await;
    assert_eq!(code, 200);
    assert_eq!(
        api_put(
            &api,
            "/api/store/proxies/proxy-a",
            tcp_def("proxy-b", 1, free_port())
        )
        .await,
        (
            400,
            frp_error(400, "proxy name in URL must match name in body")
        )
    );
    // Nothing refused reached the store.
    assert_eq!(names(&stored(&env)["proxies"]), ["proxy-a"]);

    // A method the route lacks; credentials are needed as for the rest of the API.
    let (code, _) = call(&api, Method::PATCH, "/api/store/proxies/proxy-a", None).await;
    assert_eq!(code, 405);
    let anon = AdminClient::new(
        &WebServerConfig {
            addr: "127.0.0.1".into(),
            port: admin,
            ..Default::default()
        },
        Duration::from_secs(5),
    );
    let (code, _) = api_get(&anon, "/api/store/proxies").await;
    assert_eq!(code, 401);

    // Without store.path the routes do not exist.
    let off = self::api(admin_off);
    wait_admin(&off).await;
    assert_eq!(
        api_get(&off, "/api/store/proxies").await,
        (404, Value::String("404 page not found\n".into()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_survives_restart_and_coexists_with_the_config_file_and_reload() {
    let env = Env::new();
    let from_file = banner_server(b"from file").await;
    let from_store = banner_server(b"from store").await;
    let echo = echo_server().await;
    let bind = free_port();
    let admin = free_port();
    let (r_shadow, r_store, r_added) = (free_port(), free_port(), free_port());
    let _frps = env.frps("frps", bind, &format!("auth.token = \"{TOKEN}\""));
    let cfg = format!(
        "{}{}",
        common(bind, admin, true),
        tcp_proxy_toml("shadow", from_file, r_shadow)
    );
    let mut frpc = env.frpc("frpc", &cfg);
    let api = api(admin);
    wait_admin(&api).await;
    read_eventually(r_shadow, b"from file").await;

    // A store proxy of a config-file proxy's name replaces it (frp's aggregator).
    let (code, body) = api_post(
        &api,
        "/api/store/proxies",
        tcp_def("shadow", from_store, r_shadow),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    read_eventually(r_shadow, b"from store").await;
    let (code, _) = api_post(&api, "/api/store/proxies", tcp_def("kept", echo, r_store)).await;
    assert_eq!(code, 200);
    roundtrip_eventually(r_store, b"kept", Duration::from_secs(10)).await;

    // A reload of the config file keeps the store's proxies, and their precedence.
    let reloaded = format!(
        "{cfg}{}{}",
        tcp_proxy_toml("added", echo, r_added),
        engine_table()
    );
    env.write("frpc.toml", &reloaded);
    let (code, body) = api_get(&api, "/api/reload").await;
    assert_eq!(code, 200, "{body}");
    roundtrip_eventually(r_added, b"added by reload", Duration::from_secs(10)).await;
    roundtrip_eventually(r_store, b"kept", Duration::from_secs(10)).await;
    read_eventually(r_shadow, b"from store").await;

    // Restart: the store file brings its proxies back.
    frpc.kill();
    wait_closed(r_store);
    let _frpc = env.frpc("frpc", &cfg);
    wait_admin(&api).await;
    wait_status(&api, "store proxies back", |s| running(s, "kept")).await;
    roundtrip_eventually(r_store, b"after restart", Duration::from_secs(10)).await;
    read_eventually(r_shadow, b"from store").await;
    let (code, body) = api_get(&api, "/api/store/proxies").await;
    assert_eq!(code, 200);
    assert_eq!(body["proxies"].as_array().unwrap().len(), 2);

    // Deleting the store's "shadow" brings the config file's back.
    let (code, _) = api_delete(&api, "/api/store/proxies/shadow").await;
    assert_eq!(code, 200);
    read_eventually(r_shadow, b"from file").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_file_that_does_not_load_stops_frpc() {
    let env = Env::new();
    env.write("store.json", "{\"proxies\": [");
    let cfg = format!(
        "{}loginFailExit = false\n",
        common(free_port(), free_port(), true)
    );
    let mut frpc = env.frpc("frpc", &cfg);
    let st = frpc.wait_exit(Duration::from_secs(10)).expect("frpc exits");
    assert_eq!(st.code(), Some(1));
    let log = frpc.log_text();
    assert!(
        log.contains(
            "failed to create store source: failed to load existing data: failed to parse JSON: "
        ),
        "{log}"
    );
}
