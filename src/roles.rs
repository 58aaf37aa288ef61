//! The API's keys, by role. Each role takes a list of keys, so a key can be rotated with no
//! downtime (add the new one, move the clients, drop the old one):
//!
//! - **admin**: issue, list, revoke (and introspect, and read the audit trail).
//! - **introspect**: RFC 7662 introspection only, so a resource server that introspects cannot
//!   mint or revoke tokens. Clients authenticate as RFC 7662 clients do in practice, with HTTP
//!   Basic (client id and secret), or with the secret as a bearer key.
//! - **internal**: the filter's lookup and revocation feed (a refresh it asks for is capped).

use subtle::ConstantTimeEq;

/// Shortest key or client secret accepted.
pub const MIN_KEY_LEN: usize = 16;

/// A role an API key has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Issue, list, revoke, introspect, audit.
    Admin,
    /// RFC 7662 introspection only.
    Introspect,
    /// The filter's internal endpoints.
    Internal,
}

impl Role {
    /// The role's name, as errors say it.
    pub fn name(&self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Introspect => "introspect",
            Role::Internal => "internal",
        }
    }

    /// Where its keys are configured.
    pub fn variable(&self) -> &'static str {
        match self {
            Role::Admin => "MULTITOKENS_ADMIN_KEY",
            Role::Introspect => "MULTITOKENS_INTROSPECT_CLIENTS",
            Role::Internal => "MULTITOKENS_INTERNAL_KEY",
        }
    }
}

/// An introspection client: `<id>:<secret>` in the settings.
#[derive(Clone, PartialEq, Eq)]
pub struct IntrospectClient {
    /// The client id (HTTP Basic user name).
    pub id: String,
    /// Its secret (HTTP Basic password, or a bearer key).
    pub secret: String,
}

/// What a request presents in `Authorization`.
#[derive(Clone, PartialEq, Eq)]
pub enum Presented {
    /// `Bearer <key>` (or `Token <key>`).
    Bearer(String),
    /// `Basic base64(<id>:<secret>)`, both form-urlencoded first (RFC 6749 §2.3.1).
    Basic {
        /// Client id.
        id: String,
        /// Client secret.
        secret: String,
    },
}

impl Presented {
    /// Reads HTTP Basic credentials from an `Authorization` value, `None` if it is not Basic or
    /// not well-formed.
    pub fn basic(value: &[u8]) -> Option<Presented> {
        use base64::Engine;
        let text = std::str::from_utf8(value).ok()?.trim();
        let (scheme, encoded) = text.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
        let pair = String::from_utf8(decoded).ok()?;
        let (id, secret) = pair.split_once(':')?;
        let unescape =
            |s: &str| form_urlencoded::parse(format!("v={s}").as_bytes()).next().map(|(_, v)| v.into_owned());
        Some(Presented::Basic { id: unescape(id)?, secret: unescape(secret)? })
    }
}

/// Every API key, by role.
#[derive(Clone, Default)]
pub struct ApiKeys {
    admin: Vec<String>,
    introspect: Vec<IntrospectClient>,
    internal: Vec<String>,
}

/// Never prints a key, only how many each role has.
impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys")
            .field("admin", &self.admin.len())
            .field("introspect", &self.introspect.len())
            .field("internal", &self.internal.len())
            .finish()
    }
}

fn same(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

impl ApiKeys {
    /// The keys, checked: at least one admin key; every key and secret at least
    /// [`MIN_KEY_LEN`] long; no key in two roles (the internal keys sit in every Envoy's config);
    /// introspection clients written `<id>:<secret>`.
    pub fn new(admin: Vec<String>, introspect: Vec<String>, internal: Vec<String>) -> Result<ApiKeys, String> {
        if admin.is_empty() {
            return Err("serve needs an admin key: set MULTITOKENS_ADMIN_KEY (or admin_key in the config file)".into());
        }
        let mut clients = Vec::new();
        for entry in introspect {
            let Some((id, secret)) = entry.split_once(':').filter(|(id, _)| !id.is_empty()) else {
                return Err("introspect_clients: each entry is <client id>:<secret>".into());
            };
            clients.push(IntrospectClient { id: id.to_string(), secret: secret.to_string() });
        }
        for (role, keys) in [("admin_key", &admin), ("internal_key", &internal)] {
            if keys.iter().any(|k| k.len() < MIN_KEY_LEN) {
                return Err(format!("{role} must be at least {MIN_KEY_LEN} characters"));
            }
        }
        if clients.iter().any(|c| c.secret.len() < MIN_KEY_LEN) {
            return Err(format!("introspect_clients: each secret must be at least {MIN_KEY_LEN} characters"));
        }
        if internal.iter().any(|k| admin.contains(k)) {
            return Err("internal_key must differ from admin_key: it is handed to every filter".into());
        }
        if clients.iter().any(|c| admin.contains(&c.secret) || internal.contains(&c.secret)) {
            return Err("introspect_clients: a secret must differ from every admin and internal key".into());
        }
        Ok(ApiKeys { admin, introspect: clients, internal })
    }

    /// Whether the internal endpoints are enabled (an internal key is set).
    pub fn has_internal(&self) -> bool {
        !self.internal.is_empty()
    }

    /// The role of what a request presents, `None` if it is no key of this companion. Every key is
    /// compared (in constant time each), whichever matches.
    pub fn role_of(&self, presented: &Presented) -> Option<Role> {
        let mut role = None;
        match presented {
            Presented::Bearer(key) => {
                for k in &self.admin {
                    if same(k, key) {
                        role = Some(Role::Admin);
                    }
                }
                for c in &self.introspect {
                    if same(&c.secret, key) {
                        role = Some(Role::Introspect);
                    }
                }
                for k in &self.internal {
                    if same(k, key) {
                        role = Some(Role::Internal);
                    }
                }
            }
            Presented::Basic { id, secret } => {
                for c in &self.introspect {
                    if same(&c.id, id) & same(&c.secret, secret) {
                        role = Some(Role::Introspect);
                    }
                }
            }
        }
        role
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> ApiKeys {
        ApiKeys::new(
            vec!["admin-key-new-0123456789".into(), "admin-key-old-0123456789".into()],
            vec!["resource-server:rs-secret-0123456789".into()],
            vec!["internal-key-0123456789".into()],
        )
        .unwrap()
    }

    #[test]
    fn every_key_of_a_role_is_accepted_and_roles_never_mix() {
        let k = keys();
        let bearer = |s: &str| Presented::Bearer(s.into());
        assert_eq!(k.role_of(&bearer("admin-key-new-0123456789")), Some(Role::Admin));
        assert_eq!(k.role_of(&bearer("admin-key-old-0123456789")), Some(Role::Admin));
        assert_eq!(k.role_of(&bearer("internal-key-0123456789")), Some(Role::Internal));
        assert_eq!(k.role_of(&bearer("rs-secret-0123456789")), Some(Role::Introspect));
        assert_eq!(k.role_of(&bearer("admin-key-new-012345678")), None);
        let basic = |id: &str, secret: &str| Presented::Basic { id: id.into(), secret: secret.into() };
        assert_eq!(k.role_of(&basic("resource-server", "rs-secret-0123456789")), Some(Role::Introspect));
        assert_eq!(k.role_of(&basic("other", "rs-secret-0123456789")), None);
        assert_eq!(
            k.role_of(&basic("resource-server", "admin-key-new-0123456789")),
            None,
            "Basic is for introspection clients only"
        );
    }

    #[test]
    fn basic_credentials_are_read_as_rfc_6749_says() {
        use base64::Engine;
        let encode = |s: &str| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(s));
        let Some(Presented::Basic { id, secret }) = Presented::basic(encode("my%20client:p%3Ass+word").as_bytes())
        else {
            panic!()
        };
        assert_eq!((id.as_str(), secret.as_str()), ("my client", "p:ss word"));
        assert!(Presented::basic(b"Bearer abc").is_none());
        assert!(Presented::basic(b"Basic !!!").is_none());
        assert!(Presented::basic(encode("no-colon").as_bytes()).is_none());
        assert!(Presented::basic(b"Basic \xff").is_none());
    }

    #[test]
    fn unsafe_key_sets_are_refused_naming_the_setting() {
        let long = |s: &str| format!("{s}-0123456789abcdef");
        assert!(ApiKeys::new(vec![], vec![], vec![]).unwrap_err().contains("MULTITOKENS_ADMIN_KEY"));
        assert!(ApiKeys::new(vec!["short".into()], vec![], vec![]).unwrap_err().contains("admin_key"));
        assert!(ApiKeys::new(vec![long("a")], vec![], vec![long("a")])
            .unwrap_err()
            .contains("internal_key must differ"));
        assert!(ApiKeys::new(vec![long("a")], vec!["nocolon".into()], vec![])
            .unwrap_err()
            .contains("introspect_clients"));
        assert!(ApiKeys::new(vec![long("a")], vec![format!("rs:{}", long("a"))], vec![])
            .unwrap_err()
            .contains("differ"));
        assert!(ApiKeys::new(vec![long("a")], vec!["rs:short".into()], vec![]).unwrap_err().contains("secret"));
        assert!(format!("{:?}", keys()).contains("admin: 2"), "Debug shows counts, never keys");
    }
}
