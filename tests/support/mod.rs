//! Real services for integration tests, one file per concern: `redis` (redis-server on free
//! loopback ports with their own temp dirs, a 3-node Redis Cluster), `companion` (the binary, and
//! issuing a token), `envoy` (real Envoy, and its YAML edited as data), `http` (a client).
//! Nothing here touches a fixed port or a database it did not create.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod companion;
pub mod envoy;
pub mod http;
pub mod redis;

pub use self::companion::*;
pub use self::envoy::*;
pub use self::http::*;
pub use self::redis::*;

use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// A free loopback port (and, for cluster nodes, its bus port +10000 too).
pub fn free_port(with_bus: bool) -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
        let port = listener.local_addr().unwrap().port();
        if !with_bus {
            return port;
        }
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
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
