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

/// Points the stack's companion cluster at `proxy`, which forwards to the companion.
fn through(proxy: &support::hold::HoldingProxy, config: EnvoyConfig) -> EnvoyConfig {
    let mut config = config;
    let clusters = config.0["static_resources"]["clusters"].as_array_mut().unwrap();
    let companion = clusters.iter_mut().find(|c| c["name"] == "multitokens_companion").unwrap();
    let address = &mut companion["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"];
    let port = &mut address["socket_address"]["port_value"];
    proxy.forward_to(u16::try_from(port.as_u64().unwrap()).unwrap());
    *port = json!(proxy.port);
    config
}

/// The request that carries a batch goes away while the batch is under way (Envoy cancels its
/// callout): the other requests' lookups are sent again, by the next of them, and every one is
/// answered with its own user. The companion's lookups are held by a relay in between, so each
/// step happens while the one before is still under way.
#[test]
fn a_batch_whose_carrier_goes_away_is_sent_again_for_the_others() {
    let proxy = support::hold::HoldingProxy::start();
    let s = Stack::start_with(
        |c| {
            c.as_object_mut().unwrap().remove("throttle");
            c["companion"]["max_lookups_in_flight"] = json!(1);
            c["companion"]["timeout_ms"] = json!(20_000); // held lookups must not time out
        },
        |config| through(&proxy, config),
    );
    let users: Vec<String> = (0..6).map(|i| format!("carried{i}")).collect();
    let tokens: Vec<String> = users.iter().map(|u| s.login(u, "phone", &[])).collect();
    let ask = |token: &str| {
        let (agent, url) = (s.agent.clone(), format!("http://127.0.0.1:{}/api/whoami", s.port));
        let auth = bearer(token);
        std::thread::spawn(move || {
            let r = support::http_call(&agent, "GET", &url, &[("authorization", &auth)], None);
            (r.status, r.body["user"].as_str().map(str::to_string))
        })
    };
    let limit = Duration::from_secs(10);
    proxy.hold(true);
    // the first lookup goes on its own and is held
    let mut first = Some(ask(&tokens[0]));
    assert!(proxy.wait_held(1, limit), "the first lookup reached the relay");
    // the oldest waiting lookup (the carrier-to-be) from a connection the test can drop
    let mut carrier = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    let raw = format!("GET /api/whoami HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {}\r\n\r\n", tokens[1]);
    std::io::Write::write_all(&mut carrier, raw.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let others: Vec<_> = tokens[2..].iter().map(|t| ask(t)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let native = Build::under_test() == Build::Native;
    if native {
        assert!(proxy.wait_held(1, limit), "the rest wait in the module, not at the relay");
        // the first answered (it alone is held): the carrier sends the batch, held in turn
        proxy.pass_one();
        assert_eq!(first.take().unwrap().join().unwrap(), (200, Some(users[0].clone())));
        assert!(proxy.wait_held(1, limit), "the batch reached the relay");
    }
    // the carrier goes away with its batch under way (the wasm build: with its own lookup)
    drop(carrier);
    if native {
        assert!(proxy.wait_held(2, limit), "the others' lookups were sent again, by one of them");
    }
    proxy.hold(false);
    if let Some(first) = first {
        assert_eq!(first.join().unwrap(), (200, Some(users[0].clone())));
    }
    for (other, user) in others.into_iter().zip(&users[2..]) {
        assert_eq!(other.join().unwrap(), (200, Some(user.clone())), "each answered with its own user");
    }
}
