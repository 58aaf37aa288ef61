//! A TCP relay in front of the companion that holds the edges' lookups (`GET /v1/internal/lookup`,
//! `POST /v1/internal/lookups`) while told to, and lets everything else through: a test can keep a
//! lookup or a batch under way for as long as it needs, then let them go one at a time or all.
//! It relays bytes; it only looks at the start of what Envoy writes to see which request begins.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// What the relay holds and lets go.
#[derive(Default)]
struct Gate {
    holding: bool,
    /// Held lookups that may go (one each).
    passes: usize,
    /// Lookups held now.
    waiting: usize,
}

/// The relay: listens on [`HoldingProxy::port`], forwards to the port set with
/// [`HoldingProxy::forward_to`].
pub struct HoldingProxy {
    /// Where Envoy's companion cluster should point.
    pub port: u16,
    target: Arc<AtomicU16>,
    gate: Arc<(Mutex<Gate>, Condvar)>,
}

/// Whether bytes Envoy wrote to the companion begin a lookup.
fn begins_lookup(bytes: &[u8]) -> bool {
    bytes.starts_with(b"GET /v1/internal/lookup") || bytes.starts_with(b"POST /v1/internal/lookups")
}

impl HoldingProxy {
    /// Starts the relay (holding nothing yet; forwarding nowhere until told).
    pub fn start() -> HoldingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (target, gate) = (Arc::new(AtomicU16::new(0)), Arc::new((Mutex::new(Gate::default()), Condvar::new())));
        let (t, g) = (target.clone(), gate.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (t, g) = (t.clone(), g.clone());
                std::thread::spawn(move || relay(client, t.load(Ordering::SeqCst), g));
            }
        });
        HoldingProxy { port, target, gate }
    }

    /// Forwards to the companion on `port`.
    pub fn forward_to(&self, port: u16) {
        self.target.store(port, Ordering::SeqCst);
    }

    /// Holds every lookup from now on (or lets them all go with `false`).
    pub fn hold(&self, holding: bool) {
        let (gate, changed) = &*self.gate;
        gate.lock().unwrap().holding = holding;
        changed.notify_all();
    }

    /// Lets one held lookup go (the oldest to wake first; the rest stay held).
    pub fn pass_one(&self) {
        let (gate, changed) = &*self.gate;
        gate.lock().unwrap().passes += 1;
        changed.notify_all();
    }

    /// Lookups held now.
    pub fn waiting(&self) -> usize {
        self.gate.0.lock().unwrap().waiting
    }

    /// Waits until `n` lookups are held (`false` if they were not within `limit`).
    pub fn wait_held(&self, n: usize, limit: Duration) -> bool {
        let started = Instant::now();
        while started.elapsed() < limit {
            if self.gate.0.lock().unwrap().waiting == n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

/// Relays one connection both ways; a lookup waits at the gate before it goes on.
fn relay(mut client: TcpStream, target: u16, gate: Arc<(Mutex<Gate>, Condvar)>) {
    let Ok(mut upstream) = TcpStream::connect(("127.0.0.1", target)) else { return };
    let (Ok(mut client_back), Ok(mut upstream_back)) = (client.try_clone(), upstream.try_clone()) else { return };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut upstream_back, &mut client_back);
        let _ = client_back.shutdown(std::net::Shutdown::Both);
    });
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match client.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if begins_lookup(&buffer[..n]) {
            let (lock, changed) = &*gate;
            let mut g = lock.lock().unwrap();
            g.waiting += 1;
            while g.holding && g.passes == 0 {
                g = changed.wait(g).unwrap();
            }
            if g.holding {
                g.passes -= 1;
            }
            g.waiting -= 1;
        }
        if upstream.write_all(&buffer[..n]).is_err() {
            break;
        }
    }
    let _ = upstream.shutdown(std::net::Shutdown::Both);
}
