//! A real coordinator against hostile peers written here (`pitcrew_tests::hostile`): callers
//! without the right certificate who never finish their body, oversize and flooding
//! enrollments, idle connections up to and past every cap, hostnames made to hurt terminals,
//! an agent that stops reading, one that goes silent, one that reports results for actions it
//! was never sent, renewals thrown away, re-enrollment under a live session, and operator
//! action ids dressed as campaign ids.
//!
//! Each test names the protection it proves and says, where it is not obvious, why it would
//! fail if that protection were taken out. Waits are for conditions, with generous deadlines;
//! the few bounded "nothing happens within" checks say why they are there.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pitcrew_proto::tls;
use pitcrew_proto::v1::{self, agent_session_client::AgentSessionClient};
use pitcrew_tests::hostile::{
    self, H2, Held, HostCreds, Session, StuckSession, grpc_header, h2_connect,
};
use pitcrew_tests::{Coordinator, DEADLINE, bin, new_machine_id, start_fleet, wait_connected};
use prost::Message;
use serde_json::Value;

/// A second loopback source address: the coordinator counts per source address, and Linux
/// routes all of 127.0.0.0/8 to `lo`.
const OTHER_SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

const LIST_HOSTS: &str = "/pitcrew.v1.Admin/ListHosts";
const CONNECT: &str = "/pitcrew.v1.AgentSession/Connect";
const ENROLL: &str = "/pitcrew.v1.Enrollment/Enroll";

/// How long a call the coordinator must answer at once may take on a loaded machine.
const PROMPT: Duration = Duration::from_secs(10);

/// A runtime with worker threads, so that hostile clients' background tasks (their HTTP/2
/// connections, heartbeats, readers) keep running while the test thread runs the CLI.
fn runtime() -> tokio::runtime::Runtime {
    tls::install_crypto_provider();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A started coordinator with `lines` added to its coordinator.toml (a `[limits]` table comes
/// after the harness's top-level keys, so appending it is enough).
fn coordinator(lines: &[&str]) -> Coordinator {
    let mut c = Coordinator::init().unwrap();
    for line in lines {
        c.configure(line);
    }
    c.start().unwrap();
    c
}

/// Every event (`pitcrew events -o json --limit 0`), or one host's.
fn events(c: &Coordinator, host: Option<&str>) -> Vec<Value> {
    let mut args = vec!["events", "--limit", "0"];
    if let Some(host) = host {
        args.extend(["--host", host]);
    }
    c.cli_json(&args).as_array().cloned().unwrap_or_default()
}

fn messages(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Waits until one of the host's events holds `text`; returns the host's event messages.
fn wait_for_event(c: &Coordinator, host: &str, text: &str) -> Vec<String> {
    pitcrew_tests::wait_for(&format!("an event of {host} saying {text:?}"), || {
        let log = messages(&events(c, Some(host)));
        log.iter().any(|m| m.contains(text)).then_some(log)
    })
}

fn token_uses_left(c: &Coordinator) -> Vec<i64> {
    c.cli_json(&["token", "ls"])
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["uses_left"].as_i64().unwrap())
        .collect()
}

/// Waits (async) until `done` holds, failing after `DEADLINE`.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A valid `ListHostsRequest` of nearly `MAX_MESSAGE_BYTES` (a huge label filter), so that
/// without a refusal the server would have to read every byte of it before answering.
fn nearly_max_request() -> Vec<u8> {
    v1::ListHostsRequest {
        label: format!("k={}", "x".repeat(pitcrew_proto::MAX_MESSAGE_BYTES - 1024)),
        ..Default::default()
    }
    .encode_to_vec()
}

/// The first `part` bytes of `message`'s gRPC frame, whose header announces all of it.
fn first_part(message: &[u8], part: usize) -> bytes::Bytes {
    let mut out = grpc_header(u32::try_from(message.len()).unwrap()).to_vec();
    out.extend_from_slice(&message[..part]);
    out.into()
}

/// **Auth before the body is read.** A caller without a certificate (or with a host
/// certificate on Admin, an operator's on AgentSession) announces a ~4 MiB message and sends
/// 16 KiB of it: the refusal arrives while the body is incomplete. Without the interceptors the
/// refusal would come from the handlers, which tonic calls only once the whole message is
/// decoded: no answer would come before the deadline. The last part shows exactly that on the
/// allowed path (an operator's identical request gets no answer until its body is complete),
/// so the refusals above cannot be an artefact of how the test sends.
#[test]
fn admin_and_sessions_refuse_the_wrong_certificate_before_reading_the_body() {
    let c = coordinator(&[]);
    let token = c.token("worker", &[], 1);
    let rt = runtime();
    rt.block_on(async {
        let host = hostile::enroll(&c, &token, &new_machine_id(), "h1")
            .await
            .unwrap();
        let operator = hostile::operator_identity(&c);
        let message = nearly_max_request();
        let part = 16 * 1024;
        let cases = [
            (
                "no certificate",
                None,
                LIST_HOSTS,
                tonic::Code::Unauthenticated,
            ),
            (
                "a host certificate",
                Some(&host.identity),
                LIST_HOSTS,
                tonic::Code::PermissionDenied,
            ),
            (
                "no certificate",
                None,
                CONNECT,
                tonic::Code::Unauthenticated,
            ),
            (
                "an operator certificate",
                Some(&operator),
                CONNECT,
                tonic::Code::PermissionDenied,
            ),
        ];
        for (who, identity, path, code) in cases {
            let mut h2 = h2_connect(&c, identity, None, None).await.unwrap();
            let (response, mut body) = h2.start(path).await.unwrap();
            // The refusal may come on the request's headers alone, and the stream be closed
            // before this part is sent: that is the protection too, at its earliest.
            let _ = body.send_data(first_part(&message, part), false);
            let response = tokio::time::timeout(PROMPT, response)
                .await
                .unwrap_or_else(|_| {
                    panic!("{path} with {who}: no refusal while the body was incomplete")
                })
                .unwrap();
            let status = hostile::check_status(response.headers())
                .expect_err("a refusal, in the headers of a trailers-only answer");
            assert_eq!(status.code(), code, "{path} with {who}: {status:?}");
            // The body was never finished: the answer came before it could have been read.
            drop(body);
        }

        // The allowed path waits for the whole body, as every handler does.
        let mut h2 = h2_connect(&c, Some(&operator), None, None).await.unwrap();
        let (response, mut body) = h2.start(LIST_HOSTS).await.unwrap();
        body.send_data(first_part(&message, part), false).unwrap();
        tokio::pin!(response);
        // A bounded check that nothing happens: the server must still be reading.
        assert!(
            tokio::time::timeout(Duration::from_secs(1), &mut response)
                .await
                .is_err(),
            "an operator's incomplete request was answered: the refusals above prove nothing"
        );
        body.send_data(bytes::Bytes::copy_from_slice(&message[part..]), true)
            .unwrap();
        let response = tokio::time::timeout(DEADLINE, response)
            .await
            .expect("an answer once the body is complete")
            .unwrap();
        // (A failure here would carry the 4 MiB label: show its code and a little of it.)
        let hosts: v1::ListHostsResponse = hostile::answer(response).await.unwrap_or_else(|s| {
            panic!(
                "{:?}: {}",
                s.code(),
                s.message().chars().take(200).collect::<String>()
            )
        });
        assert!(hosts.hosts.is_empty(), "no host has that label");
    });
}

/// **Enrollment decode limit.** A 1 MiB enrollment (under the 4 MiB every other service
/// takes) is refused naming the limit, before any of it is looked at: the token is not spent,
/// and the coordinator goes on to enroll a real agent with it. Without
/// `enroll_max_message_bytes` the request would be decoded and refused later as a bad CSR
/// (InvalidArgument, no size in the message).
#[test]
fn an_oversize_enrollment_is_refused_naming_the_limit_and_the_coordinator_keeps_serving() {
    let c = coordinator(&[]);
    let token = c.token("worker", &[], 1);
    let limit = pitcrew_coordinator::config::Limits::default().enroll_max_message_bytes;
    let rt = runtime();
    rt.block_on(async {
        let mut client =
            v1::enrollment_client::EnrollmentClient::new(hostile::channel(&c, None).await);
        let error = client
            .enroll(v1::EnrollRequest {
                token: token.clone(),
                csr_der: vec![0x30; 1024 * 1024],
                host_id: new_machine_id(),
                hostname: "big".into(),
            })
            .await
            .unwrap_err();
        assert!(
            matches!(
                error.code(),
                tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
            ),
            "{error:?}"
        );
        assert!(
            error.message().contains(&limit.to_string()),
            "the refusal names the limit ({limit} bytes): {error:?}"
        );
    });
    assert_eq!(token_uses_left(&c), vec![1], "the token was not spent");
    let mut agent = pitcrew_tests::Agent::new(&c, "w1", &token, "").unwrap();
    agent.start().unwrap();
    wait_connected(&c, &agent.machine_id);
    assert_eq!(token_uses_left(&c), vec![0]);
}

/// **Connections without a certificate: capped per source, capped in all, closed after their
/// lifetime.** 20 idle connections from one address: 8 are served (the coordinator speaks
/// HTTP/2 on them), 12 are closed right after their handshake without a word. From a second
/// address only 4 more are served (12 in all). An operator is answered meanwhile. The served
/// ones are closed once their lifetime is over, and then their places are free again.
/// Without the per-source cap 12 would be served from the first address; without the total
/// cap 6 from the second; without the lifetime the idle ones would stay open past the
/// deadline.
#[test]
fn connections_without_a_certificate_are_capped_and_closed_after_their_lifetime() {
    const PER_SOURCE: usize = 8;
    const IN_ALL: usize = 12;
    const LIFETIME: Duration = Duration::from_secs(5);
    let c = coordinator(&[
        "[limits]",
        &format!("max_anonymous_per_source = {PER_SOURCE}"),
        &format!("max_anonymous_connections = {IN_ALL}"),
        &format!(
            "anonymous_connection_lifetime = \"{}s\"",
            LIFETIME.as_secs()
        ),
    ]);
    let rt = runtime();
    let settled = |held: &[Option<Held>]| held.iter().flatten().all(Held::settled);
    let served = |held: &[Option<Held>]| held.iter().flatten().filter(|h| h.served()).count();
    let (first, second) = rt.block_on(async {
        let first = hostile::hold_connections(&c, None, Some(LOCAL), 20).await;
        until("each connection to be served or closed", || settled(&first)).await;
        let second = hostile::hold_connections(&c, None, Some(OTHER_SOURCE), 6).await;
        until("each connection to be served or closed", || {
            settled(&second)
        })
        .await;
        (first, second)
    });
    assert_eq!(served(&first), PER_SOURCE, "served from one address");
    for held in first.iter().chain(&second) {
        // Refused ones were closed right after the handshake, long before any lifetime.
        if let Some(h) = held.as_ref().filter(|h| h.refused()) {
            assert!(
                h.state().closed_after.unwrap() < LIFETIME,
                "{:?}",
                h.state()
            );
        }
    }
    assert_eq!(
        served(&second),
        IN_ALL - PER_SOURCE,
        "served from a second address"
    );

    // Operators are another class of connection: answered while the anonymous caps are full.
    let out = c.cli(&["hosts"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let served_ones: Vec<&Held> = first
        .iter()
        .chain(&second)
        .flatten()
        .filter(|h| h.served())
        .collect();
    assert!(
        served_ones.iter().all(|h| !h.closed()),
        "the operator was answered while the idle connections were still open"
    );

    rt.block_on(async {
        until(
            "the idle connections to be closed after their lifetime",
            || served_ones.iter().all(|h| h.closed()),
        )
        .await;
        for h in &served_ones {
            let lived = h.state().closed_after.unwrap();
            assert!(
                lived >= LIFETIME,
                "closed after {lived:?}, before its lifetime"
            );
        }
        // Their places are given back.
        let again = hostile::hold_connections(&c, None, Some(LOCAL), 1).await;
        until("a new connection to be served or closed", || {
            settled(&again)
        })
        .await;
        assert_eq!(served(&again), 1, "a place was given back");
    });
}

/// **Connections per certificate identity are capped.** Connections with the `admin`
/// operator certificate, each asking ListHosts: once 4 are served, the next 6 are refused; while they are held
/// `admin`'s own CLI is refused too (the cap is the identity's), another operator is answered,
/// and once they are closed `admin` is answered again. Without the cap all 10 would be served.
#[test]
fn connections_per_certificate_identity_are_capped() {
    const PER_IDENTITY: usize = 4;
    let c = coordinator(&[
        "[limits]",
        &format!("max_connections_per_identity = {PER_IDENTITY}"),
    ]);
    let admin = hostile::operator_identity(&c);
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    hostile::add_operator(&c, "ops2", dir.path());
    let served: Vec<H2> = rt.block_on(async {
        // Asks ListHosts on a new `admin` connection: Some(connection) when it is answered.
        let try_one = || async {
            let mut h2 = h2_connect(&c, Some(&admin), None, None).await.ok()?;
            let answer: Result<v1::ListHostsResponse, _> = tokio::time::timeout(
                PROMPT,
                h2.unary(LIST_HOSTS, &v1::ListHostsRequest::default()),
            )
            .await
            .expect("a refused connection is closed, not left hanging");
            answer.is_ok().then_some(h2)
        };
        // Until four are served: the harness's own `admin` connection (its readiness probe)
        // may hold a place for a moment after it closed, and a refusal then is tried again.
        let mut served = Vec::new();
        let start = Instant::now();
        while served.len() < PER_IDENTITY {
            assert!(
                start.elapsed() < DEADLINE,
                "admin was never served {PER_IDENTITY} times"
            );
            match try_one().await {
                Some(h2) => served.push(h2),
                None => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        // With four held, every further one is refused.
        for i in 0..6 {
            assert!(
                try_one().await.is_none(),
                "connection {} of admin was served",
                PER_IDENTITY + i + 1
            );
        }
        served
    });
    assert!(
        !c.cli(&["hosts"]).status.success(),
        "admin's fifth connection was served"
    );

    let out = Command::new(bin("pitcrew"))
        .arg("hosts")
        .envs(c.operator_env())
        .env("PITCREW_CERT", dir.path().join("ops2.crt"))
        .env("PITCREW_KEY", dir.path().join("ops2.key"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "another operator is refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    drop(served);
    pitcrew_tests::wait_for("admin to be served again", || {
        c.cli(&["hosts"]).status.success().then_some(())
    });
}

/// **The total connection cap.** With `max_connections = 6`, six idle connections without a
/// certificate are served and a seventh is refused; so is the operator (the cap counts every
/// connection, before any handshake: it bounds file descriptors). Closing the six gives the
/// places back. Without the cap the seventh and the operator would be served.
#[test]
fn the_total_connection_cap_counts_every_connection() {
    let c = coordinator(&["[limits]", "max_connections = 6"]);
    let rt = runtime();
    let held = rt.block_on(async {
        // One at a time, until six are served: a connection the harness made just before
        // (its readiness probe) may not be released yet, and a place it still holds is
        // refused; that one is tried again once the place is free.
        let mut held = Vec::new();
        let start = Instant::now();
        while held.len() < 6 {
            assert!(
                start.elapsed() < DEADLINE,
                "six connections were never served"
            );
            let mut one = hostile::hold_connections(&c, None, None, 1).await;
            if let Some(h) = one.pop().flatten() {
                until("a connection to be served or closed", || h.settled()).await;
                if h.served() {
                    held.push(Some(h));
                    continue;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let seventh = hostile::hold_connections(&c, None, None, 1).await;
        if let Some(h) = &seventh[0] {
            until("the seventh to be served or closed", || h.settled()).await;
            assert!(h.refused(), "a seventh connection was served");
        }
        held.extend(seventh);
        held
    });
    assert!(
        !c.cli(&["hosts"]).status.success(),
        "an operator was served past the total cap"
    );
    drop(held);
    pitcrew_tests::wait_for("the operator to be served again", || {
        c.cli(&["hosts"]).status.success().then_some(())
    });
}

/// **Refused enrollments are rate-limited per source and audited only up to the limit.** 50
/// enrollments with an unknown token from one address: the first 10 are refused for the token
/// (and audited), the 40 after are turned away with ResourceExhausted. Then a *valid* token
/// from that address is turned away too and not spent — proof that the gate comes before any
/// look at the store — while from another address it enrolls. An operator is answered
/// throughout. Without the gate all 50 would be refused for the token and audited one by one.
#[test]
fn refused_enrollments_are_rate_limited_per_source_and_audited_up_to_the_limit() {
    let c = coordinator(&[]);
    let limit = pitcrew_coordinator::config::Limits::default().refused_enrollments_per_minute;
    let valid = c.token("worker", &[], 1);
    let rt = runtime();
    let outcomes = rt.block_on(async {
        let mut h2 = h2_connect(&c, None, Some(LOCAL), None).await.unwrap();
        let (request, _) = hostile::enroll_request("pcj_0000_unknown", &new_machine_id(), "flood");
        let mut outcomes = Vec::new();
        for _ in 0..50 {
            let outcome =
                tokio::time::timeout(PROMPT, h2.unary::<v1::EnrollResponse>(ENROLL, &request))
                    .await
                    .expect("a refusal comes at once");
            outcomes.push(outcome.unwrap_err());
        }
        outcomes
    });
    let limit = usize::try_from(limit).unwrap();
    for (i, status) in outcomes.iter().enumerate() {
        if i < limit {
            assert_eq!(
                status.code(),
                tonic::Code::PermissionDenied,
                "#{i}: {status:?}"
            );
            assert!(status.message().contains("not known"), "#{i}: {status:?}");
        } else {
            assert_eq!(
                status.code(),
                tonic::Code::ResourceExhausted,
                "#{i}: {status:?}"
            );
            assert!(
                status
                    .message()
                    .contains("too many refused enrollments from 127.0.0.1"),
                "#{i}: {status:?}"
            );
        }
    }
    assert!(
        c.cli(&["hosts"]).status.success(),
        "the operator is answered"
    );

    rt.block_on(async {
        let mut h2 = h2_connect(&c, None, Some(LOCAL), None).await.unwrap();
        let (request, _) = hostile::enroll_request(&valid, &new_machine_id(), "good");
        let status = h2
            .unary::<v1::EnrollResponse>(ENROLL, &request)
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    });
    assert_eq!(
        token_uses_left(&c),
        vec![1],
        "turned away unread: not spent"
    );
    rt.block_on(async {
        let mut h2 = h2_connect(&c, None, Some(OTHER_SOURCE), None)
            .await
            .unwrap();
        let (request, _) = hostile::enroll_request(&valid, &new_machine_id(), "good");
        h2.unary::<v1::EnrollResponse>(ENROLL, &request)
            .await
            .expect("another address is not held back");
    });

    // Events are written in order: once the enrollment's audit is there, every refusal's is.
    let all = pitcrew_tests::wait_for("the enrollment to be audited", || {
        let all = messages(&events(&c, None));
        all.iter()
            .any(|m| m.contains("host good enrolled"))
            .then_some(all)
    });
    let refused = all
        .iter()
        .filter(|m| m.starts_with("enrollment from 127.0.0.1:") && m.contains("refused"))
        .count();
    assert_eq!(refused, limit, "refusals audited one by one: {all:#?}");
}

/// **Hostnames are checked and unique.** A hostname holding an escape sequence is refused
/// with the rule (and the refusal does not carry the raw escape to the operator's terminal);
/// a second host under an enrolled hostname is refused with AlreadyExists, its token unspent.
#[test]
fn hostnames_with_escapes_or_already_enrolled_are_refused() {
    let c = coordinator(&[]);
    let first = c.token("worker", &[], 1);
    let second = c.token("worker", &[], 1);
    let rt = runtime();
    let web1 = rt.block_on(async {
        let error = hostile::enroll(&c, &first, &new_machine_id(), "evil\u{1b}[2J")
            .await
            .unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument, "{error:?}");
        assert!(
            error
                .message()
                .contains("only letters, digits, '-', '_' and '.' are allowed"),
            "{error:?}"
        );
        assert!(!error.message().contains('\u{1b}'), "{error:?}");
        let web1 = hostile::enroll(&c, &first, &new_machine_id(), "web-1")
            .await
            .expect("the token was not spent on the refused name");
        let error = hostile::enroll(&c, &second, &new_machine_id(), "web-1")
            .await
            .unwrap_err();
        assert_eq!(error.code(), tonic::Code::AlreadyExists, "{error:?}");
        assert!(
            error.message().contains("web-1") && error.message().contains("unique"),
            "{error:?}"
        );
        web1
    });
    let hosts = c.hosts();
    assert_eq!(hosts.len(), 1, "{hosts:?}");
    assert_eq!(hosts[0]["host_id"], web1.host_id.as_str());
    assert_eq!(hosts[0]["hostname"], "web-1");
    assert!(
        token_uses_left(&c).contains(&1),
        "the second token is unspent"
    );
}

/// Runs `pitcrew do HOST exec -- /bin/true` in the background.
fn spawn_do(c: &Coordinator, host: &str) -> std::process::Child {
    Command::new(bin("pitcrew"))
        .args(["do", host, "exec", "--", "/bin/true"])
        .envs(c.operator_env())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for a child with a deadline (killing it if it outlives it).
fn finish(mut child: std::process::Child, what: &str) -> std::process::Output {
    pitcrew_tests::wait_for(what, || child.try_wait().ok().flatten());
    child.wait_with_output().unwrap()
}

/// Operators following `do` runs: their clients and the streams they hold open.
#[derive(Default)]
struct Operators {
    clients: Vec<v1::admin_client::AdminClient<tonic::transport::Channel>>,
    following: Vec<tonic::Streaming<v1::ActionEvent>>,
}

impl Operators {
    /// Starts `exec /bin/true` on `host` and keeps following it; fails if the RunAction call
    /// does not come back within `PROMPT`.
    async fn run(&mut self, host: &str, c: &Coordinator) -> Result<(), tonic::Status> {
        if self.following.len() >= self.clients.len() * 30 {
            self.clients.push(hostile::admin(c).await);
        }
        let admin = self.clients.last_mut().unwrap();
        let answer = tokio::time::timeout(PROMPT, admin.run_action(hostile::run_true(host)))
            .await
            .expect("RunAction waited on a stuck agent")?;
        self.following.push(answer.into_inner());
        Ok(())
    }
}

/// A campaign of one `exec /bin/true` step over the workers labelled cluster=c1.
fn campaign_file(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("beside-a-stuck-host.toml");
    std::fs::write(
        &path,
        "name = \"beside-a-stuck-host\"\n\n[select]\nroles = [\"worker\"]\nlabels = { cluster = \"c1\" }\n\n[concurrency]\nworker = 2\n\n[[steps]]\nname = \"noop\"\naction = \"exec\"\nargv = [\"/bin/true\"]\ntimeout = \"1m\"\n",
    )
    .unwrap();
    path
}

/// **One stuck agent freezes no one.** A host whose session says hello, keeps sending
/// heartbeats and never reads again is sent actions until its queue is full: every RunAction
/// returns at once; meanwhile a real agent runs `pitcrew do` and a campaign over real agents
/// completes; the send that finds the queue full reports the host gone, the session is closed
/// "the agent did not read its messages", the host is shown disconnected, and the `pitcrew do`
/// runs that were waiting on it end. Without non-blocking sends the RunAction after the queue
/// filled would wait for the stuck reader (past `PROMPT`), and with it anyone sharing the
/// path; without closing a full session the host would stay connected and its queue full.
#[test]
fn an_agent_that_stops_reading_is_disconnected_and_holds_up_no_one() {
    let capacity = pitcrew_coordinator::registry::OUTBOUND_CAPACITY;
    let (c, _agents) = start_fleet(
        &[("w1", "worker"), ("w2", "worker")],
        "[policy]\nexec = [[\"/bin/true\"]]\n",
    );
    let token = c.token("worker", &[("name", "stuck")], 1);
    let rt = runtime();
    let creds = rt
        .block_on(hostile::enroll(&c, &token, &new_machine_id(), "stuck"))
        .unwrap();
    let _stuck = rt.block_on(StuckSession::open(&c, &creds)).unwrap();
    wait_connected(&c, &creds.host_id);
    let connected = |c: &Coordinator| c.host(&creds.host_id).unwrap()["connected"] == true;

    // Operators' `do` runs on the stuck host, each followed (its stream held open, as
    // `pitcrew do` holds it while it waits: dropping it would cancel the action and queue a
    // second message). A connection carries at most `max_concurrent_streams` (32) of them, so
    // they are spread over several. Each RunAction must come back at once: nothing waits on
    // an agent.
    let mut operators = Operators::default();
    let mut queued = 0;
    for _ in 0..capacity - 56 {
        rt.block_on(operators.run("stuck", &c))
            .expect("the queue is not full yet");
        queued += 1;
    }
    // Two operators' `pitcrew do` on the stuck host wait for a result that will never come.
    let waiting = [spawn_do(&c, "stuck"), spawn_do(&c, "stuck")];
    queued += 2;

    // Meanwhile the fleet works: a `do` on a real agent, and a campaign over real agents.
    let out = c.cli(&["do", "w1", "exec", "--", "/bin/true"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let run = c.cli(&[
        "campaign",
        "run",
        campaign_file(dir.path()).to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let id = String::from_utf8_lossy(&run.stdout).trim().to_owned();
    pitcrew_tests::wait_for("the campaign over the real agents to complete", || {
        (c.cli_json(&["campaign", "show", &id])["state"] == "completed").then_some(())
    });
    assert!(
        connected(&c),
        "the stuck host was still connected meanwhile"
    );

    // Now past the queue's capacity: the first send that finds it full reports the host gone.
    let refused = loop {
        match rt.block_on(operators.run("stuck", &c)) {
            Ok(()) => queued += 1,
            Err(status) => break status,
        }
        assert!(
            queued <= capacity + 32,
            "{queued} messages queued for a host that reads none"
        );
    };
    assert!(queued >= capacity, "closed after only {queued} messages");
    assert!(
        matches!(
            refused.code(),
            tonic::Code::Unavailable | tonic::Code::FailedPrecondition
        ) && (refused.message().contains("disconnected")
            || refused.message().contains("not connected")),
        "{refused:?}"
    );
    pitcrew_tests::wait_for("the stuck host to be shown disconnected", || {
        (!connected(&c)).then_some(())
    });
    // Every operator that was following an action on it is told.
    rt.block_on(async {
        for mut stream in operators.following.drain(..) {
            let end = tokio::time::timeout(DEADLINE, stream.message())
                .await
                .expect("a following operator is told at once");
            let status = end.expect_err("no result can come");
            assert!(status.message().contains("disconnected"), "{status:?}");
        }
    });
    for child in waiting {
        let out = finish(child, "a waiting `pitcrew do` to end");
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("disconnected"), "{stderr}");
    }
    let out = c.cli(&["do", "stuck", "exec", "--", "/bin/true"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not connected"), "{stderr}");
    // The host's event log says why.
    wait_for_event(&c, &creds.host_id, "the agent did not read its messages");
    let out = c.cli(&["do", "w2", "exec", "--", "/bin/true"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// **A silent session is closed whatever its reader does.** A session says hello and then
/// nothing, its stream held open: it is closed once the heartbeat timeout (3 s, the harness's)
/// has passed, not before, and the host is shown disconnected with the reason. Without the
/// sweeper the session would stay open (its HTTP/2 connection answers pings) past the deadline.
#[test]
fn a_session_that_goes_silent_is_closed_after_the_heartbeat_timeout() {
    let timeout = Duration::from_secs(3);
    let c = coordinator(&[]);
    assert!(
        std::fs::read_to_string(c.dir.join("coordinator.toml"))
            .unwrap()
            .contains("heartbeat_timeout_seconds = 3")
    );
    let token = c.token("worker", &[], 1);
    let rt = runtime();
    let (creds, lived, ended) = rt.block_on(async {
        let creds = hostile::enroll(&c, &token, &new_machine_id(), "silent")
            .await
            .unwrap();
        let mut session = Session::open_as(&c, &creds).await.unwrap();
        let opened = Instant::now();
        let ended = session
            .ended_within(DEADLINE)
            .await
            .expect("a silent session is closed");
        (creds, opened.elapsed(), ended)
    });
    assert!(lived >= timeout, "closed after {lived:?}: {ended:?}");
    pitcrew_tests::wait_for("the host to be shown disconnected", || {
        (c.host(&creds.host_id).unwrap()["connected"] == false).then_some(())
    });
    wait_for_event(&c, &creds.host_id, "heartbeat timeout");
}

/// **Results are taken only for actions sent to that host.** A hostile host reports a result
/// for an id never sent anywhere and one for an action sent to another host: neither is
/// acknowledged. Then a real `pitcrew do` on it gets its result, and one Ack naming only that
/// id. The session reads results in order, so an Ack for a forged result would have come
/// before the real one's: the check needs no waiting. Without the check the forged results
/// would be recorded and acknowledged.
#[test]
fn results_for_actions_never_sent_to_the_host_are_not_acknowledged() {
    let (c, agents) = start_fleet(&[("w1", "worker")], "[policy]\nexec = [[\"/bin/true\"]]\n");
    let out = c.cli(&["do", "w1", "--id", "w1-real-1", "exec", "--", "/bin/true"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = c.token("worker", &[], 1);
    let rt = runtime();
    let (creds, mut session) = rt.block_on(async {
        let creds = hostile::enroll(&c, &token, &new_machine_id(), "liar")
            .await
            .unwrap();
        let mut session = Session::open_as(&c, &creds).await.unwrap();
        session.keep_alive(Duration::from_millis(500));
        session
            .send(hostile::result(
                "never-sent-1",
                v1::Outcome::Succeeded,
                "forged",
            ))
            .await;
        session
            .send(hostile::result("w1-real-1", v1::Outcome::Failed, "forged"))
            .await;
        (creds, session)
    });
    wait_connected(&c, &creds.host_id);
    let operator = Command::new(bin("pitcrew"))
        .args(["do", "liar", "--id", "liar-1", "exec", "--", "/bin/true"])
        .envs(c.operator_env())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let acked = rt.block_on(async {
        let mut acked: Vec<Vec<String>> = Vec::new();
        let mut answered = false;
        loop {
            let message = tokio::time::timeout(DEADLINE, session.next())
                .await
                .expect("the coordinator's messages")
                .unwrap()
                .expect("the session stays open");
            match message.msg {
                Some(v1::coordinator_message::Msg::Action(request)) => {
                    assert_eq!(request.action_id, "liar-1");
                    session
                        .send(hostile::result("liar-1", v1::Outcome::Succeeded, "done"))
                        .await;
                    answered = true;
                }
                Some(v1::coordinator_message::Msg::Ack(ack)) => {
                    acked.push(ack.action_ids);
                    if answered {
                        return acked;
                    }
                }
                _ => {}
            }
        }
    });
    assert_eq!(acked, vec![vec!["liar-1".to_owned()]], "every Ack received");
    let out = finish(operator, "`pitcrew do liar` to end");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // w1's action keeps its own result.
    let out = c.cli(&["do", "w1", "--id", "w1-real-1", "exec", "--", "/bin/true"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(agents);
}

/// **Renewal is two-phase.** A client with the host's credentials renews and does not use the
/// answer: the old certificate still opens a session (so a lost answer locks no one out).
/// The first session with the new certificate closes the old one's, and from then on the old
/// certificate is refused ("replaced") for sessions and renewals. Renewal replacing the
/// certificate at once would fail the first check; a new certificate that never became the
/// only one would fail the last.
#[test]
fn a_renewed_certificate_replaces_the_old_one_only_when_first_used() {
    let c = coordinator(&[]);
    let token = c.token("worker", &[], 1);
    let rt = runtime();
    rt.block_on(async {
        let creds = hostile::enroll(&c, &token, &new_machine_id(), "renewer")
            .await
            .unwrap();
        let (csr_der, key_pem) = pitcrew_coordinator::ca::make_csr().unwrap();
        let mut client = AgentSessionClient::new(hostile::channel(&c, Some(&creds.identity)).await);
        let renewed = client
            .renew(v1::RenewRequest { csr_der })
            .await
            .unwrap()
            .into_inner();
        let new = HostCreds {
            identity: hostile::Identity {
                cert_pem: renewed.certificate_pem,
                key_pem,
            },
            ..creds.clone()
        };

        let mut old_session = Session::open_as(&c, &creds)
            .await
            .expect("the old certificate works until the new one is used");
        old_session.keep_alive(Duration::from_millis(300));
        let _new_session = Session::open_as(&c, &new)
            .await
            .expect("the renewed certificate opens a session");
        let _how = old_session
            .ended_within(DEADLINE)
            .await
            .expect("the old certificate's session is closed");

        let error = Session::open_as(&c, &creds).await.err().unwrap();
        assert_eq!(error.code(), tonic::Code::PermissionDenied, "{error:?}");
        assert!(error.message().contains("replaced"), "{error:?}");
        let mut client = AgentSessionClient::new(hostile::channel(&c, Some(&creds.identity)).await);
        let error = client
            .renew(v1::RenewRequest {
                csr_der: pitcrew_coordinator::ca::make_csr().unwrap().0,
            })
            .await
            .unwrap_err();
        assert_eq!(error.code(), tonic::Code::PermissionDenied, "{error:?}");
    });
}

/// **Re-enrollment closes the live session at once.** While a session with the host's old
/// certificate is open and heartbeating, the host is re-enrolled with a `--replace` token and
/// a new key: the old session's stream ends promptly and the host's event log says why.
/// Without the close the heartbeating session would stay open until its certificate was next
/// checked, past the deadline.
#[test]
fn re_enrolling_a_host_closes_its_live_session_at_once() {
    let c = coordinator(&[]);
    let token = c.token("worker", &[], 1);
    let rt = runtime();
    let host_id = new_machine_id();
    let (creds, mut session) = rt.block_on(async {
        let creds = hostile::enroll(&c, &token, &host_id, "rebuilt")
            .await
            .unwrap();
        let mut session = Session::open_as(&c, &creds).await.unwrap();
        session.keep_alive(Duration::from_millis(300));
        (creds, session)
    });
    let replace = c.cli_json(&["token", "create", "--replace", &host_id])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    rt.block_on(async {
        let new = hostile::enroll(&c, &replace, &host_id, "rebuilt")
            .await
            .expect("re-enrollment with a --replace token");
        let _how = session
            .ended_within(PROMPT)
            .await
            .expect("the old session ended at once");
        Session::open_as(&c, &new)
            .await
            .expect("the new certificate opens a session");
        let error = Session::open_as(&c, &creds).await.err().unwrap();
        assert_eq!(error.code(), tonic::Code::PermissionDenied, "{error:?}");
    });
    // The host's event log says why its session ended (and the audit, that it re-enrolled).
    let log = wait_for_event(&c, &host_id, "the host re-enrolled with a new certificate");
    assert!(
        log.iter()
            .any(|m| m.contains("re-enrolled (its previous certificate")),
        "{log:#?}"
    );
}

/// **Operator action ids cannot collide with campaign step ids.** An id shaped like a
/// campaign's (`c-…:HOST:phase:attempt`) is refused saying ids with ':' belong to campaign
/// steps, and nothing is sent; a plain id is taken.
#[test]
fn operator_action_ids_cannot_take_the_form_of_campaign_ids() {
    let (c, agents) = start_fleet(&[("w1", "worker")], "[policy]\nexec = [[\"/bin/true\"]]\n");
    let id = format!("c-1234abcd:{}:main-0:a1", agents[0].machine_id);
    let out = c.cli(&["do", "w1", "--id", &id, "exec", "--", "/bin/true"]);
    assert!(!out.status.success(), "a campaign-shaped id was taken");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ids with ':' belong to campaign steps"),
        "{stderr}"
    );
    let out = c.cli(&["do", "w1", "--id", "op-1", "exec", "--", "/bin/true"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = messages(&events(&c, Some(&agents[0].machine_id)));
    assert!(log.iter().any(|m| m.contains("as op-1")), "{log:#?}");
    assert!(!log.iter().any(|m| m.contains(&id)), "{log:#?}");
}

/// **A single-use token enrolls one host, however many race for it.** 40 enrollments with one
/// token, each on its own connection and fired together: exactly one succeeds, the others are
/// refused as used up, and one host is listed. (The refusal gate is raised so every attempt
/// reaches the store: the race is on the token, not on the gate.)
#[test]
fn a_single_use_token_enrolls_exactly_one_of_forty_concurrent_hosts() {
    let c = coordinator(&["[limits]", "refused_enrollments_per_minute = 1000"]);
    let token = c.token("worker", &[], 1);
    let rt = runtime();
    let outcomes = rt.block_on(async {
        let mut ready = Vec::new();
        for i in 0..40 {
            let client =
                v1::enrollment_client::EnrollmentClient::new(hostile::channel(&c, None).await);
            let (request, key) =
                hostile::enroll_request(&token, &new_machine_id(), &format!("race-{i}"));
            ready.push((client, request, key));
        }
        let start = tokio::sync::Barrier::new(ready.len());
        let start = std::sync::Arc::new(start);
        let tasks: Vec<_> = ready
            .into_iter()
            .map(|(client, request, key)| {
                let start = start.clone();
                tokio::spawn(async move {
                    start.wait().await;
                    hostile::enroll_with(client, request, key).await
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.unwrap());
        }
        outcomes
    });
    let enrolled = outcomes.iter().filter(|o| o.is_ok()).count();
    assert_eq!(enrolled, 1, "{outcomes:#?}");
    for status in outcomes.iter().filter_map(|o| o.as_ref().err()) {
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
        assert!(status.message().contains("used up"), "{status:?}");
    }
    assert_eq!(c.hosts().len(), 1);
    assert_eq!(token_uses_left(&c), vec![0]);
}

/// Every `(service, method)` of the wire, read from the .proto itself so that a method added
/// later is covered without touching this test.
fn every_method() -> Vec<(String, String)> {
    let proto = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../proto/proto/pitcrew/v1/pitcrew.proto"
    );
    let text = std::fs::read_to_string(proto).unwrap();
    let mut service = None;
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("service ") {
            service = rest.split_whitespace().next().map(str::to_owned);
        } else if line == "}" {
            service = None;
        } else if let (Some(s), Some(rest)) = (&service, line.strip_prefix("rpc ")) {
            let method = rest.split('(').next().unwrap().trim().to_owned();
            out.push((s.clone(), method));
        }
    }
    out
}

/// **No method but Enroll without a verified certificate; none of another kind's.** Every
/// method of the wire is called with no certificate (Unauthenticated, except Enroll), every
/// Admin method with a host certificate and every AgentSession method with an operator's
/// (PermissionDenied). security.rs checks one method of each; this checks them all.
#[test]
fn no_method_but_enroll_is_open_without_the_right_certificate() {
    let c = coordinator(&[]);
    let token = c.token("worker", &[], 1);
    let methods = every_method();
    let services: BTreeSet<&str> = methods.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        services,
        BTreeSet::from(["Admin", "AgentSession", "Enrollment"]),
        "{methods:?}"
    );
    assert!(methods.len() > 10, "{methods:?}");
    let rt = runtime();
    rt.block_on(async {
        let host = hostile::enroll(&c, &token, &new_machine_id(), "h1")
            .await
            .unwrap();
        let operator = hostile::operator_identity(&c);
        let mut anonymous = h2_connect(&c, None, None, None).await.unwrap();
        let mut as_host = h2_connect(&c, Some(&host.identity), None, None)
            .await
            .unwrap();
        let mut as_operator = h2_connect(&c, Some(&operator), None, None).await.unwrap();
        for (service, method) in &methods {
            let path = format!("/pitcrew.v1.{service}/{method}");
            let status = anonymous.unary::<()>(&path, &()).await.unwrap_err();
            if service == "Enrollment" {
                // Open to anyone, and refusing this empty request for what it lacks.
                assert_eq!(
                    status.code(),
                    tonic::Code::InvalidArgument,
                    "{path}: {status:?}"
                );
                continue;
            }
            assert_eq!(
                status.code(),
                tonic::Code::Unauthenticated,
                "{path}: {status:?}"
            );
            let wrong_kind = match service.as_str() {
                "Admin" => &mut as_host,
                _ => &mut as_operator,
            };
            let status = wrong_kind.unary::<()>(&path, &()).await.unwrap_err();
            assert_eq!(
                status.code(),
                tonic::Code::PermissionDenied,
                "{path}: {status:?}"
            );
        }
    });
}
