//! `auth.tokenSource` / `auth.oidc.tokenSource`: secrets read from a file or printed by a
//! command (frp's `ValueSource`).
//!
//! As in frp, the value is trimmed of surrounding whitespace. `auth.tokenSource` is resolved
//! once, when frps / frpc start (a missing file stops them); `auth.oidc.tokenSource` is
//! resolved again for every message that carries a token.

use std::process::Command;

use crate::config::{ExecSource, ValueSource};
use crate::listen::os_error_text;

/// Resolves `src` (blocking: reads a file or runs a command and waits for it).
///
/// The error texts are frp's: `failed to read file PATH: open PATH: no such file or
/// directory`, `failed to execute command CMD: exit status 1`, and the validation messages
/// of [`ValueSource::validate`].
pub fn resolve(src: &ValueSource) -> Result<String, String> {
    src.validate()?;
    match (src.source_type.as_str(), &src.file, &src.exec) {
        ("file", Some(f), _) => {
            let content = std::fs::read(&f.path).map_err(|e| {
                format!(
                    "failed to read file {p}: open {p}: {}",
                    os_error_text(&e),
                    p = f.path
                )
            })?;
            Ok(String::from_utf8_lossy(&content).trim().to_owned())
        }
        ("exec", _, Some(e)) => run(e),
        (t, _, _) => Err(format!("unsupported value source type: {t}")),
    }
}

/// [`resolve`] off the async runtime's worker threads.
pub async fn resolve_async(src: &ValueSource) -> Result<String, String> {
    let src = src.clone();
    tokio::task::spawn_blocking(move || resolve(&src))
        .await
        .map_err(|e| format!("resolve value source: {e}"))?
}

fn run(e: &ExecSource) -> Result<String, String> {
    let mut cmd = Command::new(&e.command);
    cmd.args(&e.args)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    for env in &e.env {
        cmd.env(&env.name, &env.value);
    }
    let fail = |why: String| format!("failed to execute command {}: {why}", e.command);
    let out = cmd.output().map_err(|err| {
        // Go's os/exec words: a bare name is looked up in $PATH, a path is started directly.
        if err.kind() == std::io::ErrorKind::NotFound && !e.command.contains('/') {
            fail(format!(
                "exec: \"{}\": executable file not found in $PATH",
                e.command
            ))
        } else {
            fail(format!("fork/exec {}: {}", e.command, os_error_text(&err)))
        }
    })?;
    if !out.status.success() {
        use std::os::unix::process::ExitStatusExt;
        let why = match (out.status.code(), out.status.signal()) {
            (Some(code), _) => format!("exit status {code}"),
            (None, Some(sig)) => format!("signal {sig}"),
            _ => out.status.to_string(),
        };
        return Err(fail(why));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FileSource, NameValue};

    fn file(path: &str) -> ValueSource {
        ValueSource {
            source_type: "file".into(),
            file: Some(FileSource { path: path.into() }),
            exec: None,
        }
    }

    fn exec(command: &str, args: &[&str], env: &[(&str, &str)]) -> ValueSource {
        ValueSource {
            source_type: "exec".into(),
            file: None,
            exec: Some(ExecSource {
                command: command.into(),
                args: args.iter().map(|s| s.to_string()).collect(),
                env: env
                    .iter()
                    .map(|(n, v)| NameValue {
                        name: n.to_string(),
                        value: v.to_string(),
                    })
                    .collect(),
            }),
        }
    }

    #[test]
    fn file_is_read_and_trimmed() {
        let dir = std::env::temp_dir().join(format!("frp-uring-src-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("token");
        std::fs::write(&p, " \n secret-1 \n\n").unwrap();
        assert_eq!(resolve(&file(p.to_str().unwrap())).unwrap(), "secret-1");
        let missing = dir.join("missing");
        let m = missing.to_str().unwrap();
        assert_eq!(
            resolve(&file(m)).unwrap_err(),
            format!("failed to read file {m}: open {m}: no such file or directory")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn exec_output_args_env_and_failures() {
        assert_eq!(
            resolve(&exec(
                "sh",
                &["-c", "printf ' %s-%s \\n' \"$0\" \"$T\"", "a"],
                &[("T", "b")]
            ))
            .unwrap(),
            "a-b"
        );
        assert_eq!(
            resolve(&exec("sh", &["-c", "exit 3"], &[])).unwrap_err(),
            "failed to execute command sh: exit status 3"
        );
        assert_eq!(
            resolve(&exec("no-such-command-frp-uring", &[], &[])).unwrap_err(),
            "failed to execute command no-such-command-frp-uring: exec: \"no-such-command-frp-uring\": executable file not found in $PATH"
        );
        assert_eq!(
            resolve(&exec("/no/such/cmd", &[], &[])).unwrap_err(),
            "failed to execute command /no/such/cmd: fork/exec /no/such/cmd: no such file or directory"
        );
    }

    #[test]
    fn invalid_sources_are_refused() {
        assert_eq!(resolve(&file("")).unwrap_err(), "file path cannot be empty");
        assert_eq!(
            resolve(&exec("", &[], &[])).unwrap_err(),
            "exec command cannot be empty"
        );
        assert_eq!(
            resolve(&exec("true", &[], &[("A=B", "c")])).unwrap_err(),
            "exec env name cannot contain '='"
        );
        assert_eq!(
            resolve(&exec("true", &[], &[("", "c")])).unwrap_err(),
            "exec env name cannot be empty"
        );
    }
}
