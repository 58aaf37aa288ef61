//! Under load: neighbours on one address, logouts on two Envoys, forged floods, page-load bursts.

use super::*;

/// GET /api/whoami with a token on a fresh connection (so both workers see the requests).
fn whoami_fresh(port: u16, token: &str) -> u16 {
    let request =
        format!("GET /api/whoami HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n");
    raw_status(port, request.as_bytes())
}

/// The scenarios from one address, with throttling switched on as it was when they were
/// measured: a logged-out tab polling with its revoked token, then a burst of forged tokens
/// (right checksum, made-up MAC), and after each a new login from the same address. Every valid
/// request is answered 200; nothing is 429; the forged tokens cost no lookup and the revoked one
/// at most one per worker.
#[test]
fn neighbours_on_one_address_never_lock_a_valid_token_out() {
    let s = Stack::start(|c| c["throttle"] = json!({"max_failures": 20, "window_ms": 60000}));
    std::thread::sleep(Duration::from_millis(1500)); // every worker follows the feed
    let stale = s.login("alice", "laptop", &[]);
    assert_eq!(whoami_fresh(s.port, &stale), 200);
    let r = s.request("POST", "/logout", &[("authorization", &bearer(&stale))], None);
    assert!(r.status < 300, "logout: {} {}", r.status, r.body);
    let misses = s.stat("cache_miss");
    let statuses: Vec<u16> = (0..80).map(|_| whoami_fresh(s.port, &stale)).collect();
    assert!(statuses.iter().all(|st| *st == 401), "the revoked token: 401, never 429: {statuses:?}");
    assert!(s.stat("cache_miss") - misses <= 2, "at most one lookup per worker per negative_ttl_ms");
    let bob = s.login("bob", "phone", &[]);
    let statuses: Vec<u16> = (0..5).map(|_| whoami_fresh(s.port, &bob)).collect();
    assert_eq!(statuses, [200; 5], "a new login after the stale tab");

    let (misses, forged_before) = (s.stat("cache_miss"), s.stat("denied_forged"));
    for _ in 0..80 {
        assert_eq!(whoami_fresh(s.port, &multitokens_core::token::forge("mt", "mallory").unwrap()), 401);
    }
    // an old-format token (version 2: no MAC at all) is refused unlooked too: the shipped config
    // accepts no legacy tokens
    assert_eq!(whoami_fresh(s.port, &multitokens_core::token::generate("mt", "mallory").unwrap()), 401);
    assert_eq!(s.stat("cache_miss"), misses, "a forged token never causes a lookup");
    assert_eq!(s.stat("denied_forged") - forged_before, 81);
    let carol = s.login("carol", "tablet", &[]);
    let statuses: Vec<u16> = (0..5).map(|_| whoami_fresh(s.port, &carol)).collect();
    assert_eq!(statuses, [200; 5], "a new login after the forged burst");
    assert_eq!(s.stat("denied_throttled"), 0);
}

/// Two Envoys under load while 30 users log out one device each: their other devices are served
/// on both Envoys all along, the logged-out ones are refused (401, never 429) once logout returns.
#[test]
fn logouts_under_load_never_refuse_the_other_devices() {
    let s = Stack::start(|c| {
        c["throttle"] = json!({"max_failures": 20, "window_ms": 60000});
        // a logged-out phone's next request is a lookup: on a CI machine running this suite four
        // tests at a time, a companion stalled past the default 500 ms would answer it 503 (fail
        // closed, as it should), which is not what this test is about
        c["companion"]["timeout_ms"] = json!(2000);
    });
    let (_second, second_port) = s.second_envoy();
    std::thread::sleep(Duration::from_millis(1500));
    let users: Vec<String> = (0..30).map(|i| format!("user{i}")).collect();
    let phones: Vec<String> = users.iter().map(|u| s.login(u, "phone", &[])).collect();
    let laptops: Vec<String> = users.iter().map(|u| s.login(u, "laptop", &[])).collect();
    let ports = [s.port, second_port];
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|n| {
            let (laptops, phones, stop) = (laptops.clone(), phones.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                let mut i = n;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let port = ports[i % 2];
                    seen.push(("laptop", whoami_fresh(port, &laptops[i % laptops.len()])));
                    seen.push(("phone", whoami_fresh(port, &phones[(i * 7) % phones.len()])));
                    i += 1;
                }
                seen
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    for phone in &phones {
        let r = s.request("POST", "/logout", &[("authorization", &bearer(phone))], None);
        assert!(r.status < 300, "logout: {} {}", r.status, r.body);
        for port in ports {
            assert_eq!(whoami_fresh(port, phone), 401, "refused on every Envoy once logout returned");
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen: Vec<(&str, u16)> = load.into_iter().flat_map(|t| t.join().unwrap()).collect();
    let laptop: Vec<u16> = seen.iter().filter(|(d, _)| *d == "laptop").map(|(_, st)| *st).collect();
    assert!(laptop.len() > 50, "the load ran: {} laptop requests", laptop.len());
    assert!(laptop.iter().all(|st| *st == 200), "every still valid device served: {laptop:?}");
    let odd: Vec<&(&str, u16)> = seen.iter().filter(|(_, st)| *st != 200 && *st != 401).collect();
    assert!(odd.is_empty(), "nothing but 200 and 401 (no 429), of {}: {odd:?}", seen.len());
    for (phone, laptop) in phones.iter().zip(&laptops) {
        for port in ports {
            assert_eq!((whoami_fresh(port, phone), whoami_fresh(port, laptop)), (401, 200));
        }
    }
}

/// 100,000 forged tokens from 1,000 client addresses across 127.0.0.0/8, with valid requests
/// interleaved on the same connections: not one lookup (filter and companion), every valid
/// request served.
#[test]
fn a_forged_flood_from_a_thousand_addresses_costs_no_lookup() {
    let s = Stack::start(|c| {
        c["throttle"] = json!({"max_failures": 20, "window_ms": 60000});
        c["cache"]["ttl_ms"] = json!(600_000);
        // sliding refreshes of the valid tokens would reach the store on their own schedule
        c.as_object_mut().unwrap().remove("refresh_on_use");
    });
    std::thread::sleep(Duration::from_millis(1500));
    let valid: Vec<String> = (0..20).map(|i| s.login(&format!("v{i}"), "phone", &[])).collect();
    for t in &valid {
        for _ in 0..30 {
            assert_eq!(whoami_fresh(s.port, t), 200); // cached on both workers (each connection lands on either)
        }
    }
    let companion_lookups = |s: &Stack| -> u64 {
        support::companion_metric(s.companion_port, "multitokens_companion_redis_duration_seconds_count{op=\"lookup\"}")
    };
    let (misses, lookups, forged_before, overdue) =
        (s.stat("cache_miss"), companion_lookups(&s), s.stat("denied_forged"), s.stat("tick_overdue"));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let port = s.port;
    let (forged_statuses, valid_statuses) = runtime.block_on(async move {
        let valid = std::sync::Arc::new(valid);
        let mut tasks = tokio::task::JoinSet::new();
        let mut results =
            (std::collections::BTreeMap::<u16, u64>::new(), std::collections::BTreeMap::<u16, u64>::new());
        for address in 0..1000u32 {
            if tasks.len() >= 32 {
                let (f, v) = tasks.join_next().await.unwrap().unwrap();
                merge(&mut results, f, v);
            }
            let valid = valid.clone();
            tasks.spawn(async move {
                let ip = std::net::Ipv4Addr::new(127, 1 + (address / 250) as u8, (address % 250) as u8, 2);
                flood_from(ip, port, 100, &valid, address as usize).await
            });
        }
        while let Some(done) = tasks.join_next().await {
            let (f, v) = done.unwrap();
            merge(&mut results, f, v);
        }
        results
    });
    assert_eq!(forged_statuses.into_iter().collect::<Vec<_>>(), [(401, 100_000)], "every forged token refused");
    assert_eq!(valid_statuses.into_iter().collect::<Vec<_>>(), [(200, 10_000)], "every valid request served");
    // a lookup now can only be a cached valid token checked again because a worker's tick ran late
    // under the load (tick_overdue): forged tokens are refused before the cache is even asked
    let (new_misses, new_overdue) = (s.stat("cache_miss") - misses, s.stat("tick_overdue") - overdue);
    assert!(
        new_misses <= new_overdue,
        "lookups at the filter: {new_misses}, beyond the {new_overdue} late-tick re-checks"
    );
    assert_eq!(companion_lookups(&s) - lookups, new_misses, "no lookup reached Redis but those");
    assert_eq!(s.stat("denied_forged") - forged_before, 100_000);
    assert_eq!(s.stat("denied_throttled"), 0);
}

fn merge(
    into: &mut (std::collections::BTreeMap<u16, u64>, std::collections::BTreeMap<u16, u64>),
    forged: Vec<u16>,
    valid: Vec<u16>,
) {
    for st in forged {
        *into.0.entry(st).or_default() += 1;
    }
    for st in valid {
        *into.1.entry(st).or_default() += 1;
    }
}

/// From one source address, on one keep-alive connection: `count` forged tokens, every tenth
/// request followed by a valid one. Returns the statuses of each kind.
async fn flood_from(
    ip: std::net::Ipv4Addr,
    port: u16,
    count: usize,
    valid: &[String],
    seed: usize,
) -> (Vec<u16>, Vec<u16>) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(std::net::SocketAddr::new(ip.into(), 0)).unwrap();
    let stream = socket.connect(([127, 0, 0, 1], port).into()).await.unwrap();
    let mut stream = tokio::io::BufReader::new(stream);
    let (mut forged, mut ok) = (Vec::new(), Vec::new());
    for i in 0..count {
        let mut tokens = vec![(false, multitokens_core::token::forge("mt", "mallory").unwrap())];
        if i % 10 == 9 {
            tokens.push((true, valid[(seed + i) % valid.len()].clone()));
        }
        for (is_valid, token) in tokens {
            let request = format!("GET /api/whoami HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {token}\r\n\r\n");
            stream.get_mut().write_all(request.as_bytes()).await.unwrap();
            let mut status_line = String::new();
            stream.read_line(&mut status_line).await.unwrap();
            let status: u16 = status_line.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                stream.read_line(&mut line).await.unwrap();
                if line == "\r\n" || line.is_empty() {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0u8; length];
            stream.read_exact(&mut body).await.unwrap();
            if is_valid {
                ok.push(status)
            } else {
                forged.push(status)
            }
        }
    }
    (forged, ok)
}

/// A page load: many requests with one new token at once. Each worker sends one lookup; the
/// requests that arrive while it is under way wait for its answer instead of sending their own.
#[test]
fn a_burst_with_a_new_token_costs_one_lookup_per_cache() {
    let s = Stack::start_with(|_| {}, |yaml| yaml);
    std::thread::sleep(Duration::from_millis(1500)); // every worker follows the feed
    let (misses, shared) = (s.stat("cache_miss"), s.stat("lookup_shared"));
    let (rounds, burst) = (3, 24);
    for round in 0..rounds {
        let token = s.login(&format!("burst-{round}"), "laptop", &[]);
        let start = std::sync::Arc::new(std::sync::Barrier::new(burst));
        let port = s.port;
        let requests: Vec<_> = (0..burst)
            .map(|_| {
                let (start, token) = (start.clone(), token.clone());
                std::thread::spawn(move || {
                    let request =
                        format!("GET /api/whoami HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n");
                    start.wait();
                    raw_status(port, request.as_bytes())
                })
            })
            .collect();
        let statuses: Vec<u16> = requests.into_iter().map(|r| r.join().unwrap()).collect();
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    }
    std::thread::sleep(Duration::from_millis(1500)); // the filters hand their counts over on the tick
    let followed = s.stat("lookup_shared") - shared;
    let lookups = s.stat("cache_miss") - misses - followed;
    // a cache per worker (wasm, two workers), or one per process (native: a request on one worker
    // follows the lookup another worker sent)
    let caches = Build::under_test().edges_per_envoy();
    assert!(
        lookups <= caches * rounds as u64,
        "at most one lookup per cache and token: {lookups} lookups, {followed} followed"
    );
    assert!(followed > 0, "requests that came while a lookup was under way waited for it");
}

/// Six threads sending every token, in turn, to both Envoys (`/api/whoami`) until stopped; a 200
/// for a token in `refused` (revoked or suspended at that instant) that was sent after that
/// instant is a violation.
struct Load {
    refused: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Instant>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
    accepted: std::sync::Arc<std::sync::atomic::AtomicU64>,
    violations: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(tokens: &[String], ports: [u16; 2]) -> Load {
        use std::sync::atomic::Ordering;
        let mut load = Load {
            refused: Default::default(),
            stop: Default::default(),
            sent: Default::default(),
            accepted: Default::default(),
            violations: Default::default(),
            threads: Vec::new(),
        };
        for thread in 0..6 {
            let (tokens, refused, violations) = (tokens.to_vec(), load.refused.clone(), load.violations.clone());
            let (stop, sent, accepted) = (load.stop.clone(), load.sent.clone(), load.accepted.clone());
            load.threads.push(std::thread::spawn(move || {
                let agent = support::http_agent();
                let mut i = thread * 7919;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let token = &tokens[(i * 31) % tokens.len()];
                    let port = ports[i % 2];
                    let at = Instant::now();
                    let url = format!("http://127.0.0.1:{port}/api/whoami");
                    let r = support::http_call(&agent, "GET", &url, &[("authorization", &bearer(token))], None);
                    sent.fetch_add(1, Ordering::Relaxed);
                    if r.status == 200 {
                        accepted.fetch_add(1, Ordering::Relaxed);
                        if refused.lock().unwrap().get(token).is_some_and(|since| *since <= at) {
                            let what = format!("{token:.12}… accepted on port {port}, sent after it was refused");
                            violations.lock().unwrap().push(what);
                        }
                    }
                }
            }));
        }
        load
    }

    /// Stops the threads: requests sent, accepted, and the violations.
    fn stop(self) -> (u64, u64, Vec<String>) {
        use std::sync::atomic::Ordering;
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().unwrap();
        }
        let violations = std::mem::take(&mut *self.violations.lock().unwrap());
        (self.sent.load(Ordering::Relaxed), self.accepted.load(Ordering::Relaxed), violations)
    }
}

/// The revocation guarantee under load: two Envoys (two workers each), 200 users logging in and
/// out while load threads keep every token busy on every worker of both. Every response is
/// recorded with the time its request was sent: no request sent after a logout returned gets a
/// 200 for that token.
#[test]
fn no_token_is_accepted_after_its_logout_returned_across_two_envoys_under_load() {
    let s = Stack::start(|c| c["cache"]["ttl_ms"] = json!(600_000));
    let (_second, second_port) = s.second_envoy();
    let ports = [s.port, second_port];
    std::thread::sleep(Duration::from_millis(1200)); // the second Envoy's VMs follow the feed
    let users: Vec<String> = (0..200).map(|i| format!("user-{i}")).collect();
    let tokens: Vec<String> =
        users.iter().flat_map(|u| [s.login(u, "laptop", &[]), s.login(u, "phone", &[])]).collect();
    let load = Load::start(&tokens, ports);
    let logged_out = load.refused.clone();
    std::thread::sleep(Duration::from_secs(2)); // every token cached on every worker
    let agent = support::http_agent();
    for (i, pair) in tokens.chunks(2).enumerate() {
        let port = ports[i % 2];
        let call = |path: &str, token: &str| {
            support::http_call(
                &agent,
                "POST",
                &format!("http://127.0.0.1:{port}{path}"),
                &[("authorization", &bearer(token))],
                None,
            )
        };
        if i % 2 == 0 {
            // log out one device, then the other
            for token in pair {
                let r = call("/logout", token);
                assert_eq!(r.status, 200, "{}", r.body);
                logged_out.lock().unwrap().insert(token.clone(), Instant::now());
            }
        } else {
            // log out everywhere
            let r = call("/logout-all", &pair[0]);
            assert_eq!((r.status, r.body["revoked"].clone()), (200, json!(2)), "{}", r.body);
            let now = Instant::now();
            for token in pair {
                logged_out.lock().unwrap().insert(token.clone(), now);
            }
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    let (sent, accepted, violations) = load.stop();
    assert!(violations.is_empty(), "{} accepted after logout, e.g. {:?}", violations.len(), violations.first());
    assert!(sent > 2000 && accepted > 500, "the load reached the workers: {sent} sent, {accepted} accepted");
}

/// Suspend and resume under load: two Envoys (two workers each), 60 users with two devices each,
/// every token kept busy on every worker of both; half the users are suspended whole, the other
/// half one device at a time (by id, through the admin API). No request sent after a suspend
/// returned gets a 200 for that token while it is suspended; after the resume (and the negative
/// verdicts' TTL) every token is accepted again on both, without a new login.
#[test]
fn a_suspended_token_is_refused_everywhere_once_the_call_returns_and_accepted_again_after_resume() {
    let s = Stack::start(|c| {
        c["cache"]["ttl_ms"] = json!(600_000);
        c["cache"]["negative_ttl_ms"] = json!(300);
    });
    let (_second, second_port) = s.second_envoy();
    let ports = [s.port, second_port];
    std::thread::sleep(Duration::from_millis(1200)); // the second Envoy's VMs follow the feed
    let users: Vec<String> = (0..60).map(|i| format!("suspended-{i}")).collect();
    let tokens: Vec<String> =
        users.iter().flat_map(|u| [s.login(u, "laptop", &[]), s.login(u, "phone", &[])]).collect();
    let load = Load::start(&tokens, ports);
    let suspended = load.refused.clone();
    std::thread::sleep(Duration::from_secs(2)); // every token cached on every worker
    let admin = [("authorization", format!("Bearer {ADMIN_KEY}"))];
    let admin: Vec<(&str, &str)> = admin.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let companion = |method: &str, path: &str, body: Option<Value>| {
        support::http_call(&s.agent, method, &format!("http://127.0.0.1:{}{path}", s.companion_port), &admin, body)
    };
    for (i, (user, pair)) in users.iter().zip(tokens.chunks(2)).enumerate() {
        if i % 2 == 0 {
            let r = companion("PATCH", &format!("/v1/users/{user}/tokens"), Some(json!({"suspended": true})));
            assert_eq!((r.status, r.body["changed"].clone()), (200, json!(2)), "{}", r.body);
            let now = Instant::now();
            for token in pair {
                suspended.lock().unwrap().insert(token.clone(), now);
            }
        } else {
            // the laptop only, by its id: the phone stays accepted
            let list = companion("GET", &format!("/v1/users/{user}/tokens"), None);
            let laptop = list.body.as_array().unwrap().iter().find(|t| t["device"] == "laptop").unwrap()["id"].clone();
            let r = companion(
                "PATCH",
                &format!("/v1/users/{user}/tokens/{}", laptop.as_str().unwrap()),
                Some(json!({"suspended": true})),
            );
            assert_eq!((r.status, r.body["changed"].clone()), (200, json!(1)), "{}", r.body);
            suspended.lock().unwrap().insert(pair[0].clone(), Instant::now());
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    // the device list shows the state
    let list = companion("GET", "/v1/users/suspended-1/tokens", None);
    let states: Vec<(Value, bool)> =
        list.body.as_array().unwrap().iter().map(|t| (t["device"].clone(), t["suspended"] == true)).collect();
    assert_eq!(states, [(json!("laptop"), true), (json!("phone"), false)]);
    // resume everyone (a token leaves the suspended ones before its resume is sent)
    for (user, pair) in users.iter().zip(tokens.chunks(2)) {
        for token in pair {
            suspended.lock().unwrap().remove(token);
        }
        let r = companion("PATCH", &format!("/v1/users/{user}/tokens"), Some(json!({"suspended": false})));
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let (_, accepted, violations) = load.stop();
    assert!(violations.is_empty(), "{} accepted while suspended, e.g. {:?}", violations.len(), violations.first());
    assert!(accepted > 500, "the load reached the workers: {accepted} accepted");
    std::thread::sleep(Duration::from_millis(400)); // the negative verdicts' TTL (300 ms)
    for token in &tokens {
        for port in ports {
            let url = format!("http://127.0.0.1:{port}/api/whoami");
            let r = support::http_call(&s.agent, "GET", &url, &[("authorization", &bearer(token))], None);
            assert_eq!(r.status, 200, "accepted again after the resume, no new login: {}", r.body);
        }
    }
}
