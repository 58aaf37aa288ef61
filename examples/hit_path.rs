//! Native micro-benchmark of the filter's request path (what `make bench` reports as "where the
//! time goes"): the whole cache-hit decision and its parts, in nanoseconds per request, with the
//! in-memory host the unit tests use. Prints one JSON line. With `--hits N` it runs N hits only,
//! untimed, for `make bench-instructions`.

use multitokens_core::token;
use multitokens_filter::config::Compiled;
use multitokens_filter::flow::HttpFlow;
use multitokens_filter::host::Step;
use multitokens_filter::identity::Identity;
use multitokens_filter::lookup::{Answer, FeedPage};
use multitokens_filter::memory_host::MemoryHost;
use multitokens_filter::worker::Worker;
use std::hint::black_box;
use std::time::Instant;

fn per_op(iterations: u32, f: impl FnMut(u32)) -> f64 {
    let mut f = f;
    let start = Instant::now();
    for i in 0..iterations {
        f(i);
    }
    start.elapsed().as_nanos() as f64 / iterations as f64
}

fn main() {
    let config = br#"{"companion": {"cluster": "c", "api_key": "k"}, "exclude": [{"path": "/healthz"}],
        "required_scopes": [{"prefix": "/admin/", "scopes": ["admin"]}], "cache": {"ttl_ms": 600000}}"#;
    let compiled = match Compiled::parse(config) {
        Ok(c) => c,
        Err(e) => return eprintln!("{e}"),
    };
    let hasher = compiled.hash_keys.current().clone();
    let mut worker = Worker::new(compiled);
    worker.apply_feed(FeedPage { cursor: "1-0".into(), digests: vec![], reset: false, more: false }, 0);
    let tokens: Vec<String> =
        (0..1000).filter_map(|i| token::generate("mt", &format!("user-{}", i % 100)).ok()).collect();
    let mut host = MemoryHost::default();
    let reset = |host: &mut MemoryHost, t: &str| {
        host.reset("GET", b"/api/bench");
        host.add_header("authorization", format!("Bearer {t}").as_bytes());
    };
    // prime the cache: one lookup per token
    for (i, t) in tokens.iter().enumerate() {
        reset(&mut host, t);
        let mut flow = HttpFlow::new();
        if flow.on_request_headers(&mut host, &mut worker, 1) == Step::Pause {
            if let Ok(id) =
                Identity::new(format!("user-{}", i % 100), "laptop".into(), vec!["read".into()], format!("{i:016x}"))
            {
                flow.on_lookup_response(&mut host, &mut worker, Ok(Answer::Valid(id, Some(3600))), 1);
            }
        }
    }
    // `--hits N`: only N cache hits after the priming, untimed (what scripts/hit_instructions.sh
    // counts instructions of under callgrind)
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, count] = args.as_slice() {
        let Some(count) = count.parse::<u32>().ok().filter(|_| flag == "--hits") else {
            return eprintln!("usage: hit_path [--hits N]");
        };
        let hits = (0..count)
            .filter(|i| {
                reset(&mut host, &tokens[(*i as usize) % tokens.len()]);
                HttpFlow::new().on_request_headers(&mut host, &mut worker, 2) == Step::Continue
            })
            .count();
        return println!("{{\"hits\":{hits}}}");
    }
    let n = 300_000;
    let mut hits = 0u32;
    let hit = per_op(n, |i| {
        let t = &tokens[(i as usize) % tokens.len()];
        reset(&mut host, t);
        if HttpFlow::new().on_request_headers(&mut host, &mut worker, 2) == Step::Continue {
            hits += 1;
        }
    });
    let host_setup = per_op(n, |i| reset(&mut host, &tokens[(i as usize) % tokens.len()]));
    let parse = per_op(n, |i| {
        black_box(token::parse(black_box(&tokens[(i as usize) % tokens.len()]), "mt")).ok();
    });
    let digest = per_op(n, |i| {
        black_box(hasher.digest(black_box(&tokens[(i as usize) % tokens.len()])));
    });
    let cache = per_op(n, |i| {
        black_box(worker.cache().get(black_box(&tokens[(i as usize) % tokens.len()])).is_some());
    });
    let malformed = per_op(n, |i| {
        let t = &tokens[(i as usize) % tokens.len()];
        reset(&mut host, &t[..t.len() - 1]);
        black_box(HttpFlow::new().on_request_headers(&mut host, &mut worker, 2));
    });
    println!(
        "{{\"hit_path_ns\":{:.0},\"host_setup_ns\":{:.0},\"token_parse_ns\":{:.0},\"digest_ns\":{:.0},\"cache_lookup_ns\":{:.0},\"malformed_reject_ns\":{:.0},\"hits\":{},\"lookups\":{}}}",
        hit - host_setup,
        host_setup,
        parse,
        digest,
        cache,
        malformed - host_setup,
        hits,
        host.lookups.len()
    );
}
