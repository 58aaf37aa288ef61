//! Device activity through real Envoy: what the filter reports of a token's use reaches the admin
//! API's device list, once per interval, with the user agent cleaned of what Envoy lets through.

use super::*;

/// The user's tokens as the admin API lists them.
fn devices(s: &Stack, user: &str) -> Vec<Value> {
    let url = format!("http://127.0.0.1:{}/v1/users/{user}/tokens", s.companion_port);
    let r = support::http_call(&s.agent, "GET", &url, &[("authorization", &bearer(ADMIN_KEY))], None);
    assert_eq!(r.status, 200, "{}", r.body);
    r.body.as_array().unwrap().clone()
}

fn device(s: &Stack, user: &str, name: &str) -> Value {
    devices(s, user).into_iter().find(|t| t["device"] == name).unwrap()
}

/// One kept-alive client connection (so one Envoy worker: activity is kept per worker).
struct Connection(std::net::TcpStream);

impl Connection {
    fn open(port: u16) -> Connection {
        let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Connection(stream)
    }

    /// Sends `GET /api/whoami` with `token` and a user agent of raw bytes; the answer's status.
    fn get_as(&mut self, token: &str, user_agent: &[u8]) -> u16 {
        use std::io::{BufRead, BufReader, Read, Write};
        let mut request =
            format!("GET /api/whoami HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {token}\r\n").into_bytes();
        request.extend_from_slice(b"user-agent: ");
        request.extend_from_slice(user_agent);
        request.extend_from_slice(b"\r\n\r\n");
        self.0.write_all(&request).unwrap();
        let mut reader = BufReader::new(&self.0);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let status = line.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut length = 0;
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            if line.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        assert!(reader.buffer().is_empty(), "one answer per request");
        status
    }
}

#[test]
fn activity_is_reported_once_per_interval_with_the_user_agent_cleaned() {
    let s = Stack::start(|c| c["activity_interval_ms"] = json!(3000));
    let laptop = s.login("ada-activity", "laptop", &[]);
    let _phone = s.login("ada-activity", "phone", &[]);
    // what Envoy's codec passes in a header value: tabs, bytes that are not UTF-8, a bidi override
    let forged = b"Evil/1.0\t\tX-Injected: 1 \xe2\x80\xae\xff end";
    let mut client = Connection::open(s.port);
    assert_eq!(client.get_as(&laptop, forged), 200);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(client.get_as(&laptop, b"second/2"), 200);
    // reports go out on the filter's 1 s tick
    std::thread::sleep(Duration::from_millis(1500));
    let seen = device(&s, "ada-activity", "laptop");
    assert_eq!(seen["last_address"], "127.0.0.1", "{seen}");
    // the first use only: the second, 1 s later, is within the interval
    assert_eq!(seen["last_user_agent"], "Evil/1.0 X-Injected: 1 \u{fffd} end", "{seen}");
    let first_seen = seen["last_seen"].as_u64().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(first_seen.abs_diff(now) <= 5, "{seen}");
    assert_eq!(s.stat("activity_reported"), 1, "two requests 1 s apart, one report");
    assert!(device(&s, "ada-activity", "phone").get("last_seen").is_none(), "an unused token has no activity");

    // after the interval, reported once more
    std::thread::sleep(Duration::from_millis(2000));
    assert_eq!(client.get_as(&laptop, b"third/3"), 200);
    std::thread::sleep(Duration::from_millis(1500));
    let seen = device(&s, "ada-activity", "laptop");
    assert_eq!(seen["last_user_agent"], "third/3", "{seen}");
    assert!(seen["last_seen"].as_u64().unwrap() >= first_seen, "{seen}");
    assert_eq!(s.stat("activity_reported"), 2);
    assert_eq!(s.stat("callout_error"), 0);
}
