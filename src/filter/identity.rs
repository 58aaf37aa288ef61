//! Who a valid token belongs to: what the filter sets upstream and caches.

/// Who a valid token belongs to, as injected upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// User id.
    pub user: String,
    /// Device label.
    pub device: String,
    /// Scopes granted.
    pub scopes: Vec<String>,
    /// Scopes joined by spaces (the header value), computed once.
    pub scopes_header: String,
    /// Public token id.
    pub id: String,
}

impl Identity {
    /// Builds an identity, joining the scopes once.
    pub fn new(user: String, device: String, scopes: Vec<String>, id: String) -> Self {
        let scopes_header = scopes.join(" ");
        Identity { user, device, scopes, scopes_header, id }
    }
}
