//! The store API (frp's `client/http/controller.go` store handlers), served when `store.path`
//! is set:
//!
//! | endpoint | |
//! |---|---|
//! | `GET /api/store/proxies` | `{"proxies": [definition, …]}` sorted by name |
//! | `POST /api/store/proxies` | create; 409 when the name is taken |
//! | `GET /api/store/proxies/{name}` | one definition; 404 when missing |
//! | `PUT /api/store/proxies/{name}` | replace; the body's name must be `{name}` |
//! | `DELETE /api/store/proxies/{name}` | remove |
//!
//! and the same under `/api/store/visitors`. A definition is `{"name": …, "type": "tcp",
//! "tcp": {…the proxy's keys…}}`: exactly one type block, matching `type`. Each change is
//! written to the store file and applied at once, as a reload applies the config file.
//! Errors are frp's: 400 for a body or config that is not valid, 404, 409, 500 when the
//! file cannot be written.

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Map, Value, json};
use tracing::info;

use super::Admin;
use crate::client::store::{
    ConfigSources, Store, StoreChangeError, decode_proxy_as, decode_visitor_as, get_ci, json_kind,
    proxy_to_json, visitor_to_json,
};
use crate::config::{ClientConfig, ProxyConfig, ProxyType, VisitorConfig, VisitorType};
use crate::web::{self, Body};

/// Proxies or visitors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Proxy,
    Visitor,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Proxy => "proxy",
            Kind::Visitor => "visitor",
        }
    }

    fn types(self) -> Vec<&'static str> {
        match self {
            Kind::Proxy => ProxyType::ALL.iter().map(|t| t.as_str()).collect(),
            Kind::Visitor => VisitorType::ALL.iter().map(|t| t.as_str()).collect(),
        }
    }
}

/// A store route: `/api/store/{proxies|visitors}[/{name}]`.
pub(super) struct Route {
    kind: Kind,
    name: Option<String>,
}

/// The store route `req` asks for, if any.
pub(super) fn route<B>(req: &Request<B>) -> Option<Route> {
    let seg = web::segments(req);
    let kind = match (
        seg.first()?.as_str(),
        seg.get(1)?.as_str(),
        seg.get(2)?.as_str(),
    ) {
        ("api", "store", "proxies") => Kind::Proxy,
        ("api", "store", "visitors") => Kind::Visitor,
        _ => return None,
    };
    match &seg[3..] {
        [] => Some(Route { kind, name: None }),
        [name] if !name.is_empty() => Some(Route {
            kind,
            name: Some(name.clone()),
        }),
        _ => None,
    }
}

/// `/api/proxy/{name}/config` or `/api/visitor/{name}/config`.
pub(super) fn config_route<B>(req: &Request<B>) -> Option<Route> {
    let seg = web::segments(req);
    match seg.as_slice() {
        [api, kind, name, config] if api == "api" && config == "config" && !name.is_empty() => {
            let kind = match kind.as_str() {
                "proxy" => Kind::Proxy,
                "visitor" => Kind::Visitor,
                _ => return None,
            };
            Some(Route {
                kind,
                name: Some(name.clone()),
            })
        }
        _ => None,
    }
}

/// A proxy or visitor, one config of either kind.
enum Entry {
    Proxy(Box<ProxyConfig>),
    Visitor(Box<VisitorConfig>),
}

impl Entry {
    fn name(&self) -> &str {
        match self {
            Entry::Proxy(p) => &p.name,
            Entry::Visitor(v) => &v.name,
        }
    }
}

/// frp's `ProxyDefinition` / `VisitorDefinition` of a config.
fn definition(e: &Entry) -> Value {
    let (name, ty, block) = match e {
        Entry::Proxy(p) => (&p.name, p.proxy_type.as_str(), proxy_to_json(p)),
        Entry::Visitor(v) => (&v.name, v.visitor_type.as_str(), visitor_to_json(v)),
    };
    let mut m = Map::new();
    m.insert("name".into(), Value::String(name.clone()));
    m.insert("type".into(), Value::String(ty.into()));
    m.insert(ty.into(), block);
    Value::Object(m)
}

/// A request body: its name, type and the type blocks present (each decoded as its type).
struct Definition {
    name: String,
    ty: String,
    blocks: Vec<(&'static str, Entry)>,
}

/// Decodes a definition as Go's decoder would; `Err` is the decoder's complaint.
fn parse_definition(kind: Kind, body: &[u8]) -> Result<Definition, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let m = match v {
        Value::Object(m) => m,
        Value::Null => Map::new(),
        other => {
            return Err(format!(
                "json: cannot unmarshal {} into a {} definition",
                json_kind(&other),
                kind.as_str()
            ));
        }
    };
    let string = |key: &str| -> Result<String, String> {
        match get_ci(&m, key) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(format!(
                "json: cannot unmarshal {} into the definition's {key} of type string",
                json_kind(other)
            )),
        }
    };
    let name = string("name")?;
    let ty = string("type")?;
    let mut blocks = Vec::new();
    for t in kind.types() {
        let Some(b) = get_ci(&m, t).filter(|b| !b.is_null()) else {
            continue;
        };
        let entry = match kind {
            Kind::Proxy => {
                let pt = ProxyType::parse(t).expect("a proxy type");
                Entry::Proxy(Box::new(decode_proxy_as(b.clone(), pt, &name)?))
            }
            Kind::Visitor => {
                let vt = VisitorType::parse(t).expect("a visitor type");
                Entry::Visitor(Box::new(decode_visitor_as(b.clone(), vt, &name)?))
            }
        };
        blocks.push((t, entry));
    }
    Ok(Definition { name, ty, blocks })
}

impl Definition {
    /// frp's `Validate`, then `ToConfigurer`.
    fn into_entry(self, kind: Kind, path_name: Option<&str>) -> Result<Entry, String> {
        let k = kind.as_str();
        if self.name.trim().is_empty() {
            return Err(format!("{k} name is required"));
        }
        if !kind.types().contains(&self.ty.as_str()) {
            return Err(format!("invalid {k} type: {}", self.ty));
        }
        if let Some(p) = path_name
            && p != self.name
        {
            return Err(format!("{k} name in URL must match name in body"));
        }
        let mut blocks = self.blocks;
        if blocks.len() != 1 {
            return Err(format!("exactly one {k} type block is required"));
        }
        let (block_type, entry) = blocks.remove(0);
        if block_type != self.ty {
            return Err(format!(
                "{k} type block {block_type:?} does not match type {:?}",
                self.ty
            ));
        }
        Ok(entry)
    }
}

/// frp's `ValidateProxyConfigurerForClient` / `ValidateVisitorConfigurer` on the completed
/// config, then what this frpc does not serve yet (as at start).
fn validate(e: &Entry) -> Result<(), String> {
    let mut cfg = ClientConfig::default();
    match e {
        Entry::Proxy(p) => {
            let mut p = p.as_ref().clone();
            p.complete();
            crate::config::validate_proxy(&p)?;
            cfg.proxies.push(p);
        }
        Entry::Visitor(v) => {
            let mut v = v.as_ref().clone();
            v.complete();
            crate::config::validate_visitor(&v)?;
            cfg.visitors.push(v);
        }
    }
    cfg.check_supported()
        .map_err(|e| e.0.replace("proxies[0].", "").replace("visitors[0].", ""))
}

impl Admin {
    pub(super) async fn store(&self, route: Route, req: Request<Incoming>) -> Response<Body> {
        let method = req.method().clone();
        let kind = route.kind;
        match (method, route.name) {
            (Method::GET, None) => self.store_list(kind),
            (Method::POST, None) => match read(req).await {
                Ok(body) => self.store_create(kind, &body),
                Err(r) => r,
            },
            (Method::GET, Some(name)) => self.store_get(kind, &name),
            (Method::PUT, Some(name)) => match read(req).await {
                Ok(body) => self.store_update(kind, &name, &body),
                Err(r) => r,
            },
            (Method::DELETE, Some(name)) => self.store_delete(kind, &name),
            _ => web::text(StatusCode::METHOD_NOT_ALLOWED, ""),
        }
    }

    /// `GET /api/proxy/{name}/config`, `GET /api/visitor/{name}/config`: the running config,
    /// else the store's.
    pub(super) fn running_config(&self, route: Route, method: &Method) -> Response<Body> {
        if method != Method::GET {
            return web::text(StatusCode::METHOD_NOT_ALLOWED, "");
        }
        let kind = route.kind;
        let name = route.name.unwrap_or_default();
        let running = match kind {
            Kind::Proxy => self
                .client
                .proxy_config(&name)
                .map(|p| Entry::Proxy(Box::new(p))),
            Kind::Visitor => self
                .client
                .visitor_config(&name)
                .map(|v| Entry::Visitor(Box::new(v))),
        };
        let found = running.or_else(|| {
            let sources = self.sources.lock().unwrap();
            let store = sources.store.as_ref()?;
            match kind {
                Kind::Proxy => store
                    .proxy(&name)
                    .cloned()
                    .map(|p| Entry::Proxy(Box::new(p))),
                Kind::Visitor => store
                    .visitor(&name)
                    .cloned()
                    .map(|v| Entry::Visitor(Box::new(v))),
            }
        });
        match found {
            Some(e) => web::json(StatusCode::OK, &definition(&e)),
            None => web::error(
                StatusCode::NOT_FOUND,
                &format!("{} {name:?} not found", kind.as_str()),
            ),
        }
    }

    fn store_list(&self, kind: Kind) -> Response<Body> {
        let sources = self.sources.lock().unwrap();
        let Some(store) = &sources.store else {
            return store_disabled();
        };
        let defs: Vec<Value> = match kind {
            Kind::Proxy => store
                .proxies()
                .map(|p| definition(&Entry::Proxy(Box::new(p.clone()))))
                .collect(),
            Kind::Visitor => store
                .visitors()
                .map(|v| definition(&Entry::Visitor(Box::new(v.clone()))))
                .collect(),
        };
        let key = match kind {
            Kind::Proxy => "proxies",
            Kind::Visitor => "visitors",
        };
        web::json(StatusCode::OK, &json!({ key: defs }))
    }

    fn store_get(&self, kind: Kind, name: &str) -> Response<Body> {
        let sources = self.sources.lock().unwrap();
        let Some(store) = &sources.store else {
            return store_disabled();
        };
        match stored_entry(store, kind, name) {
            Some(e) => web::json(StatusCode::OK, &definition(&e)),
            None => web::error(
                StatusCode::NOT_FOUND,
                &format!("not found: {} {name:?}", kind.as_str()),
            ),
        }
    }

    fn store_create(&self, kind: Kind, body: &[u8]) -> Response<Body> {
        let entry = match checked_entry(kind, body, None) {
            Ok(e) => e,
            Err(msg) => return web::error(StatusCode::BAD_REQUEST, &msg),
        };
        let name = entry.name().to_string();
        self.mutate(kind, &name, "created", |sources| {
            let store = sources.store.as_mut().expect("store enabled");
            match entry {
                Entry::Proxy(p) => store.add_proxy(*p),
                Entry::Visitor(v) => store.add_visitor(*v),
            }
        })
    }

    fn store_update(&self, kind: Kind, name: &str, body: &[u8]) -> Response<Body> {
        let entry = match checked_entry(kind, body, Some(name)) {
            Ok(e) => e,
            Err(msg) => return web::error(StatusCode::BAD_REQUEST, &msg),
        };
        self.mutate(kind, name, "updated", |sources| {
            let store = sources.store.as_mut().expect("store enabled");
            match entry {
                Entry::Proxy(p) => store.update_proxy(*p),
                Entry::Visitor(v) => store.update_visitor(*v),
            }
        })
    }

    fn store_delete(&self, kind: Kind, name: &str) -> Response<Body> {
        let mut sources = self.sources.lock().unwrap();
        let Some(store) = sources.store.as_mut() else {
            return store_disabled();
        };
        let r = match kind {
            Kind::Proxy => store.remove_proxy(name),
            Kind::Visitor => store.remove_visitor(name),
        };
        if let Err(e) = r {
            return change_error(e);
        }
        self.client.reload(&sources.merged());
        info!("store: deleted {} {name:?}", kind.as_str());
        web::ok_empty()
    }

    /// Changes the store, applies the result to the running frpc and answers with the
    /// stored definition.
    fn mutate(
        &self,
        kind: Kind,
        name: &str,
        done: &str,
        change: impl FnOnce(&mut ConfigSources) -> Result<(), StoreChangeError>,
    ) -> Response<Body> {
        let mut sources = self.sources.lock().unwrap();
        if sources.store.is_none() {
            return store_disabled();
        }
        if let Err(e) = change(&mut sources) {
            return change_error(e);
        }
        self.client.reload(&sources.merged());
        info!("store: {done} {} {name:?}", kind.as_str());
        let store = sources.store.as_ref().expect("store enabled");
        match stored_entry(store, kind, name) {
            Some(e) => web::json(StatusCode::OK, &definition(&e)),
            None => web::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!(
                    "apply config failed: {} {name:?} not found in store after mutation",
                    kind.as_str()
                ),
            ),
        }
    }
}

/// The store's `kind` entry called `name`, if any.
fn stored_entry(store: &Store, kind: Kind, name: &str) -> Option<Entry> {
    match kind {
        Kind::Proxy => store
            .proxy(name)
            .cloned()
            .map(|p| Entry::Proxy(Box::new(p))),
        Kind::Visitor => store
            .visitor(name)
            .cloned()
            .map(|v| Entry::Visitor(Box::new(v))),
    }
}

/// Parses and validates a create/update body; `Err` is why it is refused (a 400).
fn checked_entry(kind: Kind, body: &[u8], path_name: Option<&str>) -> Result<Entry, String> {
    let def = parse_definition(kind, body).map_err(|e| format!("parse JSON error: {e}"))?;
    let entry = def.into_entry(kind, path_name)?;
    validate(&entry).map_err(|e| format!("invalid argument: validation error: {e}"))?;
    Ok(entry)
}

async fn read(req: Request<Incoming>) -> Result<bytes::Bytes, Response<Body>> {
    web::read_body(req)
        .await
        .map_err(|e| web::error(StatusCode::BAD_REQUEST, &format!("read body error: {e}")))
}

fn store_disabled() -> Response<Body> {
    web::error(
        StatusCode::NOT_FOUND,
        "store disabled: store API is disabled",
    )
}

/// frp's `toHTTPError` for a store change.
fn change_error(e: StoreChangeError) -> Response<Body> {
    match &e {
        StoreChangeError::AlreadyExists { .. } => {
            web::error(StatusCode::CONFLICT, &format!("conflict: {e}"))
        }
        StoreChangeError::NotFound { .. } => {
            web::error(StatusCode::NOT_FOUND, &format!("not found: {e}"))
        }
        StoreChangeError::Persist(_) => {
            web::error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: Kind, body: Value, path: Option<&str>) -> Result<Entry, String> {
        parse_definition(kind, body.to_string().as_bytes())?.into_entry(kind, path)
    }

    #[test]
    fn definitions_are_checked_as_frp_checks_them() {
        let e = |b: Value| entry(Kind::Proxy, b, None).err().unwrap_or_default();
        assert_eq!(
            e(json!({"type": "tcp", "tcp": {}})),
            "proxy name is required"
        );
        assert_eq!(
            e(json!({"name": "a", "type": "web", "tcp": {}})),
            "invalid proxy type: web"
        );
        assert_eq!(
            e(json!({"name": "a", "type": "tcp"})),
            "exactly one proxy type block is required"
        );
        assert_eq!(
            e(json!({"name": "a", "type": "tcp", "tcp": {}, "udp": {}})),
            "exactly one proxy type block is required"
        );
        assert_eq!(
            e(json!({"name": "a", "type": "tcp", "udp": {"localPort": 1}})),
            "proxy type block \"udp\" does not match type \"tcp\""
        );
        assert_eq!(
            entry(
                Kind::Proxy,
                json!({"name": "b", "type": "tcp", "tcp": {}}),
                Some("a")
            )
            .err()
            .unwrap(),
            "proxy name in URL must match name in body"
        );
        assert_eq!(
            entry(
                Kind::Visitor,
                json!({"name": "v", "type": "tcp", "tcp": {}}),
                None
            )
            .err()
            .unwrap(),
            "invalid visitor type: tcp"
        );
        // The outer name and type win over the block's.
        let Ok(Entry::Proxy(p)) = entry(
            Kind::Proxy,
            json!({"name": "a", "type": "tcp", "tcp": {"name": "z", "localPort": 22}}),
            Some("a"),
        ) else {
            panic!("a valid definition")
        };
        assert_eq!((p.name.as_str(), p.local_port), ("a", 22));
        assert_eq!(
            definition(&Entry::Proxy(p)),
            json!({"name": "a", "type": "tcp", "tcp": {"name": "a", "type": "tcp", "localPort": 22}})
        );
        // A block of the wrong shape is a parse error.
        assert!(
            parse_definition(
                Kind::Proxy,
                br#"{"name":"a","type":"tcp","tcp":{"localPort":"x"}}"#
            )
            .is_err()
        );
        assert!(parse_definition(Kind::Proxy, b"[1]").is_err());
    }

    #[test]
    fn configs_frp_refuses_or_we_do_not_serve_are_refused() {
        let v = |b: Value| validate(&entry(Kind::Proxy, b, None).unwrap());
        assert_eq!(
            v(json!({"name": "w", "type": "http", "http": {"localPort": 80}})).unwrap_err(),
            "subdomain and custom domains should not be both empty"
        );
        v(json!({"name": "t", "type": "tcp", "tcp": {"localPort": 80}})).unwrap();
        // xtcp is served: accepted like any other type.
        v(json!({"name": "x", "type": "xtcp", "xtcp": {"localPort": 80}})).unwrap();
        let vis = |b: Value| validate(&entry(Kind::Visitor, b, None).unwrap());
        assert_eq!(
            vis(json!({"name": "v", "type": "stcp", "stcp": {"bindPort": 1}})).unwrap_err(),
            "server name is required"
        );
    }
}
