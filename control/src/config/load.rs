//! From text to typed config: legacy-INI dispatch, template rendering, format detection
//! (frp's `LoadConfigure`), decoding with key paths and lines, strict unknown-key checks,
//! `includes`.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use super::client::ClientConfig;
use super::fold::{Doc, canonical_keys};
use super::proxy::{ClientPluginType, ProxyType, VisitorType};
use super::server::ServerConfig;
use super::{ConfigError, ConfigFormat, legacy, template};

/// Environment lookup used for `.Envs`.
pub(crate) type Envs<'a> = &'a dyn Fn(&str) -> Option<String>;

pub(crate) fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// One segment of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// `proxies[1].transport.useEncryption`.
pub(crate) fn path_string(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// The format frp ends up decoding `text` as: TOML whenever it parses as TOML; otherwise
/// the TOML error when the file is known to be TOML; otherwise JSON if it starts with `{`,
/// else YAML.
fn detect(file: &str, text: &str, hint: ConfigFormat) -> Result<ConfigFormat, ConfigError> {
    match toml::from_str::<toml::Table>(text) {
        Ok(_) => Ok(ConfigFormat::Toml),
        Err(e) if hint == ConfigFormat::Toml => {
            let (line, column) = e.span().map(|s| line_col(text, s.start)).unzip();
            Err(ConfigError::Parse {
                file: file.to_owned(),
                format: ConfigFormat::Toml,
                line,
                column,
                key: None,
                message: e.message().trim().to_owned(),
            })
        }
        Err(_) if text.trim_start().starts_with('{') => Ok(ConfigFormat::Json),
        Err(_) => Ok(ConfigFormat::Yaml),
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Renders, detects the format and decodes a whole config document.
pub(crate) fn decode_document<T: DeserializeOwned>(
    file: &str,
    raw: &str,
    hint: ConfigFormat,
    strict: bool,
    envs: Envs<'_>,
) -> Result<T, ConfigError> {
    if let Some(e) = legacy::broken_ini(file, raw) {
        return Err(e);
    }
    let text = template::render(raw, envs).map_err(|e| ConfigError::Template {
        file: file.to_owned(),
        line: e.line,
        message: e.message,
    })?;
    let format = detect(file, &text, hint)?;
    let parse_err = |line, column, key: Option<String>, message: String| ConfigError::Parse {
        file: file.to_owned(),
        format,
        line,
        column,
        key,
        message,
    };

    // Every format is decoded through one JSON value (one instantiation of the config types'
    // deserializers instead of one per format: a smaller binary). Keys in another case than
    // our fields' (Go's JSON decoder takes them, so frp does) are respelled first (see `fold`).
    let generic: serde_json::Value = match format {
        ConfigFormat::Toml | ConfigFormat::Auto => {
            let v = toml::from_str(&text).map_err(|e: toml::de::Error| {
                let (line, col) = e.span().map(|s| line_col(&text, s.start)).unzip();
                parse_err(line, col, None, e.message().trim().to_owned())
            })?;
            canonical_keys::<T>(Doc::from(serde_json::Value::clone(&v))).unwrap_or(v)
        }
        ConfigFormat::Json => {
            let doc: Doc = serde_json::from_str(&text).map_err(|e| {
                let msg = e.to_string();
                let msg = msg
                    .rsplit_once(" at line ")
                    .map_or(msg.as_str(), |(m, _)| m);
                parse_err(Some(e.line()), Some(e.column()), None, msg.to_owned())
            })?;
            canonical_keys::<T>(doc.clone()).unwrap_or_else(|| doc.into())
        }
        ConfigFormat::Yaml => {
            let mut doc: serde_norway::Value = serde_norway::from_str(&text).map_err(|e| {
                let loc = e.location();
                parse_err(
                    loc.as_ref().map(|l| l.line()),
                    loc.as_ref().map(|l| l.column()),
                    None,
                    e.to_string(),
                )
            })?;
            if doc.is_null() {
                doc = serde_norway::Value::Mapping(Default::default());
            }
            doc.apply_merge()
                .map_err(|e| parse_err(None, None, None, e.to_string()))?;
            // frp drops top-level keys starting with "." (anchors for YAML merges).
            if let serde_norway::Value::Mapping(m) = &mut doc {
                m.retain(|k, _| !k.as_str().is_some_and(|k| k.starts_with('.')));
            }
            let v = serde_json::to_value(&doc)
                .map_err(|e| parse_err(None, None, None, e.to_string()))?;
            canonical_keys::<T>(Doc::from(serde_json::Value::clone(&v))).unwrap_or(v)
        }
    };
    let mut ignored: Vec<Vec<Seg>> = Vec::new();
    let mut on_ignored = |p: serde_ignored::Path<'_>| ignored.push(ignored_path(&p));
    let value: T = decode_tracked(generic.clone(), &mut on_ignored).map_err(|(path, e)| {
        let line = find_key_line(&text, &path);
        // TOML points at the value (as the TOML decoder's own spans did).
        let col = match (format, line, path.last()) {
            (ConfigFormat::Toml | ConfigFormat::Auto, Some(l), Some(Seg::Key(k))) => text
                .lines()
                .nth(l - 1)
                .and_then(|t| toml_value_column(t, k)),
            _ => None,
        };
        parse_err(line, col, non_empty(&path), e.to_string())
    })?;

    if strict {
        if let Some(path) = ignored.first() {
            return Err(unknown_key(file, format, &text, path, None));
        }
        check_type_keys(&generic)
            .map_err(|(path, ty)| unknown_key(file, format, &text, &path, Some(ty)))?;
    }
    Ok(value)
}

/// The 1-based column of `key`'s value on a TOML line (`key = value`, also inside an inline
/// table or as the last part of a dotted key).
pub(crate) fn toml_value_column(line: &str, key: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(at) = line[from..].find(key) {
        let end = from + at + key.len();
        let rest = line[end..].trim_start_matches(['"', '\'']).trim_start();
        if let Some(value) = rest.strip_prefix('=') {
            let start = line.len() - value.trim_start().len();
            return Some(line[..start].chars().count() + 1);
        }
        from = end;
    }
    None
}

fn non_empty(path: &[Seg]) -> Option<String> {
    (!path.is_empty()).then(|| path_string(path))
}

fn unknown_key(
    file: &str,
    format: ConfigFormat,
    text: &str,
    path: &[Seg],
    owner: Option<String>,
) -> ConfigError {
    let name = match path.last() {
        Some(Seg::Key(k)) => k.clone(),
        _ => path_string(path),
    };
    let message = match owner {
        Some(owner) => format!("unknown field `{name}` for {owner} (strict config mode)"),
        None => format!(
            "unknown field `{name}` (strict config mode; --strict_config=false ignores unknown keys)"
        ),
    };
    ConfigError::Parse {
        file: file.to_owned(),
        format,
        line: find_key_line(text, path),
        column: None,
        key: Some(path_string(path)),
        message,
    }
}

/// Deserializes `de` into `T`, reporting every ignored (unknown) key to `on_ignored` and
/// returning the key path of an error.
fn decode_tracked<'de, T, D, F>(de: D, on_ignored: &mut F) -> Result<T, (Vec<Seg>, D::Error)>
where
    T: DeserializeOwned,
    D: serde::Deserializer<'de>,
    F: FnMut(serde_ignored::Path<'_>),
{
    let mut track = serde_path_to_error::Track::new();
    let ignoring = serde_ignored::Deserializer::new(de, on_ignored);
    let tracked = serde_path_to_error::Deserializer::new(ignoring, &mut track);
    T::deserialize(tracked).map_err(|e| (tracked_path(&track.path()), e))
}

fn tracked_path(p: &serde_path_to_error::Path) -> Vec<Seg> {
    p.iter()
        .filter_map(|s| match s {
            serde_path_to_error::Segment::Seq { index } => Some(Seg::Index(*index)),
            serde_path_to_error::Segment::Map { key } => Some(Seg::Key(key.clone())),
            serde_path_to_error::Segment::Enum { variant } => Some(Seg::Key(variant.clone())),
            _ => None,
        })
        .collect()
}

fn ignored_path(p: &serde_ignored::Path<'_>) -> Vec<Seg> {
    use serde_ignored::Path as P;
    let mut out = Vec::new();
    let mut cur = p;
    loop {
        match cur {
            P::Root => break,
            P::Seq { parent, index } => {
                out.push(Seg::Index(*index));
                cur = parent;
            }
            P::Map { parent, key } => {
                out.push(Seg::Key(key.clone()));
                cur = parent;
            }
            P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
                cur = parent
            }
        }
    }
    out.reverse();
    out
}

/// frp decodes each proxy/visitor/plugin into its type's own struct, so in strict mode a
/// key of another type (`customDomains` on a tcp proxy) is unknown. Returns the path of the
/// first such key and what it was found on.
fn check_type_keys(doc: &serde_json::Value) -> Result<(), (Vec<Seg>, String)> {
    let list = |name: &str| {
        doc.get(name)
            .and_then(|v| v.as_array())
            .map(|a| a.as_slice())
            .unwrap_or_default()
    };
    for (i, p) in list("proxies").iter().enumerate() {
        let Some(obj) = p.as_object() else { continue };
        let Some(ty) = obj
            .get("type")
            .and_then(|t| t.as_str())
            .and_then(ProxyType::parse)
        else {
            continue;
        };
        for key in obj.keys() {
            if !ty.accepts_key(key) {
                let path = vec![
                    Seg::Key("proxies".into()),
                    Seg::Index(i),
                    Seg::Key(key.clone()),
                ];
                return Err((path, format!("a {ty} proxy")));
            }
        }
        if let Some(plugin) = obj.get("plugin").and_then(|v| v.as_object())
            && let Some(pt) = plugin
                .get("type")
                .and_then(|t| t.as_str())
                .and_then(ClientPluginType::parse)
        {
            for key in plugin.keys() {
                if !pt.accepts_key(key) {
                    let path = vec![
                        Seg::Key("proxies".into()),
                        Seg::Index(i),
                        Seg::Key("plugin".into()),
                        Seg::Key(key.clone()),
                    ];
                    return Err((path, format!("plugin {pt}")));
                }
            }
        }
    }
    for (i, v) in list("visitors").iter().enumerate() {
        let Some(obj) = v.as_object() else { continue };
        let Some(ty) = obj
            .get("type")
            .and_then(|t| t.as_str())
            .and_then(VisitorType::parse)
        else {
            continue;
        };
        for key in obj.keys() {
            if !ty.accepts_key(key) {
                let path = vec![
                    Seg::Key("visitors".into()),
                    Seg::Index(i),
                    Seg::Key(key.clone()),
                ];
                return Err((path, format!("a {ty} visitor")));
            }
        }
    }
    Ok(())
}

/// Best-effort 1-based line of a key path in TOML, YAML or JSON text: follows the path
/// segment by segment (the n-th `[[proxies]]` header for `proxies[n]`), matching dotted
/// keys, tables, `key:` and `"key":`.
pub(crate) fn find_key_line(text: &str, path: &[Seg]) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let mut from = 0;
    let mut found = None;
    let mut i = 0;
    while i < path.len() {
        match (&path[i], path.get(i + 1)) {
            (Seg::Key(k), Some(Seg::Index(n))) => {
                let header = format!("[[{k}]]");
                let hit = lines
                    .iter()
                    .enumerate()
                    .skip(from)
                    .filter(|(_, l)| l.trim().replace(' ', "") == header)
                    .nth(*n)
                    .map(|(at, _)| at)
                    .or_else(|| {
                        let at = (from..lines.len()).find(|&at| line_has_key(lines[at], k))?;
                        Some(nth_element_line(&lines, at, *n).unwrap_or(at))
                    });
                if let Some(at) = hit {
                    found = Some(at + 1);
                    from = at;
                }
                i += 2;
            }
            (Seg::Key(k), _) => {
                if let Some(at) = (from..lines.len()).find(|&at| line_has_key(lines[at], k)) {
                    found = Some(at + 1);
                    from = at;
                }
                i += 1;
            }
            (Seg::Index(_), _) => i += 1,
        }
    }
    found
}

/// The 0-based line where element `n` of the list under the key on line `at` starts: a
/// YAML block sequence (`- ` items at one indentation) or a JSON array (its `{`/values at
/// depth one).
fn nth_element_line(lines: &[&str], at: usize, n: usize) -> Option<usize> {
    let indent = |l: &str| l.len() - l.trim_start().len();
    let key_line = lines[at];
    let after_key = key_line
        .find(':')
        .map_or("", |c| key_line[c + 1..].trim_start());
    if after_key.starts_with('[') || key_line.trim_start().starts_with('"') {
        // JSON (or a YAML flow sequence): scan from the `[` counting elements at depth 1.
        let mut depth = 0usize;
        let mut count = 0usize;
        let mut in_str = false;
        let mut escaped = false;
        let mut expecting = false;
        let start_col = key_line.find(':').map_or(0, |c| c + 1);
        for (li, line) in lines.iter().enumerate().skip(at) {
            let from = if li == at { start_col } else { 0 };
            for c in line[from..].chars() {
                if in_str {
                    match (escaped, c) {
                        (true, _) => escaped = false,
                        (false, '\\') => escaped = true,
                        (false, '"') => in_str = false,
                        _ => {}
                    }
                    continue;
                }
                if expecting && !c.is_whitespace() {
                    expecting = false;
                    if c == ']' && depth == 1 {
                        return None;
                    }
                    if count == n {
                        return Some(li);
                    }
                    count += 1;
                }
                match c {
                    '"' => in_str = true,
                    '[' | '{' => {
                        depth += 1;
                        if depth == 1 {
                            expecting = true;
                        }
                    }
                    ']' | '}' => {
                        if depth <= 1 {
                            return None;
                        }
                        depth -= 1;
                    }
                    ',' if depth == 1 => expecting = true,
                    _ => {}
                }
            }
        }
        return None;
    }
    // YAML block sequence.
    let mut item_indent = None;
    let mut count = 0usize;
    for (li, line) in lines.iter().enumerate().skip(at + 1) {
        let t = line.trim_start();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let is_item = t == "-" || t.starts_with("- ");
        let ind = indent(line);
        let want = *item_indent.get_or_insert(ind);
        if ind < want || ind == want && !is_item {
            return None;
        }
        if ind == want {
            if count == n {
                return Some(li);
            }
            count += 1;
        }
    }
    None
}

fn line_has_key(line: &str, key: &str) -> bool {
    let l = line.trim().trim_start_matches("- ");
    if l.starts_with('#') {
        return false;
    }
    let key_part = if let Some(inner) = l.strip_prefix('[') {
        inner
            .trim_start_matches('[')
            .split(']')
            .next()
            .unwrap_or("")
    } else {
        match l.find(['=', ':']) {
            Some(at) => &l[..at],
            None => return false,
        }
    };
    key_part
        .split('.')
        // Any case: keys match their fields as Go's JSON decoder matches them.
        .any(|seg| {
            seg.trim()
                .trim_matches(['"', '\''])
                .eq_ignore_ascii_case(key)
        })
}

/// Reads a file (for error messages, the path as given).
pub(crate) fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        file: path.display().to_string(),
        source,
    })
}

pub(crate) fn server_from_text(
    file: &str,
    text: &str,
    hint: ConfigFormat,
    strict: bool,
    envs: Envs<'_>,
) -> Result<ServerConfig, ConfigError> {
    let mut cfg: ServerConfig = if legacy::is_legacy_ini(text) {
        legacy::server_from_ini(file, text, envs)?
    } else {
        decode_document(file, text, hint, strict, envs)?
    };
    cfg.complete();
    Ok(cfg)
}

pub(crate) fn client_from_text(
    file: &str,
    text: &str,
    hint: ConfigFormat,
    strict: bool,
    envs: Envs<'_>,
) -> Result<ClientConfig, ConfigError> {
    let mut cfg: ClientConfig = if legacy::is_legacy_ini(text) {
        // Legacy `includes` are INI files merged by the legacy reader.
        legacy::client_from_ini(file, text, envs)?
    } else {
        let mut cfg = decode_document(file, text, hint, strict, envs)?;
        load_includes(file, &mut cfg, strict, envs)?;
        cfg
    };
    cfg.complete();
    check_duplicate_names(&cfg).map_err(|message| ConfigError::Invalid {
        file: file.to_owned(),
        message,
    })?;
    Ok(cfg)
}

/// frp's `LoadAdditionalClientConfigs`: each `includes` entry is a directory (relative to
/// the working directory, as in frp) plus a file-name glob; every matching file's
/// `[[proxies]]` and `[[visitors]]` are appended, in file-name order.
fn load_includes(
    file: &str,
    cfg: &mut ClientConfig,
    strict: bool,
    envs: Envs<'_>,
) -> Result<(), ConfigError> {
    for pattern in cfg.includes.clone() {
        let pattern_path = Path::new(&pattern);
        let dir = match pattern_path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let glob = pattern_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let invalid = |message: String| ConfigError::Invalid {
            file: file.to_owned(),
            message,
        };
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| invalid(format!("include: directory of {pattern} not exist: {e}")))?;
        let mut names: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| glob_match(&glob, &n.to_string_lossy()))
            })
            .collect();
        names.sort();
        for inc in names {
            let inc_name = inc.display().to_string();
            let wrap = |source: ConfigError| ConfigError::Include {
                file: file.to_owned(),
                included: inc_name.clone(),
                source: Box::new(source),
            };
            let text = read(&inc).map_err(wrap)?;
            let sub: ClientConfig = decode_document(
                &inc_name,
                &text,
                ConfigFormat::from_path(&inc),
                strict,
                envs,
            )
            .map_err(wrap)?;
            cfg.proxies.extend(sub.proxies);
            cfg.visitors.extend(sub.visitors);
        }
    }
    Ok(())
}

/// frp 0.70 rejects duplicate names (they would silently overwrite each other).
fn check_duplicate_names(cfg: &ClientConfig) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for p in &cfg.proxies {
        if !seen.insert(p.name.as_str()) {
            return Err(format!("proxy name [{}] is duplicated", p.name));
        }
    }
    seen.clear();
    for v in &cfg.visitors {
        if !seen.insert(v.name.as_str()) {
            return Err(format!("visitor name [{}] is duplicated", v.name));
        }
    }
    Ok(())
}

/// Go's `filepath.Match` on one file name: `*`, `?`, `[a-z]` / `[^a-z]`, `\` escapes.
pub(crate) fn glob_match(pattern: &str, name: &str) -> bool {
    fn class(p: &[char], c: char) -> Option<(bool, usize)> {
        // p starts after '['; returns (matched, chars consumed including ']').
        let mut i = 0;
        let negate = matches!(p.first(), Some('^') | Some('!'));
        if negate {
            i += 1;
        }
        let mut matched = false;
        let mut first = true;
        while i < p.len() {
            if p[i] == ']' && !first {
                return Some((matched != negate, i + 1));
            }
            first = false;
            let lo = if p[i] == '\\' {
                i += 1;
                *p.get(i)?
            } else {
                p[i]
            };
            i += 1;
            let hi = if p.get(i) == Some(&'-') && p.get(i + 1).is_some_and(|&c| c != ']') {
                i += 1;
                let h = if p[i] == '\\' {
                    i += 1;
                    *p.get(i)?
                } else {
                    p[i]
                };
                i += 1;
                h
            } else {
                lo
            };
            if lo <= c && c <= hi {
                matched = true;
            }
        }
        None
    }
    fn go(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('*') => (0..=n.len()).any(|k| !n[..k].contains(&'/') && go(&p[1..], &n[k..])),
            Some('?') => n.first().is_some_and(|&c| c != '/') && go(&p[1..], &n[1..]),
            Some('[') => match (n.first(), class(&p[1..], *n.first().unwrap_or(&'\0'))) {
                (Some(_), Some((true, used))) => go(&p[1 + used..], &n[1..]),
                _ => false,
            },
            Some('\\') if p.len() > 1 => n.first() == Some(&p[1]) && go(&p[2..], &n[1..]),
            Some(&c) => n.first() == Some(&c) && go(&p[1..], &n[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}
