//! The identity headers the filter sets upstream, and every name it strips from clients.

use super::FilterConfig;
use crate::header_list::length_bit;
use multitokens_core::contract;

/// The identity headers set upstream (lower-case); the optional ones can be switched off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityHeaders {
    /// The user id.
    pub user: String,
    /// The device label.
    pub device: Option<String>,
    /// The scopes.
    pub scopes: Option<String>,
    /// The token's public id.
    pub token_id: Option<String>,
    /// Where the credential came from.
    pub credential: Option<String>,
    /// Every name stripped from client requests: the configured ones and the defaults, whether
    /// switched on or off (an upstream may still read a default name).
    stripped: Vec<String>,
    /// One bit per length among `stripped` (bit 63: 63 bytes or more): most of a request's
    /// headers are ruled out by their length before a byte is compared.
    stripped_lengths: u64,
}

impl IdentityHeaders {
    /// Every name in use.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.user.as_str()).chain(
            [&self.device, &self.scopes, &self.token_id, &self.credential].into_iter().flatten().map(String::as_str),
        )
    }

    /// Whether a client's header name stands for an identity header, in use or not: equal to one
    /// after lower-casing and reading `_` as `-`, the way CGI and WSGI servers name their variables.
    pub fn is_alias(&self, name: &[u8]) -> bool {
        if self.stripped_lengths & length_bit(name.len()) == 0 {
            return false;
        }
        let fold = |b: &u8| if *b == b'_' { b'-' } else { b.to_ascii_lowercase() };
        self.stripped
            .iter()
            .any(|ours| ours.len() == name.len() && ours.as_bytes().iter().map(fold).eq(name.iter().map(fold)))
    }
}

impl IdentityHeaders {
    /// The names `config` sets, checked: valid, not `authorization` or `cookie`, each different.
    pub fn compile(config: &FilterConfig) -> Result<IdentityHeaders, String> {
        let optional =
            |field: &str, value: &Option<String>| value.as_deref().map(|v| header_name(field, v)).transpose();
        let mut identity_headers = IdentityHeaders {
            user: header_name("user_header", &config.user_header)?,
            device: optional("device_header", &config.device_header)?,
            scopes: optional("scopes_header", &config.scopes_header)?,
            token_id: optional("token_id_header", &config.token_id_header)?,
            credential: optional("credential_header", &config.credential_header)?,
            stripped: Vec::new(),
            stripped_lengths: 0,
        };
        let mut stripped: Vec<String> = contract::IDENTITY_HEADERS.iter().map(|h| h.to_string()).collect();
        stripped.extend(identity_headers.names().map(String::from));
        stripped.sort();
        stripped.dedup();
        identity_headers.stripped_lengths = stripped.iter().fold(0, |bits, name| bits | length_bit(name.len()));
        identity_headers.stripped = stripped;
        if identity_headers.names().any(|h| h == "authorization" || h == "cookie") {
            return Err(
            "user_header/device_header/scopes_header/token_id_header/credential_header: must not be authorization or \
             cookie"
                .into()
        );
        }
        let mut in_use: Vec<&str> = identity_headers.names().collect();
        in_use.sort_unstable();
        if in_use.windows(2).any(|w| w[0] == w[1]) {
            return Err(
                "user_header/device_header/scopes_header/token_id_header/credential_header: give each a different name"
                    .into(),
            );
        }
        Ok(identity_headers)
    }
}

fn header_name(field: &str, value: &str) -> Result<String, String> {
    let ok = !value.is_empty() && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok {
        return Err(format!("{field}: {value:?} is not a valid header name"));
    }
    Ok(value.to_ascii_lowercase())
}
