//! The `thaw serve --config` file: TOML into `Settings`, then resolved into
//! the options the server runs with (defaults filled, sizes computed).
#![no_main]

use libfuzzer_sys::fuzz_target;
use server::config::Settings;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(mut settings) = toml::from_str::<Settings>(text) else {
        return;
    };
    // The token file is a path on the host: reading it is not parsing.
    settings.token_file = None;
    let _ = settings.over(Settings::default()).resolve();
});
