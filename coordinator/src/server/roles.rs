//! Who may call which Admin method: the one table of minimum roles, and the gate in front of
//! the Admin service that enforces it.
//!
//! Every Admin request passes through [`RoleGate`] before tonic decodes it: the gate reads the
//! operator's name and certificate serial from the verified certificate, checks the serial in
//! the operators' directory (unknown, revoked and expired certificates are refused, saying
//! which), looks the method up in [`ADMIN_ROLES`] by its path and refuses a caller whose role
//! is below it. A method missing from the table is refused to everyone, and a unit test fails
//! for every rpc of `service Admin` without a row. The gate hands the handlers a [`Caller`]
//! (the name the audit trail records); a handler that finds none refuses.
//!
//! Streams that outlive their call (`WatchCampaign`, `FollowEvents`, `RunAction`) go through
//! [`until_revoked`], which checks the certificate again before each message and as soon as any
//! certificate is revoked, and ends the stream with the reason.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use futures::future::Either;
use pitcrew_proto::identity::{Peer, PeerCert, peer_from_der};
use pitcrew_proto::v1::admin_server::SERVICE_NAME;
use tokio::sync::mpsc;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::operators::{OperatorDirectory, Role};

/// The minimum role of every Admin method, by its name in `service Admin`
/// (proto/pitcrew/v1/pitcrew.proto). Reads are `Viewer`; acting on hosts and campaigns is
/// `Operator` (changing a host's role or labels included); granting and ending access (join
/// tokens, operators, removing a host, which revokes its certificate) is `Admin`. Renewing is
/// open to every operator: it only ever renews the caller's own certificate, with the caller's
/// own role; so is opening the web dashboard, which then shows and allows what the caller's
/// role does.
pub const ADMIN_ROLES: &[(&str, Role)] = &[
    ("ListHosts", Role::Viewer),
    ("GetHost", Role::Viewer),
    ("ComplianceReport", Role::Viewer),
    ("CreateToken", Role::Admin),
    ("ListTokens", Role::Viewer),
    ("RevokeToken", Role::Admin),
    ("RunAction", Role::Operator),
    ("PlanCampaign", Role::Viewer),
    ("CreateCampaign", Role::Operator),
    ("ListCampaigns", Role::Viewer),
    ("GetCampaign", Role::Viewer),
    ("WatchCampaign", Role::Viewer),
    ("ControlCampaign", Role::Operator),
    ("ControlHost", Role::Operator),
    ("ScheduleCampaign", Role::Operator),
    ("ListSchedules", Role::Viewer),
    ("ControlSchedule", Role::Operator),
    ("SetMaintenance", Role::Operator),
    ("ListEvents", Role::Viewer),
    ("FollowEvents", Role::Viewer),
    ("AddOperator", Role::Admin),
    ("ListOperators", Role::Admin),
    ("RevokeOperator", Role::Admin),
    ("RenewOperator", Role::Viewer),
    ("RemoveHost", Role::Admin),
    ("SetHost", Role::Operator),
    // Every role may open the dashboard; the browser's session then has the caller's role.
    ("CreateDashboardLogin", Role::Viewer),
    // The delivery record names webhooks, never their URLs or secrets.
    ("ListNotifications", Role::Viewer),
];

/// The method name of an Admin request path (`/pitcrew.v1.Admin/ListHosts` → `ListHosts`).
fn method_of(path: &str) -> Option<&str> {
    path.strip_prefix('/')?
        .strip_prefix(SERVICE_NAME)?
        .strip_prefix('/')
}

/// The minimum role for an Admin request path; `None` for a path that is not an Admin method
/// in the table (refused to everyone).
pub fn required_role(path: &str) -> Option<Role> {
    let method = method_of(path)?;
    ADMIN_ROLES
        .iter()
        .find(|(name, _)| *name == method)
        .map(|(_, role)| *role)
}

/// The operator making an Admin call, as the gate admitted them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The operator's name, from the certificate (what the audit trail records).
    pub name: String,
    /// The serial of the certificate presented.
    pub serial: String,
    pub role: Role,
    /// When that certificate expires (Unix ms).
    pub not_after_ms: i64,
}

/// The caller the gate admitted. Every Admin handler starts with it; without the gate in front
/// of the service there is none, and the call is refused.
pub fn caller<T>(request: &tonic::Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| {
            tracing::error!(message = "an Admin call reached its handler without the role gate");
            Status::internal("the coordinator could not check this call's role; it was refused")
        })
}

/// Decides whether `peer` may call `path` at `now_ms`: an operator whose certificate is in the
/// directory, valid, and whose role is enough for the method.
pub fn admit(
    path: &str,
    peer: Result<PeerCert, Status>,
    operators: &OperatorDirectory,
    now_ms: i64,
) -> Result<Caller, Status> {
    let peer = peer?;
    let name = match peer.peer {
        Peer::Operator(name) => name,
        other => {
            tracing::warn!(message = "refused a non-operator certificate on the Admin service", peer = %other);
            return Err(Status::permission_denied(format!(
                "{other} is not an operator: the Admin service needs an operator certificate"
            )));
        }
    };
    let admitted = operators
        .check(&name, &peer.serial, now_ms)
        .map_err(|refusal| {
            tracing::warn!(message = "refused an operator certificate", %refusal);
            Status::permission_denied(refusal.to_string())
        })?;
    let method = method_of(path).unwrap_or(path);
    let Some(needed) = required_role(path) else {
        tracing::warn!(message = "refused a call to a method without a role", path, operator = %name);
        return Err(Status::permission_denied(format!(
            "{method} has no role on this coordinator; refused"
        )));
    };
    if admitted.role < needed {
        return Err(Status::permission_denied(format!(
            "operator {name} has role {}; {method} needs role {needed} (an admin can issue a certificate with that role: pitcrew operator add NAME --role {needed})",
            admitted.role
        )));
    }
    Ok(Caller {
        name,
        serial: peer.serial,
        role: admitted.role,
        not_after_ms: admitted.not_after_ms,
    })
}

/// The identity in the certificate the TLS layer verified for this connection.
fn peer_of(extensions: &http::Extensions) -> Result<PeerCert, Status> {
    let certs = extensions
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|info| info.peer_certs())
        .ok_or_else(|| Status::unauthenticated("no client certificate was presented"))?;
    let leaf = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("no client certificate was presented"))?;
    peer_from_der(leaf.as_ref()).map_err(|e| Status::unauthenticated(e.to_string()))
}

/// The Admin service behind its role check (see the module docs).
#[derive(Clone)]
pub struct RoleGate<S> {
    inner: S,
    operators: Arc<OperatorDirectory>,
}

impl<S> RoleGate<S> {
    pub fn new(inner: S, operators: Arc<OperatorDirectory>) -> RoleGate<S> {
        RoleGate { inner, operators }
    }
}

impl<S: NamedService> NamedService for RoleGate<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for RoleGate<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Either<S::Future, std::future::Ready<Result<Self::Response, Self::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let peer = peer_of(request.extensions());
        match admit(
            request.uri().path(),
            peer,
            &self.operators,
            pitcrew_proto::now_ms(),
        ) {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                Either::Left(self.inner.call(request))
            }
            // Refused before the request's body is read.
            Err(status) => Either::Right(std::future::ready(Ok(status.into_http()))),
        }
    }
}

/// A stream of answers to an operator.
pub type GuardedStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Why a stream's caller may no longer receive it, if so.
fn still_admitted(operators: &OperatorDirectory, caller: &Caller) -> Result<(), Status> {
    operators
        .check(&caller.name, &caller.serial, pitcrew_proto::now_ms())
        .map(|_| ())
        .map_err(|refusal| Status::permission_denied(format!("the stream was ended: {refusal}")))
}

/// Passes on what `rx` yields to `caller` for as long as their certificate stays valid: it is
/// checked before each message, whenever a certificate is revoked, and when it expires. Then the
/// stream ends with PermissionDenied saying why (and `rx` is dropped, so its producer stops).
pub fn until_revoked<T: Send + 'static>(
    rx: mpsc::Receiver<Result<T, Status>>,
    operators: Arc<OperatorDirectory>,
    caller: Caller,
) -> GuardedStream<T> {
    let revocations = operators.subscribe();
    let state = Some((rx, revocations));
    Box::pin(futures::stream::unfold(state, move |state| {
        let operators = operators.clone();
        let caller = caller.clone();
        async move {
            let (mut rx, mut revocations) = state?;
            let expires_in = u64::try_from(caller.not_after_ms - pitcrew_proto::now_ms())
                .unwrap_or(0)
                .saturating_add(1);
            let expiry = tokio::time::sleep(std::time::Duration::from_millis(expires_in));
            tokio::pin!(expiry);
            loop {
                tokio::select! {
                    biased;
                    changed = revocations.changed() => {
                        if changed.is_err() {
                            // The directory is gone with the coordinator: end quietly.
                            return None;
                        }
                        if let Err(status) = still_admitted(&operators, &caller) {
                            return Some((Err(status), None));
                        }
                    }
                    _ = &mut expiry => {
                        if let Err(status) = still_admitted(&operators, &caller) {
                            return Some((Err(status), None));
                        }
                        // The wall clock disagrees with the timer: look again shortly.
                        expiry.as_mut().reset(
                            tokio::time::Instant::now() + std::time::Duration::from_secs(1),
                        );
                    }
                    item = rx.recv() => {
                        let item = item?;
                        if let Err(status) = still_admitted(&operators, &caller) {
                            return Some((Err(status), None));
                        }
                        return Some((item, Some((rx, revocations))));
                    }
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::OperatorRecord;
    use futures::StreamExt;

    /// The rpc names of `service Admin`, read from the proto file the API is generated from.
    fn admin_rpcs() -> Vec<String> {
        let proto = include_str!("../../../proto/proto/pitcrew/v1/pitcrew.proto");
        let service = proto
            .split("service Admin {")
            .nth(1)
            .and_then(|rest| rest.split("\n}").next())
            .expect("the proto file has a service Admin");
        service
            .lines()
            .filter_map(|line| line.trim().strip_prefix("rpc "))
            .filter_map(|rest| rest.split('(').next())
            .map(|name| name.trim().to_owned())
            .collect()
    }

    #[test]
    fn every_admin_method_has_a_role_and_every_role_a_method() {
        let rpcs = admin_rpcs();
        assert!(rpcs.len() >= 20, "read {rpcs:?}");
        let missing: Vec<&String> = rpcs
            .iter()
            .filter(|rpc| required_role(&format!("/{SERVICE_NAME}/{rpc}")).is_none())
            .collect();
        assert!(
            missing.is_empty(),
            "Admin methods without a role in ADMIN_ROLES (they are refused to everyone): {missing:?}"
        );
        let stale: Vec<&str> = ADMIN_ROLES
            .iter()
            .map(|(name, _)| *name)
            .filter(|name| !rpcs.iter().any(|rpc| rpc == name))
            .collect();
        assert!(
            stale.is_empty(),
            "roles for methods that do not exist: {stale:?}"
        );
    }

    #[test]
    fn the_role_table_says_who_reads_who_acts_and_who_grants() {
        let role = |method: &str| required_role(&format!("/pitcrew.v1.Admin/{method}"));
        for read in [
            "ListHosts",
            "GetHost",
            "ComplianceReport",
            "ListTokens",
            "PlanCampaign",
            "GetCampaign",
        ] {
            assert_eq!(role(read), Some(Role::Viewer), "{read}");
        }
        for act in [
            "RunAction",
            "CreateCampaign",
            "ControlHost",
            "SetMaintenance",
        ] {
            assert_eq!(role(act), Some(Role::Operator), "{act}");
        }
        for grant in [
            "CreateToken",
            "RevokeToken",
            "AddOperator",
            "RevokeOperator",
        ] {
            assert_eq!(role(grant), Some(Role::Admin), "{grant}");
        }
        assert_eq!(role("NoSuchMethod"), None);
        assert_eq!(required_role("/pitcrew.v1.AgentSession/Session"), None);
        assert_eq!(required_role("/pitcrew.v1.Admin"), None);
    }

    fn directory() -> OperatorDirectory {
        let record = |serial: &str, name: &str, role: Role| OperatorRecord {
            serial: serial.into(),
            name: name.into(),
            role: role.as_str().into(),
            not_after_ms: i64::MAX,
            revoked: false,
            created_at_ms: 0,
            created_by: "init".into(),
        };
        OperatorDirectory::new(vec![
            record("01", "vera", Role::Viewer),
            record("02", "otto", Role::Operator),
            record("03", "ada", Role::Admin),
        ])
        .unwrap()
    }

    fn operator(name: &str, serial: &str) -> Result<PeerCert, Status> {
        Ok(PeerCert {
            peer: Peer::Operator(name.into()),
            serial: serial.into(),
        })
    }

    #[test]
    fn the_gate_admits_by_role_and_names_the_role_needed() {
        let operators = directory();
        let path = |m: &str| format!("/pitcrew.v1.Admin/{m}");
        let admit = |p: &str, peer| admit(&path(p), peer, &operators, 10);

        let caller = admit("ListHosts", operator("vera", "01")).unwrap();
        assert_eq!((caller.name.as_str(), caller.role), ("vera", Role::Viewer));
        let refused = admit("RunAction", operator("vera", "01")).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(
            refused.message().contains("needs role operator"),
            "{}",
            refused.message()
        );
        assert!(admit("RunAction", operator("otto", "02")).is_ok());
        let refused = admit("CreateToken", operator("otto", "02")).unwrap_err();
        assert!(
            refused.message().contains("needs role admin"),
            "{}",
            refused.message()
        );
        assert!(admit("AddOperator", operator("ada", "03")).is_ok());
        assert!(admit("RenewOperator", operator("vera", "01")).is_ok());

        // Not in the table: refused even to an admin.
        let refused = admit("Shutdown", operator("ada", "03")).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        // Unknown serials, hosts and missing certificates never get as far as the role.
        let refused = admit("ListHosts", operator("ada", "99")).unwrap_err();
        assert!(
            refused.message().contains("not registered"),
            "{}",
            refused.message()
        );
        let host = Ok(PeerCert {
            peer: Peer::Host("h1".into()),
            serial: "01".into(),
        });
        assert_eq!(
            admit("ListHosts", host).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        let none = Err(Status::unauthenticated(
            "no client certificate was presented",
        ));
        assert_eq!(
            admit("ListHosts", none).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }

    #[test]
    fn a_handler_without_the_gate_refuses() {
        let request = tonic::Request::new(());
        assert_eq!(caller(&request).unwrap_err().code(), tonic::Code::Internal);
    }

    #[tokio::test]
    async fn a_stream_ends_when_its_operator_is_revoked() {
        let operators = Arc::new(directory());
        let vera = admit(
            "/pitcrew.v1.Admin/FollowEvents",
            operator("vera", "01"),
            &operators,
            10,
        )
        .unwrap();
        let (tx, rx) = mpsc::channel::<Result<u32, Status>>(4);
        let mut stream = until_revoked(rx, operators.clone(), vera);
        tx.send(Ok(1)).await.unwrap();
        assert_eq!(stream.next().await.unwrap().unwrap(), 1);
        // Idle, then revoked: the stream ends at once, without waiting for a message.
        let next = tokio::spawn(async move {
            let ended = stream.next().await;
            (ended, stream.next().await.is_none())
        });
        tokio::task::yield_now().await;
        operators.revoke(&[OperatorRecord {
            serial: "01".into(),
            name: "vera".into(),
            role: "viewer".into(),
            not_after_ms: i64::MAX,
            revoked: true,
            created_at_ms: 0,
            created_by: "init".into(),
        }]);
        let (ended, closed) = tokio::time::timeout(std::time::Duration::from_secs(5), next)
            .await
            .unwrap()
            .unwrap();
        let status = ended.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(status.message().contains("revoked"), "{}", status.message());
        assert!(closed, "nothing follows the refusal");
        assert!(tx.is_closed(), "the producer learns that nobody listens");
    }

    #[tokio::test]
    async fn a_stream_ends_when_its_certificate_expires() {
        let record = OperatorRecord {
            serial: "05".into(),
            name: "eve".into(),
            role: "viewer".into(),
            not_after_ms: pitcrew_proto::now_ms() + 300,
            revoked: false,
            created_at_ms: 0,
            created_by: "init".into(),
        };
        let operators = Arc::new(OperatorDirectory::new(vec![record]).unwrap());
        let eve = admit(
            "/pitcrew.v1.Admin/WatchCampaign",
            operator("eve", "05"),
            &operators,
            pitcrew_proto::now_ms(),
        )
        .unwrap();
        let (_tx, rx) = mpsc::channel::<Result<u32, Status>>(4);
        let mut stream = until_revoked(rx, operators, eve);
        let ended = tokio::time::timeout(std::time::Duration::from_secs(5), stream.next())
            .await
            .unwrap()
            .unwrap();
        assert!(ended.unwrap_err().message().contains("expired"));
    }
}
