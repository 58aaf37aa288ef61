//! What the proxy offers the filter's logic for one request: the small trait the native shell
//! implements over Envoy's callbacks, [`crate::vm`] over a proxy-wasm VM's host calls, and the unit
//! tests over [`crate::memory_host::MemoryHost`].

use super::header_list::HeaderList;
use super::lookup::LookupRequest;
use super::metric::Metric;
use super::reply::LocalReply;

/// What the proxy offers the request flow.
pub trait Host {
    /// All request headers as raw bytes (a client may send any byte), lower-case names,
    /// pseudo-headers (`:method`, `:path`) included: one host call per request instead of one
    /// per header.
    fn request_headers(&self) -> HeaderList;
    /// Sets a request header, replacing every value it had.
    fn set_header(&mut self, name: &str, value: &[u8]);
    /// Adds a request header the flow made sure is absent (it removed every value the client sent
    /// under the name or an alias of it): one append, where `set_header` first looks for values to
    /// replace (in Envoy a scan of the header map, and a runtime flag read, on every call).
    fn add_header(&mut self, name: &str, value: &[u8]);
    /// Removes a request header.
    fn remove_header(&mut self, name: &str);
    /// Whether a body or trailers follow the request headers (the headers did not end the
    /// stream): an HTTP/2 or HTTP/3 request may carry a body without any `content-length`.
    fn request_has_body(&self) -> bool;
    /// All request trailers as raw bytes.
    fn request_trailers(&self) -> HeaderList;
    /// Removes a request trailer.
    fn remove_trailer(&mut self, name: &str);
    /// Sends a local reply instead of forwarding.
    fn send_reply(&mut self, reply: &LocalReply);
    /// The downstream address Envoy reports (`source.address`: after `use_remote_address` and
    /// trusted hops), read only when a token is refused or looked up.
    fn client_address(&self) -> Option<Vec<u8>>;
    /// This request's context id (what a request that follows another's lookup is woken by).
    fn context_id(&self) -> u32;
    /// Starts the lookup callout; returns its call id.
    fn dispatch_lookup(&mut self, request: &LookupRequest) -> Result<u32, String>;
    /// Counts one event.
    fn count(&mut self, metric: Metric);
    /// Logs a warning (never a token).
    fn warn(&self, message: &str);
}

/// What the proxy should do with the request now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Forward it (possibly with rewritten headers).
    Continue,
    /// Wait for the callout.
    Pause,
    /// A local reply was sent.
    Replied,
}
