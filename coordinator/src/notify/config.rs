//! `[[webhook]]` entries of coordinator.toml: where notifications go, in which shape, for
//! which events, and the secret that signs them. Checked at load, naming the key.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::event::EventKind;

/// The default of `blocked_after`: a host stuck this long is reported.
pub const DEFAULT_BLOCKED_AFTER: Duration = Duration::from_secs(30 * 60);

/// One `[[webhook]]` as written.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Unique; campaign files choose webhooks by it (`[notify] webhooks = [...]`).
    pub name: String,
    /// `http://` or `https://` (verified against the system's roots). Treated as a secret
    /// (a Slack webhook's URL is its credential): never logged nor shown.
    pub url: String,
    /// `json` (pitcrew's own body) or `slack` (`{"text": ...}`, for Slack-compatible
    /// incoming webhooks).
    #[serde(default)]
    pub format: Format,
    /// Which events are posted; every one when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
    /// A host blocked this long (by something other than waiting its turn) is reported once.
    #[serde(
        default = "default_blocked_after",
        with = "humantime_serde",
        skip_serializing_if = "is_default_blocked_after"
    )]
    pub blocked_after: Duration,
    /// A file whose content (trailing newline removed) is the HMAC-SHA256 key signing each
    /// body (`X-Pitcrew-Signature: sha256=<hex>`). Read at start; never logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
}

fn default_blocked_after() -> Duration {
    DEFAULT_BLOCKED_AFTER
}

fn is_default_blocked_after(d: &Duration) -> bool {
    *d == DEFAULT_BLOCKED_AFTER
}

/// The body's shape.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Json,
    Slack,
}

/// A webhook ready to use: checked, with its secret read.
#[derive(Clone)]
pub struct Webhook {
    pub name: String,
    pub url: hyper::Uri,
    pub format: Format,
    pub events: BTreeSet<EventKind>,
    pub blocked_after: Duration,
    /// The signing key, when `secret_file` is set.
    pub secret: Option<Vec<u8>>,
}

impl std::fmt::Debug for Webhook {
    /// Never shows the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("name", &self.name)
            .field("scheme", &self.url.scheme_str())
            .field("host", &self.url.host())
            .field("format", &self.format)
            .field("events", &self.events)
            .field("blocked_after", &self.blocked_after)
            .field("signed", &self.secret.is_some())
            .finish()
    }
}

/// Checks every `[[webhook]]` (at index `i`: `webhook[i].KEY` in messages) and reads the
/// secrets; the message names the key.
pub fn load(configs: &[WebhookConfig]) -> Result<Vec<Webhook>, String> {
    let mut out: Vec<Webhook> = Vec::with_capacity(configs.len());
    for (i, c) in configs.iter().enumerate() {
        let field = |key: &str| format!("field webhook[{i}].{key}");
        let name = c.name.trim();
        if name.is_empty()
            || !name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
        {
            return Err(format!(
                "{}: {:?} is not a name (letters, digits, '-', '_' and '.')",
                field("name"),
                c.name
            ));
        }
        if out.iter().any(|w| w.name == name) {
            return Err(format!(
                "{}: {name:?} is used by an earlier webhook; names are unique",
                field("name")
            ));
        }
        let url: hyper::Uri = c
            .url
            .parse()
            .map_err(|e| format!("{}: not a URL: {e}", field("url")))?;
        match url.scheme_str() {
            Some("http" | "https") => {}
            _ => {
                return Err(format!(
                    "{}: must start with http:// or https://",
                    field("url")
                ));
            }
        }
        if url.host().is_none_or(str::is_empty) {
            return Err(format!("{}: names no host", field("url")));
        }
        if url.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(format!(
                "{}: a URL with credentials in it is refused (use secret_file to sign instead)",
                field("url")
            ));
        }
        let events = match &c.events {
            None => EventKind::ALL.into_iter().collect(),
            Some(list) => {
                let mut set = BTreeSet::new();
                for (j, e) in list.iter().enumerate() {
                    let kind = EventKind::parse(e).ok_or_else(|| {
                        format!(
                            "{}: {e:?} is not an event; choose from {}",
                            field(&format!("events[{j}]")),
                            EventKind::ALL.map(EventKind::as_str).join(", ")
                        )
                    })?;
                    set.insert(kind);
                }
                if set.is_empty() {
                    return Err(format!(
                        "{}: lists no event; leave it out for all of them",
                        field("events")
                    ));
                }
                set
            }
        };
        if c.blocked_after < Duration::from_secs(1) {
            return Err(format!("{}: must be at least 1s", field("blocked_after")));
        }
        let secret = match &c.secret_file {
            None => None,
            Some(path) => {
                let bytes = std::fs::read(path).map_err(|e| {
                    format!(
                        "{}: cannot read {}: {e}",
                        field("secret_file"),
                        path.display()
                    )
                })?;
                let text = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
                let text = text.strip_suffix(b"\r").unwrap_or(text);
                if text.is_empty() {
                    return Err(format!(
                        "{}: {} is empty",
                        field("secret_file"),
                        path.display()
                    ));
                }
                Some(text.to_vec())
            }
        };
        out.push(Webhook {
            name: name.to_owned(),
            url,
            format: c.format,
            events,
            blocked_after: c.blocked_after,
            secret,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Webhook>, String> {
        #[derive(Deserialize)]
        struct File {
            #[serde(default)]
            webhook: Vec<WebhookConfig>,
        }
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        load(&file.webhook)
    }

    #[test]
    fn a_webhook_takes_every_event_and_thirty_minutes_by_default() {
        let hooks =
            parse("[[webhook]]\nname = \"ops\"\nurl = \"https://hooks.example.net/x\"\n").unwrap();
        assert_eq!(hooks.len(), 1);
        assert_eq!(hooks[0].format, Format::Json);
        assert_eq!(hooks[0].events.len(), EventKind::ALL.len());
        assert_eq!(hooks[0].blocked_after, DEFAULT_BLOCKED_AFTER);
        assert!(hooks[0].secret.is_none());
    }

    #[test]
    fn bad_keys_are_named() {
        let cases = [
            (
                "[[webhook]]\nname = \"ops\"\nurl = \"ftp://x/y\"\n",
                "field webhook[0].url: must start with http:// or https://",
            ),
            (
                "[[webhook]]\nname = \"a\"\nurl = \"http://x/\"\n[[webhook]]\nname = \"a\"\nurl = \"http://y/\"\n",
                "field webhook[1].name: \"a\" is used by an earlier webhook",
            ),
            (
                "[[webhook]]\nname = \"a\"\nurl = \"http://x/\"\nevents = [\"host-failed\", \"host-exploded\"]\n",
                "field webhook[0].events[1]: \"host-exploded\" is not an event",
            ),
            (
                "[[webhook]]\nname = \"a b\"\nurl = \"http://x/\"\n",
                "field webhook[0].name",
            ),
            (
                "[[webhook]]\nname = \"a\"\nurl = \"http://user:pw@x/\"\n",
                "a URL with credentials in it is refused",
            ),
            (
                "[[webhook]]\nname = \"a\"\nurl = \"http://x/\"\nsecret_file = \"/nonexistent/secret\"\n",
                "field webhook[0].secret_file: cannot read /nonexistent/secret",
            ),
            (
                "[[webhook]]\nname = \"a\"\nurl = \"http://x/\"\nformat = \"xml\"\n",
                "unknown variant `xml`",
            ),
            (
                "[[webhook]]\nname = \"a\"\nurl = \"http://x/\"\nblocked_after = \"0s\"\n",
                "field webhook[0].blocked_after: must be at least 1s",
            ),
        ];
        for (text, expected) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
            assert!(!err.contains("pw@"), "{err}");
        }
    }

    #[test]
    fn the_secret_is_read_without_its_newline_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cret-value\n").unwrap();
        let hooks = parse(&format!(
            "[[webhook]]\nname = \"a\"\nurl = \"http://x/\"\nformat = \"slack\"\nsecret_file = {:?}\n",
            path.display().to_string()
        ))
        .unwrap();
        assert_eq!(hooks[0].secret.as_deref(), Some(&b"s3cret-value"[..]));
        assert_eq!(hooks[0].format, Format::Slack);
        assert!(!format!("{:?}", hooks[0]).contains("s3cret"));
    }
}
