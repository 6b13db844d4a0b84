//! `Config::parse` on arbitrary text never panics, and what it accepts
//! gives its warnings without panicking either.

use queuewatch::config::Config;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else { return };
        if let Ok(config) = Config::parse(text) {
            let _ = config.warnings();
        }
    });
}
