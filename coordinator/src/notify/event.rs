//! What a notification says: its kind, and its body in each format (pitcrew's JSON or a
//! Slack-compatible `{"text": ...}`), plus the signature of a body.
//!
//! Strings that may come from agents (hostnames, step messages) are made safe before they
//! go into a body: control characters and the bidirectional overrides are escaped as in the
//! CLI's tables, and in Slack's shape `&`, `<` and `>` are escaped as Slack asks, so an
//! agent's text cannot mention `@channel` or forge a link.

use std::borrow::Cow;

use ring::hmac;
use serde::Serialize;

/// The events a webhook may be told of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventKind {
    CampaignStarted,
    CampaignPaused,
    /// Completed, incomplete or cancelled: the campaign's state says which.
    CampaignFinished,
    HostFailed,
    /// A host stuck longer than `blocked_after`, once per episode.
    HostBlocked,
}

impl EventKind {
    pub const ALL: [EventKind; 5] = [
        EventKind::CampaignStarted,
        EventKind::CampaignPaused,
        EventKind::CampaignFinished,
        EventKind::HostFailed,
        EventKind::HostBlocked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::CampaignStarted => "campaign-started",
            EventKind::CampaignPaused => "campaign-paused",
            EventKind::CampaignFinished => "campaign-finished",
            EventKind::HostFailed => "host-failed",
            EventKind::HostBlocked => "host-blocked",
        }
    }

    pub fn parse(text: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

/// One notification, before it is shaped for a webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// The same for every webhook it goes to: receivers drop repeats by it.
    pub id: String,
    pub kind: EventKind,
    pub at_ms: i64,
    pub campaign_id: String,
    pub campaign_name: String,
    /// The campaign's state after the change (`completed`, `paused`, ...).
    pub campaign_state: String,
    /// (host id, hostname) for a host's events.
    pub host: Option<(String, String)>,
    /// One readable line.
    pub message: String,
}

#[derive(Serialize)]
struct Body<'a> {
    id: &'a str,
    event: &'a str,
    /// RFC 3339, UTC.
    at: String,
    campaign: Campaign<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<Host<'a>>,
    message: Cow<'a, str>,
}

#[derive(Serialize)]
struct Campaign<'a> {
    id: &'a str,
    name: Cow<'a, str>,
    state: &'a str,
}

#[derive(Serialize)]
struct Host<'a> {
    id: &'a str,
    hostname: Cow<'a, str>,
}

#[derive(Serialize)]
struct SlackBody {
    text: String,
}

impl Notice {
    /// The body posted to a webhook of `format`.
    pub fn body(&self, format: super::config::Format) -> String {
        let json = match format {
            super::config::Format::Json => serde_json::to_string(&Body {
                id: &self.id,
                event: self.kind.as_str(),
                at: rfc3339(self.at_ms),
                campaign: Campaign {
                    id: &self.campaign_id,
                    name: clean(&self.campaign_name),
                    state: &self.campaign_state,
                },
                host: self.host.as_ref().map(|(id, hostname)| Host {
                    id,
                    hostname: clean(hostname),
                }),
                message: clean(&self.message),
            }),
            super::config::Format::Slack => serde_json::to_string(&SlackBody {
                text: slack_escape(&format!(
                    "pitcrew {}: campaign {} ({}){}: {}",
                    self.kind.as_str(),
                    clean(&self.campaign_name),
                    self.campaign_id,
                    self.host
                        .as_ref()
                        .map(|(_, h)| format!(", host {}", clean(h)))
                        .unwrap_or_default(),
                    clean(&self.message)
                )),
            }),
        };
        // Serialising plain strings cannot fail.
        json.unwrap_or_default()
    }
}

/// `sha256=<hex>` of HMAC-SHA256 over the body with the webhook's secret (the
/// `X-Pitcrew-Signature` header).
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    format!("sha256={}", hex::encode(hmac::sign(&key, body).as_ref()))
}

pub use pitcrew_proto::text::clean;

/// Slack's three control characters escaped (its mrkdwn reads `<...>` as links and mentions).
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Unix ms as RFC 3339 in UTC with milliseconds.
pub fn rfc3339(ms: i64) -> String {
    let at =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::super::config::Format;
    use super::*;

    fn notice() -> Notice {
        Notice {
            id: "0b6c8f4e".into(),
            kind: EventKind::HostFailed,
            at_ms: 1_700_000_000_123,
            campaign_id: "c-1".into(),
            campaign_name: "patch <all>".into(),
            campaign_state: "running".into(),
            host: Some(("h-1".into(), "web-1\u{1b}[2J".into())),
            message: "step \"patch\" failed: <!channel> \u{202e}gnp.exe".into(),
        }
    }

    #[test]
    fn the_json_body_has_the_documented_fields_and_clean_strings() {
        let body: serde_json::Value = serde_json::from_str(&notice().body(Format::Json)).unwrap();
        assert_eq!(body["id"], "0b6c8f4e");
        assert_eq!(body["event"], "host-failed");
        assert_eq!(body["at"], "2023-11-14T22:13:20.123Z");
        assert_eq!(body["campaign"]["id"], "c-1");
        assert_eq!(body["campaign"]["name"], "patch <all>");
        assert_eq!(body["campaign"]["state"], "running");
        assert_eq!(body["host"]["id"], "h-1");
        assert_eq!(body["host"]["hostname"], "web-1\\u{1b}[2J");
        assert_eq!(
            body["message"],
            "step \"patch\" failed: <!channel> \\u{202e}gnp.exe"
        );

        let campaign_only = Notice {
            host: None,
            kind: EventKind::CampaignStarted,
            ..notice()
        };
        let body: serde_json::Value =
            serde_json::from_str(&campaign_only.body(Format::Json)).unwrap();
        assert!(body.get("host").is_none());
        assert_eq!(body["event"], "campaign-started");
    }

    #[test]
    fn the_slack_body_is_one_readable_line_with_no_mentions() {
        let body: serde_json::Value = serde_json::from_str(&notice().body(Format::Slack)).unwrap();
        let text = body["text"].as_str().unwrap();
        assert_eq!(
            text,
            "pitcrew host-failed: campaign patch &lt;all&gt; (c-1), host web-1\\u{1b}[2J: \
             step \"patch\" failed: &lt;!channel&gt; \\u{202e}gnp.exe"
        );
        assert_eq!(body.as_object().unwrap().len(), 1);
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_the_body() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn event_names_round_trip() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(EventKind::parse("host-exploded"), None);
    }
}
