//! The subset of Go's `text/template` that frp config files use. frp renders every v1
//! config file (and each `includes` file) as a template whose data is `{ Envs: env }` and
//! whose extra functions are `parseNumberRange` and `parseNumberRangePair`.
//!
//! Supported: `{{ .Envs.NAME }}`, `{{ index .Envs "NAME" }}`, `$`/`$.Envs.NAME`,
//! `{{ range [$i,] $v := parseNumberRange "1000-1002,2000" }}…{{ else }}…{{ end }}` (and
//! `parseNumberRangePair "a" "b"` with `.First` / `.Second`), string and integer literals,
//! `{{- ` / ` -}}` whitespace trimming and `{{/* comments */}}`. Anything else is an error
//! naming the line, never a silent misrender.
//!
//! As in Go, a missing `.Envs.NAME` renders as `<no value>`, and `index .Envs "NAME"` of a
//! missing variable renders as the empty string.

use std::fmt;

/// A template error: the 1-based line of the action and what went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "template: line {}: {}", self.line, self.message)
    }
}

/// Renders `input` with `envs` as `.Envs`.
pub fn render(input: &str, envs: &dyn Fn(&str) -> Option<String>) -> Result<String, TemplateError> {
    if !input.contains("{{") {
        return Ok(input.to_owned());
    }
    let items = lex(input)?;
    let mut pos = 0;
    let nodes = parse_list(&items, &mut pos, None)?;
    let mut out = String::with_capacity(input.len());
    let mut scope = Scope {
        envs,
        vars: vec![("$".to_owned(), Val::Root)],
    };
    exec(&nodes, &Val::Root, &mut scope, &mut out)?;
    Ok(out)
}

fn err<T>(line: usize, message: impl Into<String>) -> Result<T, TemplateError> {
    Err(TemplateError {
        line,
        message: message.into(),
    })
}

// ---- lexing: text and actions ----

enum Item {
    Text(String),
    Action { line: usize, toks: Vec<Tok> },
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// `.A.B` (empty for `.`).
    Field(Vec<String>),
    /// `$name.A.B` (`$` alone is the root).
    Var(String, Vec<String>),
    Str(String),
    Int(i64),
    Declare,
    Comma,
    Other(String),
}

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

fn lex(input: &str) -> Result<Vec<Item>, TemplateError> {
    let mut items = Vec::new();
    let mut rest = input;
    let mut line = 1;
    let mut trim_next = false;
    while let Some(open) = rest.find("{{") {
        let mut text = &rest[..open];
        if trim_next {
            text = text.trim_start_matches(is_space);
        }
        let after = &rest[open + 2..];
        let trim_left = after.starts_with('-') && after[1..].starts_with(is_space);
        if trim_left {
            text = text.trim_end_matches(is_space);
        }
        line += rest[..open].matches('\n').count();
        items.push(Item::Text(text.to_owned()));
        let body_start = if trim_left { 1 } else { 0 };
        let close = find_close(&after[body_start..])
            .ok_or(())
            .or_else(|_| err(line, "unclosed action"))?;
        let mut body = &after[body_start..body_start + close];
        trim_next = body.ends_with('-') && body[..body.len() - 1].ends_with(is_space);
        if trim_next {
            body = &body[..body.len() - 1];
        }
        let action_line = line;
        line += body.matches('\n').count();
        let inner = body.trim_matches(is_space);
        if inner.starts_with("/*") {
            if !inner.ends_with("*/") || inner.len() < 4 {
                return err(action_line, "unclosed comment");
            }
        } else {
            items.push(Item::Action {
                line: action_line,
                toks: tokenize(inner, action_line)?,
            });
        }
        let consumed = open + 2 + body_start + close + 2;
        // `line` already counts the body's newlines; count the trim marker's none.
        rest = &rest[consumed..];
    }
    let text = if trim_next {
        rest.trim_start_matches(is_space)
    } else {
        rest
    };
    items.push(Item::Text(text.to_owned()));
    Ok(items)
}

/// Offset of the `}}` closing an action, skipping quoted strings.
fn find_close(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'`' => {
                i += 1;
                while i < b.len() && b[i] != b'`' {
                    i += 1;
                }
            }
            b'}' if b.get(i + 1) == Some(&b'}') => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn tokenize(s: &str, line: usize) -> Result<Vec<Tok>, TemplateError> {
    let mut toks = Vec::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    let take_ident = |i: &mut usize| -> String {
        let start = *i;
        while *i < chars.len() && is_ident_char(chars[*i]) {
            *i += 1;
        }
        chars[start..*i].iter().collect()
    };
    let take_fields = |i: &mut usize| -> Vec<String> {
        let mut fields = Vec::new();
        while *i < chars.len() && chars[*i] == '.' {
            *i += 1;
            let start = *i;
            while *i < chars.len() && is_ident_char(chars[*i]) {
                *i += 1;
            }
            let f: String = chars[start..*i].iter().collect();
            if !f.is_empty() {
                fields.push(f);
            }
        }
        fields
    };
    while i < chars.len() {
        let c = chars[i];
        if is_space(c) {
            i += 1;
        } else if c == '.' {
            toks.push(Tok::Field(take_fields(&mut i)));
        } else if c == '$' {
            i += 1;
            let name = format!("${}", take_ident(&mut i));
            toks.push(Tok::Var(name, take_fields(&mut i)));
        } else if c == '"' {
            let mut v = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return err(line, "unterminated quoted string"),
                    Some('"') => break,
                    Some('\\') => {
                        i += 1;
                        match chars.get(i) {
                            Some('n') => v.push('\n'),
                            Some('t') => v.push('\t'),
                            Some('\\') => v.push('\\'),
                            Some('"') => v.push('"'),
                            _ => return err(line, "unsupported escape in quoted string"),
                        }
                    }
                    Some(&ch) => v.push(ch),
                }
                i += 1;
            }
            i += 1;
            toks.push(Tok::Str(v));
        } else if c == '`' {
            let start = i + 1;
            let end = chars[start..]
                .iter()
                .position(|&ch| ch == '`')
                .ok_or(())
                .or_else(|_| err(line, "unterminated raw string"))?;
            toks.push(Tok::Str(chars[start..start + end].iter().collect()));
            i = start + end + 1;
        } else if c.is_ascii_digit()
            || (c == '-' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            let start = i;
            i += 1;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            let n: String = chars[start..i].iter().collect();
            let n = n.parse().map_err(|_| TemplateError {
                line,
                message: format!("bad number {n}"),
            })?;
            toks.push(Tok::Int(n));
        } else if c == ':' && chars.get(i + 1) == Some(&'=') {
            toks.push(Tok::Declare);
            i += 2;
        } else if c == ',' {
            toks.push(Tok::Comma);
            i += 1;
        } else if is_ident_char(c) {
            toks.push(Tok::Ident(take_ident(&mut i)));
        } else {
            toks.push(Tok::Other(c.to_string()));
            i += 1;
        }
    }
    Ok(toks)
}

// ---- parsing ----

enum Node {
    Text(String),
    Print {
        line: usize,
        cmd: Vec<Tok>,
    },
    Range {
        line: usize,
        decl: Vec<String>,
        cmd: Vec<Tok>,
        body: Vec<Node>,
        else_body: Vec<Node>,
    },
}

/// Parses nodes until `{{ end }}`/`{{ else }}` (when inside a range) or the end.
fn parse_list(
    items: &[Item],
    pos: &mut usize,
    open_range: Option<usize>,
) -> Result<Vec<Node>, TemplateError> {
    let mut nodes = Vec::new();
    while *pos < items.len() {
        match &items[*pos] {
            Item::Text(t) => {
                nodes.push(Node::Text(t.clone()));
                *pos += 1;
            }
            Item::Action { line, toks } => {
                let line = *line;
                match toks.first() {
                    None => return err(line, "missing value for command"),
                    Some(Tok::Ident(k)) if k == "end" || k == "else" => {
                        if open_range.is_none() {
                            return err(line, format!("unexpected {{{{{k}}}}}"));
                        }
                        return Ok(nodes);
                    }
                    Some(Tok::Ident(k)) if k == "range" => {
                        *pos += 1;
                        let (decl, cmd) = split_decl(&toks[1..], line)?;
                        let body = parse_list(items, pos, Some(line))?;
                        let mut else_body = Vec::new();
                        if is_keyword(items.get(*pos), "else") {
                            *pos += 1;
                            else_body = parse_list(items, pos, Some(line))?;
                        }
                        if !is_keyword(items.get(*pos), "end") {
                            return err(line, "unexpected EOF: range has no {{end}}");
                        }
                        *pos += 1;
                        nodes.push(Node::Range {
                            line,
                            decl,
                            cmd,
                            body,
                            else_body,
                        });
                        continue;
                    }
                    Some(Tok::Ident(k))
                        if matches!(
                            k.as_str(),
                            "if" | "with" | "define" | "template" | "block" | "break" | "continue"
                        ) =>
                    {
                        return err(
                            line,
                            format!(
                                "unsupported template construct {{{{{k} ...}}}} (only .Envs, index, range, parseNumberRange and parseNumberRangePair are supported)"
                            ),
                        );
                    }
                    _ => {
                        nodes.push(Node::Print {
                            line,
                            cmd: toks.clone(),
                        });
                        *pos += 1;
                    }
                }
            }
        }
    }
    if let Some(line) = open_range {
        return err(line, "unexpected EOF: range has no {{end}}");
    }
    Ok(nodes)
}

fn is_keyword(item: Option<&Item>, kw: &str) -> bool {
    matches!(item, Some(Item::Action { toks, .. }) if toks.len() == 1 && toks[0] == Tok::Ident(kw.into()))
}

fn split_decl(toks: &[Tok], line: usize) -> Result<(Vec<String>, Vec<Tok>), TemplateError> {
    let Some(at) = toks.iter().position(|t| *t == Tok::Declare) else {
        return Ok((Vec::new(), toks.to_vec()));
    };
    let mut decl = Vec::new();
    for (i, t) in toks[..at].iter().enumerate() {
        match (i % 2, t) {
            (0, Tok::Var(name, f)) if f.is_empty() && name != "$" => decl.push(name.clone()),
            (1, Tok::Comma) => {}
            _ => return err(line, "bad range variable declaration"),
        }
    }
    if decl.is_empty() || decl.len() > 2 || at % 2 == 0 {
        return err(line, "range can only declare one or two variables");
    }
    Ok((decl, toks[at + 1..].to_vec()))
}

// ---- execution ----

#[derive(Debug, Clone)]
enum Val {
    Root,
    Envs,
    Str(String),
    Int(i64),
    Pair(i64, i64),
    List(Vec<Val>),
    /// Go's `<no value>`: a missing map entry.
    NoValue,
}

struct Scope<'a> {
    envs: &'a dyn Fn(&str) -> Option<String>,
    vars: Vec<(String, Val)>,
}

fn exec(
    nodes: &[Node],
    dot: &Val,
    scope: &mut Scope<'_>,
    out: &mut String,
) -> Result<(), TemplateError> {
    for node in nodes {
        match node {
            Node::Text(t) => out.push_str(t),
            Node::Print { line, cmd } => {
                let v = eval_cmd(cmd, dot, scope, *line)?;
                print(&v, out, *line)?;
            }
            Node::Range {
                line,
                decl,
                cmd,
                body,
                else_body,
            } => {
                let Val::List(elems) = eval_cmd(cmd, dot, scope, *line)? else {
                    return err(*line, "range can't iterate over a non-list value");
                };
                if elems.is_empty() {
                    exec(else_body, dot, scope, out)?;
                }
                for (i, elem) in elems.iter().enumerate() {
                    let mark = scope.vars.len();
                    match decl.as_slice() {
                        [v] => scope.vars.push((v.clone(), elem.clone())),
                        [k, v] => {
                            scope.vars.push((k.clone(), Val::Int(i as i64)));
                            scope.vars.push((v.clone(), elem.clone()));
                        }
                        _ => {}
                    }
                    exec(body, elem, scope, out)?;
                    scope.vars.truncate(mark);
                }
            }
        }
    }
    Ok(())
}

fn print(v: &Val, out: &mut String, line: usize) -> Result<(), TemplateError> {
    match v {
        Val::Str(s) => out.push_str(s),
        Val::Int(n) => out.push_str(&n.to_string()),
        Val::NoValue => out.push_str("<no value>"),
        Val::Pair(a, b) => out.push_str(&format!("{{{a} {b}}}")),
        Val::List(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                print(item, out, line)?;
            }
            out.push(']');
        }
        Val::Root | Val::Envs => return err(line, "printing a whole map is not supported"),
    }
    Ok(())
}

fn eval_cmd(cmd: &[Tok], dot: &Val, scope: &Scope<'_>, line: usize) -> Result<Val, TemplateError> {
    if let Some(Tok::Ident(f)) = cmd.first() {
        let args = cmd[1..]
            .iter()
            .map(|t| eval_term(t, dot, scope, line))
            .collect::<Result<Vec<_>, _>>()?;
        return call(f, &args, scope, line);
    }
    match cmd {
        [t] => eval_term(t, dot, scope, line),
        _ => err(
            line,
            "unsupported template expression (only .Envs, index, range, parseNumberRange and parseNumberRangePair are supported)",
        ),
    }
}

fn eval_term(t: &Tok, dot: &Val, scope: &Scope<'_>, line: usize) -> Result<Val, TemplateError> {
    match t {
        Tok::Field(fields) => fields
            .iter()
            .try_fold(dot.clone(), |v, f| field(v, f, scope, line)),
        Tok::Var(name, fields) => {
            let Some((_, v)) = scope.vars.iter().rev().find(|(n, _)| n == name) else {
                return err(line, format!("undefined variable \"{name}\""));
            };
            fields
                .iter()
                .try_fold(v.clone(), |v, f| field(v, f, scope, line))
        }
        Tok::Str(s) => Ok(Val::Str(s.clone())),
        Tok::Int(n) => Ok(Val::Int(*n)),
        Tok::Ident(f) => err(
            line,
            format!("function \"{f}\" used as an argument is not supported"),
        ),
        Tok::Declare | Tok::Comma | Tok::Other(_) => err(
            line,
            "unsupported template expression (pipelines, parentheses and operators are not supported)",
        ),
    }
}

fn field(v: Val, name: &str, scope: &Scope<'_>, line: usize) -> Result<Val, TemplateError> {
    match (v, name) {
        (Val::Root, "Envs") => Ok(Val::Envs),
        (Val::Envs, key) => Ok((scope.envs)(key).map_or(Val::NoValue, Val::Str)),
        (Val::Pair(a, _), "First") => Ok(Val::Int(a)),
        (Val::Pair(_, b), "Second") => Ok(Val::Int(b)),
        (Val::NoValue, _) => err(line, format!("nil data; no entry for key \"{name}\"")),
        _ => err(line, format!("can't evaluate field {name}")),
    }
}

fn call(f: &str, args: &[Val], scope: &Scope<'_>, line: usize) -> Result<Val, TemplateError> {
    let string_arg = |i: usize| match args.get(i) {
        Some(Val::Str(s)) => Ok(s.as_str()),
        _ => err(line, format!("{f}: argument {} must be a string", i + 1)),
    };
    let want = |n: usize| {
        if args.len() == n {
            Ok(())
        } else {
            err(
                line,
                format!("wrong number of args for {f}: want {n} got {}", args.len()),
            )
        }
    };
    match f {
        "index" => {
            want(2)?;
            match (&args[0], &args[1]) {
                (Val::Envs, Val::Str(k)) => Ok(Val::Str((scope.envs)(k).unwrap_or_default())),
                (Val::List(items), Val::Int(i)) => usize::try_from(*i)
                    .ok()
                    .and_then(|i| items.get(i).cloned())
                    .ok_or(())
                    .or_else(|_| err(line, format!("index out of range: {i}"))),
                _ => err(line, "index: unsupported arguments"),
            }
        }
        "parseNumberRange" => {
            want(1)?;
            let nums = parse_range_numbers(string_arg(0)?).map_err(|m| TemplateError {
                line,
                message: format!("error calling parseNumberRange: {m}"),
            })?;
            Ok(Val::List(nums.into_iter().map(Val::Int).collect()))
        }
        "parseNumberRangePair" => {
            want(2)?;
            let wrap = |m: String| TemplateError {
                line,
                message: format!("error calling parseNumberRangePair: {m}"),
            };
            let a = parse_range_numbers(string_arg(0)?).map_err(wrap)?;
            let b = parse_range_numbers(string_arg(1)?).map_err(wrap)?;
            if a.len() != b.len() {
                return Err(wrap(
                    "first and second range numbers are not in pairs".into(),
                ));
            }
            Ok(Val::List(
                a.into_iter().zip(b).map(|(x, y)| Val::Pair(x, y)).collect(),
            ))
        }
        _ => err(line, format!("function \"{f}\" not defined")),
    }
}

/// frp's `util.ParseRangeNumbers`: "1000-2000,2001,3000-3002" → every number.
pub fn parse_range_numbers(s: &str) -> Result<Vec<i64>, String> {
    let mut out = Vec::new();
    let num = |t: &str| {
        t.trim()
            .parse::<i64>()
            .map_err(|_| format!("range number is invalid, {:?} is not a number", t.trim()))
    };
    for part in s.trim().split(',') {
        let bounds: Vec<&str> = part.split('-').collect();
        match bounds.as_slice() {
            [one] => out.push(num(one)?),
            [lo, hi] => {
                let (lo, hi) = (num(lo)?, num(hi)?);
                if hi < lo {
                    return Err("range number is invalid".into());
                }
                out.extend(lo..=hi);
            }
            _ => return Err("range number is invalid".into()),
        }
    }
    Ok(out)
}
