//! Who a valid token belongs to: what the filter sets upstream and caches.

use multitokens_core::dpop::Thumbprint;
use multitokens_core::user::{validate_scopes, InputError};

/// Who a valid token belongs to, as a lookup answered it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// User id.
    pub user: String,
    /// Device label.
    pub device: String,
    /// Scopes granted, joined by single spaces (the header value).
    pub scopes: String,
    /// Public token id.
    pub id: String,
    /// The key the token is bound to (DPoP): accepted only with a proof made with it.
    pub bound_to: Option<Thumbprint>,
}

impl Identity {
    /// Builds an identity from an answer's fields. Scopes must be RFC 6749 scope-tokens (no space,
    /// not empty): they are joined by spaces, so a scope `"admin x"` in a hostile answer could
    /// otherwise grant `admin`.
    pub fn new(user: String, device: String, scopes: Vec<String>, id: String) -> Result<Self, InputError> {
        validate_scopes(&scopes)?;
        Ok(Identity { user, device, scopes: scopes.join(" "), id, bound_to: None })
    }

    /// The identity of a token bound to `key` (DPoP), or of a bearer token (`None`).
    pub fn bound(self, key: Option<Thumbprint>) -> Self {
        Identity { bound_to: key, ..self }
    }

    /// The identity as borrowed strings.
    pub fn view(&self) -> IdentityView<'_> {
        IdentityView {
            user: &self.user,
            device: &self.device,
            scopes: &self.scopes,
            id: &self.id,
            bound_to: self.bound_to,
        }
    }
}

/// An identity's fields borrowed, from an answer or from the verdict cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdentityView<'a> {
    /// User id.
    pub user: &'a str,
    /// Device label.
    pub device: &'a str,
    /// Scopes granted, joined by single spaces.
    pub scopes: &'a str,
    /// Public token id.
    pub id: &'a str,
    /// The key the token is bound to (DPoP).
    pub bound_to: Option<Thumbprint>,
}

impl IdentityView<'_> {
    /// Whether `scope` is among the scopes granted.
    pub fn has_scope(&self, scope: &str) -> bool {
        !scope.is_empty() && self.scopes.split(' ').any(|granted| granted == scope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_joined_once_and_malformed_ones_refused() {
        let id = Identity::new("u".into(), "d".into(), vec!["read".into(), "orders:write".into()], "i".into()).unwrap();
        assert_eq!(id.scopes, "read orders:write");
        assert!(id.view().has_scope("orders:write") && id.view().has_scope("read"));
        assert!(!id.view().has_scope("orders") && !id.view().has_scope(""));
        let none = Identity::new("u".into(), "d".into(), vec![], "i".into()).unwrap();
        assert!(!none.view().has_scope(""), "no scopes grant nothing, not the empty scope");
        assert!(Identity::new("u".into(), "d".into(), vec!["admin x".into()], "i".into()).is_err());
        assert!(Identity::new("u".into(), "d".into(), vec![String::new()], "i".into()).is_err());
    }
}
