//! A function's settings: the `thaw.toml` of a function folder (read by
//! `thaw deploy` and `thaw serve --deploy`) and the JSON fields of
//! `POST /functions`, both validated into a `FunctionSpec`.
//!
//! Mode byte 0: the rest is a `thaw.toml`. Any other: a deploy request's
//! JSON object.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use server::spec::FunctionSpec;

fuzz_target!(|data: &[u8]| {
    let (mode, rest) = thaw_fuzz::mode(data);
    let spec = if mode == 0 {
        let Ok(text) = std::str::from_utf8(rest) else {
            return;
        };
        server::bundle::parse_spec(text, Path::new("thaw.toml")).ok()
    } else {
        match serde_json::from_slice::<serde_json::Value>(rest) {
            Ok(serde_json::Value::Object(fields)) => FunctionSpec::from_fields(fields).ok(),
            _ => None,
        }
    };
    if let Some(spec) = spec {
        // A valid spec survives its own JSON form (what the record stores).
        let json = serde_json::to_value(&spec).expect("a spec serialises");
        let serde_json::Value::Object(fields) = json else {
            panic!("a spec serialises to an object");
        };
        let back = FunctionSpec::from_fields(fields).expect("a valid spec re-validates");
        assert_eq!(back, spec);
    }
});
