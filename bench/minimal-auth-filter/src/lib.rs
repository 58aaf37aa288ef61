//! The minimal wasm authentication fixture: reads `Authorization`, sets `x-user`, removes the
//! credential, and answers 401 without one. What every wasm authentication filter does at least.

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

proxy_wasm::main! {{
    proxy_wasm::set_http_context(|_, _| -> Box<dyn HttpContext> { Box::new(MinimalAuth) });
}}

struct MinimalAuth;

impl Context for MinimalAuth {}

impl HttpContext for MinimalAuth {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let present = self.get_http_request_header_bytes("authorization").is_some_and(|v| v.len() > 7);
        if !present {
            self.send_http_response(401, vec![("www-authenticate", "Bearer")], None);
            return Action::Pause;
        }
        self.set_http_request_header("x-user", Some("someone"));
        self.set_http_request_header("authorization", None);
        Action::Continue
    }
}
