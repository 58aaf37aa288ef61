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
use multitokens_core::token::{self, Origin};
use std::rc::Rc;

/// What the decision needs from a request, read once from its headers.
#[derive(Debug, Default)]
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
    pending: Option<Pending>,
    share: Option<Share>,
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

    /// Request headers arrived.
    pub fn on_request_headers(&mut self, host: &mut dyn Host, worker: &mut Worker, now: u64) -> Step {
        worker.observe_clock(now);
        let compiled = Rc::clone(&worker.compiled);
        let config = &compiled.config;
        let headers = host.request_headers();
        let values =
            |name: &'static str| headers.iter().filter(move |(k, _)| k == name.as_bytes()).map(|(_, v)| v.as_slice());
        // identity headers come only from us: drop whatever the client sent under those names, or
        // under a name a CGI/WSGI server maps to the same variable (`X_Multitokens_User`). On an
        // authenticated request the filter then sets them; a denied request goes nowhere.
        for (name, _) in &headers {
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
        let ours = |value: &&[u8]| {
            let scheme = value.split(|b| *b == b' ').next().unwrap_or_default();
            config.schemes.iter().any(|s| s.as_bytes().eq_ignore_ascii_case(scheme))
        };
        let strip_authorization = config.strip_credential && authorization.iter().any(ours);
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
        let mut request = RequestInfo { methods, route, cookie: cookie.clone(), strip_authorization, charged: None };
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
                        let step = authorize(host, &compiled, identity, source, &request, false);
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
        let compiled = Rc::clone(&worker.compiled);
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
                self.pending =
                    Some(Pending { call, epoch, token, tag, digest, previous, source, request, follower: true });
                return Step::Pause;
            }
        }
        let refresh_ttl = compiled.config.refresh_on_use.as_ref().map(|r| r.ttl);
        let key_id = (!previous.is_empty()).then(|| compiled.hash_keys.current().key_id());
        match host.dispatch_lookup(&LookupRequest { tag, digest, previous: previous.clone(), key_id, refresh_ttl }) {
            Ok(call) => {
                let epoch = worker.feed.epoch;
                if shared {
                    worker.in_flight.lead(&token, host.context_id(), call, epoch, now);
                }
                self.pending =
                    Some(Pending { call, epoch, token, tag, digest, previous, source, request, follower: false });
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
        self.share.take()
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
        for (name, _) in host.request_trailers() {
            if worker.compiled.identity_headers.is_alias(&name) {
                if let Ok(name) = std::str::from_utf8(&name) {
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
                self.share = Some(Share { answer: answer.clone(), followers });
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
    let step = authorize(host, &worker.compiled, identity.view(), p.source, r, false);
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

/// Queues a sliding refresh of a cached token if one is due.
fn queue_refresh(worker: &mut Worker, token: &str, now: u64) {
    let Some(refresh) = worker.compiled.config.refresh_on_use.as_ref() else { return };
    let (min_interval_ms, ttl) = (refresh.min_interval_ms, refresh.ttl);
    if worker.refresh_queue.len() >= MAX_REFRESH_QUEUE {
        return;
    }
    let Some(stored) = worker.cache.refresh_due(token, now, min_interval_ms) else { return };
    let request = LookupRequest {
        tag: stored.tag,
        digest: stored.digest,
        previous: Vec::new(),
        key_id: None,
        refresh_ttl: Some(ttl),
    };
    worker.refresh_queue.push(request);
}

fn deny(host: &mut dyn Host, compiled: &Compiled, denial: Denial, metric: Metric, missing: &[&str]) -> Step {
    host.count(metric);
    match compiled.replies.get(denial) {
        Some(fixed) => host.send_reply(fixed),
        None => host.send_reply(&reply::deny(denial, &compiled.config.realm, missing)),
    }
    Step::Replied
}

/// Remembers a token the store refused, so that re-sending it costs no lookup for
/// `negative_ttl_ms`.
fn remember_refused(worker: &mut Worker, token: &str, now: u64) {
    let ttl = worker.compiled.config.cache.negative_ttl_ms;
    worker.cache.insert_invalid(token, now + ttl, now);
}

/// Charges the lookup of a token the edge cannot check by its MAC to the client's address: 429 if
/// the address has spent its budget (`throttle`), else the address charged (`None` when the
/// throttle is off or the address unknown).
fn charge_lookup(host: &mut dyn Host, worker: &mut Worker, now: u64) -> Result<Option<Vec<u8>>, Step> {
    let Some(throttle) = worker.throttle.as_mut() else { return Ok(None) };
    let Some(address) = host.client_address() else { return Ok(None) };
    let client = client_key(&address);
    if let Some(seconds) = throttle.retry_after(client, now) {
        return Err(deny(host, &worker.compiled, Denial::Throttled(seconds), Metric::DeniedThrottled, &[]));
    }
    throttle.record_failure(client, now);
    Ok(Some(client.to_vec()))
}

/// The store could not be asked: `allow_cached` may accept a recently verified token.
fn unavailable(
    host: &mut dyn Host,
    worker: &Worker,
    token: &str,
    source: Source,
    request: &RequestInfo,
    now: u64,
) -> Step {
    let compiled = &worker.compiled;
    if compiled.config.failure_mode == FailureMode::AllowCached {
        if let Some(Entry { verdict: Cached::Valid(identity), usable_until, .. }) = worker.cache.get(token) {
            if usable_until > now {
                return authorize(host, compiled, identity, source, request, true);
            }
        }
    }
    deny(host, compiled, Denial::Unavailable, Metric::DeniedUnavailable, &[])
}

/// Lets a request with a valid token through: scope check, identity headers, credential strip.
fn authorize(
    host: &mut dyn Host,
    compiled: &Compiled,
    identity: IdentityView<'_>,
    source: Source,
    request: &RequestInfo,
    stale: bool,
) -> Step {
    let missing = missing_scopes(&compiled.scope_rules, &request.methods, &request.route, identity);
    if !missing.is_empty() {
        return deny(host, compiled, Denial::Scope, Metric::DeniedScope, &missing);
    }
    // replacing sets exactly one value: whatever the client sent under these names is gone
    let names = &compiled.identity_headers;
    host.set_header(&names.user, identity.user.as_bytes());
    for (name, value) in
        [(&names.device, identity.device), (&names.scopes, identity.scopes), (&names.token_id, identity.id)]
    {
        if let Some(name) = name {
            host.set_header(name, value.as_bytes());
        }
    }
    if let Some(name) = &names.credential {
        let from =
            if source == Source::Cookie { contract::CREDENTIAL_FROM_COOKIE } else { contract::CREDENTIAL_FROM_HEADER };
        host.set_header(name, from.as_bytes());
    }
    strip_credentials(host, compiled, request.strip_authorization, request.cookie.as_deref());
    host.count(if stale { Metric::AllowedStale } else { Metric::Allowed });
    Step::Continue
}

/// Removes our credentials before the upstream (unless `strip_credential` is off): an
/// `Authorization` header with one of our schemes, and the token cookie from the `Cookie` headers,
/// whichever of them carried the token.
fn strip_credentials(host: &mut dyn Host, compiled: &Compiled, strip_authorization: bool, cookies: Option<&[u8]>) {
    if strip_authorization {
        host.remove_header("authorization");
    }
    if let (true, Some(name), Some(cookies)) =
        (compiled.config.strip_credential, compiled.config.cookie.as_deref(), cookies)
    {
        let ours = cookies
            .split(|b| *b == b';')
            .map(<[u8]>::trim_ascii)
            .any(|c| c.starts_with(name.as_bytes()) && c.get(name.len()) == Some(&b'='));
        if ours {
            match credential::without_cookie(&[cookies], name) {
                Some(rest) => host.set_header("cookie", &rest),
                None => host.remove_header("cookie"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::companion_transport;
    use crate::lookup;
    use crate::memory_host::MemoryHost;
    use multitokens_core::digest::TokenHasher;

    fn worker(extra: &str) -> Worker {
        let json = format!(
            r#"{{"companion": {{"cluster": "c", "api_key": "k"}}, "exclude": [{{"path": "/healthz"}}],
               "required_scopes": [{{"prefix": "/admin", "scopes": ["admin"]}}] {extra}}}"#
        );
        Worker::new(Compiled::parse(json.as_bytes()).unwrap())
    }

    fn request(path: &str, auth: Option<&str>) -> MemoryHost {
        let mut h = MemoryHost::request("GET", path.as_bytes());
        h.client_address = Some(b"192.0.2.7:40000".to_vec());
        h.add_header("x-multitokens-user", b"spoofed");
        if let Some(a) = auth {
            h.add_header("authorization", a.as_bytes());
        }
        h
    }

    const VALID: &[u8] =
        br#"{"active":true,"user":"alice","device":"phone","scopes":["read"],"expires_in":3600,"id":"abc"}"#;

    fn run(w: &mut Worker, path: &str, token: &str, answer: Option<(Option<u32>, &[u8])>, now: u64) -> MemoryHost {
        let mut h = request(path, Some(&format!("Bearer {token}")));
        let mut flow = HttpFlow::new();
        let step = flow.on_request_headers(&mut h, w, now);
        if step == Step::Pause {
            let (status, body) = answer.expect("a lookup was made");
            flow.on_lookup_response(&mut h, w, companion_transport::parse_answer(status, body), now);
        }
        h
    }

    fn follow_feed(w: &mut Worker, now: u64) {
        w.record_tick(now);
        w.apply_feed(lookup::FeedPage { cursor: "1-0".into(), digests: vec![], reset: false, more: false }, now);
    }

    /// A request for `token` in context `context`, its headers run.
    fn begin(w: &mut Worker, token: &str, context: u32, now: u64) -> (MemoryHost, HttpFlow, Step) {
        let mut h = request("/api", Some(&format!("Bearer {token}")));
        h.context_id = context;
        let mut flow = HttpFlow::new();
        let step = flow.on_request_headers(&mut h, w, now);
        (h, flow, step)
    }

    #[test]
    fn concurrent_misses_of_one_token_share_one_lookup() {
        let mut w = worker("");
        follow_feed(&mut w, 0);
        let t = token::generate("mt", "alice").unwrap();
        let (mut a, mut leader, step) = begin(&mut w, &t, 1, 10);
        assert_eq!((step, a.lookups.len()), (Step::Pause, 1));
        let mut followers: Vec<_> = (2..5).map(|c| begin(&mut w, &t, c, 11)).collect();
        for (h, _, step) in &followers {
            assert_eq!(
                (*step, h.lookups.len(), h.counted(Metric::LookupShared)),
                (Step::Pause, 0, 1),
                "no lookup of its own"
            );
        }
        let (other, _, _) = begin(&mut w, &token::generate("mt", "bob").unwrap(), 9, 11);
        assert_eq!(other.lookups.len(), 1, "another token is looked up");
        assert_eq!(
            leader.on_lookup_response(&mut a, &mut w, companion_transport::parse_answer(Some(200), VALID), 20),
            Step::Continue
        );
        let share = leader.take_share().expect("followers wait");
        assert_eq!(share.followers, vec![2, 3, 4]);
        assert!(leader.take_share().is_none(), "handed over once");
        for (h, flow, _) in &mut followers {
            assert_eq!(flow.on_lookup_response(h, &mut w, share.answer.clone(), 20), Step::Continue);
            assert_eq!(h.header("x-multitokens-user"), Some(&b"alice"[..]));
            assert!(flow.take_share().is_none());
        }
        // answered: the next request is a cache hit, not a follower
        let (h, _, step) = begin(&mut w, &t, 6, 30);
        assert_eq!((step, h.counted(Metric::CacheHit)), (Step::Continue, 1));
    }

    #[test]
    fn a_follower_honours_revocations_since_the_shared_lookup_was_sent() {
        let mut w = worker("");
        follow_feed(&mut w, 0);
        let t = token::generate("mt", "alice").unwrap();
        let digest = TokenHasher::new(None).digest(&t);
        let (mut a, mut leader, _) = begin(&mut w, &t, 1, 10);
        // revoked after the lookup was sent, before the follower came: the store may have read the
        // record before the revocation, so the follower must not believe the answer either
        w.apply_feed(
            lookup::FeedPage { cursor: "2-0".into(), digests: vec![digest.to_hex()], reset: false, more: false },
            12,
        );
        let (mut b, mut follower, step) = begin(&mut w, &t, 2, 13);
        assert_eq!((step, b.lookups.len()), (Step::Pause, 0));
        leader.on_lookup_response(&mut a, &mut w, companion_transport::parse_answer(Some(200), VALID), 20);
        let share = leader.take_share().unwrap();
        assert_eq!(follower.on_lookup_response(&mut b, &mut w, share.answer, 20), Step::Replied);
        assert_eq!((a.replies[0].status, b.replies[0].status), (401, 401));
        assert!(w.cache.get(&t).is_none());
    }

    #[test]
    fn followers_of_a_gone_leader_look_up_again_and_without_a_cache_nobody_follows() {
        let mut w = worker("");
        follow_feed(&mut w, 0);
        let t = token::generate("mt", "alice").unwrap();
        let (_a, mut leader, _) = begin(&mut w, &t, 1, 10);
        let (mut b, mut second, _) = begin(&mut w, &t, 2, 11);
        let (mut c, mut third, _) = begin(&mut w, &t, 3, 11);
        assert_eq!(leader.on_gone(&mut w, 1), vec![2, 3]);
        assert_eq!(second.retry(&mut b, &mut w, 12), Step::Pause);
        assert_eq!(b.lookups.len(), 1, "the first to retry leads a new lookup");
        assert_eq!(third.retry(&mut c, &mut w, 12), Step::Pause);
        assert_eq!(c.lookups.len(), 0, "the next follows it");
        assert_eq!(second.on_gone(&mut w, 2), vec![3]);
        assert_eq!(third.on_gone(&mut w, 3), Vec::<u32>::new(), "a follower just leaves");
        assert!(w.in_flight.is_empty());

        let mut off = worker(r#", "cache": {"max_entries": 0}"#);
        follow_feed(&mut off, 0);
        let (a, _, _) = begin(&mut off, &t, 1, 10);
        let (b, _, _) = begin(&mut off, &t, 2, 10);
        assert_eq!(
            (a.lookups.len(), b.lookups.len()),
            (1, 1),
            "with the cache off every request is checked on its own"
        );
    }

    #[test]
    fn missing_and_malformed_credentials_never_call_out() {
        let mut w = worker("");
        let mut h = request("/api", None);
        assert_eq!(HttpFlow::new().on_request_headers(&mut h, &mut w, 0), Step::Replied);
        assert_eq!(h.replies[0].status, 401);
        assert!(h.replies[0].body.contains("not provided"));
        let t = token::generate("mt", "alice").unwrap();
        for bad in [&t[1..], &t[..t.len() - 1], "Zm9v", "mt_"] {
            let h = run(&mut w, "/api", bad, None, 0);
            assert_eq!(h.replies[0].status, 401);
            assert!(h.replies[0].body.contains("Invalid token."));
            assert!(h.lookups.is_empty());
        }
    }

    #[test]
    fn header_bytes_that_are_not_utf8_never_reach_a_lookup() {
        let mut w = worker("");
        let t = token::generate("mt", "alice").unwrap();
        let mut h = request("/api", None);
        h.set_header("authorization", &[b"Bearer ".as_slice(), t.as_bytes(), b"\xff"].concat());
        h.set_header("user-agent", b"\xff\xfe");
        assert_eq!(HttpFlow::new().on_request_headers(&mut h, &mut w, 0), Step::Replied);
        assert_eq!(h.replies[0].status, 401);
        assert!(h.replies[0].body.contains("Invalid token."));
        assert!(h.lookups.is_empty() && h.counted(Metric::DeniedMalformed) > 0);
        // a path that is not UTF-8 is no canonical path: refused, never excluded by accident
        let mut h = request("/healthz", None);
        h.set_header(":path", b"/\xffhealthz");
        assert_eq!(HttpFlow::new().on_request_headers(&mut h, &mut w, 0), Step::Replied);
        assert_eq!(h.replies[0].status, 400);
    }

    #[test]
    fn only_canonical_paths_meet_the_rules() {
        let mut w = worker("");
        follow_feed(&mut w, 0);
        let t = token::generate("mt", "alice").unwrap();
        for raw in [
            "/healthz/../admin/users",
            "/admin//users",
            "/%61dmin/users",
            "/admin;x/users",
            "/healthz/%2e%2e/admin",
            "/admin%2Fusers",
        ] {
            let mut h = request(raw, None);
            assert_eq!(HttpFlow::new().on_request_headers(&mut h, &mut w, 0), Step::Replied, "{raw}");
            assert_eq!((h.replies[0].status, h.counted(Metric::DeniedBadPath)), (400, 1), "{raw}");
            let h = run(&mut w, raw, &t, Some((Some(200), VALID)), 0);
            assert_eq!(h.replies[0].status, 400, "{raw} with a token");
            assert!(h.lookups.is_empty());
        }
        // the canonical form with a query string passes and meets the scope rule
        assert_eq!(run(&mut w, "/admin/users?next=/../x", &t, Some((Some(200), VALID)), 0).replies[0].status, 403);
        assert!(run(&mut w, "/healthz?x=1", &t, None, 0).replies.is_empty());
    }

    #[test]
    fn client_identity_headers_under_any_spelling_never_pass() {
        let mut w = worker("");
        follow_feed(&mut w, 0);
        let t = token::generate("mt", "alice").unwrap();
        for path in ["/healthz", "/api"] {
            let mut h = request(path, Some(&format!("Bearer {t}")));
            for name in ["x_multitokens_user", "x-multitokens_scopes", "X_MULTITOKENS_TOKEN_ID", "x-multitokens-device"]
            {
                h.set_header(name, b"admin");
            }
            let mut flow = HttpFlow::new();
            if flow.on_request_headers(&mut h, &mut w, 0) == Step::Pause {
                flow.on_lookup_response(&mut h, &mut w, companion_transport::parse_answer(Some(200), VALID), 0);
            }
            let left: Vec<_> =
                h.headers.iter().filter(|(_, v)| v.as_slice() == b"admin").map(|(k, _)| k.clone()).collect();
            assert!(left.is_empty(), "{path}: {left:?} reached the upstream");
            h.add_trailer("x_multitokens_user", b"admin");
            h.add_trailer("x-multitokens-user", b"admin");
            h.add_trailer("grpc-status", b"0");
            flow.on_request_trailers(&mut h, &w);
            assert_eq!(h.trailer_names(), ["grpc-status"], "trailers cannot add identity headers");
        }
    }

    #[test]
    fn during_a_rotation_a_verdict_is_cached_by_the_digest_its_record_is_stored_under() {
        let mut w = worker(&format!(r#", "hash_key": "{KEY}", "previous_hash_keys": ["old"]"#));
        let t = token::generate("mt", "alice").unwrap();
        let old = TokenHasher::new(Some(b"old")).digest(&t);
        let stored_under_old = br#"{"active":true,"user":"alice","id":"abc","stored_under":1}"#;
        follow_feed(&mut w, 0);
        let h = run(&mut w, "/api", &t, Some((Some(200), stored_under_old)), 1);
        assert_eq!(h.header("x-multitokens-user").unwrap(), b"alice");
        let sent = &h.lookups[0];
        assert!(sent.contains(&format!("previous={}", old.to_hex())), "{sent}");
        assert!(sent.contains(&format!("key_id={}", TokenHasher::new(Some(KEY.as_bytes())).key_id())), "{sent}");
        assert!(run(&mut w, "/api", &t, None, 2).lookups.is_empty(), "cached");
        // the old digest revoked (or re-keyed away): the entry goes
        w.apply_feed(
            lookup::FeedPage { cursor: "2-0".into(), digests: vec![old.to_hex()], reset: false, more: false },
            3,
        );
        assert_eq!(run(&mut w, "/api", &t, Some((Some(200), VALID)), 4).lookups.len(), 1, "looked up again");
        // an answer naming a digest that was not asked for is a bad answer, never a verdict
        let u = token::generate("mt", "bob").unwrap();
        let h =
            run(&mut w, "/api", &u, Some((Some(200), br#"{"active":true,"user":"bob","id":"x","stored_under":2}"#)), 5);
        assert_eq!(h.replies[0].status, 503);
        assert!(h.counted(Metric::CalloutError) > 0);
    }

    #[test]
    fn identity_headers_are_always_replaced() {
        let mut w = worker("");
        let mut h = request("/healthz", None);
        assert_eq!(HttpFlow::new().on_request_headers(&mut h, &mut w, 0), Step::Continue);
        assert!(h.header("x-multitokens-user").is_none(), "spoofed header removed on excluded path");
        let t = token::generate("mt", "alice").unwrap();
        let h = run(&mut w, "/api", &t, Some((Some(200), VALID)), 0);
        assert_eq!(h.header("x-multitokens-user").unwrap(), b"alice");
        assert_eq!(h.header("x-multitokens-device").unwrap(), b"phone");
        assert_eq!(h.header("x-multitokens-scopes").unwrap(), b"read");
        assert_eq!(h.header("x-multitokens-token-id").unwrap(), b"abc");
        assert!(h.header("authorization").is_none(), "credential stripped");
        assert!(h.lookups[0].contains(&format!("digest={}", TokenHasher::new(None).digest(&t).to_hex())));
        assert!(!h.lookups[0].contains(&t[3..]), "the token itself never leaves the filter");
    }

    #[test]
    fn cache_serves_positives_only_while_following_the_feed() {
        let mut w = worker("");
        let t = token::generate("mt", "alice").unwrap();
        run(&mut w, "/api", &t, Some((Some(200), VALID)), 1000);
        // no feed page yet: ask again
        assert_eq!(run(&mut w, "/api", &t, Some((Some(200), VALID)), 1100).lookups.len(), 1);
        // the first page drops what was cached before it; from then on the cache serves
        follow_feed(&mut w, 1200);
        assert!(w.cache.is_empty(), "the first page after start drops every verdict");
        assert_eq!(run(&mut w, "/api", &t, Some((Some(200), VALID)), 1250).lookups.len(), 1);
        let h = run(&mut w, "/api", &t, None, 1300);
        assert!(h.lookups.is_empty() && h.counted(Metric::CacheHit) > 0);
        assert_eq!(h.header("x-multitokens-user").unwrap(), b"alice");
        // revoked through the feed: the next request asks the store
        let digest = TokenHasher::new(None).digest(&t).to_hex();
        assert_eq!(
            w.apply_feed(
                lookup::FeedPage { cursor: "2-0".into(), digests: vec![digest], reset: false, more: false },
                1400
            ),
            1
        );
        let h = run(&mut w, "/api", &t, Some((Some(200), br#"{"active":false}"#)), 1500);
        assert_eq!(h.replies[0].status, 401);
        // the negative verdict is cached
        assert!(run(&mut w, "/api", &t, None, 1600).lookups.is_empty());
        // the feed goes silent: positives are no longer trusted from the cache
        let u = token::generate("mt", "alice").unwrap();
        run(&mut w, "/api", &u, Some((Some(200), VALID)), 1700);
        assert!(run(&mut w, "/api", &u, None, 1800).lookups.is_empty());
        assert_eq!(run(&mut w, "/api", &u, Some((Some(200), VALID)), 1400 + 3 * 1000 + 501).lookups.len(), 1);
    }

    #[test]
    fn cached_positives_are_not_trusted_once_the_tick_stops() {
        let mut w = worker("");
        follow_feed(&mut w, 0);
        let t = token::generate("mt", "alice").unwrap();
        run(&mut w, "/api", &t, Some((Some(200), VALID)), 0);
        assert!(run(&mut w, "/api", &t, None, 2000).lookups.is_empty(), "served from the cache");
        // a feed page still arrives, but the timer has not ticked for 2.6 s: ask the store
        w.apply_feed(lookup::FeedPage { cursor: "2-0".into(), digests: vec![], reset: false, more: false }, 2550);
        let h = run(&mut w, "/api", &t, Some((Some(200), br#"{"active":false}"#)), 2600);
        assert_eq!(h.lookups.len(), 1);
        assert!(h.counted(Metric::TickOverdue) > 0);
        assert_eq!(h.replies[0].status, 401, "revoked in the store: refused");
        // the tick comes back: the cache is trusted again
        follow_feed(&mut w, 2700);
        let u = token::generate("mt", "alice").unwrap();
        run(&mut w, "/api", &u, Some((Some(200), VALID)), 2700);
        assert!(run(&mut w, "/api", &u, None, 2800).lookups.is_empty());
    }

    #[test]
    fn metric_indexes_follow_the_list() {
        for (i, m) in Metric::ALL.iter().enumerate() {
            assert_eq!(m.index(), i, "{m:?}");
        }
    }

    const KEY: &str = "test-hash-key-0123456789abcdef0123456789abcdef";

    fn keyed_token(user: &str) -> String {
        TokenHasher::new(Some(KEY.as_bytes())).mint("mt", user).unwrap()
    }

    #[test]
    fn forged_tokens_are_refused_without_a_lookup_and_never_throttle_a_valid_one() {
        let mut w = worker(&format!(r#", "hash_key": "{KEY}", "throttle": {{"max_failures": 3, "window_ms": 60000}}"#));
        follow_feed(&mut w, 0);
        for i in 0..100 {
            let forged = token::forge("mt", "mallory").unwrap();
            let h = run(&mut w, "/api", &forged, None, i);
            assert_eq!((h.replies[0].status, h.lookups.len()), (401, 0), "forged token {i}");
            assert_eq!(h.counted(Metric::DeniedForged), 1);
        }
        // a token minted under the key, from the same address: looked up and let through
        let good = keyed_token("alice");
        let h = run(&mut w, "/api", &good, Some((Some(200), VALID)), 200);
        assert_eq!((h.replies.len(), h.lookups.len()), (0, 1));
        // a revoked one re-sent: one lookup, then the negative cache; 401 every time, never 429
        let revoked = keyed_token("bob");
        let unknown = Some((Some(200), &br#"{"active":false}"#[..]));
        let mut lookups = 0;
        for i in 0..50 {
            let h = run(&mut w, "/api", &revoked, unknown, 300 + i);
            assert_eq!(h.replies[0].status, 401);
            lookups += h.lookups.len();
        }
        assert_eq!(lookups, 1, "at most one lookup per negative_ttl_ms");
        let fresh = keyed_token("carol");
        let h = run(&mut w, "/api", &fresh, Some((Some(200), VALID)), 400);
        assert!(h.replies.is_empty(), "a new login on the same address is served: {:?}", h.replies);
    }

    #[test]
    fn old_format_tokens_are_refused_unlooked_once_legacy_tokens_are_off() {
        let mut w = worker(&format!(r#", "hash_key": "{KEY}", "accept_legacy_tokens": false"#));
        follow_feed(&mut w, 0);
        let h = run(&mut w, "/api", &token::generate("mt", "alice").unwrap(), None, 1);
        assert_eq!((h.replies[0].status, h.lookups.len()), (401, 0));
        assert!(Compiled::parse(br#"{"companion": {"cluster": "c", "api_key": "k"}, "accept_legacy_tokens": false}"#)
            .unwrap_err()
            .contains("accept_legacy_tokens"));
        // while on (the default), an old-format token is looked up as before
        let mut w = worker(&format!(r#", "hash_key": "{KEY}""#));
        follow_feed(&mut w, 0);
        let h = run(&mut w, "/api", &token::generate("mt", "alice").unwrap(), Some((Some(200), VALID)), 1);
        assert_eq!((h.replies.len(), h.lookups.len()), (0, 1));
    }

    #[test]
    fn unchecked_lookups_are_charged_when_sent_and_refunded_when_valid() {
        let mut w = worker(r#", "throttle": {"max_failures": 3, "window_ms": 60000}"#);
        follow_feed(&mut w, 0);
        let unknown = Some((Some(200), &br#"{"active":false}"#[..]));
        // valid tokens cost nothing: their charge is given back
        for i in 0..10 {
            let h = run(&mut w, "/api", &token::generate("mt", "alice").unwrap(), Some((Some(200), VALID)), i);
            assert!(h.replies.is_empty());
        }
        assert_eq!(run(&mut w, "/api", "mt_garbage", None, 20).replies[0].status, 401, "malformed: no charge");
        // three unknown tokens sent at once: charged when sent, so a fourth in parallel is refused
        let forged: Vec<String> = (0..4).map(|_| token::generate("mt", "mallory").unwrap()).collect();
        let mut open: Vec<_> =
            forged[..3].iter().enumerate().map(|(i, t)| begin(&mut w, t, 10 + i as u32, 30)).collect();
        assert!(open.iter().all(|(_, _, step)| *step == Step::Pause));
        let (h, _, step) = begin(&mut w, &forged[3], 20, 31);
        assert_eq!((step, h.lookups.len(), h.replies[0].status), (Step::Replied, 0, 429));
        assert!(h.replies[0].headers.contains(&("retry-after".into(), "60".into())));
        assert!(h.replies[0].body.contains("Request was throttled. Expected available in 60 seconds."));
        for (h, flow, _) in open.iter_mut() {
            flow.on_lookup_response(
                h,
                &mut w,
                companion_transport::parse_answer(Some(200), br#"{"active":false}"#),
                40,
            );
            assert_eq!(h.replies[0].status, 401);
        }
        assert_eq!(run(&mut w, "/api", &forged[3], None, 30_000).replies[0].status, 429);
        follow_feed(&mut w, 60_000);
        assert_eq!(run(&mut w, "/api", &forged[3], unknown, 60_031).replies[0].status, 401, "a new window");
    }

    /// A lookup that read the store before a feed page revoked its token must not be believed.
    #[test]
    fn a_lookup_overtaken_by_a_revocation_is_refused_and_never_cached() {
        let mut w = worker("");
        follow_feed(&mut w, 0);
        let t = token::generate("mt", "alice").unwrap();
        let digest = TokenHasher::new(None).digest(&t);
        let mut h = request("/api", Some(&format!("Bearer {t}")));
        let mut flow = HttpFlow::new();
        assert_eq!(flow.on_request_headers(&mut h, &mut w, 10), Step::Pause);
        // the feed page revoking it is applied while the lookup is under way
        w.apply_feed(
            lookup::FeedPage { cursor: "2-0".into(), digests: vec![digest.to_hex()], reset: false, more: false },
            20,
        );
        flow.on_lookup_response(&mut h, &mut w, companion_transport::parse_answer(Some(200), VALID), 30);
        assert_eq!(h.replies[0].status, 401);
        assert!(w.cache.get(&t).is_none_or(|e| e.verdict == Cached::Invalid), "never cached as valid");
        // a page revoking something else does not stop a lookup from being cached
        let u = token::generate("mt", "bob").unwrap();
        let mut h = request("/api", Some(&format!("Bearer {u}")));
        let mut flow = HttpFlow::new();
        flow.on_request_headers(&mut h, &mut w, 40);
        w.apply_feed(
            lookup::FeedPage { cursor: "3-0".into(), digests: vec![digest.to_hex()], reset: false, more: false },
            50,
        );
        flow.on_lookup_response(&mut h, &mut w, companion_transport::parse_answer(Some(200), VALID), 60);
        assert!(h.replies.is_empty());
        assert!(matches!(w.cache.get(&u).map(|e| e.verdict), Some(Cached::Valid(_))));
    }

    /// Lookups dispatched before the feed could vouch for them (before the first page, or before a
    /// page that reset the feed) are used once and never cached.
    #[test]
    fn lookups_from_before_the_feed_could_vouch_are_not_cached() {
        for reset_first in [false, true] {
            let mut w = worker("");
            if reset_first {
                follow_feed(&mut w, 0);
            }
            let t = token::generate("mt", "alice").unwrap();
            let mut h = request("/api", Some(&format!("Bearer {t}")));
            let mut flow = HttpFlow::new();
            flow.on_request_headers(&mut h, &mut w, 10);
            w.apply_feed(
                lookup::FeedPage { cursor: "9-0".into(), digests: vec![], reset: reset_first, more: false },
                20,
            );
            flow.on_lookup_response(&mut h, &mut w, companion_transport::parse_answer(Some(200), VALID), 30);
            assert!(h.replies.is_empty(), "the answer itself is used");
            assert!(w.cache.get(&t).is_none(), "but not cached (reset first: {reset_first})");
        }
    }

    #[test]
    fn a_positive_entry_never_outlives_the_token() {
        let mut w = worker("");
        follow_feed(&mut w, 0);
        let t = token::generate("mt", "alice").unwrap();
        let short = br#"{"active":true,"user":"alice","device":"","scopes":[],"expires_in":3,"id":"x"}"#;
        run(&mut w, "/api", &t, Some((Some(200), short)), 0);
        assert_eq!(w.cache.get(&t).unwrap().fresh_until, 3000, "3 s left");
    }

    #[test]
    fn scopes_are_enforced_per_path() {
        let mut w = worker("");
        let t = token::generate("mt", "alice").unwrap();
        let h = run(&mut w, "/admin/users", &t, Some((Some(200), VALID)), 0);
        assert_eq!(h.replies[0].status, 403);
        assert!(h.replies[0].headers.iter().any(|(_, v)| v.contains("insufficient_scope")));
    }

    /// A request with extra headers through a worker, answered VALID when it looks up.
    /// (`(":body", _)` says a body follows the headers.)
    fn run_with(w: &mut Worker, method: &str, path: &str, headers: &[(&str, &str)]) -> MemoryHost {
        let mut h = MemoryHost::request(method, path.as_bytes());
        h.client_address = Some(b"192.0.2.7:40000".to_vec());
        for (name, value) in headers {
            match *name {
                ":body" => h.has_body = true,
                _ => {
                    h.add_header(name, value.as_bytes());
                }
            }
        }
        let mut flow = HttpFlow::new();
        if flow.on_request_headers(&mut h, w, 0) == Step::Pause {
            flow.on_lookup_response(&mut h, w, companion_transport::parse_answer(Some(200), VALID), 0);
        }
        h
    }

    #[test]
    fn scope_rules_hold_for_every_spelling_and_method_override() {
        let t = token::generate("mt", "alice").unwrap();
        let auth = format!("Bearer {t}");
        let mut w = Worker::new(
            Compiled::parse(
                br#"{"companion": {"cluster": "c", "api_key": "k"},
                     "required_scopes": [{"prefix": "/api/admin/", "scopes": ["admin"]}, {"path": "/v1/orders:cancel", "scopes": ["admin"]},
                                         {"prefix": "/api/items/", "methods": ["DELETE"], "scopes": ["admin"]}]}"#,
            )
            .unwrap(),
        );
        for (method, path, extra) in [
            ("GET", "/API/ADMIN/stats", None),
            ("GET", "/Api/admin/stats/", None),
            ("GET", "/api/admin", None),
            ("POST", "/v1/orders%3Acancel", None),
            ("POST", "/v1/orders%3acancel/", None),
            ("POST", "/api/items/7", Some(("x-http-method-override", "DELETE"))),
            ("POST", "/api/items/7", Some(("X-Method-Override", "delete"))),
            ("POST", "/api/items/7?_method=DELETE", None),
        ] {
            let mut headers = vec![("authorization", auth.as_str())];
            headers.extend(extra);
            let h = run_with(&mut w, method, path, &headers);
            assert_eq!(h.replies.first().map(|r| r.status), Some(403), "{method} {path} {extra:?}");
        }
        for (method, path) in [("GET", "/api/items/7"), ("POST", "/api/items/7"), ("GET", "/api/administrator")] {
            let h = run_with(&mut w, method, path, &[("authorization", &auth)]);
            assert!(h.replies.is_empty(), "{method} {path} needs no scope");
        }
        let h = run_with(&mut w, "GET", "/api/admin/%253A", &[("authorization", &auth)]);
        assert_eq!((h.replies[0].status, h.lookups.len()), (400, 0), "a double-encoded path cannot be matched safely");
    }

    #[test]
    fn exclusions_never_widen_by_spelling_or_override() {
        let mut w = worker("");
        assert_eq!(run_with(&mut w, "GET", "/healthz", &[]).counted(Metric::Excluded), 1);
        for (path, headers) in [("/HEALTHZ", vec![]), ("/healthz", vec![("x-http-method-override", "DELETE")])] {
            let h = run_with(&mut w, "GET", path, &headers);
            assert_eq!(h.replies[0].status, 401, "{path} {headers:?} needs a token");
        }
    }

    #[test]
    fn only_a_cors_preflight_passes_without_a_token() {
        let mut w = worker("");
        let preflight = [("origin", "https://app.example"), ("access-control-request-method", "POST")];
        let h = run_with(&mut w, "OPTIONS", "/admin/stats", &preflight);
        assert_eq!((h.replies.len(), h.counted(Metric::Excluded)), (0, 1));
        for (what, headers) in [
            ("no Origin", vec![("access-control-request-method", "POST")]),
            ("no request method", vec![("origin", "https://app.example")]),
            ("a body", vec![preflight[0], preflight[1], ("content-length", "12")]),
            ("a chunked body", vec![preflight[0], preflight[1], ("transfer-encoding", "chunked")]),
            ("a body without a length (HTTP/2)", vec![preflight[0], preflight[1], (":body", "")]),
            ("an override", vec![preflight[0], preflight[1], ("x-http-method-override", "DELETE")]),
        ] {
            let h = run_with(&mut w, "OPTIONS", "/admin/stats", &headers);
            assert_eq!(h.replies[0].status, 401, "an OPTIONS with {what} is no preflight");
        }
        let mut strict = worker(r#", "cors_preflight": "authenticate""#);
        assert_eq!(run_with(&mut strict, "OPTIONS", "/x", &preflight).replies[0].status, 401);
    }

    #[test]
    fn credentials_never_reach_the_upstream() {
        let mut w = worker(r#", "cookie": "mt_session""#);
        let t = token::generate("mt", "alice").unwrap();
        let (auth, cookie) = (format!("Bearer {t}"), format!("theme=dark; mt_session={t}"));
        // on an excluded route and on a preflight
        for (method, headers) in [
            ("GET", vec![]),
            ("OPTIONS", vec![("origin", "https://a.example"), ("access-control-request-method", "GET")]),
        ] {
            let path = if method == "GET" { "/healthz" } else { "/x" };
            let mut all = vec![("authorization", auth.as_str()), ("cookie", cookie.as_str())];
            all.extend(headers);
            let h = run_with(&mut w, method, path, &all);
            assert!(h.replies.is_empty());
            assert!(h.header("authorization").is_none(), "{method}: header token stripped");
            assert_eq!(h.header("cookie").unwrap(), b"theme=dark", "{method}: cookie token stripped, others kept");
        }
        // the same token in the header and the cookie: both go
        let h = run_with(&mut w, "GET", "/api", &[("authorization", &auth), ("cookie", &cookie)]);
        assert_eq!(h.header("x-multitokens-credential").unwrap(), b"header");
        assert!(h.header("authorization").is_none());
        assert_eq!(h.header("cookie").unwrap(), b"theme=dark");
        // another scheme is not ours: kept on an excluded route
        let h = run_with(&mut w, "GET", "/healthz", &[("authorization", "Basic dXNlcjpwdw==")]);
        assert_eq!(h.header("authorization").unwrap(), b"Basic dXNlcjpwdw==");
        let h = run_with(&mut w, "GET", "/api", &[("cookie", &cookie)]);
        assert_eq!(h.header("x-multitokens-credential").unwrap(), b"cookie");
    }

    #[test]
    fn unsafe_cookie_requests_from_other_sites_are_refused_before_any_lookup() {
        let mut w = worker(r#", "cookie": "mt_session""#);
        let t = token::generate("mt", "alice").unwrap();
        let cookie = format!("mt_session={t}");
        let h = run_with(
            &mut w,
            "POST",
            "/api",
            &[("cookie", &cookie), ("sec-fetch-site", "cross-site"), ("origin", "https://evil.example")],
        );
        assert_eq!((h.replies[0].status, h.lookups.len(), h.counted(Metric::DeniedCrossSite)), (403, 0, 1));
        assert!(h.replies[0].body.contains("CSRF Failed"));
        let h = run_with(
            &mut w,
            "POST",
            "/api",
            &[("cookie", &cookie), (":authority", "api.example"), ("origin", "https://api.example")],
        );
        assert!(h.replies.is_empty(), "same origin");
        let h = run_with(&mut w, "GET", "/api", &[("cookie", &cookie), ("sec-fetch-site", "cross-site")]);
        assert!(h.replies.is_empty(), "safe method");
        let auth = format!("Bearer {t}");
        let h = run_with(&mut w, "POST", "/api", &[("authorization", &auth), ("sec-fetch-site", "cross-site")]);
        assert!(h.replies.is_empty(), "a header token is not sent by the browser on its own");
    }

    #[test]
    fn store_down_denies_by_default() {
        let mut w = worker("");
        follow_feed(&mut w, 0);
        let t = token::generate("mt", "alice").unwrap();
        for (status, body) in [(None, &b""[..]), (Some(503), &b"{}"[..]), (Some(200), &b"garbage"[..])] {
            let h = run(&mut w, "/api", &t, Some((status, body)), 0);
            assert_eq!(h.replies[0].status, 503);
            assert!(h.replies[0].body.contains("Authentication service unavailable."));
        }
    }

    #[test]
    fn allow_cached_accepts_recently_verified_tokens_within_the_window() {
        let mut w = worker(r#", "failure_mode": "allow_cached", "stale_window_ms": 10000, "cache": {"ttl_ms": 1000}"#);
        let known = token::generate("mt", "alice").unwrap();
        run(&mut w, "/api", &known, Some((Some(200), VALID)), 0);
        let h = run(&mut w, "/api", &known, Some((None, b"")), 5000);
        assert!(h.replies.is_empty(), "accepted from the stale cache");
        assert!(h.counted(Metric::AllowedStale) > 0);
        assert_eq!(h.header("x-multitokens-user").unwrap(), b"alice");
        let h = run(&mut w, "/api", &known, Some((None, b"")), 10_001);
        assert_eq!(h.replies[0].status, 503, "beyond the window");
        let stranger = token::generate("mt", "bob").unwrap();
        assert_eq!(run(&mut w, "/api", &stranger, Some((None, b"")), 5000).replies[0].status, 503);
    }

    #[test]
    fn sliding_refresh_is_queued_at_most_once_per_interval() {
        let mut w = worker(r#", "refresh_on_use": {"ttl": 600, "min_interval_ms": 1000}"#);
        follow_feed(&mut w, 0);
        let t = token::generate("mt", "alice").unwrap();
        let h = run(&mut w, "/api", &t, Some((Some(200), VALID)), 0);
        assert!(h.lookups[0].contains("refresh_ttl=600"));
        run(&mut w, "/api", &t, None, 500);
        assert!(w.refresh_queue.is_empty());
        run(&mut w, "/api", &t, None, 1000);
        run(&mut w, "/api", &t, None, 1500);
        assert_eq!(w.refresh_queue.len(), 1);
    }
}
