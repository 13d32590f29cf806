//! `scripts/install.sh` and the systemd units in `packaging/systemd/`: the script installs
//! the built binaries, units and example configs, twice in a row with the same result and
//! without touching an edited config; `systemd-analyze verify` accepts the installed units
//! (skipped where systemd-analyze is missing).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const UNITS: [&str; 4] = [
    "frps.service",
    "frpc.service",
    "frps@.service",
    "frpc@.service",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Small stand-ins for the built binaries (the debug builds are >100 MB each).
fn stub_binaries(root: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = root.join("build");
    std::fs::create_dir_all(&dir).unwrap();
    for b in ["frps", "frpc"] {
        let p = dir.join(b);
        std::fs::write(&p, format!("#!/bin/sh\necho {b} stub\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir
}

/// Runs install.sh into `root` (prefix `root/usr`, configs under `root/etc`, binaries from
/// `root/build`). Tests pass `--no-user` or `--no-create-user`: as root the script would add
/// a system user.
fn install(root: &Path, extra: &[&str]) -> String {
    let from = stub_binaries(root);
    let out = Command::new("bash")
        .arg(repo().join("scripts/install.sh"))
        .args(["--prefix", root.join("usr").to_str().unwrap()])
        .args(["--sysconfdir", root.join("etc").to_str().unwrap()])
        .args(["--from", from.to_str().unwrap()])
        .args(extra)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "install.sh failed:\n{text}");
    text
}

/// Every installed file under `dir` (not the stub binaries) with its contents.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p == dir.join("build") {
                continue;
            } else if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(
                    p.strip_prefix(dir).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
}

#[test]
fn install_script_installs_and_is_idempotent() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    install(root, &["--no-user"]);
    let first = snapshot(root);
    let names: Vec<String> = first.keys().map(|p| p.display().to_string()).collect();
    for want in [
        "usr/bin/frps",
        "usr/bin/frpc",
        "etc/frp/frps.toml",
        "etc/frp/frpc.toml",
        "etc/systemd/system/frps.service",
        "etc/systemd/system/frpc@.service",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
    assert_eq!(
        first[Path::new("usr/bin/frps")],
        std::fs::read(root.join("build/frps")).unwrap()
    );

    // The units point at this install's binaries and configs; --no-user drops User=.
    let unit =
        String::from_utf8(first[Path::new("etc/systemd/system/frpc.service")].clone()).unwrap();
    let prefix = root.join("usr/bin");
    let conf = root.join("etc/frp");
    assert!(
        unit.contains(&format!(
            "ExecStart={}/frpc -c {}/frpc.toml",
            prefix.display(),
            conf.display()
        )),
        "{unit}"
    );
    assert!(unit.contains(&format!(
        "ExecReload={}/frpc reload -c {}/frpc.toml",
        prefix.display(),
        conf.display()
    )));
    assert!(!unit.contains("User="), "{unit}");
    let tmpl =
        String::from_utf8(first[Path::new("etc/systemd/system/frps@.service")].clone()).unwrap();
    assert!(
        tmpl.contains(&format!("-c {}/%i.toml", conf.display())),
        "{tmpl}"
    );

    // Again: same files; an edited config is kept.
    std::fs::write(root.join("etc/frp/frps.toml"), "bindPort = 7001\n").unwrap();
    let out = install(root, &["--no-user"]);
    assert!(out.contains("kept the existing frps config"), "{out}");
    let second = snapshot(root);
    assert_eq!(
        second.keys().collect::<Vec<_>>(),
        first.keys().collect::<Vec<_>>()
    );
    for (path, data) in &second {
        if path == Path::new("etc/frp/frps.toml") {
            assert_eq!(data, b"bindPort = 7001\n");
        } else {
            assert!(data == &first[path], "{} changed", path.display());
        }
    }
}

#[test]
fn shipped_units_match_frp_conventions() {
    for name in UNITS {
        let text = std::fs::read_to_string(repo().join("packaging/systemd").join(name)).unwrap();
        let bin = if name.starts_with("frps") {
            "frps"
        } else {
            "frpc"
        };
        let conf = if name.contains('@') {
            "/etc/frp/%i.toml".to_owned()
        } else {
            format!("/etc/frp/{bin}.toml")
        };
        for line in [
            "Type=simple".to_owned(),
            "Restart=on-failure".to_owned(),
            "LimitNOFILE=1048576".to_owned(),
            "User=frp".to_owned(),
            format!("ExecStart=/usr/bin/{bin} -c {conf}"),
            "WantedBy=multi-user.target".to_owned(),
        ] {
            assert!(text.lines().any(|l| l == line), "{name} lacks {line}");
        }
        let reload = format!("ExecReload=/usr/bin/frpc reload -c {conf}");
        assert_eq!(text.lines().any(|l| l == reload), bin == "frpc", "{name}");
    }
}

#[test]
fn systemd_analyze_verifies_installed_units() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("systemd-analyze not available: skipped");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    // User=frp stays in the units; the user is not created on this machine.
    install(root, &["--no-create-user"]);
    let units = root.join("etc/systemd/system");
    // Templates are verified through an instance.
    for t in ["frps", "frpc"] {
        std::fs::copy(
            units.join(format!("{t}@.service")),
            units.join(format!("{t}@e2e.service")),
        )
        .unwrap();
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(
            [
                "frps.service",
                "frpc.service",
                "frps@e2e.service",
                "frpc@e2e.service",
            ]
            .map(|u| units.join(u)),
        )
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // systemd-analyze exits 0 on some warnings (an unknown Type=, say): any output fails.
    assert!(out.status.success() && text.trim().is_empty(), "{text}");
}
