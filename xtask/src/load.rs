//! A small HTTP load generator for redeploy measurements: loopback only, bounded in requests and
//! time, one new connection per request (so every request goes through `accept`, where a
//! restart without socket activation refuses connections). It counts what went wrong by kind
//! and the longest a request took.

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

/// How long one request may take before it counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What a load run saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoadReport {
    /// Requests started.
    pub sent: u64,
    /// Answered 200.
    pub ok: u64,
    /// Connection refused: nothing listened.
    pub refused: u64,
    /// Connection reset or closed before a whole response.
    pub reset: u64,
    /// Anything else: timeouts, other errors, a status other than 200.
    pub failed: u64,
    /// The longest request, from connect to the end of the response.
    pub longest: Duration,
    /// The first few errors, for a failing test's message.
    pub samples: Vec<String>,
}

impl LoadReport {
    /// Refused, reset and failed requests together.
    pub fn failures(&self) -> u64 {
        self.refused + self.reset + self.failed
    }

    fn note(&mut self, what: String) {
        if self.samples.len() < 5 {
            self.samples.push(what);
        }
    }

    /// Adds another run's counts.
    pub fn merge(&mut self, other: &LoadReport) {
        self.sent += other.sent;
        self.ok += other.ok;
        self.refused += other.refused;
        self.reset += other.reset;
        self.failed += other.failed;
        self.longest = self.longest.max(other.longest);
        for s in &other.samples {
            self.note(s.clone());
        }
    }
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests: {} ok, {} refused, {} reset, {} failed; longest {} ms",
            self.sent,
            self.ok,
            self.refused,
            self.reset,
            self.failed,
            self.longest.as_millis()
        )
    }
}

/// The bounds of one run.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Stop after this many requests.
    pub max_requests: u64,
    /// Stop after this long.
    pub max_time: Duration,
    /// Pause between requests.
    pub interval: Duration,
}

enum Outcome {
    Ok,
    Refused,
    Reset(String),
    Failed(String),
}

/// One `GET path` on a new connection, `Connection: close`.
pub fn get(addr: SocketAddr, path: &str) -> (Option<u16>, String) {
    match request(addr, path) {
        Ok((status, body)) => (Some(status), body),
        Err(err) => (None, err.to_string()),
    }
}

fn request(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT)?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                ErrorKind::UnexpectedEof,
                format!("no HTTP status in {} bytes", response.len()),
            )
        })?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

fn once(addr: SocketAddr, path: &str) -> Outcome {
    match request(addr, path) {
        Ok((200, _)) => Outcome::Ok,
        Ok((status, body)) => Outcome::Failed(format!("HTTP {status}: {}", body.trim())),
        Err(err) => match err.kind() {
            ErrorKind::ConnectionRefused => Outcome::Refused,
            ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
            | ErrorKind::UnexpectedEof => Outcome::Reset(err.to_string()),
            _ => Outcome::Failed(err.to_string()),
        },
    }
}

/// Sends `GET path` to `addr` one request after another until `stop` is set or a limit is
/// reached. Refuses any address that is not loopback.
pub fn run(addr: SocketAddr, path: &str, limits: Limits, stop: &AtomicBool) -> LoadReport {
    assert!(addr.ip().is_loopback(), "the load generator only targets loopback, not {addr}");
    let started = Instant::now();
    let mut report = LoadReport::default();
    while !stop.load(Ordering::Relaxed)
        && report.sent < limits.max_requests
        && started.elapsed() < limits.max_time
    {
        let t = Instant::now();
        report.sent += 1;
        match once(addr, path) {
            Outcome::Ok => report.ok += 1,
            Outcome::Refused => {
                report.refused += 1;
                report.note("connection refused".into());
            }
            Outcome::Reset(why) => {
                report.reset += 1;
                report.note(why);
            }
            Outcome::Failed(why) => {
                report.failed += 1;
                report.note(why);
            }
        }
        report.longest = report.longest.max(t.elapsed());
        std::thread::sleep(limits.interval);
    }
    report
}
