//! User ids and device labels: what is accepted before anything reaches Redis.

/// Longest accepted user id, in bytes.
pub const MAX_USER_LEN: usize = 256;
/// Longest accepted device label, in bytes.
pub const MAX_DEVICE_LEN: usize = 256;
/// Longest accepted scope, in bytes.
pub const MAX_SCOPE_LEN: usize = 128;
/// Most scopes on one token.
pub const MAX_SCOPES: usize = 64;

/// Why a user id, device label or scope list is refused; the text is the API's 400 answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// The user id is empty or too long.
    #[error("user must be 1 to {MAX_USER_LEN} bytes long")]
    UserLength,
    /// The user id holds a control character.
    #[error("user must not contain control characters")]
    UserControl,
    /// A new user id or device label holds a format (bidi override, zero-width) or line/paragraph separator character.
    #[error("{0} must not contain format or line separator characters (U+202E, U+2028, U+200B, ...)")]
    Invisible(&'static str),
    /// The user id starts or ends with whitespace.
    #[error("user must not start or end with whitespace")]
    UserWhitespace,
    /// The device label is too long or holds a control character.
    #[error("device must be at most {MAX_DEVICE_LEN} bytes without control characters")]
    Device,
    /// The device label starts or ends with whitespace.
    #[error("device must not start or end with whitespace")]
    DeviceWhitespace,
    /// More than [`MAX_SCOPES`] scopes.
    #[error("at most {MAX_SCOPES} scopes per token")]
    TooManyScopes,
    /// One scope is not a scope-token.
    #[error("invalid scope {0:?}: 1 to {MAX_SCOPE_LEN} visible ASCII characters, no quotes or backslashes")]
    Scope(String),
}

/// Unicode's format characters (general category Cf, Unicode 16): invisible, and some reorder
/// what follows (U+202E RIGHT-TO-LEFT OVERRIDE makes `alice\u{202e}gpj.exe` show as `alice exe.jpg`).
const FORMAT: [(char, char); 22] = [
    ('\u{ad}', '\u{ad}'),
    ('\u{600}', '\u{605}'),
    ('\u{61c}', '\u{61c}'),
    ('\u{6dd}', '\u{6dd}'),
    ('\u{70f}', '\u{70f}'),
    ('\u{890}', '\u{891}'),
    ('\u{8e2}', '\u{8e2}'),
    ('\u{180e}', '\u{180e}'),
    ('\u{200b}', '\u{200f}'),
    ('\u{202a}', '\u{202e}'),
    ('\u{2060}', '\u{2064}'),
    ('\u{2066}', '\u{206f}'),
    ('\u{feff}', '\u{feff}'),
    ('\u{fff9}', '\u{fffb}'),
    ('\u{110bd}', '\u{110bd}'),
    ('\u{110cd}', '\u{110cd}'),
    ('\u{13430}', '\u{1343f}'),
    ('\u{1bca0}', '\u{1bca3}'),
    ('\u{1d173}', '\u{1d17a}'),
    ('\u{e0001}', '\u{e0001}'),
    ('\u{e0020}', '\u{e007f}'),
    ('\u{2028}', '\u{2029}'), // LINE SEPARATOR, PARAGRAPH SEPARATOR (Zl, Zp): split lines in logs
];

fn printable(s: &str) -> bool {
    !s.chars().any(char::is_control)
}

/// Checks what a new token's user id and device label carry beyond [`validate_user`] and
/// [`validate_device`]: no format (Cf) or line/paragraph separator (Zl, Zp) character. Labels are
/// shown to people and written to log lines, so they must look like what they are. Only issuance
/// checks this: a user issued before can still be listed and logged out.
pub fn validate_new_labels(user: &str, device: &str) -> Result<(), InputError> {
    let invisible = |s: &str| s.chars().any(|c| FORMAT.iter().any(|(from, to)| (*from..=*to).contains(&c)));
    if invisible(user) {
        return Err(InputError::Invisible("user"));
    }
    if invisible(device) {
        return Err(InputError::Invisible("device"));
    }
    Ok(())
}

/// No whitespace at either end: `"alice "` and `"alice"` would be two users that look alike,
/// and an upstream that trims header values would see them as one.
fn trimmed(s: &str) -> bool {
    s.trim() == s
}

/// Checks a user id: 1 to 256 bytes, no control characters, no whitespace at either end.
pub fn validate_user(user: &str) -> Result<(), InputError> {
    if user.is_empty() || user.len() > MAX_USER_LEN {
        return Err(InputError::UserLength);
    }
    if !printable(user) {
        return Err(InputError::UserControl);
    }
    if !trimmed(user) {
        return Err(InputError::UserWhitespace);
    }
    Ok(())
}

/// Checks a device label: up to 256 bytes, no control characters, no whitespace at either end.
pub fn validate_device(device: &str) -> Result<(), InputError> {
    if device.len() > MAX_DEVICE_LEN || !printable(device) {
        return Err(InputError::Device);
    }
    if !trimmed(device) {
        return Err(InputError::DeviceWhitespace);
    }
    Ok(())
}

/// Checks scopes: at most 64, each 1 to 128 printable characters without spaces (RFC 6749 scope-token).
pub fn validate_scopes(scopes: &[String]) -> Result<(), InputError> {
    if scopes.len() > MAX_SCOPES {
        return Err(InputError::TooManyScopes);
    }
    for scope in scopes {
        let ok = !scope.is_empty()
            && scope.len() <= MAX_SCOPE_LEN
            && scope.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
        if !ok {
            return Err(InputError::Scope(scope.clone()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_devices_and_scopes_are_checked() {
        assert!(validate_user("alice@example.com").is_ok());
        assert!(validate_user("").is_err());
        assert!(validate_user("a\nb").is_err());
        assert!(validate_user(&"u".repeat(257)).is_err());
        assert!(validate_device("").is_ok());
        assert!(validate_device("Alice's iPhone").is_ok());
        assert!(validate_device("x\u{0}").is_err());
        for bad in [" alice", "alice ", "alice\t", "\u{a0}alice", "alice\u{2003}", "a\u{7f}b", "a\u{85}b"] {
            assert!(validate_user(bad).is_err(), "{bad:?}");
            assert!(validate_device(bad).is_err(), "{bad:?}");
        }
        assert!(validate_user("José Müller").is_ok(), "inner spaces and non-ASCII are fine");
        assert!(validate_new_labels("José Müller", "山田さんの iPhone 📱").is_ok());
        for spoof in [
            "alice\u{202e}gpj.exe",
            "a\u{2028}b",
            "a\u{2029}b",
            "a\u{200b}b",
            "a\u{2066}b",
            "a\u{feff}b",
            "a\u{e0041}b",
            "a\u{ad}b",
        ] {
            assert_eq!(validate_new_labels(spoof, "phone"), Err(InputError::Invisible("user")), "{spoof:?}");
            assert_eq!(validate_new_labels("alice", spoof), Err(InputError::Invisible("device")), "{spoof:?}");
            assert!(validate_user(spoof).is_ok(), "an existing user can still be named to log out");
        }
        assert!(validate_scopes(&["read".into(), "orders:write".into()]).is_ok());
        assert!(validate_scopes(&["two words".into()]).is_err());
        assert!(validate_scopes(&["".into()]).is_err());
    }
}
