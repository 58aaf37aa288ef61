//! Many misses at once, of distinct tokens: every request gets its own token's answer in either
//! build. The native module sends the lookups beyond `max_lookups_in_flight` together
//! (`POST /v1/internal/lookups`); the wasm build sends each on its own.

use super::*;

/// The companion's requests on a route that answered 200 (0 when it had none).
fn answered_on(port: u16, route: &str) -> u64 {
    let series = format!("multitokens_companion_http_requests_total{{route=\"{route}\"");
    support::companion_metrics(port)
        .lines()
        .filter(|l| l.starts_with(&series) && l.contains("status=\"200\""))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<u64>().ok()))
        .sum()
}

/// Each token sent `rounds` times by a thread of its own, all at once: what each answered.
fn all_at_once(s: &Stack, tokens: &[(String, Option<String>)], rounds: usize) -> Vec<(Option<String>, u16, Value)> {
    let url = format!("http://127.0.0.1:{}/api/whoami", s.port);
    let threads: Vec<_> = tokens
        .iter()
        .cloned()
        .map(|(token, user)| {
            let (agent, url) = (s.agent.clone(), url.clone());
            std::thread::spawn(move || {
                (0..rounds)
                    .map(|_| {
                        let r = support::http_call(&agent, "GET", &url, &[("authorization", &bearer(&token))], None);
                        (user.clone(), r.status, r.body["user"].clone())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    threads.into_iter().flat_map(|t| t.join().unwrap()).collect()
}

#[test]
fn concurrent_misses_of_distinct_tokens_each_get_their_own_answer() {
    // every request a lookup (no cache), one callout under way at a time: the rest go together
    let mut s = Stack::start(|c| {
        c["cache"] = json!({"max_entries": 0});
        c["companion"]["max_lookups_in_flight"] = json!(1);
    });
    std::thread::sleep(Duration::from_millis(1500));
    let mut tokens: Vec<(String, Option<String>)> = (0..40)
        .map(|i| {
            let user = format!("batch{i}");
            (s.login(&user, "phone", &[]), Some(user))
        })
        .collect();
    for i in 0..8 {
        let token = s.login(&format!("gone{i}"), "phone", &[]);
        assert_eq!(s.revoke_at_companion(&token).status, 200);
        tokens.push((token, None));
    }
    let batches_before = answered_on(s.companion_port, multitokens_core::contract::LOOKUPS_PATH);
    let seen = all_at_once(&s, &tokens, 4);
    assert_eq!(seen.len(), 48 * 4);
    for (user, status, answered_user) in &seen {
        match user {
            Some(user) => assert_eq!((*status, answered_user.as_str()), (200, Some(user.as_str())), "{seen:?}"),
            None => assert_eq!(*status, 401, "a revoked token in a batch is refused: {seen:?}"),
        }
    }
    let batches = answered_on(s.companion_port, multitokens_core::contract::LOOKUPS_PATH) - batches_before;
    match Build::under_test() {
        Build::Native => assert!(batches >= 1, "the lookups that waited went together"),
        Build::Wasm => assert_eq!(batches, 0, "the wasm build sends each lookup on its own"),
    }
    // the companion gone: every request refused (503, fail closed), batched or not
    let port = s.companion_port;
    let failures = |s: &Stack| s.stat("callout_failed") + s.stat("callout_error");
    let failed_before = failures(&s);
    s.companion = None;
    let down = all_at_once(&s, &tokens[..24], 2);
    assert!(down.iter().all(|(_, status, _)| *status == 503), "{down:?}");
    // each refused request counts its lookup's failure once, batched or not (plus the feed polls
    // that failed meanwhile: about one a second per edge)
    let failed = failures(&s) - failed_before;
    assert!((48..=48 + 20).contains(&failed), "{failed} failures counted for 48 failed lookups");
    // back: nothing is left waiting on what failed, every token answered again
    s.restart_companion(Vec::new());
    assert!(wait_for_port(port, Duration::from_secs(10)));
    let again = all_at_once(&s, &tokens, 2);
    let served = again.iter().filter(|(user, status, _)| user.is_some() && *status == 200).count();
    assert_eq!(served, 40 * 2, "{again:?}");
}
