//! Lines for validation errors: frp's validation messages name no line, so `verify` and the
//! binaries prefix each with where its key is in the file (`frpc.toml: line 3: invalid
//! transport.protocol, optional values are [...]`); frp's message itself stays as it is.

use std::path::Path;

use super::legacy;
use super::load::{Seg, find_key_line};

/// The key a validation message (frp's wording, or our `(key …)` refusals) is about.
fn key_of(msg: &str) -> Option<&'static str> {
    const KEYS: &[(&str, &str)] = &[
        ("invalid auth method", "auth.method"),
        ("invalid auth additional scopes", "auth.additionalScopes"),
        ("cannot specify both auth.token and", "auth.tokenSource"),
        ("invalid auth.tokenSource", "auth.tokenSource"),
        (
            "cannot specify both auth.oidc.tokenSource",
            "auth.oidc.tokenSource",
        ),
        ("invalid auth.oidc.tokenSource", "auth.oidc.tokenSource"),
        ("auth.oidc.", "auth.oidc"),
        ("invalid log level", "log.level"),
        ("tls.certFile must be specified when", "webServer.tls"),
        ("tls.keyFile must be specified when", "webServer.tls"),
        (
            "invalid transport.heartbeatTimeout",
            "transport.heartbeatTimeout",
        ),
        ("invalid transport.protocol", "transport.protocol"),
        ("invalid transport.wireProtocol", "transport.wireProtocol"),
        ("VirtualNet feature is not enabled", "virtualNet.address"),
        ("invalid http plugin ops", "httpPlugins"),
        (
            "transport.tls.certFile and transport.tls.keyFile",
            "transport.tls",
        ),
        ("allowPorts: invalid entry", "allowPorts"),
        ("webServer.port: ", "webServer.port"),
    ];
    KEYS.iter()
        .find(|(prefix, _)| msg.starts_with(prefix))
        .map(|(_, key)| *key)
}

/// The key inside a proxy or visitor entry that a `proxy NAME: …` message is about.
fn entry_key_of(msg: &str) -> Option<&'static str> {
    const KEYS: &[(&str, &str)] = &[
        ("annotation", "annotations"),
        ("not support proxy protocol version", "proxyProtocolVersion"),
        ("bandwidth limit mode should be", "bandwidthLimitMode"),
        ("not support health check type", "healthCheck"),
        ("health check path should not be empty", "healthCheck"),
        ("plugin ", "plugin"),
        ("not support multiplexer", "multiplexer"),
        ("protocol should be kcp or quic", "protocol"),
    ];
    KEYS.iter()
        .find(|(prefix, _)| msg.starts_with(prefix))
        .map(|(_, key)| *key)
}

fn path_of(key: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    for part in key.split('.') {
        match part.split_once('[') {
            Some((k, rest)) => {
                out.push(Seg::Key(k.to_owned()));
                if let Ok(i) = rest.trim_end_matches(']').parse() {
                    out.push(Seg::Index(i));
                }
            }
            None => out.push(Seg::Key(part.to_owned())),
        }
    }
    out
}

/// 0-based line of the entry whose `name` is `name` (`name = "web"`, `name: web`,
/// `"name": "web"`).
fn entry_line(lines: &[&str], name: &str) -> Option<usize> {
    lines.iter().position(|l| {
        let l = l
            .trim()
            .trim_start_matches("- ")
            .trim_start_matches('{')
            .trim();
        let Some(at) = l.find(['=', ':']) else {
            return false;
        };
        let (k, v) = (&l[..at], &l[at + 1..]);
        k.trim()
            .trim_matches(['"', '\''])
            .eq_ignore_ascii_case("name")
            && v.trim()
                .trim_end_matches(',')
                .trim()
                .trim_matches(['"', '\''])
                == name
    })
}

/// 1-based line of one validation message in `text`.
fn line_of(text: &str, msg: &str) -> Option<usize> {
    // Our refusals name their key: "… (key proxies[0].type) …" / "(keys a, b)".
    if let Some(at) = msg.find("(key ").or_else(|| msg.find("(keys ")) {
        let rest = &msg[at..];
        let key = rest
            .trim_start_matches("(keys ")
            .trim_start_matches("(key ")
            .split([',', ')'])
            .next()?;
        return find_key_line(text, &path_of(key.trim()));
    }
    if let Some(key) = key_of(msg) {
        return find_key_line(text, &path_of(key));
    }
    let rest = msg
        .strip_prefix("proxy ")
        .or_else(|| msg.strip_prefix("visitor "))?;
    let (name, inner) = rest.split_once(": ")?;
    let lines: Vec<&str> = text.lines().collect();
    let at = entry_line(&lines, name)?;
    let sub = entry_key_of(inner)
        .and_then(|k| {
            lines[at..]
                .iter()
                .take_while(|l| {
                    let t = l.trim();
                    !(t.starts_with("[[") && t.ends_with("]]"))
                })
                .position(|l| {
                    let t = l.trim().trim_start_matches("- ");
                    t.find(['=', ':']).is_some_and(|c| {
                        t[..c]
                            .split('.')
                            .any(|seg| seg.trim().trim_matches(['"', '\'']).eq_ignore_ascii_case(k))
                    })
                })
        })
        .unwrap_or(0);
    Some(at + sub + 1)
}

/// `message` (one or more validation messages, one per line) with each message that can be
/// placed prefixed `FILE: line N: `. Legacy INI files and unreadable files are left as they
/// are.
pub fn with_lines(path: &Path, message: &str) -> String {
    let Ok(text) = std::fs::read_to_string(path) else {
        return message.to_owned();
    };
    if legacy::is_legacy_ini(&text) {
        return message.to_owned();
    }
    message
        .lines()
        .map(|m| match line_of(&text, m) {
            Some(n) => format!("{}: line {n}: {m}", path.display()),
            None => m.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_keys_proxy_entries_and_our_key_refusals() {
        let text = r#"serverPort = 7000
transport.protocol = "invalid"
log.level = "loud"

[[proxies]]
name = "a"
type = "tcp"

[[proxies]]
type = "http"
name = "web"
localPort = 80
transport.bandwidthLimitMode = "both"
"#;
        assert_eq!(
            line_of(
                text,
                "invalid transport.protocol, optional values are [tcp]"
            ),
            Some(2)
        );
        assert_eq!(
            line_of(text, "invalid log level, optional values are"),
            Some(3)
        );
        assert_eq!(
            line_of(
                text,
                "proxy web: bandwidth limit mode should be client or server"
            ),
            Some(13)
        );
        assert_eq!(
            line_of(
                text,
                "proxy web: subdomain and custom domains should not be both empty"
            ),
            Some(11)
        );
        assert_eq!(
            line_of(
                text,
                "proxy [a]: proxy type \"xtcp\" (key proxies[0].type) is not supported"
            ),
            Some(7)
        );
        assert_eq!(line_of(text, "something else"), None);
    }

    #[test]
    fn yaml_and_json_entries() {
        let yaml = "proxies:\n  - name: web\n    type: http\n";
        assert_eq!(
            line_of(
                yaml,
                "proxy web: subdomain and custom domains should not be both empty"
            ),
            Some(2)
        );
        let json = "{\n \"transport\": {\n  \"protocol\": \"x\"\n }\n}";
        assert_eq!(
            line_of(json, "invalid transport.protocol, optional"),
            Some(3)
        );
    }
}
