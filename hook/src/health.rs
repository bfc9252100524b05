//! The health check: HTTP GET until a 2xx answer, with a deadline per try and in all.

use std::{
    io::{Read, Write},
    net::{TcpStream, ToSocketAddrs},
    time::{Duration, Instant},
};

use anyhow::{bail, format_err};
use packaging::config::Health;

use crate::util::{Log, check_interrupted};

/// One GET; returns the status code and the start of the body.
pub fn get(url: &str, timeout: Duration) -> anyhow::Result<(u16, String)> {
    let packaging::HttpUrl { addr, host, path } =
        packaging::HttpUrl::parse(url).map_err(anyhow::Error::msg)?;
    let sockaddr = addr.to_socket_addrs()?.next().ok_or_else(|| format_err!("{addr} resolves to nothing"))?;
    let mut stream = TcpStream::connect_timeout(&sockaddr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: deploy-hook\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    stream.take(64 * 1024).read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format_err!("not an HTTP response: {:?}", text.lines().next().unwrap_or("")))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.chars().take(200).collect()).unwrap_or_default();
    Ok((status, body))
}

/// Polls until a 2xx answer or the deadline; returns the last answer's body.
pub fn wait_healthy(health: &Health, log: &Log) -> anyhow::Result<String> {
    let started = Instant::now();
    let deadline = Duration::from_secs(health.deadline.into());
    let per_try = Duration::from_secs(health.try_timeout.max(1).into());
    let mut last = String::from("no answer yet");
    let mut tries = 0;
    while started.elapsed() < deadline {
        check_interrupted()?;
        tries += 1;
        match get(health.url.as_str(), per_try) {
            Ok((status, body)) if (200..300).contains(&status) => {
                log.info(format!("GET {} answered {status} after {tries} tries", health.url));
                return Ok(body);
            }
            Ok((status, body)) => last = format!("HTTP {status}: {}", body.trim()),
            Err(err) => last = format!("{err:#}"),
        }
        std::thread::sleep(
            Duration::from_secs(health.interval.max(1).into())
                .min(deadline.saturating_sub(started.elapsed())),
        );
    }
    bail!("GET {} found no healthy answer in {}s ({tries} tries); last: {last}", health.url, health.deadline)
}
