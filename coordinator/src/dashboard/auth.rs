//! Who a browser is: one-time login links, sessions, and what each role may do.
//!
//! Browsers and client certificates mix badly, so the dashboard never asks a browser for one.
//! An operator proves who they are with their certificate on the Admin API
//! (`CreateDashboardLogin`, `pitcrew dashboard`) and gets a **login link**: a random secret,
//! usable once, for [`LOGIN_TTL`]. The browser trades it for a **session**: another random
//! secret in a cookie (`HttpOnly; Secure; SameSite=Strict`), living at most [`SESSION_TTL`] and
//! never past the certificate's own expiry. Only the SHA-256 of either secret is kept, in
//! memory (a coordinator restart signs every browser out).
//!
//! A session is bound to the **certificate** that asked for the link (operator name and
//! serial), not to a role: at every request the operators' directory is asked again, so the
//! role is the one the coordinator holds now, and a revoked or expired certificate loses its
//! sessions at their next request (identity from the certificate).
//!
//! State-changing requests are POSTs that must carry the session's anti-CSRF token in the
//! `X-Pitcrew-Csrf` header (which a cross-site form cannot set, and which a cross-site script
//! cannot read), and an `Origin`, when the browser sends one, equal to the dashboard's own; the
//! cookie's `SameSite=Strict` is a third fence. Viewers are refused every action.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use crate::operators::{OperatorDirectory, Role};

/// How long a login link may wait to be opened.
pub const LOGIN_TTL: Duration = Duration::from_secs(120);
/// The longest a browser session lives (the certificate's expiry may end it sooner).
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Login links waiting at once; more are refused until some are used or expire.
const MAX_PENDING_LOGINS: usize = 256;
/// Sessions at once; past this the oldest is signed out.
const MAX_SESSIONS: usize = 1024;
/// The session cookie's name.
pub const COOKIE: &str = "pitcrew_session";
/// The header a state-changing request carries its anti-CSRF token in.
pub const CSRF_HEADER: &str = "x-pitcrew-csrf";

/// Why a request is refused. The text is what the browser shows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("not signed in: run `pitcrew dashboard` and open the link it prints")]
    NoSession,
    #[error("this session has expired: run `pitcrew dashboard` for a new link")]
    Expired,
    #[error("signed out: {0}")]
    Refused(String),
    #[error(
        "this login link is unknown, used or expired: run `pitcrew dashboard` for a new one (a link works once, within {} s)",
        LOGIN_TTL.as_secs()
    )]
    BadLogin,
    #[error("{0}")]
    Forbidden(String),
    #[error("too many {0} at once; try again shortly")]
    Busy(&'static str),
}

impl AuthError {
    /// The HTTP status the refusal is answered with.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::NoSession | AuthError::Expired | AuthError::Refused(_) => 401,
            AuthError::BadLogin => 401,
            AuthError::Forbidden(_) => 403,
            AuthError::Busy(_) => 503,
        }
    }
}

/// The certificate a login link or a session is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound {
    pub name: String,
    pub serial: String,
    /// When that certificate expires (Unix ms): no session outlives it.
    pub not_after_ms: i64,
}

/// A signed-in browser, as one request sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    /// The role the directory holds for the certificate now.
    pub role: Role,
    /// The token state-changing requests must echo.
    pub csrf: String,
    pub expires_at_ms: i64,
}

impl Principal {
    /// Whether this browser may pause, resume, retry, skip and release.
    pub fn may_act(&self) -> bool {
        self.role >= Role::Operator
    }
}

#[derive(Debug)]
struct Pending {
    bound: Bound,
    expires_at_ms: i64,
}

#[derive(Debug)]
struct Session {
    bound: Bound,
    csrf: String,
    created_at_ms: i64,
    expires_at_ms: i64,
}

/// Login links and sessions, in memory, keyed by the SHA-256 of their secret.
#[derive(Debug, Default)]
pub struct DashboardAuth {
    pending: Mutex<HashMap<[u8; 32], Pending>>,
    sessions: Mutex<HashMap<[u8; 32], Session>>,
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn secret(prefix: &str) -> String {
    format!("{prefix}{}", hex::encode(rand::random::<[u8; 32]>()))
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Equal in time independent of where the texts differ.
pub(crate) fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The session secret in a `Cookie` header, if any.
pub fn session_cookie(header: &str) -> Option<&str> {
    header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
        .filter(|value| !value.is_empty())
}

/// The `Set-Cookie` value of a new session.
pub fn set_cookie(secret: &str, max_age: Duration) -> String {
    format!(
        "{COOKIE}={secret}; Path=/; Max-Age={}; HttpOnly; Secure; SameSite=Strict",
        max_age.as_secs()
    )
}

/// The `Set-Cookie` value that ends a session in the browser.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Strict")
}

impl DashboardAuth {
    /// A new login link's secret for `bound`, and when it expires.
    pub fn create_login(&self, bound: Bound, now_ms: i64) -> Result<(String, i64), AuthError> {
        let mut pending = self.pending.lock();
        pending.retain(|_, p| p.expires_at_ms > now_ms);
        if pending.len() >= MAX_PENDING_LOGINS {
            return Err(AuthError::Busy("login links"));
        }
        let token = secret("pcd_");
        let expires_at_ms = now_ms.saturating_add(ms(LOGIN_TTL)).min(bound.not_after_ms);
        pending.insert(
            digest(&token),
            Pending {
                bound,
                expires_at_ms,
            },
        );
        Ok((token, expires_at_ms))
    }

    /// Trades a login link (once) for a session: its cookie secret and who it is.
    pub fn redeem(
        &self,
        token: &str,
        operators: &OperatorDirectory,
        now_ms: i64,
    ) -> Result<(String, Principal), AuthError> {
        let login = self
            .pending
            .lock()
            .remove(&digest(token))
            .filter(|p| p.expires_at_ms > now_ms)
            .ok_or(AuthError::BadLogin)?;
        let admitted = operators
            .check(&login.bound.name, &login.bound.serial, now_ms)
            .map_err(|refusal| AuthError::Refused(refusal.to_string()))?;
        let cookie = secret("");
        let csrf = secret("");
        let expires_at_ms = now_ms
            .saturating_add(ms(SESSION_TTL))
            .min(admitted.not_after_ms);
        let mut sessions = self.sessions.lock();
        sessions.retain(|_, s| s.expires_at_ms > now_ms);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.created_at_ms)
                .map(|(k, _)| *k)
        {
            sessions.remove(&oldest);
        }
        sessions.insert(
            digest(&cookie),
            Session {
                bound: login.bound,
                csrf: csrf.clone(),
                created_at_ms: now_ms,
                expires_at_ms,
            },
        );
        Ok((
            cookie,
            Principal {
                name: admitted.name,
                role: admitted.role,
                csrf,
                expires_at_ms,
            },
        ))
    }

    /// Who the browser presenting this `Cookie` header is, with the role the directory holds
    /// for its certificate now. An expired session, or one whose certificate was revoked or
    /// expired, is removed.
    pub fn authenticate(
        &self,
        cookie_header: Option<&str>,
        operators: &OperatorDirectory,
        now_ms: i64,
    ) -> Result<Principal, AuthError> {
        let secret = cookie_header
            .and_then(session_cookie)
            .ok_or(AuthError::NoSession)?;
        let key = digest(secret);
        let mut sessions = self.sessions.lock();
        let session = sessions.get(&key).ok_or(AuthError::NoSession)?;
        if session.expires_at_ms <= now_ms {
            sessions.remove(&key);
            return Err(AuthError::Expired);
        }
        match operators.check(&session.bound.name, &session.bound.serial, now_ms) {
            Ok(admitted) => Ok(Principal {
                name: admitted.name,
                role: admitted.role,
                csrf: session.csrf.clone(),
                expires_at_ms: session.expires_at_ms,
            }),
            Err(refusal) => {
                sessions.remove(&key);
                Err(AuthError::Refused(refusal.to_string()))
            }
        }
    }

    /// Ends the session of this `Cookie` header, if any.
    pub fn sign_out(&self, cookie_header: Option<&str>) {
        if let Some(secret) = cookie_header.and_then(session_cookie) {
            self.sessions.lock().remove(&digest(secret));
        }
    }

    /// Sessions open now (expired ones not yet swept included).
    pub fn session_count(&self) -> usize {
        self.sessions.lock().len()
    }
}

/// Whether `who` may make a state-changing request carrying `csrf` (the `X-Pitcrew-Csrf`
/// header) and `origin` (the `Origin` header) to a dashboard reached as `host` (the `Host`
/// header).
pub fn authorize_action(
    who: &Principal,
    csrf: Option<&str>,
    origin: Option<&str>,
    host: Option<&str>,
) -> Result<(), AuthError> {
    if !who.may_act() {
        return Err(AuthError::Forbidden(format!(
            "operator {} has role {}; pausing, resuming, retrying, skipping and releasing need role operator",
            who.name, who.role
        )));
    }
    if csrf.is_none_or(|token| !same(token, &who.csrf)) {
        return Err(AuthError::Forbidden(
            "this request did not come from the dashboard's own page (anti-CSRF token missing or wrong); reload the page".into(),
        ));
    }
    if let Some(origin) = origin {
        let own = host.map(|h| format!("https://{h}"));
        if own.as_deref() != Some(origin) {
            return Err(AuthError::Forbidden(format!(
                "a request from {origin} may not act on this dashboard"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::OperatorRecord;

    const NOW: i64 = 1_700_000_000_000;

    fn record(name: &str, serial: &str, role: Role, not_after_ms: i64) -> OperatorRecord {
        OperatorRecord {
            serial: serial.into(),
            name: name.into(),
            role: role.as_str().into(),
            not_after_ms,
            revoked: false,
            created_at_ms: NOW - 1000,
            created_by: "init".into(),
        }
    }

    fn directory() -> OperatorDirectory {
        OperatorDirectory::new(vec![
            record("vera", "01", Role::Viewer, NOW + 86_400_000),
            record("otto", "02", Role::Operator, NOW + 86_400_000),
            record("brief", "03", Role::Admin, NOW + 60_000),
        ])
        .unwrap()
    }

    fn bound(name: &str, serial: &str, not_after_ms: i64) -> Bound {
        Bound {
            name: name.into(),
            serial: serial.into(),
            not_after_ms,
        }
    }

    fn sign_in(auth: &DashboardAuth, ops: &OperatorDirectory, name: &str, serial: &str) -> String {
        let (token, _) = auth
            .create_login(bound(name, serial, NOW + 86_400_000), NOW)
            .unwrap();
        let (cookie, _) = auth.redeem(&token, ops, NOW).unwrap();
        format!("other=1; {COOKIE}={cookie}")
    }

    #[test]
    fn a_login_link_works_once_and_only_before_it_expires() {
        let auth = DashboardAuth::default();
        let ops = directory();
        let (token, expires) = auth
            .create_login(bound("otto", "02", NOW + 86_400_000), NOW)
            .unwrap();
        assert_eq!(expires, NOW + ms(LOGIN_TTL));
        assert!(token.starts_with("pcd_"));
        let (cookie, who) = auth.redeem(&token, &ops, NOW + 1000).unwrap();
        assert_eq!((who.name.as_str(), who.role), ("otto", Role::Operator));
        assert_ne!(cookie, who.csrf);
        assert_eq!(
            auth.redeem(&token, &ops, NOW + 1000),
            Err(AuthError::BadLogin)
        );

        let (late, _) = auth
            .create_login(bound("otto", "02", NOW + 86_400_000), NOW)
            .unwrap();
        assert_eq!(
            auth.redeem(&late, &ops, NOW + ms(LOGIN_TTL)),
            Err(AuthError::BadLogin)
        );
        assert_eq!(
            auth.redeem("pcd_guessed", &ops, NOW),
            Err(AuthError::BadLogin)
        );
    }

    #[test]
    fn a_request_without_a_session_or_with_an_unknown_one_is_refused() {
        let auth = DashboardAuth::default();
        let ops = directory();
        assert_eq!(
            auth.authenticate(None, &ops, NOW),
            Err(AuthError::NoSession)
        );
        assert_eq!(
            auth.authenticate(Some("theme=dark"), &ops, NOW),
            Err(AuthError::NoSession)
        );
        let forged = format!("{COOKIE}={}", "00".repeat(32));
        assert_eq!(
            auth.authenticate(Some(&forged), &ops, NOW),
            Err(AuthError::NoSession)
        );
        assert_eq!(AuthError::NoSession.status(), 401);
    }

    #[test]
    fn a_session_expires_and_never_outlives_its_certificate() {
        let auth = DashboardAuth::default();
        let ops = directory();
        let cookie = sign_in(&auth, &ops, "vera", "01");
        let who = auth.authenticate(Some(&cookie), &ops, NOW).unwrap();
        assert_eq!(who.expires_at_ms, NOW + ms(SESSION_TTL));
        assert_eq!(
            auth.authenticate(Some(&cookie), &ops, NOW + ms(SESSION_TTL)),
            Err(AuthError::Expired)
        );
        // Removed: asking again finds nothing.
        assert_eq!(
            auth.authenticate(Some(&cookie), &ops, NOW),
            Err(AuthError::NoSession)
        );

        // brief's certificate expires in a minute: so does the session.
        let (token, expires) = auth
            .create_login(bound("brief", "03", NOW + 60_000), NOW)
            .unwrap();
        assert_eq!(expires, NOW + 60_000);
        let (cookie, who) = auth.redeem(&token, &ops, NOW).unwrap();
        assert_eq!(who.expires_at_ms, NOW + 60_000);
        let header = format!("{COOKIE}={cookie}");
        assert_eq!(
            auth.authenticate(Some(&header), &ops, NOW + 60_000),
            Err(AuthError::Expired)
        );
    }

    #[test]
    fn a_revoked_operator_loses_their_session_at_the_next_request() {
        let auth = DashboardAuth::default();
        let ops = directory();
        let cookie = sign_in(&auth, &ops, "otto", "02");
        assert!(auth.authenticate(Some(&cookie), &ops, NOW).is_ok());
        ops.revoke(&[record("otto", "02", Role::Operator, NOW + 86_400_000)]);
        let refused = auth.authenticate(Some(&cookie), &ops, NOW).unwrap_err();
        assert!(
            matches!(&refused, AuthError::Refused(why) if why.contains("revoked")),
            "{refused}"
        );
        assert_eq!(refused.status(), 401);
        assert_eq!(auth.session_count(), 0);

        // A login link asked for before the revocation is refused too.
        let (token, _) = auth
            .create_login(bound("otto", "02", NOW + 86_400_000), NOW)
            .unwrap();
        assert!(matches!(
            auth.redeem(&token, &ops, NOW),
            Err(AuthError::Refused(_))
        ));
    }

    #[test]
    fn the_role_is_read_from_the_directory_at_each_request() {
        let auth = DashboardAuth::default();
        let ops = directory();
        let cookie = sign_in(&auth, &ops, "vera", "01");
        assert_eq!(
            auth.authenticate(Some(&cookie), &ops, NOW).unwrap().role,
            Role::Viewer
        );
        auth.sign_out(Some(&cookie));
        assert_eq!(
            auth.authenticate(Some(&cookie), &ops, NOW),
            Err(AuthError::NoSession)
        );
    }

    #[test]
    fn a_viewer_may_not_act_and_an_operator_only_from_the_dashboards_own_page() {
        let auth = DashboardAuth::default();
        let ops = directory();
        let viewer = auth
            .authenticate(Some(&sign_in(&auth, &ops, "vera", "01")), &ops, NOW)
            .unwrap();
        let host = Some("127.0.0.1:7444");
        let origin = Some("https://127.0.0.1:7444");
        let refused = authorize_action(&viewer, Some(&viewer.csrf), origin, host).unwrap_err();
        assert_eq!(refused.status(), 403);
        assert!(refused.to_string().contains("role viewer"), "{refused}");

        let operator = auth
            .authenticate(Some(&sign_in(&auth, &ops, "otto", "02")), &ops, NOW)
            .unwrap();
        assert_eq!(
            authorize_action(&operator, Some(&operator.csrf), origin, host),
            Ok(())
        );
        // Without an Origin header (some browsers omit it on same-origin requests).
        assert_eq!(
            authorize_action(&operator, Some(&operator.csrf), None, host),
            Ok(())
        );
        for (csrf, origin) in [
            (None, origin),
            (Some("wrong"), origin),
            (Some(viewer.csrf.as_str()), origin),
            (Some(operator.csrf.as_str()), Some("https://evil.example")),
            (Some(operator.csrf.as_str()), Some("http://127.0.0.1:7444")),
        ] {
            let refused = authorize_action(&operator, csrf, origin, host).unwrap_err();
            assert_eq!(refused.status(), 403, "{csrf:?} {origin:?}");
        }
    }

    #[test]
    fn cookies_are_read_from_the_header_and_set_strictly() {
        assert_eq!(session_cookie("a=1; pitcrew_session=abc; b=2"), Some("abc"));
        assert_eq!(session_cookie("pitcrew_session="), None);
        assert_eq!(session_cookie("xpitcrew_session=abc"), None);
        let set = set_cookie("abc", SESSION_TTL);
        for part in [
            "HttpOnly",
            "Secure",
            "SameSite=Strict",
            "Path=/",
            "Max-Age=43200",
        ] {
            assert!(set.contains(part), "{set}");
        }
        assert!(clear_cookie().contains("Max-Age=0"));
    }
}
