//! The reqwest transport on a slow link, in miniature: a connector whose
//! timeout is 1 s, against a loopback HTTP/1.1 server that reads a body, or
//! writes an answer, at about 20 KiB/s. A request that moves 48 KiB takes
//! about 2.4 s there: it gets through because its deadline grows with its
//! bytes (1 s + 48 KiB at 16 KiB/s = 4 s), while a small request that the
//! server holds as long still times out after the 1 s. (The same rule at
//! full scale, 30 s plus a 4 MiB piece or an 8 MiB range at 16 KiB/s, is
//! the unit test of `coffer_agent::http::request_deadline`.)

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use coffer_agent::http::ReqwestConnector;
use coffer_agent::{Connector, Server, TransportError, Trust};

const BASE: Duration = Duration::from_secs(1);
const MOVED: usize = 48 * 1024;
/// 4 KiB every 200 ms: about 20 KiB/s, a little above the floor rate.
const STEP: usize = 4 * 1024;
const PAUSE: Duration = Duration::from_millis(200);

/// What the server does with the one request it takes.
#[derive(Clone, Copy)]
enum Link {
    /// Reads the request's body slowly, then answers `{}`.
    SlowUp,
    /// Answers `MOVED` bytes slowly.
    SlowDown,
}

/// Reads one request's head and body (by its Content-Length).
fn read_request(stream: &mut TcpStream, slow: bool) -> usize {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut buf = vec![0u8; STEP];
    let mut read = 0;
    while read < len {
        let n = stream.read(&mut buf[..STEP.min(len - read)]).unwrap();
        assert!(n > 0);
        read += n;
        if slow {
            std::thread::sleep(PAUSE);
        }
    }
    read
}

/// A server on loopback that takes one request as `link` says, on its own
/// thread; its URL.
fn serve(link: Link) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        match link {
            Link::SlowUp => {
                read_request(&mut stream, true);
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
                );
            }
            Link::SlowDown => {
                read_request(&mut stream, false);
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {MOVED}\r\nconnection: close\r\n\r\n"
                );
                if stream.write_all(head.as_bytes()).is_err() {
                    return;
                }
                for _ in 0..MOVED / STEP {
                    std::thread::sleep(PAUSE);
                    if stream.write_all(&[7u8; STEP]).is_err() {
                        return;
                    }
                }
            }
        }
    });
    url
}

fn request(url: &str, method: &str, body: Vec<u8>) -> http::Request<Vec<u8>> {
    http::Request::builder()
        .method(method)
        .uri(format!("{url}/v1/device/files/cases/x"))
        .body(body)
        .unwrap()
}

fn transport(url: &str) -> Box<dyn coffer_agent::Transport> {
    ReqwestConnector::with_timeout(BASE)
        .connect(&Server::new(url, Trust::System).unwrap())
        .unwrap()
}

#[test]
fn a_large_body_on_a_slow_link_gets_the_time_its_bytes_need() {
    let url = serve(Link::SlowUp);
    let started = Instant::now();
    let answer = transport(&url)
        .send(request(&url, "PATCH", vec![1u8; MOVED]), 1024)
        .unwrap();
    let took = started.elapsed();
    assert_eq!(answer.status(), 200);
    assert!(took > 2 * BASE, "the link was not slow: {took:?}");
}

#[test]
fn a_large_answer_on_a_slow_link_gets_the_time_its_bytes_need() {
    let url = serve(Link::SlowDown);
    let started = Instant::now();
    // An answer limit above the default one, as a ranged fetch of a file
    // has.
    let answer = transport(&url)
        .send(request(&url, "GET", Vec::new()), 4 << 20)
        .unwrap();
    let took = started.elapsed();
    assert_eq!(answer.body().len(), MOVED);
    assert!(took > 2 * BASE, "the link was not slow: {took:?}");
}

#[test]
fn a_small_request_keeps_the_timeout() {
    // The same slow answer to a request that announces a small one: cut
    // off after the base timeout.
    let url = serve(Link::SlowDown);
    let started = Instant::now();
    let error = transport(&url)
        .send(request(&url, "GET", Vec::new()), 1024 * 1024)
        .unwrap_err();
    let took = started.elapsed();
    assert!(matches!(error, TransportError::TimedOut), "{error:?}");
    assert!(took < 2 * BASE, "{took:?}");
}
