//! Real services for integration tests, one file per concern: `redis` (redis-server on free
//! loopback ports with their own temp dirs, a 3-node Redis Cluster), `companion` (the binary, and
//! issuing a token), `envoy` (real Envoy, and its YAML edited as data), `http` (a client), `hold`
//! (a relay that holds the edges' lookups to the companion while a test says so).
//! Nothing here touches a fixed port or a database it did not create.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod companion;
pub mod envoy;
pub mod hold;
pub mod http;
pub mod redis;

pub use self::companion::*;
pub use self::envoy::*;
pub use self::http::*;
pub use self::redis::*;

use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// The ports the shipped configurations (`envoy/`) use in `free_port`'s range. A test moves a
/// shipped config's ports to free ones one `move_port` at a time, so a free port equal to one still
/// to be moved would be moved twice (seen: the listener moved onto 19901, then with the admin port
/// onto 19902, and Envoy could not bind).
const SHIPPED_PORTS: [u16; 5] = [16400, 18080, 18081, 19901, 19902];

/// A free loopback port (and, for cluster nodes, its bus port +10000 too), never handed out twice
/// in one test process and taken below the kernel's ephemeral range (32768 and up), so neither
/// another test's `free_port` nor an outgoing connection's local port can take it between this
/// check and the child process binding it. (Asking the kernel for port 0 could hand the same port
/// to two tests at once: an Envoy that then failed to bind left the test talking to another
/// test's upstream.) Each process starts at its own offset, so two test binaries rarely meet.
pub fn free_port(with_bus: bool) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 12_000;
    const SPAN: u32 = 10_000; // up to 21_999; bus ports up to 31_999, still below 32768
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7_919) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if !SHIPPED_PORTS.contains(&port) && free(port) && (!with_bus || free(port + 10_000)) {
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + SPAN)
}

/// Waits until something accepts connections on the port.
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// The repository root.
pub fn repo_root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs tests/clients/dpop_client.mjs (keys from `jose`, proofs from panva's `dpop`): its output.
pub fn dpop_client(args: &[&str]) -> String {
    let out = std::process::Command::new("node")
        .arg(repo_root().join("tests/clients/dpop_client.mjs"))
        .args(args)
        .env("NODE_TOOLS", repo_root().join(".tools/node/node_modules"))
        .output()
        .expect("node");
    assert!(out.status.success(), "dpop_client {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}
