//! The `thaw serve --config` file: TOML into `Settings`, then resolved into
//! the options the server runs with (defaults filled, sizes computed).
//!
//! Besides no panic: a file that resolves yields exactly the sizes it asked
//! for (a size that does not fit must be an error, never a wrapped value).
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
    let asked = settings.clone();
    let Ok(opts) = settings.over(Settings::default()).resolve() else {
        return;
    };
    if let Some(mb) = asked.max_body_mb {
        assert_eq!(opts.max_body as u128, mb as u128 * (1 << 20), "max_body_mb");
    }
    if let Some(mb) = asked.memory_budget_mb {
        assert_eq!(
            opts.memory_budget.map(u128::from),
            Some(mb as u128 * (1 << 20)),
            "memory_budget_mb"
        );
    }
    if let Some(kb) = asked.log_kb_per_function {
        assert_eq!(
            opts.logs.bytes_per_function as u128,
            kb as u128 * (1 << 10),
            "log_kb_per_function"
        );
    }
});
