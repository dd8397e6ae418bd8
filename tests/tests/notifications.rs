//! Webhook notifications from a real coordinator to real HTTP receivers on loopback: a
//! campaign's start and finish arrive as signed JSON, a refused delivery (503) is retried and
//! its two attempts show in `pitcrew notifications`, a Slack-shaped webhook gets one readable
//! line, a failing host and the pause it causes are told, and a campaign naming a webhook
//! that is not configured is refused with its file and line.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use pitcrew_tests::{Coordinator, start_fleet_with, wait_for, wait_for_within};
use serde_json::Value;

/// One request a receiver got, and the status it answered.
#[derive(Debug, Clone)]
struct Received {
    answered: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// A small HTTP/1.1 receiver on loopback: answers the first `refuse` requests 503 (with
/// `Retry-After: 1`), every other one 204, and keeps them all.
struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    fn start(refuse: usize) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let kept = got.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let mut got = kept.lock().unwrap();
                let answer = if got.len() < refuse { 503 } else { 204 };
                if let Some((headers, body)) = serve(stream, answer) {
                    got.push(Received {
                        answered: answer,
                        headers,
                        body,
                    });
                }
            }
        });
        Receiver { port, got }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hooks/pitcrew?team=ops", self.port)
    }

    fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Waits for a request whose JSON body's `event` is `event` (and campaign id `campaign`)
    /// that was accepted.
    fn wait_event(&self, event: &str, campaign: &str) -> Received {
        wait_for(&format!("{event} of {campaign} at the receiver"), || {
            self.received().into_iter().find(|r| {
                let body = r.json();
                r.answered == 204 && body["event"] == event && body["campaign"]["id"] == campaign
            })
        })
    }
}

/// Reads one request (head and a Content-Length body) and answers `status`.
fn serve(stream: TcpStream, status: u16) -> Option<(Vec<(String, String)>, String)> {
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    assert!(
        line.starts_with("POST /hooks/pitcrew?team=ops HTTP/1.1"),
        "{line}"
    );
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))?
        .1
        .parse()
        .ok()?;
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    let reason = if status == 503 {
        "Service Unavailable\r\nRetry-After: 1"
    } else {
        "No Content"
    };
    let mut stream = stream;
    stream
        .write_all(
            format!("HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .ok()?;
    Some((headers, String::from_utf8(body).ok()?))
}

fn hmac_sha256(secret: &[u8], body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, body);
    tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn run(c: &Coordinator, file: &std::path::Path) -> String {
    let out = c.cli(&["campaign", "run", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "campaign run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn campaign_notifications_arrive_signed_and_a_refused_delivery_is_retried() {
    let ops = Receiver::start(1);
    let chat = Receiver::start(0);
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("ops.secret");
    std::fs::write(&secret, "correct horse battery staple\n").unwrap();

    let coordinator = Coordinator::init().expect("coordinator init");
    coordinator.configure(&format!(
        "[[webhook]]\nname = \"ops\"\nurl = \"{}\"\nsecret_file = {:?}\n\n\
         [[webhook]]\nname = \"chat\"\nurl = \"{}\"\nformat = \"slack\"\n\
         events = [\"campaign-started\", \"campaign-finished\"]\n",
        ops.url(),
        secret.display().to_string(),
        chat.url(),
    ));
    let (c, _agents) = start_fleet_with(
        coordinator,
        &[("w1", "worker"), ("w2", "worker")],
        "[policy]\nexec = [[\"/bin/sh\", \"-c\"]]\n",
    );

    // A campaign may only name configured webhooks: refused at plan and run, with the line.
    let wrong = dir.path().join("wrong.toml");
    std::fs::write(
        &wrong,
        "name = \"wrong\"\n[[steps]]\naction = \"exec\"\nargv = [\"/bin/sh\", \"-c\", \"true\"]\n\n[notify]\nwebhooks = [\"ops\", \"pager\"]\n",
    )
    .unwrap();
    for command in ["plan", "run"] {
        let out = c.cli(&["campaign", command, wrong.to_str().unwrap()]);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("wrong.toml:7: field notify.webhooks[1]: no webhook \"pager\""),
            "{command}: {stderr}"
        );
    }

    let file = dir.path().join("patch.toml");
    std::fs::write(
        &file,
        "name = \"patch <fleet>\"\n[[steps]]\naction = \"exec\"\nargv = [\"/bin/sh\", \"-c\", \"true\"]\n",
    )
    .unwrap();
    let id = run(&c, &file);

    // Started and finished reach ops as pitcrew's JSON, signed with its secret.
    let started = ops.wait_event("campaign-started", &id);
    let finished = ops.wait_event("campaign-finished", &id);
    for received in [&started, &finished] {
        let body = received.json();
        assert_eq!(body["campaign"]["name"], "patch <fleet>");
        assert!(body["host"].is_null(), "{body}");
        assert!(body["at"].as_str().unwrap().ends_with('Z'), "{body}");
        assert_eq!(received.header("x-pitcrew-event-id"), body["id"].as_str());
        assert_eq!(received.header("x-pitcrew-event"), body["event"].as_str());
        assert_eq!(received.header("content-type"), Some("application/json"));
        let expected = format!(
            "sha256={}",
            hmac_sha256(b"correct horse battery staple", received.body.as_bytes())
        );
        assert_eq!(
            received.header("x-pitcrew-signature"),
            Some(expected.as_str())
        );
    }
    assert_eq!(started.json()["campaign"]["state"], "running");
    let finished_body = finished.json();
    assert_eq!(finished_body["campaign"]["state"], "completed");
    assert!(
        finished_body["message"]
            .as_str()
            .unwrap()
            .contains("2 done"),
        "{finished_body}"
    );

    // The first delivery was refused and tried again: the receiver saw its id twice, and the
    // record says 2 attempts, delivered.
    let all = ops.received();
    let refused = all
        .iter()
        .find(|r| r.answered == 503)
        .expect("a refused delivery");
    let refused_id = refused.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(
        all.iter()
            .filter(|r| r.json()["id"] == refused_id.as_str())
            .count(),
        2
    );
    let mut last = Value::Null;
    let record = wait_for_within(
        "the retried delivery to be recorded as delivered",
        std::time::Duration::from_secs(60),
        || {
            last = c.cli_json(&["notifications", "--campaign", &id]);
            let found = last
                .as_array()
                .unwrap()
                .iter()
                .find(|n| n["id"] == refused_id.as_str() && n["webhook"] == "ops")
                .filter(|n| n["state"] == "delivered")
                .cloned();
            if found.is_none() {
                eprintln!("notifications so far: {last}");
            }
            found
        },
    );
    assert_eq!(record["attempts"], 2, "{record}");
    assert!(
        record["last_error"].as_str().unwrap().contains("503"),
        "{record}"
    );
    let list = c.cli_json(&["notifications", "--campaign", &id]);
    let ops_rows: Vec<&Value> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["webhook"] == "ops")
        .collect();
    assert_eq!(ops_rows.len(), 2, "{list}");

    // The Slack-shaped webhook got one readable line per event, its markup escaped.
    let line = wait_for("the slack webhook's start line", || {
        chat.received().into_iter().find_map(|r| {
            let text = r.json()["text"].as_str()?.to_owned();
            text.starts_with("pitcrew campaign-started")
                .then_some((r, text))
        })
    });
    assert_eq!(line.0.json().as_object().unwrap().len(), 1);
    assert!(
        line.1.contains("campaign patch &lt;fleet&gt; (") && line.1.contains(&id),
        "{}",
        line.1
    );
    assert!(line.0.header("x-pitcrew-signature").is_none());

    // A failing host: host-failed and the pause it causes reach ops (chat does not take them).
    let failing = dir.path().join("failing.toml");
    std::fs::write(
        &failing,
        "name = \"failing\"\n[select]\nhosts = [\"w1\"]\n[[steps]]\naction = \"exec\"\nargv = [\"/bin/sh\", \"-c\", \"echo broken; exit 3\"]\n\n[notify]\nwebhooks = [\"ops\"]\n",
    )
    .unwrap();
    let failing_id = run(&c, &failing);
    let failed = ops.wait_event("host-failed", &failing_id).json();
    assert_eq!(failed["host"]["hostname"], "w1", "{failed}");
    assert!(
        failed["message"].as_str().unwrap().contains("w1 failed"),
        "{failed}"
    );
    let paused = ops.wait_event("campaign-paused", &failing_id).json();
    assert!(
        paused["message"].as_str().unwrap().contains("error budget"),
        "{paused}"
    );
    assert!(
        !chat
            .received()
            .iter()
            .any(|r| r.body.contains(failing_id.as_str())),
        "the failing campaign notifies ops only"
    );

    // The table shows the same record.
    let out = c.cli(&["notifications"]);
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("host-failed") && table.contains("delivered"),
        "{table}"
    );
}
