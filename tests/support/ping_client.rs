//! A client that sends requests through a VIP while a test moves it
//! (tests/vrrp_reload.rs, tests/vrrp_handover.rs): every 10 ms it starts a
//! request (connect, "ping", read the echo) on its own thread, as long as
//! fewer than `in_flight` are open; it counts what succeeded and failed and
//! keeps the first failures. Bounded: 18000 ticks (three minutes) at most.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::netns::in_ns;

pub struct PingClient {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<String>>>,
}

/// How many failures are kept for the test's message.
const KEPT_ERRORS: usize = 5;

impl PingClient {
    /// Requests to `vip:8443` from namespace `ns`: at most `in_flight` open
    /// at once (1: one after the other), each given `read_timeout` for its
    /// echo.
    pub fn start(ns: &str, vip: IpAddr, in_flight: u64, read_timeout: Duration) -> PingClient {
        let c = PingClient {
            stop: Arc::new(AtomicBool::new(false)),
            ok: Arc::new(AtomicU64::new(0)),
            failed: Arc::new(AtomicU64::new(0)),
            errors: Arc::new(Mutex::new(Vec::new())),
        };
        let (stop, ok, failed, errors) = (
            c.stop.clone(),
            c.ok.clone(),
            c.failed.clone(),
            c.errors.clone(),
        );
        let ns = ns.to_string();
        let running = Arc::new(AtomicU64::new(0));
        std::thread::spawn(move || {
            let to = SocketAddr::new(vip, 8443);
            for _ in 0..18_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if running.load(Ordering::Relaxed) < in_flight {
                    let (ok, failed, errors, running) =
                        (ok.clone(), failed.clone(), errors.clone(), running.clone());
                    running.fetch_add(1, Ordering::Relaxed);
                    let ns = ns.clone();
                    std::thread::spawn(move || {
                        let r = in_ns(&ns, move || ping(to, read_timeout));
                        match r {
                            Ok(()) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                let mut v = errors.lock().unwrap();
                                if v.len() < KEPT_ERRORS {
                                    v.push(e.to_string());
                                }
                            }
                        }
                        running.fetch_sub(1, Ordering::Relaxed);
                    });
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        c
    }

    /// (succeeded, failed) so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    /// Forgets the failures kept so far (the warm-up's).
    pub fn clear_errors(&self) {
        self.errors.lock().unwrap().clear();
    }

    /// The first failures (at most five).
    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }
}

impl Drop for PingClient {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn ping(to: SocketAddr, read_timeout: Duration) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(1))?;
    s.set_read_timeout(Some(read_timeout))?;
    s.write_all(b"ping")?;
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf)?;
    if &buf != b"ping" {
        return Err(std::io::Error::other("bad echo"));
    }
    Ok(())
}
