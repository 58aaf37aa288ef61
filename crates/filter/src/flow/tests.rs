//! Tests of the parent module.

mod identity;
mod rules;

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
    assert_eq!((a.lookups.len(), b.lookups.len()), (1, 1), "with the cache off every request is checked on its own");
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
    w.apply_feed(lookup::FeedPage { cursor: "2-0".into(), digests: vec![old.to_hex()], reset: false, more: false }, 3);
    assert_eq!(run(&mut w, "/api", &t, Some((Some(200), VALID)), 4).lookups.len(), 1, "looked up again");
    // an answer naming a digest that was not asked for is a bad answer, never a verdict
    let u = token::generate("mt", "bob").unwrap();
    let h = run(&mut w, "/api", &u, Some((Some(200), br#"{"active":true,"user":"bob","id":"x","stored_under":2}"#)), 5);
    assert_eq!(h.replies[0].status, 503);
    assert!(h.counted(Metric::CalloutError) > 0);
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
        w.apply_feed(lookup::FeedPage { cursor: "2-0".into(), digests: vec![digest], reset: false, more: false }, 1400),
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
    let mut open: Vec<_> = forged[..3].iter().enumerate().map(|(i, t)| begin(&mut w, t, 10 + i as u32, 30)).collect();
    assert!(open.iter().all(|(_, _, step)| *step == Step::Pause));
    let (h, _, step) = begin(&mut w, &forged[3], 20, 31);
    assert_eq!((step, h.lookups.len(), h.replies[0].status), (Step::Replied, 0, 429));
    assert!(h.replies[0].headers.contains(&("retry-after".into(), "60".into())));
    assert!(h.replies[0].body.contains("Request was throttled. Expected available in 60 seconds."));
    for (h, flow, _) in open.iter_mut() {
        flow.on_lookup_response(h, &mut w, companion_transport::parse_answer(Some(200), br#"{"active":false}"#), 40);
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
        w.apply_feed(lookup::FeedPage { cursor: "9-0".into(), digests: vec![], reset: reset_first, more: false }, 20);
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
