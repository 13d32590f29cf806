//! The gateway's host key (`privateKeyFile`, or one kept at `autoGenPrivateKeyPath`) and the
//! users' keys (`authorizedKeysFile`), as frp reads them.

use std::io::Write;
use std::path::Path;

use russh::keys::{Algorithm, PrivateKey, PublicKey};

use crate::config::SshTunnelGateway;

/// The host key: `privateKeyFile` when set (it must exist), otherwise the one at
/// `autoGenPrivateKeyPath`, generated and written there (mode 0600) when the file is missing
/// or empty. frp generates RSA keys; we generate Ed25519 ones. Both read either: PEM PKCS#1
/// ("RSA PRIVATE KEY", frp's), PKCS#8 and OpenSSH formats.
pub(super) fn host_key(cfg: &SshTunnelGateway) -> Result<PrivateKey, String> {
    let text = if !cfg.private_key_file.is_empty() {
        read(&cfg.private_key_file)?
    } else {
        let path = &cfg.auto_gen_private_key_path;
        let existing = if path.is_empty() {
            String::new()
        } else {
            // frp ignores a read error here (the file is made anew).
            std::fs::read_to_string(path).unwrap_or_default()
        };
        if existing.is_empty() {
            let generated = generate()?;
            if !path.is_empty() {
                write_private(path, &generated)?;
            }
            generated
        } else {
            existing
        }
    };
    russh::keys::decode_secret_key(&text, None).map_err(|e| format!("parse private key: {e}"))
}

fn read(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("open {path}: {}", io_text(&e)))
}

fn io_text(e: &std::io::Error) -> String {
    crate::listen::os_error_text(e)
}

fn generate() -> Result<String, String> {
    let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
        .map_err(|e| format!("generate private key: {e}"))?;
    key.to_openssh(russh::keys::ssh_key::LineEnding::LF)
        .map(|s| s.to_string())
        .map_err(|e| format!("encode private key: {e}"))
}

/// Writes the key whole or not at all (a file beside it, then a rename): frps processes
/// started together in one directory share the default path, and none may read half a key.
fn write_private(path: &str, text: &str) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = format!("{path}.{}.tmp", std::process::id());
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .and_then(|()| std::fs::rename(&tmp, path));
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("open {path}: {}", io_text(&e))
    })
}

/// The user a key of `authorizedKeysFile` logs in as: the key's comment, trimmed (frp's
/// choice; empty leaves the `-u` flag in charge). `Ok(None)`: the key is not listed. The file
/// is read at each attempt, as frp does, so edits apply without a restart.
pub(super) fn authorized_user(path: &Path, key: &PublicKey) -> Result<Option<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("open {}: {}", path.display(), io_text(&e)))?;
    for entry in russh::keys::ssh_key::AuthorizedKeys::new(&text) {
        let entry = entry.map_err(|e| format!("parse {}: {e}", path.display()))?;
        let listed = entry.public_key();
        if listed.key_data() == key.key_data() {
            return Ok(Some(listed.comment().as_str_lossy().trim().to_string()));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway(dir: &Path) -> SshTunnelGateway {
        SshTunnelGateway {
            bind_port: 0,
            private_key_file: String::new(),
            auto_gen_private_key_path: dir.join("key").to_string_lossy().into_owned(),
            authorized_keys_file: String::new(),
        }
    }

    fn tempdir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("frp-ssh-keys-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// The generated key is kept (0600) and reused: the host key survives a restart.
    #[test]
    fn autogen_key_is_written_once_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempdir("autogen");
        let cfg = gateway(&dir);
        let first = host_key(&cfg).unwrap();
        let mode = std::fs::metadata(dir.join("key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let second = host_key(&cfg).unwrap();
        assert_eq!(
            first.public_key().key_data(),
            second.public_key().key_data()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn missing_or_bad_private_key_file_is_an_error() {
        let dir = tempdir("bad");
        let mut cfg = gateway(&dir);
        cfg.private_key_file = dir.join("nope").to_string_lossy().into_owned();
        let e = host_key(&cfg).unwrap_err();
        assert!(e.contains("no such file or directory"), "{e}");
        std::fs::write(dir.join("garbage"), "not a key\n").unwrap();
        cfg.private_key_file = dir.join("garbage").to_string_lossy().into_owned();
        let e = host_key(&cfg).unwrap_err();
        assert!(e.starts_with("parse private key"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn authorized_keys_map_keys_to_their_comment() {
        let dir = tempdir("authz");
        let a = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
        let b = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
        let line = a.public_key().to_openssh().unwrap();
        let path = dir.join("authorized_keys");
        std::fs::write(&path, format!("# comment line\n\n{line}  alice \n")).unwrap();
        assert_eq!(
            authorized_user(&path, a.public_key()).unwrap(),
            Some("alice".to_string())
        );
        assert_eq!(authorized_user(&path, b.public_key()).unwrap(), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
