//! What callers without the admin role may not read: the values of a
//! function's `env` (its secrets). Their names stay visible.
//!
//! Applied to every function view served to a non-admin: `GET /functions`,
//! `GET /functions/{id}` and the `function` events of `GET /events`.

use crate::api::Caller;
use crate::service::FunctionView;

/// What a redacted `env` value reads as.
pub const REDACTED: &str = "<redacted>";

/// `view` as `caller` may see it.
pub fn view_for(mut view: FunctionView, caller: Caller) -> FunctionView {
    if !caller.is_admin() {
        for value in view.spec.env.values_mut() {
            *value = REDACTED.to_string();
        }
    }
    view
}
