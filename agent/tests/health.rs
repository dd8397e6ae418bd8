//! Health checks against real sockets on loopback: TCP connect, HTTP status, an allow-listed
//! command's exit code, and the policy's limit on where tcp and http checks may connect.

mod support;

use std::time::Duration;

use pitcrew_proto::policy::{LocalPolicy, Policy};
use pitcrew_proto::v1::{self, Outcome, action::Kind, health::Check};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn health(check: Check) -> Kind {
    Kind::Health(v1::Health { check: Some(check) })
}

/// Serves one HTTP response with `status` to the first connection; returns the port and the
/// request it received.
async fn one_shot_http(status: u16) -> (u16, tokio::task::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.ends_with(b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            request.extend_from_slice(&buf[..n]);
        }
        let body =
            format!("HTTP/1.1 {status} Whatever\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        stream.write_all(body.as_bytes()).await.unwrap();
        String::from_utf8_lossy(&request).into_owned()
    });
    (port, task)
}

#[tokio::test]
async fn http_checks_compare_the_status() {
    let agent = Agent::new(Policy::default());
    let executor = agent.open();
    let (port, served) = one_shot_http(200).await;
    let check =
        |url: String, expect_status| health(Check::Http(v1::HttpCheck { url, expect_status }));
    let (ok, _) = run(
        &executor,
        request(
            "h1",
            check(format!("http://127.0.0.1:{port}/health?deep=1"), 0),
            0,
        ),
    )
    .await;
    assert_eq!(outcome(&ok), Outcome::Succeeded, "{}", ok.message);
    let request_text = served.await.unwrap();
    assert!(
        request_text.starts_with("GET /health?deep=1 HTTP/1.1\r\n"),
        "{request_text}"
    );
    assert!(
        request_text.contains(&format!("Host: 127.0.0.1:{port}\r\n")),
        "{request_text}"
    );

    let (port, _served) = one_shot_http(503).await;
    let (bad, _) = run(
        &executor,
        request("h2", check(format!("http://127.0.0.1:{port}/"), 0), 0),
    )
    .await;
    assert_eq!(outcome(&bad), Outcome::Failed);
    assert!(
        bad.message.contains("answered 503, expected 200"),
        "{}",
        bad.message
    );

    let (port, _served) = one_shot_http(204).await;
    let (expected, _) = run(
        &executor,
        request("h3", check(format!("http://127.0.0.1:{port}/"), 204), 0),
    )
    .await;
    assert_eq!(
        outcome(&expected),
        Outcome::Succeeded,
        "{}",
        expected.message
    );

    let (https, _) = run(
        &executor,
        request("h4", check("https://127.0.0.1/".into(), 0), 0),
    )
    .await;
    assert_eq!(outcome(&https), Outcome::Failed);
    assert!(https.message.contains("not supported"), "{}", https.message);
}

#[tokio::test]
async fn tcp_checks_connect() {
    let agent = Agent::new(Policy::default());
    let executor = agent.open();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let open_port = listener.local_addr().unwrap().port();
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let tcp = |port: u16| {
        health(Check::Tcp(v1::TcpCheck {
            host: "127.0.0.1".into(),
            port: u32::from(port),
        }))
    };
    let (up, _) = run(&executor, request("t1", tcp(open_port), 0)).await;
    assert_eq!(outcome(&up), Outcome::Succeeded, "{}", up.message);
    let (down, _) = run(&executor, request("t2", tcp(closed_port), 0)).await;
    assert_eq!(outcome(&down), Outcome::Failed);
    assert!(down.message.contains("cannot connect"), "{}", down.message);
}

#[tokio::test]
async fn command_checks_need_the_exec_allow_list_and_exit_0() {
    let agent = Agent::new(Policy {
        exec: vec![vec!["/bin/sh".into(), "-c".into()]],
        ..Default::default()
    });
    let executor = agent.open();
    let command = |argv: &[&str]| {
        health(Check::Command(v1::CommandCheck {
            argv: argv.iter().map(|s| s.to_string()).collect(),
        }))
    };
    let (ok, _) = run(
        &executor,
        request("c1", command(&["/bin/sh", "-c", "exit 0"]), 0),
    )
    .await;
    assert_eq!(outcome(&ok), Outcome::Succeeded, "{}", ok.message);
    let (bad, _) = run(
        &executor,
        request("c2", command(&["/bin/sh", "-c", "echo sick; exit 2"]), 0),
    )
    .await;
    assert_eq!(outcome(&bad), Outcome::Failed);
    assert!(bad.message.contains("exit code 2"), "{}", bad.message);
    assert_eq!(bad.output, "sick\n");
    let (refused, _) = run(&executor, request("c3", command(&["/usr/bin/id"]), 0)).await;
    assert_eq!(outcome(&refused), Outcome::Refused);
    assert_eq!(refused.refused_by, "policy.exec");
}

/// Whether `listener` was connected to (it never is when a check was refused).
async fn was_connected(listener: &TcpListener) -> bool {
    tokio::time::timeout(Duration::from_millis(200), listener.accept())
        .await
        .is_ok()
}

#[tokio::test]
async fn tcp_and_http_checks_connect_only_where_the_policy_allows() {
    // 127.0.0.2 is this machine too (all of 127/8 is loopback), but not in this policy.
    let agent = Agent::new(LocalPolicy {
        health_targets: vec!["127.0.0.1".into()],
        ..Default::default()
    });
    let executor = agent.open();
    let elsewhere = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let port = elsewhere.local_addr().unwrap().port();
    let tcp = |host: &str, port: u16| {
        health(Check::Tcp(v1::TcpCheck {
            host: host.into(),
            port: u32::from(port),
        }))
    };
    let http = |url: String| {
        health(Check::Http(v1::HttpCheck {
            url,
            expect_status: 0,
        }))
    };
    for (i, kind) in [
        tcp("127.0.0.2", port),
        http(format!("http://127.0.0.2:{port}/admin")),
        tcp("::ffff:127.0.0.2", port),
    ]
    .into_iter()
    .enumerate()
    {
        let (result, _) = run(&executor, request(&format!("out{i}"), kind, 0)).await;
        assert_eq!(outcome(&result), Outcome::Refused, "{}", result.message);
        assert_eq!(result.refused_by, "policy.health_targets");
        assert!(result.message.contains("127.0.0.1"), "{}", result.message);
    }
    assert!(
        !was_connected(&elsewhere).await,
        "a refused check connected"
    );

    // A name is judged by the addresses it resolves to: localhost is not 10.9.9.9.
    let here = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let here_port = here.local_addr().unwrap().port();
    let strict = Agent::new(LocalPolicy {
        health_targets: vec!["10.9.9.9".into()],
        ..Default::default()
    });
    let strict_executor = strict.open();
    let (named, _) = run(
        &strict_executor,
        request("named", tcp("localhost", here_port), 0),
    )
    .await;
    assert_eq!(outcome(&named), Outcome::Refused, "{}", named.message);
    assert_eq!(named.refused_by, "policy.health_targets");
    assert!(named.message.contains("resolves to"), "{}", named.message);
    assert!(!was_connected(&here).await, "a refused check connected");

    // What the policy allows, by address or by a name that resolves there, is checked.
    let (ok, _) = run(&executor, request("in", tcp("127.0.0.1", here_port), 0)).await;
    assert_eq!(outcome(&ok), Outcome::Succeeded, "{}", ok.message);
    let (by_name, _) = run(
        &executor,
        request("in-name", tcp("localhost", here_port), 0),
    )
    .await;
    assert_eq!(outcome(&by_name), Outcome::Succeeded, "{}", by_name.message);
}

#[tokio::test]
async fn by_default_health_checks_reach_loopback_only() {
    let agent = Agent::new(Policy::default());
    let executor = agent.open();
    for (i, host) in [
        "169.254.169.254",
        "10.0.0.1",
        "::ffff:169.254.169.254",
        "fd00::1",
    ]
    .iter()
    .enumerate()
    {
        let kind = health(Check::Tcp(v1::TcpCheck {
            host: (*host).into(),
            port: 80,
        }));
        let (result, _) = run(&executor, request(&format!("d{i}"), kind, 0)).await;
        assert_eq!(
            outcome(&result),
            Outcome::Refused,
            "{host}: {}",
            result.message
        );
        assert_eq!(result.refused_by, "policy.health_targets");
    }
    let metadata = health(Check::Http(v1::HttpCheck {
        url: "http://169.254.169.254/latest/meta-data/iam/".into(),
        expect_status: 0,
    }));
    let (result, _) = run(&executor, request("meta", metadata, 0)).await;
    assert_eq!(result.refused_by, "policy.health_targets");
}
