//! A TCP proxy on loopback that counts the bytes it forwards each way and
//! cuts every connection it holds when the count of one direction passes
//! each of a list of marks: a weak mobile link, for real (TLS runs through
//! it end to end, and a cut is a real reset in the middle of a record).

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The direction whose bytes the cut marks count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    /// Client to server (an upload).
    Up,
    /// Server to client (a download).
    Down,
}

#[derive(Default)]
struct Shared {
    up: AtomicU64,
    down: AtomicU64,
    cuts: AtomicU64,
    connections: AtomicU64,
    marks: Mutex<VecDeque<u64>>,
    live: Mutex<Vec<TcpStream>>,
    stop: AtomicBool,
}

impl Shared {
    /// Counts `n` bytes one way; past the next mark of the watched way,
    /// cuts every live connection.
    fn count(&self, way: Watch, watched: Watch, n: u64) {
        let total = match way {
            Watch::Up => self.up.fetch_add(n, Ordering::SeqCst) + n,
            Watch::Down => self.down.fetch_add(n, Ordering::SeqCst) + n,
        };
        if way != watched {
            return;
        }
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

/// The proxy; it stops accepting when dropped.
pub struct CuttingProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl CuttingProxy {
    /// A proxy to `target` that cuts at each of `marks` (bytes, rising) of
    /// the `watched` direction.
    pub fn start(target: SocketAddr, watched: Watch, marks: Vec<u64>) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            marks: Mutex::new(marks.into()),
            ..Shared::default()
        });
        let accepting = shared.clone();
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
                for (from, to, way) in [
                    (
                        client.try_clone().unwrap(),
                        server.try_clone().unwrap(),
                        Watch::Up,
                    ),
                    (server, client, Watch::Down),
                ] {
                    let shared = accepting.clone();
                    std::thread::spawn(move || pump(from, to, way, watched, &shared));
                }
            }
        });
        CuttingProxy { addr, shared }
    }

    /// Bytes forwarded client to server so far.
    pub fn up(&self) -> u64 {
        self.shared.up.load(Ordering::SeqCst)
    }

    /// Bytes forwarded server to client so far.
    pub fn down(&self) -> u64 {
        self.shared.down.load(Ordering::SeqCst)
    }

    /// Cuts made so far.
    pub fn cuts(&self) -> u64 {
        self.shared.cuts.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Marks not yet passed.
    pub fn marks_left(&self) -> usize {
        self.shared.marks.lock().unwrap().len()
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
        for stream in self.shared.live.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, way: Watch, watched: Watch, shared: &Shared) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        shared.count(way, watched, n as u64);
    }
    let _ = to.shutdown(Shutdown::Write);
}
