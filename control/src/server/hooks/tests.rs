use super::*;
use std::sync::Mutex;

#[test]
fn contents_have_frps_json_shapes() {
    let mut login = Login {
        version: "0.70.0".into(),
        user: "u".into(),
        privilege_key: "k".into(),
        timestamp: 7,
        pool_count: 1,
        ..Default::default()
    };
    let c = LoginContent {
        login: login.clone(),
        client_address: "127.0.0.1:5".into(),
    };
    assert_eq!(
        serde_json::to_string(&c).unwrap(),
        r#"{"version":"0.70.0","user":"u","privilege_key":"k","timestamp":7,"client_spec":{},"pool_count":1,"client_address":"127.0.0.1:5"}"#
    );
    // A nil metas map is null; the user info is always there.
    let np = NewProxyContent {
        user: UserInfo::of(&login, "rid"),
        new_proxy: NewProxy {
            proxy_name: "p".into(),
            proxy_type: "tcp".into(),
            remote_port: 6000,
            ..Default::default()
        },
    };
    assert_eq!(
        serde_json::to_string(&np).unwrap(),
        r#"{"user":{"user":"u","metas":null,"run_id":"rid"},"proxy_name":"p","proxy_type":"tcp","remote_port":6000}"#
    );
    login.metas.insert("token".into(), "123".into());
    let uc = NewUserConnContent {
        user: UserInfo::of(&login, "rid"),
        proxy_name: "p".into(),
        proxy_type: "tcp".into(),
        remote_addr: "127.0.0.1:9".into(),
    };
    assert_eq!(
        serde_json::to_string(&uc).unwrap(),
        r#"{"user":{"user":"u","metas":{"token":"123"},"run_id":"rid"},"proxy_name":"p","proxy_type":"tcp","remote_addr":"127.0.0.1:9"}"#
    );
    let ping = PingContent {
        user: UserInfo::default(),
        ping: Ping {
            privilege_key: "k".into(),
            timestamp: 1,
        },
    };
    assert_eq!(
        serde_json::to_string(&ping).unwrap(),
        r#"{"user":{"user":"","metas":null,"run_id":""},"privilege_key":"k","timestamp":1}"#
    );
    // Decoding: nulls and absent fields are zero values, the embedded message is flattened.
    let back: NewProxyContent = serde_json::from_str(
        r#"{"user":null,"proxy_name":"p","remote_port":7000,"metas":null,"unknown":1}"#,
    )
    .unwrap();
    assert_eq!(back.new_proxy.remote_port, 7000);
    assert_eq!(back.new_proxy.proxy_name, "p");
    assert_eq!(back.user, UserInfo::default());
}

/// A plugin that answers from a script and records what it saw.
struct Scripted {
    name: &'static str,
    ops: Vec<Op>,
    answer: fn(&NewProxyContent) -> HookResult<NewProxyContent>,
    seen: Mutex<Vec<NewProxyContent>>,
}

impl ServerPlugin for Scripted {
    fn name(&self) -> &str {
        self.name
    }
    fn handles(&self, op: Op) -> bool {
        self.ops.contains(&op)
    }
    fn new_proxy<'a>(
        &'a self,
        _ctx: &'a HookCtx,
        c: &'a NewProxyContent,
    ) -> BoxFuture<'a, HookResult<NewProxyContent>> {
        self.seen.lock().unwrap().push(c.clone());
        Box::pin(std::future::ready((self.answer)(c)))
    }
}

fn scripted(
    name: &'static str,
    answer: fn(&NewProxyContent) -> HookResult<NewProxyContent>,
) -> Arc<Scripted> {
    Arc::new(Scripted {
        name,
        ops: vec![Op::NewProxy],
        answer,
        seen: Mutex::new(Vec::new()),
    })
}

fn content(port: i64) -> NewProxyContent {
    NewProxyContent {
        new_proxy: NewProxy {
            proxy_name: "p".into(),
            remote_port: port,
            ..Default::default()
        },
        ..Default::default()
    }
}

#[tokio::test]
async fn the_chain_passes_changes_on_and_stops_at_the_first_refusal() {
    let change = scripted("change", |c| {
        let mut c = c.clone();
        c.new_proxy.remote_port = 7000;
        Ok(Verdict::Change(c))
    });
    let keep = scripted("keep", |_| Ok(Verdict::Unchange));
    let hooks = Hooks::new(vec![change.clone(), keep.clone()]);
    assert!(hooks.has(Op::NewProxy) && !hooks.has(Op::Login));
    let out = hooks.new_proxy(content(6000)).await.unwrap();
    assert_eq!(out.new_proxy.remote_port, 7000);
    // The second plugin saw the first one's change.
    assert_eq!(keep.seen.lock().unwrap()[0].new_proxy.remote_port, 7000);

    let reject = scripted("reject", |_| Ok(Verdict::Reject("no".into())));
    let after = scripted("after", |_| Ok(Verdict::Unchange));
    let hooks = Hooks::new(vec![reject, after.clone()]);
    assert_eq!(hooks.new_proxy(content(1)).await.unwrap_err(), "no");
    assert!(after.seen.lock().unwrap().is_empty());

    let broken = scripted("broken", |_| Err(HookError("boom".into())));
    let hooks = Hooks::new(vec![broken, after.clone()]);
    assert_eq!(
        hooks.new_proxy(content(1)).await.unwrap_err(),
        "send NewProxy request to plugin error"
    );
    assert!(after.seen.lock().unwrap().is_empty());
}

#[test]
fn ops_parse_as_frp_names_them() {
    for op in Op::ALL {
        assert_eq!(Op::parse(op.as_str()), Some(op));
    }
    assert_eq!(Op::parse("login"), None);
}
