//! The command an ssh user gives the gateway (`ssh … v0@frps tcp --remote-port 6000`): frp's
//! quick-proxy syntax in "ssh mode" — the proxy type, then cobra/pflag flags (`--a-b`, `--a_b`,
//! `-x v`, `-x=v`, `--a=v`; repeated list flags add up; words that are not flags are
//! ignored). Parsed with clap; errors and `--help` read as pflag/cobra word them, since they
//! are printed to the user's ssh session.

use std::collections::BTreeMap;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Arg, ArgAction, Command};
use rand::RngExt;

use crate::config::{ProxyConfig, ProxyType};

/// The proxy types the gateway serves, in frp's order (its error message lists them).
const TYPES: [&str; 5] = ["tcp", "http", "https", "tcpmux", "stcp"];

/// What one ssh session asks for.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Request {
    /// Named `sshtunnel-{type}-{8 hex digits}` when `-n` is not given.
    pub proxy: ProxyConfig,
    /// `-u`.
    pub user: String,
    /// `--client-id`.
    pub client_id: String,
    /// `-t`.
    pub token: String,
}

/// The command did not ask for a proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Refusal {
    /// `-h`/`--help`: the usage text.
    Help(String),
    /// A bad command, worded as frp words it.
    Error(String),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Str,
    Int,
    /// pflag `StringSlice`: comma-separated (CSV), repeatable.
    Strings,
    /// pflag `StringToString`: `k=v,k2=v2`, repeatable.
    Map,
}

impl Kind {
    /// pflag's name of the value type in the usage text.
    fn type_name(self) -> &'static str {
        match self {
            Kind::Str => "string",
            Kind::Int => "int",
            Kind::Strings => "strings",
            Kind::Map => "stringToString",
        }
    }
}

struct Flag {
    /// pflag's normalized name (`_` spelled `-`).
    name: &'static str,
    short: Option<char>,
    kind: Kind,
    usage: &'static str,
}

const fn flag(name: &'static str, short: Option<char>, kind: Kind, usage: &'static str) -> Flag {
    Flag {
        name,
        short,
        kind,
        usage,
    }
}

/// frp's `RegisterProxyFlags` and `RegisterClientCommonConfigFlags` in ssh mode: no local
/// address, encryption, bandwidth or server connection flags.
fn flags(t: ProxyType) -> Vec<Flag> {
    use Kind::*;
    let mut f = vec![
        flag("proxy-name", Some('n'), Str, "proxy name"),
        flag(
            "metadatas",
            None,
            Map,
            "metadata key-value pairs (e.g., key1=value1,key2=value2)",
        ),
        flag(
            "annotations",
            None,
            Map,
            "annotation key-value pairs (e.g., key1=value1,key2=value2)",
        ),
    ];
    let domains = || {
        [
            flag("custom-domain", Some('d'), Strings, "custom domains"),
            flag("sd", None, Str, "sub domain"),
        ]
    };
    match t {
        ProxyType::Tcp => f.push(flag("remote-port", Some('r'), Int, "remote port")),
        ProxyType::Http => {
            f.extend(domains());
            f.extend([
                flag("locations", None, Strings, "locations"),
                flag("http-user", None, Str, "http auth user"),
                flag("http-pwd", None, Str, "http auth password"),
                flag("host-header-rewrite", None, Str, "host header rewrite"),
            ]);
        }
        ProxyType::Https => f.extend(domains()),
        ProxyType::Tcpmux => {
            f.extend(domains());
            f.extend([
                flag("mux", None, Str, "multiplexer"),
                flag("http-user", None, Str, "http auth user"),
                flag("http-pwd", None, Str, "http auth password"),
            ]);
        }
        ProxyType::Stcp => f.extend([
            flag("sk", None, Str, "secret key"),
            flag("allow-users", None, Strings, "allow visitor users"),
        ]),
        _ => {}
    }
    f.extend([
        flag("user", Some('u'), Str, "user"),
        flag(
            "client-id",
            None,
            Str,
            "unique identifier for this frpc instance",
        ),
        flag("token", Some('t'), Str, "auth token"),
    ]);
    f
}

/// Parses the command of an ssh session (frp splits it at single spaces, no shell quoting).
pub(super) fn parse(payload: &str) -> Result<Request, Refusal> {
    let args: Vec<&str> = payload.split(' ').collect();
    let type_name = args[0].trim();
    let proxy_type = match ProxyType::parse(type_name) {
        Some(t) if TYPES.contains(&type_name) => t,
        _ => {
            return Err(Refusal::Error(format!(
                "invalid proxy type: {type_name}, support types: [{}]",
                TYPES.join(" ")
            )));
        }
    };
    let specs = flags(proxy_type);
    let matches = command(&specs)
        .try_get_matches_from(&args)
        .map_err(|e| Refusal::Error(pflag_error(&e, &args)))?;
    if matches.get_flag("help") {
        return Err(Refusal::Help(usage(&specs)));
    }
    // Values by flag, in the order given.
    let values = |name: &str| -> Vec<String> {
        matches
            .get_many::<String>(name)
            .map(|v| v.cloned().collect())
            .unwrap_or_default()
    };
    let last = |name: &str| values(name).pop().unwrap_or_default();
    let mut p = ProxyConfig::new(String::new(), proxy_type);
    let mut req = Request {
        proxy: ProxyConfig::new(String::new(), proxy_type),
        user: String::new(),
        client_id: String::new(),
        token: String::new(),
    };
    for spec in &specs {
        let given = values(spec.name);
        if given.is_empty() {
            continue;
        }
        let bad = |value: &str, why: String| {
            let shown = match spec.short {
                Some(c) => format!("-{c}, --{}", spec.name),
                None => format!("--{}", spec.name),
            };
            Refusal::Error(format!(
                "invalid argument \"{value}\" for \"{shown}\" flag: {why}"
            ))
        };
        match spec.kind {
            Kind::Str => {
                let v = last(spec.name);
                match spec.name {
                    "proxy-name" => p.name = v,
                    "sd" => p.subdomain = v,
                    "http-user" => p.http_user = v,
                    "http-pwd" => p.http_password = v,
                    "host-header-rewrite" => p.host_header_rewrite = v,
                    "mux" => p.multiplexer = v,
                    "sk" => p.secret_key = v,
                    "user" => req.user = v,
                    "client-id" => req.client_id = v,
                    "token" => req.token = v,
                    _ => {}
                }
            }
            Kind::Int => {
                for v in &given {
                    let n = go_parse_int(v).map_err(|why| bad(v, why))?;
                    // Our proxies carry ports as u16; frps would refuse the port anyway.
                    let port = u16::try_from(n)
                        .map_err(|_| bad(v, format!("port {n} out of range [0, 65535]")))?;
                    p.remote_port = port;
                }
            }
            Kind::Strings => {
                let mut all = Vec::new();
                for v in &given {
                    all.extend(csv_fields(v).map_err(|why| bad(v, why))?);
                }
                match spec.name {
                    "custom-domain" => p.custom_domains = all,
                    "locations" => p.locations = all,
                    "allow-users" => p.allow_users = all,
                    _ => {}
                }
            }
            Kind::Map => {
                let mut all = BTreeMap::new();
                for v in &given {
                    all.extend(string_to_string(v).map_err(|why| bad(v, why))?);
                }
                match spec.name {
                    "metadatas" => p.metadatas = all,
                    "annotations" => p.annotations = all,
                    _ => {}
                }
            }
        }
    }
    if p.name.is_empty() {
        let id: u32 = rand::rng().random();
        p.name = format!("sshtunnel-{type_name}-{id:08x}");
    }
    req.proxy = p;
    Ok(req)
}

fn command(specs: &[Flag]) -> Command {
    let mut cmd = Command::new("ssh")
        .no_binary_name(true)
        .disable_help_flag(true)
        .disable_version_flag(true)
        .arg(
            Arg::new("help")
                .short('h')
                .long("help")
                .action(ArgAction::SetTrue),
        )
        // The proxy type and any other word that is not a flag.
        .arg(Arg::new("words").num_args(0..).action(ArgAction::Append));
    for spec in specs {
        let mut a = Arg::new(spec.name)
            .long(spec.name)
            .num_args(1)
            .allow_hyphen_values(true)
            .action(ArgAction::Append);
        if spec.name.contains('-') {
            a = a.alias(spec.name.replace('-', "_"));
        }
        if let Some(c) = spec.short {
            a = a.short(c);
        }
        cmd = cmd.arg(a);
    }
    cmd
}

/// pflag's words for a flag it cannot parse.
fn pflag_error(e: &clap::Error, args: &[&str]) -> String {
    let context = |k: ContextKind| match e.get(k) {
        Some(ContextValue::String(s)) => s.clone(),
        _ => String::new(),
    };
    match e.kind() {
        ErrorKind::UnknownArgument => {
            let arg = context(ContextKind::InvalidArg);
            if let Some(long) = arg.strip_prefix("--") {
                let name = long.split('=').next().unwrap_or_default();
                format!("unknown flag: --{name}")
            } else {
                let shorts = arg.trim_start_matches('-');
                let c = shorts.chars().next().unwrap_or('-');
                format!("unknown shorthand flag: '{c}' in -{shorts}")
            }
        }
        // A value is missing only after the last word.
        ErrorKind::InvalidValue | ErrorKind::WrongNumberOfValues
            if context(ContextKind::InvalidValue).is_empty() =>
        {
            let last = args.last().copied().unwrap_or_default();
            match last.strip_prefix("--") {
                Some(_) => format!("flag needs an argument: {last}"),
                None => {
                    let c = last.chars().last().unwrap_or('-');
                    format!("flag needs an argument: '{c}' in {last}")
                }
            }
        }
        _ => e
            .to_string()
            .lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches("error: ")
            .to_string(),
    }
}

/// Go's `strconv.ParseInt(s, 0, 64)`, with its error text.
fn go_parse_int(s: &str) -> Result<i64, String> {
    let syntax = || format!("strconv.ParseInt: parsing \"{s}\": invalid syntax");
    let range = || format!("strconv.ParseInt: parsing \"{s}\": value out of range");
    let (neg, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let lower = body.to_ascii_lowercase();
    let (radix, digits, prefixed) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d.to_string(), true)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d.to_string(), true)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d.to_string(), true)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, lower[1..].to_string(), true)
    } else {
        (10, lower.clone(), false)
    };
    // Underscores only between digits, and only with a base prefix.
    let digits = if prefixed && digits.contains('_') {
        if digits.starts_with('_') || digits.ends_with('_') || digits.contains("__") {
            return Err(syntax());
        }
        digits.replace('_', "")
    } else {
        digits
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(syntax());
    }
    let magnitude = u128::from_str_radix(&digits, radix).map_err(|_| range())?;
    let value = if neg {
        -(i128::try_from(magnitude).map_err(|_| range())?)
    } else {
        i128::try_from(magnitude).map_err(|_| range())?
    };
    i64::try_from(value).map_err(|_| range())
}

/// The fields of one CSV record (Go's `encoding/csv`, as pflag's list flags read a value):
/// comma-separated, a field may be quoted with `"` (`""` inside for a quote). Empty input:
/// no fields.
fn csv_fields(s: &str) -> Result<Vec<String>, String> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    let mut fields = Vec::new();
    let mut chars = s.chars().peekable();
    let mut column = 0usize;
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            column += 1;
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        column += 2;
                        field.push('"');
                    }
                    Some('"') => {
                        column += 1;
                        break;
                    }
                    Some(c) => {
                        column += 1;
                        field.push(c);
                    }
                    None => {
                        return Err(format!(
                            "parse error on line 1, column {}: extraneous or missing \" in quoted-field",
                            column + 1
                        ));
                    }
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => column += 1,
                Some(_) => {
                    return Err(format!(
                        "parse error on line 1, column {}: extraneous or missing \" in quoted-field",
                        column + 1
                    ));
                }
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => {
                        column += 1;
                        break;
                    }
                    Some('"') => {
                        return Err(format!(
                            "parse error on line 1, column {}: bare \" in non-quoted-field",
                            column + 1
                        ));
                    }
                    Some(c) => {
                        column += 1;
                        field.push(c);
                    }
                }
            }
        }
        fields.push(field);
    }
}

/// pflag's `StringToString` value: `k=v` (surrounding quotes trimmed) or several as CSV.
fn string_to_string(s: &str) -> Result<BTreeMap<String, String>, String> {
    let pairs = match s.matches('=').count() {
        0 => return Err(format!("{s} must be formatted as key=value")),
        1 => vec![s.trim_matches('"').to_string()],
        _ => csv_fields(s)?,
    };
    let mut out = BTreeMap::new();
    for pair in pairs {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(format!("{pair} must be formatted as key=value"));
        };
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// cobra's usage text for the command (what frp prints for `-h`): flags sorted by name, the
/// descriptions aligned as pflag aligns them.
fn usage(specs: &[Flag]) -> String {
    let mut sorted: Vec<&Flag> = specs.iter().collect();
    sorted.sort_by_key(|f| f.name);
    let lines: Vec<(String, String)> = sorted
        .iter()
        .map(|f| {
            let head = match f.short {
                Some(c) => format!("  -{c}, --{} {}", f.name, f.kind.type_name()),
                None => format!("      --{} {}", f.name, f.kind.type_name()),
            };
            let mut usage = f.usage.to_string();
            if f.kind == Kind::Map {
                usage.push_str(" (default [])");
            }
            (head, usage)
        })
        .collect();
    let width = lines.iter().map(|(h, _)| h.len()).max().unwrap_or(0);
    let mut out = String::from("Usage:\n  ssh v0@{address} [command] [flags]\n\nFlags:\n");
    for (head, usage) in lines {
        out.push_str(&format!("{head:width$}   {usage}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Request {
        parse(s).unwrap_or_else(|e| panic!("{s}: {e:?}"))
    }

    fn err(s: &str) -> String {
        match parse(s) {
            Err(Refusal::Error(e)) => e,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn the_e2e_commands_parse() {
        let r = ok("tcp --remote-port 6000");
        assert_eq!(r.proxy.proxy_type, ProxyType::Tcp);
        assert_eq!(r.proxy.remote_port, 6000);
        assert!(
            r.proxy.name.starts_with("sshtunnel-tcp-"),
            "{}",
            r.proxy.name
        );
        assert_eq!(r.proxy.name.len(), "sshtunnel-tcp-".len() + 8);

        let r = ok("http --custom-domain test.example.com");
        assert_eq!(r.proxy.custom_domains, ["test.example.com"]);
        let r = ok("tcpmux --mux=httpconnect --custom-domain test.example.com");
        assert_eq!(r.proxy.multiplexer, "httpconnect");
        assert_eq!(r.proxy.custom_domains, ["test.example.com"]);
        // The quotes are CSV quoting, as pflag reads a list flag.
        let r = ok("stcp -n stcp-test --sk=abcdefg --allow-users=\"*\"");
        assert_eq!(r.proxy.name, "stcp-test");
        assert_eq!(r.proxy.secret_key, "abcdefg");
        assert_eq!(r.proxy.allow_users, ["*"]);
    }

    #[test]
    fn pflag_spellings() {
        let r = ok(
            "http -n web --custom_domain a.com,b.com -d c.com --sd x --locations=/a,/b --http_user u --http-pwd p --host_header_rewrite h -u bob -t tok --client_id c1 extra words",
        );
        assert_eq!(r.proxy.name, "web");
        assert_eq!(r.proxy.custom_domains, ["a.com", "b.com", "c.com"]);
        assert_eq!(r.proxy.subdomain, "x");
        assert_eq!(r.proxy.locations, ["/a", "/b"]);
        assert_eq!(
            (r.proxy.http_user.as_str(), r.proxy.http_password.as_str()),
            ("u", "p")
        );
        assert_eq!(r.proxy.host_header_rewrite, "h");
        assert_eq!((r.user.as_str(), r.token.as_str()), ("bob", "tok"));
        assert_eq!(r.client_id, "c1");
        let r = ok("tcp -r=0x10 --metadatas a=1,b=2 --metadatas c=3 --annotations \"k=v\"");
        assert_eq!(r.proxy.remote_port, 16);
        assert_eq!(r.proxy.metadatas.len(), 3);
        assert_eq!(r.proxy.annotations.get("k").map(String::as_str), Some("v"));
        // The last of a repeated scalar flag wins; "-" starts a value after a flag.
        let r = ok("tcp -r 1 -r 2 -n -dash-");
        assert_eq!(r.proxy.remote_port, 2);
        assert_eq!(r.proxy.name, "-dash-");
    }

    #[test]
    fn frp_errors() {
        assert_eq!(
            err("udp -r 1"),
            "invalid proxy type: udp, support types: [tcp http https tcpmux stcp]"
        );
        assert_eq!(
            err(""),
            "invalid proxy type: , support types: [tcp http https tcpmux stcp]"
        );
        assert_eq!(err("tcp --nope 1"), "unknown flag: --nope");
        assert_eq!(err("tcp --nope=1"), "unknown flag: --nope");
        assert_eq!(err("tcp -x"), "unknown shorthand flag: 'x' in -x");
        // Flags of other types are unknown.
        assert_eq!(err("tcp --sk x"), "unknown flag: --sk");
        assert_eq!(err("tcp -r"), "flag needs an argument: 'r' in -r");
        assert_eq!(
            err("tcp --remote-port"),
            "flag needs an argument: --remote-port"
        );
        assert_eq!(
            err("tcp -r abc"),
            "invalid argument \"abc\" for \"-r, --remote-port\" flag: strconv.ParseInt: parsing \"abc\": invalid syntax"
        );
        assert_eq!(
            err("tcp --metadatas novalue"),
            "invalid argument \"novalue\" for \"--metadatas\" flag: novalue must be formatted as key=value"
        );
        assert_eq!(
            err("stcp --allow-users a\"b"),
            "invalid argument \"a\"b\" for \"--allow-users\" flag: parse error on line 1, column 2: bare \" in non-quoted-field"
        );
    }

    #[test]
    fn help_is_cobra_usage() {
        let Err(Refusal::Help(h)) = parse("tcp -h") else {
            panic!("no help");
        };
        assert_eq!(
            h,
            "Usage:\n  ssh v0@{address} [command] [flags]\n\nFlags:\n\
             \x20     --annotations stringToString   annotation key-value pairs (e.g., key1=value1,key2=value2) (default [])\n\
             \x20     --client-id string             unique identifier for this frpc instance\n\
             \x20     --metadatas stringToString     metadata key-value pairs (e.g., key1=value1,key2=value2) (default [])\n\
             \x20 -n, --proxy-name string            proxy name\n\
             \x20 -r, --remote-port int              remote port\n\
             \x20 -t, --token string                 auth token\n\
             \x20 -u, --user string                  user\n"
        );
        assert!(matches!(parse("stcp --help"), Err(Refusal::Help(_))));
    }

    #[test]
    fn go_ints() {
        assert_eq!(go_parse_int("6000"), Ok(6000));
        assert_eq!(go_parse_int("0x1F"), Ok(31));
        assert_eq!(go_parse_int("017"), Ok(15));
        assert_eq!(go_parse_int("0b1_01"), Ok(5));
        assert_eq!(go_parse_int("-3"), Ok(-3));
        assert!(go_parse_int("1_000").is_err());
        assert!(go_parse_int("").is_err());
        assert!(
            go_parse_int("99999999999999999999")
                .unwrap_err()
                .ends_with("value out of range")
        );
    }
}
