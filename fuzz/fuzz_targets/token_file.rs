//! The static token file parser: any text loads or fails with an error, and a loaded table
//! answers lookups.
#![no_main]

use std::path::Path;

use authd::source::token_file::TokenTable;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(table) = TokenTable::parse(Path::new("tokens.csv"), text) {
        assert_eq!(table.is_empty(), table.len() == 0);
        for line in text.lines() {
            let token = line.split(',').next().unwrap_or_default();
            let _ = table.lookup(token);
        }
    }
});
