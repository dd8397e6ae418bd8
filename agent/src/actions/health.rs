//! `health`: is a unit active, does a TCP port accept, does an HTTP GET answer the expected
//! status, does an allow-listed command exit 0. Each check is bounded by the action timeout.
//!
//! HTTP is plain `http://` over a minimal HTTP/1.1 client (one GET, status line only): health
//! endpoints are local and plain, and this keeps a TLS client stack out of the agent. An
//! `https://` URL fails with a message saying to use a tcp or command check instead.
//!
//! tcp and http checks connect only where `policy.health_targets` allows (loopback by
//! default): a root agent must not become the coordinator's probe of metadata services or
//! admin endpoints. A host name is resolved once, and only the resolved addresses the policy
//! allows are connected to, so a name cannot be pointed elsewhere between check and connect.

use std::net::SocketAddr;

use pitcrew_proto::policy::LocalPolicy;
pub use pitcrew_proto::policy::{HttpTarget, parse_http_url};
use pitcrew_proto::v1;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::command::{self, CommandSpec, RunError};
use super::{Ctx, Report};
use crate::systemd::Systemd;

/// Reads the status code from the first line of an HTTP response.
pub fn parse_status_line(head: &[u8]) -> Result<u16, String> {
    let line_end = head.iter().position(|b| *b == b'\n').unwrap_or(head.len());
    let line = String::from_utf8_lossy(&head[..line_end]);
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some(version), Some(code)) if version.starts_with("HTTP/") => code
            .parse()
            .map_err(|_| format!("bad status line {:?}", line.trim())),
        _ => Err(format!("not an HTTP response: {:?}", line.trim())),
    }
}

/// The addresses of `host:port` a health check may connect to: refused (with the rule) when it
/// resolves only to addresses the policy does not allow.
async fn allowed_addresses(
    policy: &LocalPolicy,
    host: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, Report> {
    let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| Report::failed(format!("cannot resolve {host}: {e}")))?
        .collect();
    let allowed: Vec<SocketAddr> = resolved
        .iter()
        .copied()
        .filter(|address| policy.health_target_allowed(*address))
        .collect();
    if allowed.is_empty() {
        if resolved.is_empty() {
            return Err(Report::failed(format!("{host} resolves to no address")));
        }
        return Err(Report::refused(
            policy.health_target_refusal(host, port, &resolved),
        ));
    }
    Ok(allowed)
}

/// Connects to the first of `addresses` that accepts.
async fn connect(addresses: &[SocketAddr], shown: &str) -> Result<TcpStream, String> {
    let mut last = None;
    for address in addresses {
        match TcpStream::connect(address).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => format!("cannot connect to {shown}: {e}"),
        None => format!("cannot connect to {shown}: no address"),
    })
}

async fn http_get(target: &HttpTarget, addresses: &[SocketAddr]) -> Result<u16, String> {
    let mut stream = connect(addresses, &format!("{}:{}", target.host, target.port)).await?;
    let host_header = if target.host.contains(':') {
        format!("[{}]:{}", target.host, target.port)
    } else {
        format!("{}:{}", target.host, target.port)
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: pitcrew-agent/{}\r\nConnection: close\r\n\r\n",
        target.path,
        pitcrew_proto::VERSION
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("cannot send the request: {e}"))?;
    // Only the status line matters; read until it is complete (bounded).
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.contains(&b'\n') && head.len() < 8192 {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("cannot read the response: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    parse_status_line(&head)
}

/// Runs one health check, as far as `policy` allows.
pub async fn run(
    ctx: &Ctx,
    bus: Option<&str>,
    policy: &LocalPolicy,
    request: &v1::Health,
) -> Report {
    use v1::health::Check;
    let check = async {
        match &request.check {
            None => Report::failed("the health action names no check"),
            Some(Check::UnitActive(unit)) => {
                if let Err(refusal) = pitcrew_proto::policy::validate_unit_name(unit) {
                    return Report::refused(refusal);
                }
                let systemd = match Systemd::connect(bus).await {
                    Ok(s) => s,
                    Err(e) => return Report::failed(e.to_string()),
                };
                match systemd.active_state(unit).await {
                    Ok(state) if state == "active" => {
                        Report::succeeded(format!("{unit} is active")).with_detail("state", state)
                    }
                    Ok(state) => Report::failed(format!("{unit} is {state}, not active"))
                        .with_detail("state", state),
                    Err(e) => Report::failed(e.to_string()),
                }
            }
            Some(Check::Tcp(tcp)) => {
                let Ok(port) = u16::try_from(tcp.port) else {
                    return Report::failed(format!("port {} is out of range", tcp.port));
                };
                let addresses = match allowed_addresses(policy, &tcp.host, port).await {
                    Ok(addresses) => addresses,
                    Err(report) => return report,
                };
                match connect(&addresses, &format!("{}:{port}", tcp.host)).await {
                    Ok(_) => Report::succeeded(format!("{}:{port} accepts connections", tcp.host)),
                    Err(message) => Report::failed(message),
                }
            }
            Some(Check::Http(http)) => {
                let expect = if http.expect_status == 0 {
                    200
                } else {
                    http.expect_status
                };
                let target = match parse_http_url(&http.url) {
                    Ok(t) => t,
                    Err(message) => return Report::failed(message),
                };
                let addresses = match allowed_addresses(policy, &target.host, target.port).await {
                    Ok(addresses) => addresses,
                    Err(report) => return report,
                };
                match http_get(&target, &addresses).await {
                    Ok(status) if u32::from(status) == expect => {
                        Report::succeeded(format!("GET {} answered {status}", http.url))
                            .with_detail("status", status.to_string())
                    }
                    Ok(status) => Report::failed(format!(
                        "GET {} answered {status}, expected {expect}",
                        http.url
                    ))
                    .with_detail("status", status.to_string()),
                    Err(message) => Report::failed(format!("GET {}: {message}", http.url)),
                }
            }
            Some(Check::Command(cmd)) => {
                let program = cmd.argv.first().cloned().unwrap_or_default();
                let spec = CommandSpec {
                    argv: cmd.argv.clone(),
                    ..Default::default()
                };
                match command::run(ctx, &spec).await {
                    Ok(out) if out.status.success() => {
                        Report::succeeded(format!("{program} exited 0")).with_output(out.output)
                    }
                    Ok(out) => {
                        Report::failed(format!("{program} failed with {}", out.describe_status()))
                            .with_output(out.output)
                    }
                    Err(RunError::Spawn { program, source }) => {
                        Report::failed(format!("cannot start {program}: {source}"))
                    }
                    Err(RunError::Stopped { stop, output }) => {
                        Report::stopped(stop, ctx.timeout, "the check command was killed")
                            .with_output(output)
                    }
                }
            }
        }
    };
    tokio::select! {
        report = check => report,
        stop = ctx.stopped() => Report::stopped(stop, ctx.timeout, "the check did not answer in time"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_urls_parse_and_bad_ones_are_explained() {
        assert_eq!(
            parse_http_url("http://127.0.0.1:8080/health?x=1").unwrap(),
            HttpTarget {
                host: "127.0.0.1".into(),
                port: 8080,
                path: "/health?x=1".into()
            }
        );
        assert_eq!(parse_http_url("http://example").unwrap().port, 80);
        assert_eq!(parse_http_url("http://h?q").unwrap().path, "/?q");
        let v6 = parse_http_url("http://[::1]:9/x").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 9));
        assert!(
            parse_http_url("https://x/")
                .unwrap_err()
                .contains("not supported")
        );
        for bad in [
            "ftp://x",
            "http://",
            "http://h:port/",
            "http://u:p@h/",
            "http://h/a b",
        ] {
            assert!(parse_http_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn status_lines_parse() {
        assert_eq!(
            parse_status_line(b"HTTP/1.1 204 No Content\r\n").unwrap(),
            204
        );
        assert_eq!(parse_status_line(b"HTTP/1.0 500\r\n").unwrap(), 500);
        assert!(parse_status_line(b"SSH-2.0-OpenSSH\r\n").is_err());
        assert!(parse_status_line(b"").is_err());
    }
}
