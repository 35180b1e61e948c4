//! Arbitrary text as the relay's configuration file: loading never panics, refuses with a message that names the
//! file, and neither a loaded configuration's debug output nor any error ever shows a secret (the API key read
//! from the environment, or written in the file).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use signal_engine::relay::config::RelayConfig;

const SECRET: &str = "sk-fuzz-secret-0123456789";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // The secret comes only from the environment; a file that writes it itself may see it quoted back.
    if text.contains(SECRET) {
        return;
    }
    let env = |_: &str| Some(SECRET.to_string());
    match RelayConfig::parse("relay.yaml", text, Path::new("/nonexistent-base"), &env) {
        Ok(config) => {
            let shown = format!("{config:?}");
            assert!(!shown.contains(SECRET), "the environment's key shows in the configuration's debug output");
            for line in text.lines() {
                if let Some(key) = line.trim().strip_prefix("api_key:").map(str::trim) {
                    let key = key.trim_matches(['"', '\'']);
                    // Only a key written once: the same text elsewhere (a pixel id that contains it) is shown
                    // as what it is there.
                    let once = text.matches(key).count() == 1;
                    if once && key.len() >= 12 && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                        assert!(!shown.contains(key), "the file's api_key shows in the debug output");
                    }
                }
            }
        }
        Err(error) => {
            let message = error.to_string();
            assert!(message.starts_with("relay.yaml"), "an error that does not name the file: {message}");
            assert!(!message.contains(SECRET), "a secret in an error: {message}");
        }
    }
});
