//! One request's decision, behind the small [`Host`] trait so it runs natively in unit tests with
//! a mock host: read the headers once, exclusions and path, the credential, the cache, the lookup,
//! then forward with identity headers or answer locally.

use super::host::{Host, Step};
use super::metric::Metric;
use super::worker::{Worker, MAX_REFRESH_QUEUE};

use super::cache::{Cached, Entry, Lifetime, Stored};
use super::config::{Compiled, CorsPreflight, FailureMode};
use super::identity::{Identity, IdentityView};
use super::lookup::{Answer, CalloutProblem, LookupRequest};
use super::path;
use super::reply::{self, Denial};
use super::route;
use super::rules::missing_scopes;
use super::throttle::client_key;
use multitokens_core::contract;
use multitokens_core::credential::{self, Credential, Source};
use multitokens_core::digest::TokenDigest;
use multitokens_core::dpop::{is_dpop_scheme, Possession, Refusal, Seen, SeenProofs};
use multitokens_core::token::{self, Origin};
use std::sync::Arc;

/// What the decision needs from a request, read once from its headers.
#[derive(Debug)]
struct RequestInfo {
    /// The methods the upstream may run the request as (its own first, then overrides).
    methods: Vec<String>,
    /// The route key the scope rules match (empty without path scope rules).
    route: String,
    /// Every `Cookie` header, joined (read only when a cookie credential is configured).
    cookie: Option<Vec<u8>>,
    /// The `Authorization` header carries one of our schemes: removed before the upstream.
    strip_authorization: bool,
    /// The client address a lookup of an unchecked token was charged to (refunded when valid).
    charged: Option<Vec<u8>>,
    /// The `user-agent` header, kept for a lookup's answer when device activity is reported.
    user_agent: Option<Vec<u8>>,
    /// The token came as a bearer token, or with a DPoP proof that verified.
    possession: Possession,
}

/// A lookup under way for one request.
#[derive(Debug)]
struct Pending {
    call: u32,
    /// Feed pages applied when the lookup was dispatched.
    epoch: u64,
    token: String,
    tag: token::RoutingTag,
    digest: TokenDigest,
    /// The digests under previous hash keys asked for too (a rotation in progress).
    previous: Vec<TokenDigest>,
    source: Source,
    request: RequestInfo,
    /// Waits for another request's lookup of the same token.
    follower: bool,
}

/// A lookup's answer for the requests that followed it (see [`super::coalesce`]).
#[derive(Debug)]
pub struct Share {
    /// The answer, as the leader got it.
    pub answer: Result<Answer, CalloutProblem>,
    /// The followers' contexts.
    pub followers: Vec<u32>,
}

/// One request's flow.
#[derive(Debug, Default)]
pub struct HttpFlow {
    // boxed: a request that never waits (every cache hit) carries two null pointers, not a
    // lookup's worth of state set up and torn down for nothing
    pending: Option<Box<Pending>>,
    share: Option<Box<Share>>,
}

impl HttpFlow {
    /// A new request.
    pub fn new() -> Self {
        HttpFlow::default()
    }

    /// The call id this request waits for, if any.
    pub fn waiting_for(&self) -> Option<u32> {
        self.pending.as_ref().map(|p| p.call)
    }

    /// The lookup this request sent and waits for, as it was asked (what a reply is read against).
    pub fn lookup_request(&self, compiled: &Compiled) -> Option<LookupRequest> {
        let p = self.pending.as_ref().filter(|p| !p.follower)?;
        Some(lookup_request(compiled, p.tag, p.digest, &p.previous))
    }

    /// Request headers arrived.
    pub fn on_request_headers(&mut self, host: &mut dyn Host, worker: &mut Worker, now: u64) -> Step {
        worker.observe_clock(now);
        let compiled = Arc::clone(&worker.compiled);
        let config = &compiled.config;
        let headers = host.request_headers();
        let values = |name: &'static str| headers.values(name.as_bytes());
        // identity headers come only from us: drop whatever the client sent under those names, or
        // under a name a CGI/WSGI server maps to the same variable (`X_Multitokens_User`). On an
        // authenticated request the filter then adds its own; a denied request goes nowhere.
        for (name, _) in headers.iter() {
            if compiled.identity_headers.is_alias(name) {
                if let Ok(name) = std::str::from_utf8(name) {
                    host.remove_header(name);
                }
            }
        }
        // method and path only meet the rules, and only a canonical path does
        let method = values(":method").next().and_then(|m| std::str::from_utf8(m).ok()).unwrap_or_default();
        let raw_path = values(":path").next().unwrap_or_default();
        let path = if compiled.has_path_rules {
            match path::canonical(raw_path) {
                Ok(path) => path,
                Err(_) => return deny(host, &compiled, Denial::BadPath, Metric::DeniedBadPath, &[]),
            }
        } else {
            ""
        };
        // every method the upstream may run the request as: an override never meets an exclusion
        let methods = route::methods(method, raw_path, &headers, &config.upstream_routing);
        let overridden = methods.len() > 1;
        let cookie: Option<Vec<u8>> = match config.cookie {
            Some(_) => {
                let all: Vec<&[u8]> = values("cookie").collect();
                (!all.is_empty()).then(|| all.join(&b"; "[..]))
            }
            None => None,
        };
        let authorization: Vec<&[u8]> = values("authorization").collect();
        let strip_authorization =
            config.strip_credential && authorization.iter().any(|v| credential::has_scheme(v, &config.schemes));
        let preflight = config.cors_preflight == CorsPreflight::Pass
            && !overridden
            && method == "OPTIONS"
            && values("origin").next().is_some()
            && values("access-control-request-method").next().is_some()
            && !host.request_has_body()
            && values("transfer-encoding").next().is_none()
            && values("content-length").all(|v| v == b"0");
        if preflight || (!overridden && config.exclude.iter().any(|r| r.matches(method, path))) {
            // no token needed, and none reaches the upstream
            strip_credentials(host, &compiled, strip_authorization, cookie.as_deref());
            host.count(Metric::Excluded);
            return Step::Continue;
        }
        let route = if compiled.scope_rules.is_empty() || !compiled.has_path_rules {
            String::new()
        } else {
            match route::route_key(path, config.upstream_routing.case_sensitive) {
                Ok(key) => key,
                Err(_) => return deny(host, &compiled, Denial::BadPath, Metric::DeniedBadPath, &[]),
            }
        };
        let (token, source) = match credential::extract(
            &authorization,
            cookie.as_deref().as_slice(),
            &config.schemes,
            config.cookie.as_deref(),
        ) {
            Credential::Missing => return deny(host, &compiled, Denial::Missing, Metric::DeniedMissing, &[]),
            Credential::Empty | Credential::Malformed => {
                return deny(host, &compiled, Denial::Invalid, Metric::DeniedMalformed, &[])
            }
            Credential::Token(t, s) => (t, s),
        };
        // a cookie goes with every request to its site, whoever's page sent it: unsafe requests
        // from other sites are refused before any lookup
        if source == Source::Cookie
            && !config.csrf.allows(
                &methods,
                values("sec-fetch-site").next(),
                values("origin").next(),
                values(":authority").next().unwrap_or_default(),
            )
        {
            return deny(host, &compiled, Denial::CrossSite, Metric::DeniedCrossSite, &[]);
        }
        // the `DPoP` scheme: its proof verifies for this request before anything is asked
        let possession = match authorization.as_slice() {
            [value] if source == Source::Header && is_dpop_scheme(value) => {
                let first = |name| values(name).next().unwrap_or_default();
                let seen = Seen {
                    method: first(":method"),
                    scheme: first(":scheme"),
                    authority: first(":authority"),
                    path: raw_path,
                };
                let proofs: Vec<&[u8]> = values("dpop").collect();
                match super::dpop::prove(&config.dpop, &proofs, seen, token, now) {
                    Ok(proof) => match config.dpop.fresh_nonce(&proof, now) {
                        Ok(()) => Possession::Proven(proof),
                        Err(nonce) => {
                            host.count(Metric::DeniedDpop);
                            host.send_reply(&reply::use_dpop_nonce(&nonce));
                            return Step::Replied;
                        }
                    },
                    Err(_) => return deny(host, &compiled, Denial::DpopProof, Metric::DeniedDpop, &[]),
                }
            }
            _ => Possession::Bearer,
        };
        let mut request = RequestInfo {
            methods,
            route,
            cookie: cookie.clone(),
            strip_authorization,
            charged: None,
            user_agent: None,
            possession,
        };
        // a cached token passed the format check when it was cached: look it up first
        if let Some(entry) = worker.cache.get(token) {
            if entry.fresh_until > now {
                match entry.verdict {
                    Cached::Invalid => {
                        host.count(Metric::CacheHit);
                        return deny(host, &compiled, Denial::Invalid, Metric::DeniedInvalid, &[]);
                    }
                    Cached::Valid(_) if worker.tick_overdue(now) => host.count(Metric::TickOverdue),
                    Cached::Valid(identity) if worker.feed_is_current(now) => {
                        host.count(Metric::CacheHit);
                        let step =
                            authorize(host, &compiled, &mut worker.seen_proofs, identity, source, &request, now, false);
                        if let (Step::Continue, Some(stored)) = (step, entry.stored) {
                            note_activity(host, worker, stored, || values("user-agent").next(), now);
                        }
                        queue_refresh(worker, token, now);
                        return step;
                    }
                    Cached::Valid(_) => {}
                }
            }
        }
        // format and checksum: a malformed token never causes a callout
        let Ok(tag) = token::parse(token, &config.prefix) else {
            return deny(host, &compiled, Denial::Invalid, Metric::DeniedMalformed, &[]);
        };
        // the MAC: a token no hash key minted never causes a callout either, and a token whose MAC
        // verifies is never throttled, whatever its neighbours sent
        let charged = match compiled.hash_keys.origin(token, &config.prefix) {
            Origin::Issued => None,
            Origin::Forged => return deny(host, &compiled, Denial::Invalid, Metric::DeniedForged, &[]),
            Origin::Unchecked if !config.accept_legacy_tokens => {
                return deny(host, &compiled, Denial::Invalid, Metric::DeniedForged, &[])
            }
            // a token the edge cannot check: its lookup is charged to the client's address
            Origin::Unchecked => match charge_lookup(host, worker, now) {
                Ok(client) => client,
                Err(step) => return step,
            },
        };
        host.count(Metric::CacheMiss);
        request.charged = charged;
        if worker.activity.is_some() {
            request.user_agent = values("user-agent").next().map(<[u8]>::to_vec);
        }
        self.look_up(host, worker, token.to_string(), tag, source, request, now)
    }

    /// Asks the store about a well-formed token that is not cached: follows a lookup of the same
    /// token already under way when the cache is on, else sends one (that others may follow).
    #[allow(clippy::too_many_arguments)]
    fn look_up(
        &mut self,
        host: &mut dyn Host,
        worker: &mut Worker,
        token: String,
        tag: token::RoutingTag,
        source: Source,
        request: RequestInfo,
        now: u64,
    ) -> Step {
        let compiled = Arc::clone(&worker.compiled);
        let mut digests = compiled.hash_keys.digests(&token).into_iter();
        let Some(digest) = digests.next() else {
            return deny(host, &compiled, Denial::Invalid, Metric::DeniedMalformed, &[]);
        };
        let previous: Vec<TokenDigest> = digests.collect();
        // with the cache off every request is checked on its own
        let shared = compiled.config.cache.max_entries > 0;
        if shared {
            if let Some(joined) = worker.in_flight.follow(&token, host.context_id(), now, worker.max_lookup_wait_ms()) {
                host.count(Metric::LookupShared);
                let (call, epoch) = (joined.call, joined.epoch);
                let pending = Pending { call, epoch, token, tag, digest, previous, source, request, follower: true };
                self.pending = Some(Box::new(pending));
                return Step::Pause;
            }
        }
        match host.dispatch_lookup(&lookup_request(&compiled, tag, digest, &previous)) {
            Ok(call) => {
                let epoch = worker.feed.epoch;
                if shared {
                    worker.in_flight.lead(&token, host.context_id(), call, epoch, now);
                }
                let pending = Pending { call, epoch, token, tag, digest, previous, source, request, follower: false };
                self.pending = Some(Box::new(pending));
                Step::Pause
            }
            Err(e) => {
                host.warn(&format!("multitokens: cannot dispatch the lookup: {e}"));
                host.count(Metric::CalloutFailed);
                unavailable(host, worker, &token, source, &request, now)
            }
        }
    }

    /// The answer this request's lookup got, for the requests that followed it (taken once).
    pub fn take_share(&mut self) -> Option<Share> {
        self.share.take().map(|share| *share)
    }

    /// The lookup this request followed will not be answered (its leader is gone): look up again.
    pub fn retry(&mut self, host: &mut dyn Host, worker: &mut Worker, now: u64) -> Step {
        match self.pending.take() {
            Some(p) => self.look_up(host, worker, p.token, p.tag, p.source, p.request, now),
            None => Step::Continue,
        }
    }

    /// This request's stream is gone: stop waiting. Returns the requests that followed its lookup,
    /// which must look up again (the host cancels a gone stream's callouts).
    pub fn on_gone(&mut self, worker: &mut Worker, context: u32) -> Vec<u32> {
        match self.pending.take() {
            Some(_) => worker.in_flight.leave(context),
            None => Vec::new(),
        }
    }

    /// Request trailers arrived: a client cannot add identity headers through them either.
    pub fn on_request_trailers(&mut self, host: &mut dyn Host, worker: &Worker) {
        let trailers = host.request_trailers();
        for (name, _) in trailers.iter() {
            if worker.compiled.identity_headers.is_alias(name) {
                if let Ok(name) = std::str::from_utf8(name) {
                    host.remove_trailer(name);
                }
            }
        }
    }

    /// The lookup answered (already interpreted by the transport).
    pub fn on_lookup_response(
        &mut self,
        host: &mut dyn Host,
        worker: &mut Worker,
        answer: Result<Answer, CalloutProblem>,
        now: u64,
    ) -> Step {
        let Some(mut p) = self.pending.take() else { return Step::Continue };
        if !p.follower {
            let followers = worker.in_flight.finish(&p.token, p.call);
            if !followers.is_empty() {
                self.share = Some(Box::new(Share { answer: answer.clone(), followers }));
            }
        }
        if let (Ok(Answer::Valid(..) | Answer::ValidUnderPrevious(..)), Some(client)) = (&answer, &p.request.charged) {
            if let Some(throttle) = worker.throttle.as_mut() {
                throttle.refund(client);
            }
        }
        match answer {
            Ok(Answer::Valid(identity, expires_in_ms)) => accept(host, worker, &p, identity, expires_in_ms, now),
            // stored under a previous key's digest: revocations (and its re-keying) are published
            // under that one, so the verdict is checked against and cached by it
            Ok(Answer::ValidUnderPrevious(identity, expires_in_ms, n)) => match p.previous.get(n) {
                Some(stored) => {
                    p.digest = *stored;
                    accept(host, worker, &p, identity, expires_in_ms, now)
                }
                None => no_answer(
                    host,
                    worker,
                    &p,
                    CalloutProblem::BadResponse("the lookup answer names a digest not asked for".into()),
                    now,
                ),
            },
            Ok(Answer::Tampered) => {
                host.warn("multitokens: a token record's seal does not verify (rewritten in Redis?): refused");
                remember_refused(worker, &p.token, now);
                deny(host, &worker.compiled, Denial::Invalid, Metric::DeniedTampered, &[])
            }
            Ok(Answer::Invalid) => {
                remember_refused(worker, &p.token, now);
                deny(host, &worker.compiled, Denial::Invalid, Metric::DeniedInvalid, &[])
            }
            Err(problem) => no_answer(host, worker, &p, problem, now),
        }
    }
}

/// The lookup of a token by its digests (a sliding refresh when configured; with previous hash
/// keys, the current key's id so the companion may re-key the record).
fn lookup_request(
    compiled: &Compiled,
    tag: token::RoutingTag,
    digest: TokenDigest,
    previous: &[TokenDigest],
) -> LookupRequest {
    let refresh_ttl = compiled.config.refresh_on_use.as_ref().map(|r| r.ttl);
    let key_id = (!previous.is_empty()).then(|| compiled.hash_keys.current().key_id());
    LookupRequest { tag, digest, previous: previous.to_vec(), key_id, refresh_ttl }
}

/// A lookup said the token is valid: authorize the request, and cache the verdict by the digest
/// the record is stored under when the feed can vouch for it.
fn accept(
    host: &mut dyn Host,
    worker: &mut Worker,
    p: &Pending,
    identity: Identity,
    expires_in_ms: Option<u64>,
    now: u64,
) -> Step {
    // the store was read before the feed pages applied since: one of them may have revoked this
    // very token, and then the answer is already stale
    let revoked = worker.feed.revoked_since(p.epoch, &p.digest);
    if revoked == Some(true) {
        return deny(host, &worker.compiled, Denial::Invalid, Metric::DeniedInvalid, &[]);
    }
    let cfg = &worker.compiled.config;
    // a positive entry never outlives the token
    let token_left = expires_in_ms.unwrap_or(u64::MAX);
    let fresh = cfg.cache.ttl_ms.min(token_left);
    let usable = match cfg.failure_mode {
        FailureMode::AllowCached => cfg.stale_window_ms.min(token_left),
        FailureMode::Deny => fresh,
    };
    let refreshed_at = if cfg.refresh_on_use.is_some() { now } else { 0 };
    let r = &p.request;
    let step = authorize(host, &worker.compiled, &mut worker.seen_proofs, identity.view(), p.source, r, now, false);
    if step == Step::Continue {
        note_activity(host, worker, Stored { tag: p.tag, digest: p.digest }, || r.user_agent.as_deref(), now);
    }
    if revoked.is_none() {
        return step; // the feed cannot vouch for this answer: use it once, never cache it
    }
    let lifetime = Lifetime { fresh_until: now + fresh, usable_until: now + usable, refreshed_at };
    worker.cache.insert_valid(&p.token, Stored { tag: p.tag, digest: p.digest }, &identity, lifetime, now);
    step
}

/// The store could not be asked, or answered badly: the failure mode decides.
fn no_answer(host: &mut dyn Host, worker: &mut Worker, p: &Pending, problem: CalloutProblem, now: u64) -> Step {
    match &problem {
        CalloutProblem::NoResponse => host.count(Metric::CalloutFailed),
        CalloutProblem::BadResponse(why) => {
            host.count(Metric::CalloutError);
            host.warn(&format!("multitokens: token store answered badly: {why}"));
        }
    }
    unavailable(host, worker, &p.token, p.source, &p.request, now)
}

fn deny(host: &mut dyn Host, compiled: &Compiled, denial: Denial, metric: Metric, missing: &[&str]) -> Step {
    host.count(metric);
    match compiled.replies.get(denial) {
        Some(fixed) => host.send_reply(fixed),
        None => host.send_reply(&reply::deny(denial, &compiled.config.realm, missing)),
    }
    Step::Replied
}

/// The store could not be asked: `allow_cached` may accept a recently verified token.
fn unavailable(
    host: &mut dyn Host,
    worker: &mut Worker,
    token: &str,
    source: Source,
    request: &RequestInfo,
    now: u64,
) -> Step {
    let compiled = &worker.compiled;
    if compiled.config.failure_mode == FailureMode::AllowCached {
        if let Some(Entry { verdict: Cached::Valid(identity), usable_until, .. }) = worker.cache.get(token) {
            if usable_until > now {
                return authorize(host, compiled, &mut worker.seen_proofs, identity, source, request, now, true);
            }
        }
    }
    deny(host, compiled, Denial::Unavailable, Metric::DeniedUnavailable, &[])
}

mod authorize;
mod upkeep;
use authorize::{authorize, strip_credentials};
use upkeep::{charge_lookup, note_activity, queue_refresh, remember_refused};

#[cfg(test)]
mod tests;
