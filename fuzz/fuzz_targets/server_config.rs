//! Arbitrary text as frps.toml / YAML / JSON: a config or an error, never a panic.
#![no_main]
use control::config::{ConfigFormat, server_config_from_str};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        for f in [
            ConfigFormat::Toml,
            ConfigFormat::Yaml,
            ConfigFormat::Json,
            ConfigFormat::Auto,
        ] {
            let _ = server_config_from_str(text, f, true);
        }
    }
});
