//! Config reloads under traffic: the listener comes from a file (LDS), rewritten with a changed
//! plugin configuration again and again while requests flow. Every filter config is created and,
//! once its listener drained, destroyed: no request gets a wrong answer, Envoy stays up, nothing
//! of the old configs is left behind (for the native module: its timer threads), and revocation
//! still holds at the end.

use super::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The listeners of `config` as an LDS file's JSON (one resource per listener).
fn lds_file(config: &EnvoyConfig) -> Value {
    let listeners = config.0["static_resources"]["listeners"].as_array().unwrap().clone();
    let resources: Vec<Value> = listeners
        .into_iter()
        .map(|mut l| {
            l["@type"] = json!("type.googleapis.com/envoy.config.listener.v3.Listener");
            l
        })
        .collect();
    json!({ "resources": resources })
}

/// Writes a file the way Envoy's file watcher sees it: a new file moved into place.
fn replace_file(path: &std::path::Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The filter's timer threads in a process (the native module runs one per live filter config).
fn tick_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "multitokens-tic")
        .count()
}

#[test]
fn reloading_the_filter_config_under_traffic_answers_right_and_leaves_nothing_behind() {
    let s = Stack::start(|_| {});
    let token = s.login("reload", "laptop", &[]);
    let dir = tempfile::tempdir().unwrap();
    let lds = dir.path().join("lds.json");
    let (port, admin_port) = (free_port(false), free_port(false));
    let moved = s.config.clone().move_port(s.port, port).move_port(s.admin_port, admin_port);
    let mut bootstrap = moved.clone();
    bootstrap.0["static_resources"].as_object_mut().unwrap().remove("listeners");
    bootstrap.0["dynamic_resources"] = json!({"lds_config": {"path_config_source": {"path": lds.display().to_string()}, "resource_api_version": "V3"}});
    bootstrap.0["node"] = json!({"id": "reload", "cluster": "reload"});
    let version = |n: u64| moved.clone().edit_plugin(move |c| c["cache"]["max_entries"] = json!(10_000 + n));
    replace_file(&lds, &lds_file(&version(0)).to_string());
    let envoy = Envoy::start_with_args(&bootstrap.to_yaml(), port, 2, &["--drain-time-s", "1"]);
    std::thread::sleep(Duration::from_millis(1200));

    let stop = Arc::new(AtomicBool::new(false));
    let traffic: Vec<_> = [Some(token.clone()), None]
        .into_iter()
        .map(|credential| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let header = credential.as_deref().map_or("Bearer mt_forged".to_string(), bearer);
                let want = if credential.is_some() { 200 } else { 401 };
                let (mut right, mut unanswered) = (0u32, 0u32);
                while !stop.load(Ordering::Relaxed) {
                    let request = format!(
                        "GET /api/whoami HTTP/1.1\r\nhost: t\r\nauthorization: {header}\r\nconnection: close\r\n\r\n"
                    );
                    match raw_status(port, request.as_bytes()) {
                        0 => unanswered += 1,
                        status => {
                            assert_eq!(status, want, "a wrong answer during a reload");
                            right += 1;
                        }
                    }
                }
                (right, unanswered)
            })
        })
        .collect();
    let reloads = 8;
    for n in 1..=reloads {
        replace_file(&lds, &lds_file(&version(n)).to_string());
        std::thread::sleep(Duration::from_millis(700));
    }
    std::thread::sleep(Duration::from_millis(2500)); // the last old listener drains
    stop.store(true, Ordering::Relaxed);
    for t in traffic {
        let (right, unanswered) = t.join().unwrap();
        assert!(right > 50, "too little traffic got through: {right}");
        assert!(unanswered * 50 <= right, "{unanswered} requests unanswered of {}", right + unanswered);
    }
    let stats = s
        .agent
        .get(format!("http://127.0.0.1:{admin_port}/stats?filter=listener_manager"))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    let updated = stats
        .lines()
        .find_map(|l| l.strip_prefix("listener_manager.listener_modified: "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap();
    assert_eq!(updated, reloads, "every rewrite was a listener update:\n{stats}");
    if Build::under_test() == Build::Native {
        assert_eq!(tick_threads(envoy.pid()), 1, "only the live config's timer is left");
    }
    // revocation holds through the reloaded config
    assert_eq!(s.revoke_at_companion(&token).status, 200);
    for _ in 0..10 {
        let request = format!(
            "GET /api/whoami HTTP/1.1\r\nhost: t\r\nauthorization: {}\r\nconnection: close\r\n\r\n",
            bearer(&token)
        );
        assert_eq!(raw_status(port, request.as_bytes()), 401);
    }
}
