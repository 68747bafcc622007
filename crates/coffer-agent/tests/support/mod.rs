//! A tiny hostile HTTP/1.1 server for the agent's tests: it reads each
//! request (request line, headers, a `Content-Length` body), records its
//! method and path, and answers from a table the test scripts (and may
//! change between requests). Every answer closes its connection.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// How the server answers one (method, path).
#[derive(Clone, Debug)]
pub enum Reply {
    /// A status, extra headers and a body (with its `Content-Length`).
    Full {
        /// The status.
        status: u16,
        /// Extra headers.
        headers: Vec<(String, String)>,
        /// The body.
        body: Vec<u8>,
    },
    /// A good status line and headers announcing `body`, then the body
    /// one byte per `every`.
    DripBody {
        /// The body dripped.
        body: Vec<u8>,
        /// The pause before each byte.
        every: Duration,
    },
    /// The status line and headers themselves one byte per `every`.
    DripHead {
        /// The pause before each byte.
        every: Duration,
    },
    /// Headers announcing a body, then silence for `stall`.
    Stall {
        /// How long nothing comes.
        stall: Duration,
    },
    /// `len` bytes of body with no `Content-Length`: chunked, or delimited
    /// by the connection's close.
    Unbounded {
        /// The bytes sent (as long as the client reads).
        len: usize,
        /// `Transfer-Encoding: chunked`, or read-until-close.
        chunked: bool,
    },
}

impl Reply {
    /// A JSON answer.
    pub fn json(status: u16, body: &serde_json::Value) -> Reply {
        Reply::Full {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: serde_json::to_vec(body).unwrap_or_default(),
        }
    }

    /// An answer of raw bytes as the body, said to be JSON.
    pub fn raw_json(status: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply::Full {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: body.into(),
        }
    }

    /// A plain-text answer.
    pub fn text(status: u16, body: &str) -> Reply {
        Reply::Full {
            status,
            headers: vec![("Content-Type".into(), "text/html".into())],
            body: body.as_bytes().to_vec(),
        }
    }

    /// No body.
    pub fn empty(status: u16) -> Reply {
        Reply::Full {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A redirect to `location`.
    pub fn redirect(status: u16, location: &str) -> Reply {
        Reply::Full {
            status,
            headers: vec![("Location".into(), location.into())],
            body: Vec::new(),
        }
    }
}

/// One request as the server saw it.
pub type Seen = (String, String);

type Script = Arc<Mutex<HashMap<(String, String), Reply>>>;
type Log = Arc<Mutex<Vec<Seen>>>;
type Bodies = Arc<Mutex<HashMap<Seen, Vec<u8>>>>;

/// The server, running in a thread until the test process ends.
pub struct Hostile {
    addr: SocketAddr,
    script: Script,
    log: Log,
    bodies: Bodies,
}

impl Hostile {
    /// A server on 127.0.0.1 and a free port, answering 404 to everything
    /// until scripted.
    pub fn start() -> Hostile {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let script: Script = Arc::default();
        let log: Log = Arc::default();
        let bodies: Bodies = Arc::default();
        let (s, l, b) = (Arc::clone(&script), Arc::clone(&log), Arc::clone(&bodies));
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (s, l, b) = (Arc::clone(&s), Arc::clone(&l), Arc::clone(&b));
                thread::spawn(move || {
                    let _ = serve(stream, &s, &l, &b);
                });
            }
        });
        Hostile {
            addr,
            script,
            log,
            bodies,
        }
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answers `method path` with `reply` from now on.
    pub fn answer(&self, method: &str, path: &str, reply: Reply) {
        self.script
            .lock()
            .expect("script lock")
            .insert((method.to_owned(), path.to_owned()), reply);
    }

    /// The body of the last `method path` request, if one came.
    pub fn last_body(&self, method: &str, path: &str) -> Option<Vec<u8>> {
        self.bodies
            .lock()
            .expect("bodies lock")
            .get(&(method.to_owned(), path.to_owned()))
            .cloned()
    }

    /// Every request seen so far, in order.
    pub fn requests(&self) -> Vec<Seen> {
        self.log.lock().expect("log lock").clone()
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        _ => "Whatever",
    }
}

fn serve(stream: TcpStream, script: &Script, log: &Log, bodies: &Bodies) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default();
    let path = target.split('?').next().unwrap_or_default().to_owned();
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" || header == "\n" {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length.min(1 << 20)];
    reader.read_exact(&mut body)?;
    bodies
        .lock()
        .expect("bodies lock")
        .insert((method.clone(), path.clone()), body);
    log.lock()
        .expect("log lock")
        .push((method.clone(), path.clone()));
    let reply = script
        .lock()
        .expect("script lock")
        .get(&(method, path))
        .cloned()
        .unwrap_or_else(|| {
            Reply::json(
                404,
                &serde_json::json!({"error": {"code": "not_found", "message": "nothing here"}}),
            )
        });
    write_reply(stream, reply)
}

fn write_reply(mut out: TcpStream, reply: Reply) -> std::io::Result<()> {
    match reply {
        Reply::Full {
            status,
            headers,
            body,
        } => {
            let mut head = format!(
                "HTTP/1.1 {status} {}\r\nContent-Length: {}\r\nConnection: close\r\n",
                reason(status),
                body.len()
            );
            for (name, value) in headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("\r\n");
            out.write_all(head.as_bytes())?;
            out.write_all(&body)?;
        }
        Reply::DripBody { body, every } => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            out.write_all(head.as_bytes())?;
            out.flush()?;
            for byte in body {
                thread::sleep(every);
                out.write_all(&[byte])?;
                out.flush()?;
            }
        }
        Reply::DripHead { every } => {
            let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";
            for byte in head.bytes() {
                thread::sleep(every);
                out.write_all(&[byte])?;
                out.flush()?;
            }
        }
        Reply::Stall { stall } => {
            out.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n",
            )?;
            out.flush()?;
            thread::sleep(stall);
            out.write_all(b"{}")?;
        }
        Reply::Unbounded { len, chunked } => {
            let head = if chunked {
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            } else {
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
            };
            out.write_all(head.as_bytes())?;
            let block = vec![b' '; 64 * 1024];
            let mut sent = 0;
            while sent < len {
                let n = block.len().min(len - sent);
                if chunked {
                    out.write_all(format!("{n:x}\r\n").as_bytes())?;
                    out.write_all(&block[..n])?;
                    out.write_all(b"\r\n")?;
                } else {
                    out.write_all(&block[..n])?;
                }
                sent += n;
            }
            if chunked {
                out.write_all(b"0\r\n\r\n")?;
            }
        }
    }
    out.flush()?;
    // Let the client read to the end before the socket goes.
    let _ = out.shutdown(std::net::Shutdown::Write);
    Ok(())
}
