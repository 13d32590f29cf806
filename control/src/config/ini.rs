//! An INI reader that behaves like the `gopkg.in/ini.v1` options frp's legacy loader uses
//! (`IgnoreInlineComment`, `AllowBooleanKeys`, case-sensitive names).
//!
//! Why not a crate: `rust-ini` (the maintained Rust INI crate) differs from go-ini exactly
//! where old frp files need it to agree. It rejects `# …` after a section header, reads an
//! indented `# comment` line as a key, joins a bare key line with the next line, strips
//! quotes in the middle of values, and keeps no line numbers for keys. This reader follows
//! go-ini's parser line by line instead:
//! - a line whose first non-blank character is `#` or `;` is a comment; `#`/`;` elsewhere
//!   are part of the value (no inline comments);
//! - `[name]` (up to the last `]`) starts or re-opens a section — repeated sections merge,
//!   a repeated key keeps its first position and takes the last value;
//! - `key = value` or `key: value` (first `=` or `:`); a line with neither is a boolean key
//!   (`true`) when allowed, an error otherwise;
//! - values are trimmed; `"…"` / `'…'` around the whole value are removed; a trailing `\`
//!   continues the value on the next line; `"""…"""` and `` `…` `` may span lines;
//! - keys before any section belong to `DEFAULT`;
//! - a key missing from section `a.b` is looked up in section `a` (go-ini's child sections).

use std::fmt;

/// go-ini's name for the section of keys that come before any `[section]`.
pub(crate) const DEFAULT_SECTION: &str = "DEFAULT";

/// A syntax error: the 1-based line and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IniError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for IniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// One key: its value and the 1-based line that last set it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IniKey {
    pub name: String,
    pub value: String,
    pub line: usize,
}

/// One section, repeated headers merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IniSection {
    pub name: String,
    /// 1-based line of the (first) header; 0 for `DEFAULT` without one.
    pub line: usize,
    pub keys: Vec<IniKey>,
}

impl IniSection {
    fn new(name: &str, line: usize) -> Self {
        Self {
            name: name.to_owned(),
            line,
            keys: Vec::new(),
        }
    }

    /// The key of this section only (go-ini's `KeysHash`).
    pub fn own(&self, name: &str) -> Option<&IniKey> {
        self.keys.iter().find(|k| k.name == name)
    }

    /// Sets a key as go-ini's `NewKey` does: a new key goes last, an existing one keeps its
    /// place and takes the value.
    pub fn set(&mut self, name: &str, value: &str, line: usize) {
        match self.keys.iter_mut().find(|k| k.name == name) {
            Some(k) => {
                k.value = value.to_owned();
                k.line = line;
            }
            None => self.keys.push(IniKey {
                name: name.to_owned(),
                value: value.to_owned(),
                line,
            }),
        }
    }

    /// Keys starting with `prefix`, in file order, with the prefix removed.
    pub fn with_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a IniKey)> {
        self.keys
            .iter()
            .filter_map(move |k| k.name.strip_prefix(prefix).map(|rest| (rest, k)))
    }
}

/// A parsed file: sections in order of first appearance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct IniFile {
    pub sections: Vec<IniSection>,
}

impl IniFile {
    pub fn section(&self, name: &str) -> Option<&IniSection> {
        self.sections.iter().find(|s| s.name == name)
    }

    /// go-ini's `NewSection`: the existing section of that name, or a new one appended.
    pub fn section_mut_or_new(&mut self, name: &str, line: usize) -> &mut IniSection {
        let at = match self.sections.iter().position(|s| s.name == name) {
            Some(at) => at,
            None => {
                self.sections.push(IniSection::new(name, line));
                self.sections.len() - 1
            }
        };
        &mut self.sections[at]
    }

    /// go-ini's `Section.GetKey`: the section's own key, else that of its nearest parent
    /// section (`a.b.c` → `a.b` → `a`; a leading `.` reaches `DEFAULT`).
    pub fn get<'a>(&'a self, section: &'a IniSection, key: &str) -> Option<&'a IniKey> {
        if let Some(k) = section.own(key) {
            return Some(k);
        }
        let mut name = section.name.as_str();
        while let Some(i) = name.rfind('.') {
            name = &name[..i];
            let parent = if name.is_empty() {
                DEFAULT_SECTION
            } else {
                name
            };
            if let Some(sec) = self.section(parent) {
                return self.get(sec, key);
            }
        }
        None
    }

    /// Parses `text`. `allow_boolean_keys`: frp's loader allows them; its format detection
    /// (`DetectLegacyINIFormat`, default options) does not.
    pub fn parse(text: &str, allow_boolean_keys: bool) -> Result<IniFile, IniError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let lines: Vec<&str> = text.split('\n').collect();
        let mut file = IniFile::default();
        let mut current = DEFAULT_SECTION.to_owned();
        let mut i = 0;
        while i < lines.len() {
            let lineno = i + 1;
            let line = lines[i].trim_start();
            i += 1;
            if line.trim_end().is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            let err = |message: String| IniError {
                line: lineno,
                message,
            };
            if line.starts_with('[') {
                let Some(close) = line.rfind(']') else {
                    return Err(err(format!("unclosed section: {}", line.trim_end())));
                };
                let name = &line[1..close];
                if name.is_empty() {
                    return Err(err("empty section name".into()));
                }
                file.section_mut_or_new(name, lineno);
                current = name.to_owned();
                continue;
            }
            let (name, value) = match read_key_name(line) {
                Ok((name, offset)) => {
                    let value = read_value(&line[offset..], &lines, &mut i).map_err(err)?;
                    (name, value)
                }
                Err(KeyError::NoDelimiter) if allow_boolean_keys => {
                    let name = read_value(line, &lines, &mut i).map_err(err)?;
                    (name, "true".to_owned())
                }
                Err(KeyError::NoDelimiter) => {
                    return Err(err(format!(
                        "key-value delimiter not found: {}",
                        line.trim_end()
                    )));
                }
                Err(KeyError::Empty) => {
                    return Err(err(format!("empty key name: {}", line.trim_end())));
                }
                Err(KeyError::Quote) => {
                    return Err(err(format!(
                        "missing closing key quote: {}",
                        line.trim_end()
                    )));
                }
            };
            file.section_mut_or_new(&current, lineno)
                .set(&name, &value, lineno);
        }
        Ok(file)
    }
}

enum KeyError {
    NoDelimiter,
    Empty,
    Quote,
}

/// go-ini's `readKeyName` with delimiters `=:`: the key and where its value starts.
fn read_key_name(line: &str) -> Result<(String, usize), KeyError> {
    let quote = if line.starts_with("\"\"\"") && line.len() > 6 {
        "\"\"\""
    } else if line.starts_with('"') {
        "\""
    } else if line.starts_with('`') {
        "`"
    } else {
        ""
    };
    if !quote.is_empty() {
        let start = quote.len();
        let pos = line[start..].find(quote).ok_or(KeyError::Quote)? + start;
        let after = pos + quote.len();
        let delim = line[after..]
            .find(['=', ':'])
            .ok_or(KeyError::NoDelimiter)?;
        return Ok((line[start..pos].trim().to_owned(), after + delim + 1));
    }
    match line.find(['=', ':']) {
        None => Err(KeyError::NoDelimiter),
        Some(0) => Err(KeyError::Empty),
        Some(at) => Ok((line[..at].trim().to_owned(), at + 1)),
    }
}

/// go-ini's `readValue` (no inline comments): `next` is the index of the line after the
/// current one and moves past continuation lines.
fn read_value(input: &str, lines: &[&str], next: &mut usize) -> Result<String, String> {
    let line = input.trim_start();
    if line.is_empty() {
        return Ok(String::new());
    }
    let quote = if line.len() > 3 && line.starts_with("\"\"\"") {
        "\"\"\""
    } else if line.starts_with('`') {
        "`"
    } else {
        ""
    };
    if !quote.is_empty() {
        let rest = &line[quote.len()..];
        if let Some(pos) = rest.rfind(quote) {
            return Ok(rest[..pos].to_owned());
        }
        // Spans lines: everything (line breaks included) up to the last quote of the
        // first line that has one.
        let mut val = format!("{rest}\n");
        while *next < lines.len() {
            let l = lines[*next];
            *next += 1;
            if let Some(pos) = l.rfind(quote) {
                val.push_str(&l[..pos]);
                return Ok(val);
            }
            val.push_str(l);
            val.push('\n');
        }
        return Err(format!(
            "missing closing key quote from {:?}",
            line.trim_end()
        ));
    }
    let line = line.trim();
    if let Some(head) = line.strip_suffix('\\') {
        // Continuation: append the following trimmed lines while they end with `\`.
        let mut val = head.to_owned();
        while *next < lines.len() {
            let l = lines[*next].trim();
            *next += 1;
            if l.is_empty() {
                break;
            }
            val.push_str(l);
            match val.strip_suffix('\\') {
                Some(v) => val.truncate(v.len()),
                None => break,
            }
        }
        return Ok(val);
    }
    for q in ['\'', '"'] {
        if surrounded(line, q) {
            return Ok(line[1..line.len() - 1].to_owned());
        }
    }
    Ok(line.to_owned())
}

/// go-ini's `hasSurroundedQuote`: quoted at both ends and nowhere else.
fn surrounded(s: &str, q: char) -> bool {
    s.len() >= 2 && s.starts_with(q) && s.ends_with(q) && s[1..s.len() - 1].find(q).is_none()
}

/// go-ini's `Key.Bool` (strconv-like, plus yes/no/on/off); `None` when invalid.
pub(crate) fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" | "YES" | "yes" | "Yes" | "y" | "ON" | "on"
        | "On" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" | "NO" | "no" | "No" | "n" | "OFF"
        | "off" | "Off" => Some(false),
        _ => None,
    }
}

/// Go's `strconv.ParseInt(s, 0, 64)`: optional sign, `0x`/`0o`/`0b` prefixes, a leading `0`
/// means octal, `_` allowed between digits (Go's integer literal syntax).
pub(crate) fn parse_go_int(s: &str) -> Option<i64> {
    let (neg, body) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if !underscore_ok(body) {
        return None;
    }
    let lower = body.replace('_', "").to_ascii_lowercase();
    let (radix, digits) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, &lower[1..])
    } else {
        (10, lower.as_str())
    };
    if digits.is_empty() || digits.starts_with(['+', '-']) {
        return None;
    }
    let mag = i128::from_str_radix(digits, radix).ok()?;
    i64::try_from(if neg { -mag } else { mag }).ok()
}

/// Go's `underscoreOK`: every `_` sits between digits (a base prefix counts as a digit).
fn underscore_ok(s: &str) -> bool {
    let b = s.as_bytes();
    let mut saw = b'^';
    let mut i = 0;
    let mut hex = false;
    if b.len() >= 2 && b[0] == b'0' && matches!(b[1].to_ascii_lowercase(), b'b' | b'o' | b'x') {
        i = 2;
        saw = b'0';
        hex = b[1].eq_ignore_ascii_case(&b'x');
    }
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_digit() || hex && c.is_ascii_hexdigit() {
            saw = b'0';
        } else if c == b'_' {
            if saw != b'0' {
                return false;
            }
            saw = b'_';
        } else if saw == b'_' {
            return false;
        } else {
            saw = b'!';
        }
        i += 1;
    }
    saw != b'_'
}

/// go-ini's `Key.Strings(",")`: split on commas (`\,` keeps one), each part trimmed, an
/// empty value gives no items and a trailing empty part is dropped.
pub(crate) fn split_list(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.is_empty() {
        return out;
    }
    let mut buf = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    if n != '\\' && n != ',' {
                        buf.push('\\');
                    }
                    buf.push(n);
                }
            }
            ',' => {
                out.push(buf.trim().to_owned());
                buf.clear();
            }
            c => buf.push(c),
        }
    }
    if !buf.is_empty() {
        out.push(buf.trim().to_owned());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> IniFile {
        IniFile::parse(text, true).unwrap_or_else(|e| panic!("{e}"))
    }

    fn value<'a>(f: &'a IniFile, sec: &str, key: &str) -> Option<&'a str> {
        f.section(sec)
            .and_then(|s| f.get(s, key))
            .map(|k| k.value.as_str())
    }

    #[test]
    fn comments_and_values_like_go_ini() {
        let f = parse(
            "\u{feff}top = 1\n[common] # not a key\n  # indented comment\n; semicolon\nserver_addr = 1.2.3.4   \ntoken = abc # kept, no inline comments\nquoted = \"a b\"\nsingle = 'x'\nmixed = \"a\" b\ncolon: v\nflag\nempty =\n",
        );
        assert_eq!(value(&f, DEFAULT_SECTION, "top"), Some("1"));
        assert_eq!(value(&f, "common", "server_addr"), Some("1.2.3.4"));
        assert_eq!(
            value(&f, "common", "token"),
            Some("abc # kept, no inline comments")
        );
        assert_eq!(value(&f, "common", "quoted"), Some("a b"));
        assert_eq!(value(&f, "common", "single"), Some("x"));
        assert_eq!(value(&f, "common", "mixed"), Some("\"a\" b"));
        assert_eq!(value(&f, "common", "colon"), Some("v"));
        assert_eq!(value(&f, "common", "flag"), Some("true"));
        assert_eq!(value(&f, "common", "empty"), Some(""));
        assert_eq!(f.section("common").unwrap().keys.len(), 8);
        assert_eq!(f.section("common").unwrap().own("token").unwrap().line, 6);
    }

    #[test]
    fn sections_merge_and_keys_override() {
        let f = parse("[a]\nx = 1\ny = 2\n[b]\nz = 3\n[a]\nx = 9\n");
        let names: Vec<&str> = f.sections.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        let a = f.section("a").unwrap();
        assert_eq!(
            a.keys
                .iter()
                .map(|k| (k.name.as_str(), k.value.as_str()))
                .collect::<Vec<_>>(),
            [("x", "9"), ("y", "2")]
        );
        assert_eq!(a.own("x").unwrap().line, 7);
    }

    #[test]
    fn child_sections_inherit_parent_keys() {
        let f = parse("[web]\nlocal_port = 80\n[web.b]\ntype = http\n[other]\n");
        assert_eq!(value(&f, "web.b", "local_port"), Some("80"));
        assert_eq!(value(&f, "other", "local_port"), None);
    }

    #[test]
    fn continuation_and_multiline() {
        let f = parse("[s]\na = one \\\n  two \\\n three\nb = \"\"\"x\ny\"\"\"\nc = after\n");
        assert_eq!(value(&f, "s", "a"), Some("one two three"));
        assert_eq!(value(&f, "s", "b"), Some("x\ny"));
        assert_eq!(value(&f, "s", "c"), Some("after"));
    }

    #[test]
    fn syntax_errors_have_lines() {
        let e = IniFile::parse("[common]\nx = 1\n[broken\n", true).unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.message.contains("unclosed section"), "{e}");
        let e = IniFile::parse("[common]\n= 1\n", true).unwrap_err();
        assert_eq!(e.line, 2);
        // Detection mode rejects boolean keys (TOML arrays split over lines).
        assert!(IniFile::parse("[common]\nx = [\n  1,\n]\n", false).is_err());
        assert!(IniFile::parse("[common]\nflag\n", true).is_ok());
    }

    #[test]
    fn go_ints_and_bools() {
        assert_eq!(parse_go_int("7000"), Some(7000));
        assert_eq!(parse_go_int("-1"), Some(-1));
        assert_eq!(parse_go_int("0x1F"), Some(31));
        assert_eq!(parse_go_int("010"), Some(8));
        assert_eq!(parse_go_int("0"), Some(0));
        assert_eq!(parse_go_int("1_000"), Some(1000));
        assert_eq!(parse_go_int("1__0"), None);
        assert_eq!(parse_go_int("_1"), None);
        assert_eq!(parse_go_int("0x1_0"), Some(16));
        assert_eq!(parse_go_int("08080"), None);
        assert_eq!(parse_go_int("12ab"), None);
        assert_eq!(parse_go_int(""), None);
        assert_eq!(parse_bool("on"), Some(true));
        assert_eq!(parse_bool("No"), Some(false));
        assert_eq!(parse_bool("maybe"), None);
    }

    #[test]
    fn lists_split_like_go_ini() {
        assert_eq!(split_list("a, b ,c"), ["a", "b", "c"]);
        assert_eq!(split_list("a,,b,"), ["a", "", "b"]);
        assert_eq!(split_list(r"a\,b,c"), ["a,b", "c"]);
        assert!(split_list("").is_empty());
    }
}
