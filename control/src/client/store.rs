//! frpc's proxy store (`store.path`, frp's `pkg/config/source/store.go`): proxies and visitors
//! created through the admin API's `/api/store/*`, kept in a JSON file next to the config
//! file's own, and merged with them ([`ConfigSources::merged`]): a store entry replaces a
//! config-file entry of the same name, as in frp's aggregator.
//!
//! The file is `{"proxies": [...], "visitors": [...]}`, each entry a proxy or visitor as frp
//! writes it (`{"name": …, "type": …, "localPort": …}`); frpc reads the files real frpc
//! writes and the other way round. Every change is written to `<path>.tmp`, synced and
//! renamed over the file; a change that cannot be written is undone.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::config::{
    ClientConfig, ClientPluginType, ProxyConfig, ProxyType, VisitorConfig, VisitorPluginType,
    VisitorType,
};

/// Why the store file could not be opened (frpc does not start).
#[derive(Debug, thiserror::Error)]
#[error("failed to create store source: {0}")]
pub struct StoreError(String);

/// A store mutation that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreChangeError {
    /// frp's `ErrAlreadyExists`: `already exists: proxy "name"`.
    #[error("already exists: {kind} {name:?}")]
    AlreadyExists { kind: &'static str, name: String },
    /// frp's `ErrNotFound`: `not found: proxy "name"`.
    #[error("not found: {kind} {name:?}")]
    NotFound { kind: &'static str, name: String },
    /// The file could not be written; the change was undone.
    #[error("failed to persist: {0}")]
    Persist(String),
}

/// The store file's entries (as given: not completed with defaults).
#[derive(Debug, Clone)]
pub struct Store {
    path: PathBuf,
    proxies: BTreeMap<String, ProxyConfig>,
    visitors: BTreeMap<String, VisitorConfig>,
}

impl Store {
    /// Reads the store file; a missing file is an empty store.
    pub fn open(path: PathBuf) -> Result<Store, StoreError> {
        let mut store = Store {
            path,
            proxies: BTreeMap::new(),
            visitors: BTreeMap::new(),
        };
        match std::fs::read(&store.path) {
            Ok(data) => store
                .load(&data)
                .map_err(|e| StoreError(format!("failed to load existing data: {e}")))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(StoreError(format!(
                    "failed to load existing data: open {}: {e}",
                    store.path.display()
                )));
            }
        }
        Ok(store)
    }

    fn load(&mut self, data: &[u8]) -> Result<(), String> {
        let v: Value =
            serde_json::from_slice(data).map_err(|e| format!("failed to parse JSON: {e}"))?;
        let Value::Object(top) = v else {
            return Err("failed to parse JSON: the store is not a JSON object".into());
        };
        let list = |key: &str| -> Result<Vec<Value>, String> {
            match get_ci(&top, key) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Array(a)) => Ok(a.clone()),
                Some(_) => Err(format!("failed to parse JSON: {key} is not an array")),
            }
        };
        for (i, v) in list("proxies")?.into_iter().enumerate() {
            let p =
                decode_proxy(v).map_err(|e| format!("failed to decode proxy at index {i}: {e}"))?;
            if p.name.is_empty() {
                return Err("proxy name cannot be empty".into());
            }
            self.proxies.insert(p.name.clone(), p);
        }
        for (i, v) in list("visitors")?.into_iter().enumerate() {
            let c = decode_visitor(v)
                .map_err(|e| format!("failed to decode visitor at index {i}: {e}"))?;
            if c.name.is_empty() {
                return Err("visitor name cannot be empty".into());
            }
            self.visitors.insert(c.name.clone(), c);
        }
        Ok(())
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored proxies, sorted by name.
    pub fn proxies(&self) -> impl Iterator<Item = &ProxyConfig> {
        self.proxies.values()
    }

    /// The stored visitors, sorted by name.
    pub fn visitors(&self) -> impl Iterator<Item = &VisitorConfig> {
        self.visitors.values()
    }

    pub fn proxy(&self, name: &str) -> Option<&ProxyConfig> {
        self.proxies.get(name)
    }

    pub fn visitor(&self, name: &str) -> Option<&VisitorConfig> {
        self.visitors.get(name)
    }

    pub fn add_proxy(&mut self, p: ProxyConfig) -> Result<(), StoreChangeError> {
        if self.proxies.contains_key(&p.name) {
            return Err(StoreChangeError::AlreadyExists {
                kind: "proxy",
                name: p.name,
            });
        }
        let name = p.name.clone();
        self.proxies.insert(name.clone(), p);
        self.persist_or(|s| {
            s.proxies.remove(&name);
        })
    }

    pub fn update_proxy(&mut self, p: ProxyConfig) -> Result<(), StoreChangeError> {
        let Some(old) = self.proxies.insert(p.name.clone(), p.clone()) else {
            self.proxies.remove(&p.name);
            return Err(StoreChangeError::NotFound {
                kind: "proxy",
                name: p.name,
            });
        };
        self.persist_or(|s| {
            s.proxies.insert(old.name.clone(), old);
        })
    }

    pub fn remove_proxy(&mut self, name: &str) -> Result<(), StoreChangeError> {
        let Some(old) = self.proxies.remove(name) else {
            return Err(StoreChangeError::NotFound {
                kind: "proxy",
                name: name.into(),
            });
        };
        self.persist_or(|s| {
            s.proxies.insert(old.name.clone(), old);
        })
    }

    pub fn add_visitor(&mut self, v: VisitorConfig) -> Result<(), StoreChangeError> {
        if self.visitors.contains_key(&v.name) {
            return Err(StoreChangeError::AlreadyExists {
                kind: "visitor",
                name: v.name,
            });
        }
        let name = v.name.clone();
        self.visitors.insert(name.clone(), v);
        self.persist_or(|s| {
            s.visitors.remove(&name);
        })
    }

    pub fn update_visitor(&mut self, v: VisitorConfig) -> Result<(), StoreChangeError> {
        let Some(old) = self.visitors.insert(v.name.clone(), v.clone()) else {
            self.visitors.remove(&v.name);
            return Err(StoreChangeError::NotFound {
                kind: "visitor",
                name: v.name,
            });
        };
        self.persist_or(|s| {
            s.visitors.insert(old.name.clone(), old);
        })
    }

    pub fn remove_visitor(&mut self, name: &str) -> Result<(), StoreChangeError> {
        let Some(old) = self.visitors.remove(name) else {
            return Err(StoreChangeError::NotFound {
                kind: "visitor",
                name: name.into(),
            });
        };
        self.persist_or(|s| {
            s.visitors.insert(old.name.clone(), old);
        })
    }

    /// Writes the store; on failure runs `rollback` and reports why.
    fn persist_or(&mut self, rollback: impl FnOnce(&mut Self)) -> Result<(), StoreChangeError> {
        match self.save() {
            Ok(()) => Ok(()),
            Err(e) => {
                rollback(self);
                Err(StoreChangeError::Persist(e))
            }
        }
    }

    /// The file's JSON: `proxies` / `visitors` left out when empty, as frp does.
    pub fn to_json(&self) -> Value {
        let mut top = Map::new();
        if !self.proxies.is_empty() {
            top.insert(
                "proxies".into(),
                Value::Array(self.proxies.values().map(proxy_to_json).collect()),
            );
        }
        if !self.visitors.is_empty() {
            top.insert(
                "visitors".into(),
                Value::Array(self.visitors.values().map(visitor_to_json).collect()),
            );
        }
        Value::Object(top)
    }

    fn save(&self) -> Result<(), String> {
        let data = serde_json::to_vec_pretty(&self.to_json())
            .map_err(|e| format!("failed to marshal JSON: {e}"))?;
        if let Some(dir) = self.path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| format!("failed to create directory: {e}"))?;
        }
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let write = || -> Result<(), String> {
            let mut f =
                open_private(&tmp).map_err(|e| format!("failed to create temp file: {e}"))?;
            f.write_all(&data)
                .map_err(|e| format!("failed to write temp file: {e}"))?;
            f.sync_all()
                .map_err(|e| format!("failed to sync temp file: {e}"))?;
            drop(f);
            std::fs::rename(&tmp, &self.path)
                .map_err(|e| format!("failed to rename temp file: {e}"))
        };
        write().inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }
}

/// Creates (or truncates) a file readable only by its owner (frp: 0600).
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

/// The proxies and visitors frpc runs: its config file's and its store's.
#[derive(Debug, Clone)]
pub struct ConfigSources {
    /// The config file as last loaded (at start or by `/api/reload`).
    pub file: ClientConfig,
    /// `store.path`, when set.
    pub store: Option<Store>,
}

impl ConfigSources {
    /// Opens `file.store.path` (relative to the config file's directory, as frp resolves it)
    /// when set.
    pub fn open(file: ClientConfig, config_file: Option<&Path>) -> Result<Self, StoreError> {
        let store = if file.store.path.is_empty() {
            None
        } else {
            let mut path = PathBuf::from(&file.store.path);
            if path.is_relative()
                && let Some(cfg) = config_file.filter(|p| !p.as_os_str().is_empty())
            {
                path = cfg.parent().unwrap_or(Path::new("")).join(path);
            }
            Some(Store::open(path)?)
        };
        Ok(ConfigSources { file, store })
    }

    /// The config frpc runs: the file's, with the store's proxies and visitors added
    /// (completed with frp's defaults), a store entry replacing a file entry of its name.
    pub fn merged(&self) -> ClientConfig {
        let mut cfg = self.file.clone();
        let Some(store) = &self.store else {
            return cfg;
        };
        for p in store.proxies() {
            let mut p = p.clone();
            p.complete();
            match cfg.proxies.iter_mut().find(|q| q.name == p.name) {
                Some(q) => *q = p,
                None => cfg.proxies.push(p),
            }
        }
        for v in store.visitors() {
            let mut v = v.clone();
            v.complete();
            match cfg.visitors.iter_mut().find(|w| w.name == v.name) {
                Some(w) => *w = v,
                None => cfg.visitors.push(v),
            }
        }
        cfg
    }

    /// Whether `name` is an enabled proxy of the store (`/api/status` marks it `"source":
    /// "store"`).
    pub fn is_store_proxy_enabled(&self, name: &str) -> bool {
        self.store
            .as_ref()
            .and_then(|s| s.proxy(name))
            .is_some_and(|p| p.enabled)
    }
}

/// A JSON object's member as Go's decoder finds it: the exact key, else one that differs
/// only in case.
pub(crate) fn get_ci<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    m.get(key).or_else(|| {
        m.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

/// Drops `null` members (Go's decoder leaves such a field at its zero value).
fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, v| !v.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// A proxy from its JSON (frp's `DecodeProxyConfigurerJSON`, unknown keys ignored).
pub(crate) fn decode_proxy(v: Value) -> Result<ProxyConfig, String> {
    let Value::Object(m) = v else {
        return Err("type is required".into());
    };
    let ty = get_ci(&m, "type").and_then(Value::as_str).unwrap_or("");
    let ty = ProxyType::parse(ty).ok_or_else(|| format!("unknown proxy type: {ty}"))?;
    let name = get_ci(&m, "name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    decode_proxy_as(Value::Object(m), ty, &name)
        .map_err(|e| format!("unmarshal ProxyConfig error: {e}"))
}

/// A proxy of type `ty` named `name` from a JSON object of its keys (keys of other types
/// dropped, as frp's per-type structs drop them).
pub(crate) fn decode_proxy_as(
    mut v: Value,
    ty: ProxyType,
    name: &str,
) -> Result<ProxyConfig, String> {
    strip_nulls(&mut v);
    let Value::Object(m) = &mut v else {
        return Err(format!(
            "json: cannot unmarshal {} into a proxy",
            json_kind(&v)
        ));
    };
    m.insert("type".into(), Value::String(ty.as_str().into()));
    m.insert("name".into(), Value::String(name.into()));
    let p: ProxyConfig = serde_json::from_value(v).map_err(|e| e.to_string())?;
    // Through frp's view of the type and back: keys of other types are gone.
    serde_json::from_value(proxy_to_json(&p)).map_err(|e| e.to_string())
}

/// A visitor from its JSON (frp's `DecodeVisitorConfigurerJSON`).
pub(crate) fn decode_visitor(v: Value) -> Result<VisitorConfig, String> {
    let Value::Object(m) = v else {
        return Err("type is required".into());
    };
    let ty = get_ci(&m, "type").and_then(Value::as_str).unwrap_or("");
    let ty = VisitorType::parse(ty).ok_or_else(|| format!("unknown visitor type: {ty}"))?;
    let name = get_ci(&m, "name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    decode_visitor_as(Value::Object(m), ty, &name)
        .map_err(|e| format!("unmarshal VisitorConfig error: {e}"))
}

/// [`decode_proxy_as`] for visitors.
pub(crate) fn decode_visitor_as(
    mut v: Value,
    ty: VisitorType,
    name: &str,
) -> Result<VisitorConfig, String> {
    strip_nulls(&mut v);
    let Value::Object(m) = &mut v else {
        return Err(format!(
            "json: cannot unmarshal {} into a visitor",
            json_kind(&v)
        ));
    };
    m.insert("type".into(), Value::String(ty.as_str().into()));
    m.insert("name".into(), Value::String(name.into()));
    let c: VisitorConfig = serde_json::from_value(v).map_err(|e| e.to_string())?;
    serde_json::from_value(visitor_to_json(&c)).map_err(|e| e.to_string())
}

/// The JSON kind of `v` as Go's decoder names it in its errors.
pub(crate) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Removes the members of `v` equal to `default`'s (recursively into objects), keeping the
/// keys in `keep`: what is left is what was set.
fn prune(v: &mut Map<String, Value>, default: &Map<String, Value>, keep: &[&str]) {
    v.retain(|k, val| {
        if keep.contains(&k.as_str()) {
            return true;
        }
        match default.get(k) {
            Some(d) if d == val => false,
            Some(Value::Object(d)) => {
                if let Value::Object(o) = val {
                    prune(o, d, &[]);
                    !o.is_empty()
                } else {
                    true
                }
            }
            _ => true,
        }
    });
}

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// A proxy as frp's API and store file show it: its type's keys, the ones set.
pub fn proxy_to_json(p: &ProxyConfig) -> Value {
    let ty = p.proxy_type;
    let mut m = object(serde_json::to_value(p).unwrap_or_default());
    m.retain(|k, _| ty.accepts_key(k));
    let default = serde_json::from_value::<ProxyConfig>(serde_json::json!({"type": ty.as_str()}))
        .map(|d| object(serde_json::to_value(d).unwrap_or_default()))
        .unwrap_or_default();
    let plugin = m.remove("plugin");
    prune(&mut m, &default, &["name", "type"]);
    if let Some(Value::Object(mut pl)) = plugin {
        let pty = p.plugin.as_ref().map(|c| c.plugin_type);
        pl.retain(|k, _| pty.is_some_and(|t| t.accepts_key(k)));
        if let Some(t) = pty {
            prune(&mut pl, &plugin_default(t), &["type"]);
        }
        m.insert("plugin".into(), Value::Object(pl));
    }
    Value::Object(m)
}

fn plugin_default(t: ClientPluginType) -> Map<String, Value> {
    serde_json::from_value::<crate::config::ClientPluginConfig>(
        serde_json::json!({"type": t.as_str()}),
    )
    .map(|d| object(serde_json::to_value(d).unwrap_or_default()))
    .unwrap_or_default()
}

/// A visitor as frp's API and store file show it.
pub fn visitor_to_json(v: &VisitorConfig) -> Value {
    let ty = v.visitor_type;
    let mut m = object(serde_json::to_value(v).unwrap_or_default());
    m.retain(|k, _| ty.accepts_key(k));
    let default = serde_json::from_value::<VisitorConfig>(serde_json::json!({"type": ty.as_str()}))
        .map(|d| object(serde_json::to_value(d).unwrap_or_default()))
        .unwrap_or_default();
    let plugin = m.remove("plugin");
    prune(&mut m, &default, &["name", "type"]);
    if let Some(Value::Object(mut pl)) = plugin {
        let d = serde_json::from_value::<crate::config::VisitorPluginConfig>(
            serde_json::json!({"type": VisitorPluginType::VirtualNet.as_str()}),
        )
        .map(|d| object(serde_json::to_value(d).unwrap_or_default()))
        .unwrap_or_default();
        prune(&mut pl, &d, &["type"]);
        m.insert("plugin".into(), Value::Object(pl));
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tmp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("frp-uring-store-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn proxy_json_shows_the_keys_of_its_type_that_are_set() {
        let p = decode_proxy(json!({
            "name": "t", "type": "tcp", "localPort": 22, "remotePort": 6000,
            "customDomains": ["x"], "transport": {"useEncryption": true},
            "plugin": null, "healthCheck": {"type": "", "intervalSeconds": 0},
            "loadBalancer": {"group": ""}
        }))
        .unwrap();
        assert!(
            p.custom_domains.is_empty(),
            "a tcp proxy has no customDomains"
        );
        assert_eq!(
            proxy_to_json(&p),
            json!({"name": "t", "type": "tcp", "localPort": 22, "remotePort": 6000,
                   "transport": {"useEncryption": true}})
        );
        let p = decode_proxy(json!({
            "name": "w", "type": "https", "customDomains": ["a.example.com"],
            "plugin": {"type": "https2http", "localAddr": "127.0.0.1:80", "enableHTTP2": false,
                       "unixPath": "/x"}
        }))
        .unwrap();
        let v = proxy_to_json(&p);
        assert_eq!(
            v["plugin"],
            json!({"type": "https2http", "localAddr": "127.0.0.1:80", "enableHTTP2": false})
        );
        // Round trip.
        assert_eq!(decode_proxy(v).unwrap(), p);
    }

    #[test]
    fn decode_errors_read_like_frp() {
        assert_eq!(
            decode_proxy(json!({"name": "x", "type": "nope"})).unwrap_err(),
            "unknown proxy type: nope"
        );
        assert_eq!(
            decode_visitor(json!({"name": "x"})).unwrap_err(),
            "unknown visitor type: "
        );
        let e = decode_proxy(json!({"name": "x", "type": "tcp", "localPort": "a"})).unwrap_err();
        assert!(e.starts_with("unmarshal ProxyConfig error: "), "{e}");
        // Go's decoder matches keys regardless of case for type and name.
        let p = decode_proxy(json!({"Name": "x", "TYPE": "udp"})).unwrap();
        assert_eq!((p.name.as_str(), p.proxy_type), ("x", ProxyType::Udp));
    }

    #[test]
    fn store_persists_rolls_back_and_reads_frps_layout() {
        let dir = tmp("persist");
        let path = dir.join("sub").join("store.json");
        let mut s = Store::open(path.clone()).unwrap();
        let p = decode_proxy(json!({"name": "a", "type": "tcp", "localPort": 1})).unwrap();
        s.add_proxy(p.clone()).unwrap();
        assert_eq!(
            s.add_proxy(p.clone()).unwrap_err().to_string(),
            "already exists: proxy \"a\""
        );
        let v =
            decode_visitor(json!({"name": "v", "type": "stcp", "serverName": "a", "bindPort": 9}))
                .unwrap();
        s.add_visitor(v.clone()).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let again = Store::open(path.clone()).unwrap();
        assert_eq!(again.proxy("a"), Some(&p));
        assert_eq!(again.visitor("v"), Some(&v));
        assert_eq!(
            s.update_proxy(decode_proxy(json!({"name": "b", "type": "tcp"})).unwrap())
                .unwrap_err()
                .to_string(),
            "not found: proxy \"b\""
        );
        assert!(s.proxy("b").is_none());
        s.remove_visitor("v").unwrap();
        let on_disk: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            on_disk,
            json!({"proxies": [{"name": "a", "type": "tcp", "localPort": 1}]})
        );

        // A write that fails is undone: the store's directory became a file.
        let blocked = dir.join("blocked");
        let mut s2 = Store::open(blocked.join("store.json")).unwrap();
        std::fs::write(&blocked, "").unwrap();
        let e = s2.add_proxy(p.clone()).unwrap_err();
        assert!(matches!(e, StoreChangeError::Persist(_)), "{e}");
        assert!(s2.proxy("a").is_none());

        // What real frpc writes (Go's zero values included) loads.
        let go = dir.join("go.json");
        std::fs::write(
            &go,
            r#"{
  "proxies": [
    {"name": "g", "type": "tcp", "transport": {}, "loadBalancer": {"group": ""},
     "healthCheck": {"type": "", "intervalSeconds": 0}, "localIP": "127.0.0.1",
     "localPort": 80, "plugin": null, "remotePort": 6001}
  ]
}"#,
        )
        .unwrap();
        let g = Store::open(go).unwrap();
        assert_eq!(g.proxy("g").unwrap().remote_port, 6001);

        let bad = dir.join("bad.json");
        std::fs::write(&bad, "{").unwrap();
        let e = Store::open(bad.clone()).unwrap_err().to_string();
        assert!(
            e.starts_with("failed to create store source: failed to load existing data: failed to parse JSON: "),
            "{e}"
        );
        std::fs::write(&bad, r#"{"proxies": [{"type": "tcp"}]}"#).unwrap();
        let e = Store::open(bad).unwrap_err().to_string();
        assert!(e.ends_with("proxy name cannot be empty"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn store_entries_replace_file_entries_of_their_name() {
        let dir = tmp("merge");
        let cfg_path = dir.join("frpc.toml");
        let text = "store.path = \"store.json\"\n[[proxies]]\nname = \"a\"\ntype = \"tcp\"\nlocalPort = 1\n[[proxies]]\nname = \"b\"\ntype = \"tcp\"\nlocalPort = 2\n";
        let file =
            crate::config::client_config_from_str(text, crate::config::ConfigFormat::Toml, true)
                .unwrap();
        let mut src = ConfigSources::open(file, Some(&cfg_path)).unwrap();
        assert_eq!(src.store.as_ref().unwrap().path(), dir.join("store.json"));
        let store = src.store.as_mut().unwrap();
        store
            .add_proxy(decode_proxy(json!({"name": "b", "type": "udp", "localPort": 3})).unwrap())
            .unwrap();
        store
            .add_proxy(decode_proxy(json!({"name": "c", "type": "tcp", "localPort": 4})).unwrap())
            .unwrap();
        let m = src.merged();
        let got: Vec<_> = m
            .proxies
            .iter()
            .map(|p| {
                (
                    p.name.as_str(),
                    p.proxy_type,
                    p.local_port,
                    p.local_ip.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("a", ProxyType::Tcp, 1, "127.0.0.1"),
                ("b", ProxyType::Udp, 3, "127.0.0.1"),
                ("c", ProxyType::Tcp, 4, "127.0.0.1")
            ]
        );
        assert!(src.is_store_proxy_enabled("b"));
        assert!(!src.is_store_proxy_enabled("a"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
