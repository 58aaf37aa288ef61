//! The way through for a request with a valid token: its scopes checked, the identity headers
//! set, the credential removed.

use super::*;

/// Lets a request with a valid token through: scope check, identity headers, credential strip.
#[allow(clippy::too_many_arguments)]
pub(super) fn authorize(
    host: &mut dyn Host,
    compiled: &Compiled,
    seen_proofs: &mut SeenProofs,
    identity: IdentityView<'_>,
    source: Source,
    request: &RequestInfo,
    now: u64,
    stale: bool,
) -> Step {
    // a token bound to a key: only with a proof of that key, used once
    match seen_proofs.check(compiled.config.dpop.limits(), identity.bound_to, &request.possession, now) {
        Ok(()) => {}
        Err(Refusal::Proof) => return deny(host, compiled, Denial::DpopProof, Metric::DeniedDpop, &[]),
        Err(Refusal::NotBearer) => return deny(host, compiled, Denial::DpopBearer, Metric::DeniedDpop, &[]),
    }
    let missing = missing_scopes(&compiled.scope_rules, &request.methods, &request.route, identity);
    if !missing.is_empty() {
        return deny(host, compiled, Denial::Scope, Metric::DeniedScope, &missing);
    }
    // each gets exactly one value: whatever the client sent under these names (or an alias of
    // them) was removed with the request's headers, so a value is added, not replaced
    let names = &compiled.identity_headers;
    host.add_header(&names.user, identity.user.as_bytes());
    for (name, value) in
        [(&names.device, identity.device), (&names.scopes, identity.scopes), (&names.token_id, identity.id)]
    {
        if let Some(name) = name {
            host.add_header(name, value.as_bytes());
        }
    }
    // only with a cookie can a token come from elsewhere than the header: without one, no write
    if let (Some(name), Some(_)) = (&names.credential, &compiled.config.cookie) {
        let from =
            if source == Source::Cookie { contract::CREDENTIAL_FROM_COOKIE } else { contract::CREDENTIAL_FROM_HEADER };
        host.add_header(name, from.as_bytes());
    }
    strip_credentials(host, compiled, request.strip_authorization, request.cookie.as_deref());
    host.count(if stale { Metric::AllowedStale } else { Metric::Allowed });
    Step::Continue
}

/// Removes our credentials before the upstream (unless `strip_credential` is off): an
/// `Authorization` header with one of our schemes, and the token cookie from the `Cookie` headers,
/// whichever of them carried the token.
pub(super) fn strip_credentials(
    host: &mut dyn Host,
    compiled: &Compiled,
    strip_authorization: bool,
    cookies: Option<&[u8]>,
) {
    if strip_authorization {
        host.remove_header("authorization");
    }
    if let (true, Some(name), Some(cookies)) =
        (compiled.config.strip_credential, compiled.config.cookie.as_deref(), cookies)
    {
        if credential::has_cookie(&[cookies], name) {
            match credential::without_cookie(&[cookies], name) {
                Some(rest) => host.set_header("cookie", &rest),
                None => host.remove_header("cookie"),
            }
        }
    }
}
