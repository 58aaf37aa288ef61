//! An in-memory [`Host`]: the proxy of the flow's unit tests and of the native hit-path
//! benchmark (`examples/hit_path.rs`). Headers are kept as a proxy hands them over (raw bytes, in
//! order, duplicates allowed); every reply, lookup and warning is recorded, and each metric counted.

use super::header_list::HeaderList;
use super::host::Host;
use super::lookup::LookupRequest;
use super::metric::Metric;
use super::reply::LocalReply;
use std::cell::RefCell;

/// A request as the proxy holds it, and everything the filter did to it.
#[derive(Debug)]
pub struct MemoryHost {
    /// Request headers, lower-case names, pseudo-headers included.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// Request trailers.
    pub trailers: Vec<(Vec<u8>, Vec<u8>)>,
    /// The downstream address (`source.address`).
    pub client_address: Option<Vec<u8>>,
    /// Local replies sent.
    pub replies: Vec<LocalReply>,
    /// Paths of the lookups dispatched.
    pub lookups: Vec<String>,
    /// How often each metric was counted, by [`Metric::index`].
    pub counts: [u64; Metric::ALL.len()],
    /// Warnings logged.
    pub warnings: RefCell<Vec<String>>,
    /// The request's context id.
    pub context_id: u32,
    /// A body follows the headers.
    pub has_body: bool,
}

impl Default for MemoryHost {
    fn default() -> Self {
        MemoryHost {
            headers: Vec::new(),
            trailers: Vec::new(),
            client_address: None,
            replies: Vec::new(),
            lookups: Vec::new(),
            counts: [0; Metric::ALL.len()],
            warnings: RefCell::new(Vec::new()),
            context_id: 1,
            has_body: false,
        }
    }
}

impl MemoryHost {
    /// A request with a method and a path.
    pub fn request(method: &str, path: &[u8]) -> MemoryHost {
        let mut host = MemoryHost::default();
        host.reset(method, path);
        host
    }

    /// Starts over with a new request on the same host (keeps allocations, as a benchmark wants).
    pub fn reset(&mut self, method: &str, path: &[u8]) {
        self.headers.clear();
        self.trailers.clear();
        self.replies.clear();
        self.counts = [0; Metric::ALL.len()];
        self.has_body = false;
        self.headers.push((b":method".to_vec(), method.as_bytes().to_vec()));
        self.headers.push((b":path".to_vec(), path.to_vec()));
    }

    /// Adds a header (a second one with the same name is a duplicate, as on the wire).
    pub fn add_header(&mut self, name: &str, value: &[u8]) -> &mut Self {
        self.headers.push((name.as_bytes().to_vec(), value.to_vec()));
        self
    }

    /// Adds a trailer.
    pub fn add_trailer(&mut self, name: &str, value: &[u8]) -> &mut Self {
        self.trailers.push((name.as_bytes().to_vec(), value.to_vec()));
        self
    }

    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(k, _)| k == name.as_bytes()).map(|(_, v)| v.as_slice())
    }

    /// How often `metric` was counted for this request.
    pub fn counted(&self, metric: Metric) -> u64 {
        self.counts[metric.index()]
    }

    /// The names of the trailers left.
    pub fn trailer_names(&self) -> Vec<String> {
        self.trailers.iter().map(|(k, _)| String::from_utf8_lossy(k).into_owned()).collect()
    }
}

impl Host for MemoryHost {
    fn request_headers(&self) -> HeaderList {
        HeaderList::from_pairs(&self.headers)
    }
    fn set_header(&mut self, name: &str, value: &[u8]) {
        let name = name.as_bytes();
        match self.headers.iter().position(|(k, _)| k == name) {
            Some(first) => {
                value.clone_into(&mut self.headers[first].1);
                // every other value of the header goes
                let mut index = 0;
                self.headers.retain(|(k, _)| {
                    index += 1;
                    index - 1 <= first || k != name
                });
            }
            None => self.headers.push((name.to_vec(), value.to_vec())),
        }
    }
    fn add_header(&mut self, name: &str, value: &[u8]) {
        MemoryHost::add_header(self, name, value);
    }
    fn remove_header(&mut self, name: &str) {
        self.headers.retain(|(k, _)| k != name.as_bytes());
    }
    fn request_has_body(&self) -> bool {
        self.has_body
    }
    fn request_trailers(&self) -> HeaderList {
        HeaderList::from_pairs(&self.trailers)
    }
    fn remove_trailer(&mut self, name: &str) {
        self.trailers.retain(|(k, _)| k != name.as_bytes());
    }
    fn send_reply(&mut self, reply: &LocalReply) {
        self.replies.push(reply.clone());
    }
    fn client_address(&self) -> Option<Vec<u8>> {
        self.client_address.clone()
    }
    fn context_id(&self) -> u32 {
        self.context_id
    }
    fn dispatch_lookup(&mut self, request: &LookupRequest) -> Result<u32, String> {
        self.lookups.push(request.path());
        Ok(self.lookups.len() as u32)
    }
    fn count(&mut self, metric: Metric) {
        self.counts[metric.index()] += 1;
    }
    fn warn(&self, message: &str) {
        self.warnings.borrow_mut().push(message.to_string());
    }
}
