//! A TCP proxy on loopback for the resume row: it forwards bytes both
//! ways (TLS runs through it end to end), counts those from client to
//! server, and each time that count passes one of its marks it cuts every
//! connection it holds (both sockets shut down: a reset in the middle of
//! a TLS record, as a weak mobile link does). Two threads per connection.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Shared {
    up: AtomicU64,
    cuts: AtomicU64,
    connections: AtomicU64,
    marks: Mutex<VecDeque<u64>>,
    live: Mutex<Vec<TcpStream>>,
    stop: AtomicBool,
}

impl Shared {
    /// Counts `n` bytes from client to server; past the next mark, cuts
    /// every live connection.
    fn count_up(&self, n: u64) {
        let total = self.up.fetch_add(n, Ordering::SeqCst) + n;
        let mut marks = self.marks.lock().unwrap();
        if marks.front().is_some_and(|mark| total >= *mark) {
            while marks.front().is_some_and(|mark| total >= *mark) {
                marks.pop_front();
            }
            self.cuts.fetch_add(1, Ordering::SeqCst);
            for stream in self.live.lock().unwrap().drain(..) {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
    }
}

/// The proxy; it stops accepting, and cuts what it holds, when dropped.
pub(crate) struct CutProxy {
    /// Where clients connect.
    pub(crate) addr: SocketAddr,
    shared: Arc<Shared>,
}

impl CutProxy {
    /// A proxy to `target` that cuts at each of `marks` (client-to-server
    /// bytes since the start, rising; none: it only counts).
    pub(crate) fn start(target: SocketAddr, marks: Vec<u64>) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            marks: Mutex::new(marks.into()),
            ..Shared::default()
        });
        let accepting = Arc::clone(&shared);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if accepting.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                accepting.connections.fetch_add(1, Ordering::SeqCst);
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                {
                    let mut live = accepting.live.lock().unwrap();
                    live.push(client.try_clone().unwrap());
                    live.push(server.try_clone().unwrap());
                }
                let (c, s) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let up = Arc::clone(&accepting);
                std::thread::spawn(move || pump(c, s, Some(&up)));
                std::thread::spawn(move || pump(server, client, None));
            }
        });
        CutProxy { addr, shared }
    }

    /// Bytes forwarded client to server so far.
    pub(crate) fn up(&self) -> u64 {
        self.shared.up.load(Ordering::SeqCst)
    }

    /// Cuts made so far.
    pub(crate) fn cuts(&self) -> u64 {
        self.shared.cuts.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub(crate) fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Marks not passed yet.
    pub(crate) fn marks_left(&self) -> usize {
        self.shared.marks.lock().unwrap().len()
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
        for stream in self.shared.live.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// Copies `from` to `to` until either ends; counts the bytes (and cuts at
/// the marks) when `counted` is given: the client-to-server way.
fn pump(mut from: TcpStream, mut to: TcpStream, counted: Option<&Shared>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        if let Some(shared) = counted {
            shared.count_up(n as u64);
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
