//! authd's and the edge's configuration parsers: any text parses and validates, or fails
//! with an error naming a field, without panicking.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let base = Path::new("/nonexistent-fuzz-base");
    let _ = authd::config::Config::parse(text, base);
    let _ = authd_edge::config::Config::parse(text, base);
});
