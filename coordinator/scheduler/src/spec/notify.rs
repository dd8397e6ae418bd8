//! A campaign file's `[notify]` table: which of the coordinator's configured webhooks the
//! campaign notifies, by name, and after how long a stuck host is reported.
//!
//! Names, never URLs: the addresses (and their secrets) live in the coordinator's own
//! configuration, so whoever may submit a campaign cannot make the coordinator post to an
//! address of their choosing. Which names exist is the coordinator's to know: the scheduler
//! checks a campaign against a list it is given ([`super::CampaignSpec::check_webhooks`]).

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::{Cx, SpecError};

/// `[notify]` as parsed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NotifySpec {
    /// The configured webhooks this campaign notifies, by name; `None` means every one. An
    /// empty list silences the campaign.
    pub webhooks: Option<Vec<WebhookRef>>,
    /// Overrides each webhook's `blocked_after` for this campaign's hosts.
    pub blocked_after_ms: Option<i64>,
}

/// A webhook named in `notify.webhooks`, with its line for messages.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WebhookRef {
    pub name: String,
    pub line: usize,
}

impl NotifySpec {
    /// Whether this campaign notifies the webhook called `name`.
    pub fn notifies(&self, name: &str) -> bool {
        self.webhooks
            .as_ref()
            .is_none_or(|list| list.iter().any(|w| w.name == name))
    }
}

/// `[notify]` in the file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotify {
    webhooks: Option<Vec<Spanned<String>>>,
    blocked_after: Option<Spanned<String>>,
}

impl Cx<'_> {
    pub(super) fn notify(&self, raw: RawNotify) -> Result<NotifySpec, SpecError> {
        let webhooks = match raw.webhooks {
            None => None,
            Some(list) => {
                let mut out: Vec<WebhookRef> = Vec::new();
                for (i, name) in list.into_iter().enumerate() {
                    let field = format!("notify.webhooks[{i}]");
                    let text = name.get_ref().trim();
                    if text.is_empty() {
                        return Err(self.err(Some(name.span()), &field, "must not be empty"));
                    }
                    if out.iter().any(|w| w.name == text) {
                        return Err(self.err(
                            Some(name.span()),
                            &field,
                            format!("{text:?} is named twice"),
                        ));
                    }
                    out.push(WebhookRef {
                        name: text.to_owned(),
                        line: self.line(name.span().start),
                    });
                }
                Some(out)
            }
        };
        let blocked_after_ms = match &raw.blocked_after {
            None => None,
            Some(value) => {
                let ms = self.duration(value, "notify.blocked_after")?;
                if ms < 1000 {
                    return Err(self.err(
                        Some(value.span()),
                        "notify.blocked_after",
                        "must be at least 1s",
                    ));
                }
                Some(ms)
            }
        };
        Ok(NotifySpec {
            webhooks,
            blocked_after_ms,
        })
    }
}

impl super::CampaignSpec {
    /// Refuses a campaign naming a webhook that is not configured (`known`: the names in the
    /// coordinator's configuration), with the file, line and field.
    pub fn check_webhooks(&self, known: &[&str]) -> Result<(), SpecError> {
        let Some(list) = self.notify.as_ref().and_then(|n| n.webhooks.as_ref()) else {
            return Ok(());
        };
        for (i, webhook) in list.iter().enumerate() {
            if !known.contains(&webhook.name.as_str()) {
                let configured = if known.is_empty() {
                    "none is configured".to_owned()
                } else {
                    format!("configured: {}", known.join(", "))
                };
                return Err(SpecError {
                    source_name: self.source_name.clone(),
                    line: Some(webhook.line),
                    field: Some(format!("notify.webhooks[{i}]")),
                    message: format!(
                        "no webhook {:?} in the coordinator's configuration ({configured})",
                        webhook.name
                    ),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::spec::CampaignSpec;

    fn parse(notify: &str) -> Result<CampaignSpec, crate::spec::SpecError> {
        CampaignSpec::parse(
            &format!("name = \"x\"\n[[steps]]\naction = \"patch\"\n{notify}"),
            "x.toml",
        )
    }

    #[test]
    fn without_notify_every_webhook_is_notified() {
        let spec = parse("").unwrap();
        assert!(spec.notify.is_none());
        assert!(spec.check_webhooks(&[]).is_ok());
    }

    #[test]
    fn webhooks_are_chosen_by_name_and_an_empty_list_silences() {
        let spec = parse("[notify]\nwebhooks = [\"ops\"]\nblocked_after = \"10m\"\n").unwrap();
        let notify = spec.notify.as_ref().unwrap();
        assert!(notify.notifies("ops"));
        assert!(!notify.notifies("chat"));
        assert_eq!(notify.blocked_after_ms, Some(600_000));
        assert!(spec.check_webhooks(&["chat", "ops"]).is_ok());

        let silent = parse("[notify]\nwebhooks = []\n").unwrap();
        assert!(!silent.notify.as_ref().unwrap().notifies("ops"));
    }

    #[test]
    fn an_unknown_webhook_name_is_refused_with_its_line() {
        let spec = parse("[notify]\nwebhooks = [\n  \"ops\",\n  \"opz\",\n]\n").unwrap();
        let err = spec.check_webhooks(&["ops", "chat"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "x.toml:7: field notify.webhooks[1]: no webhook \"opz\" in the coordinator's \
             configuration (configured: ops, chat)"
        );
        let err = spec.check_webhooks(&[]).unwrap_err();
        assert!(err.to_string().contains("none is configured"), "{err}");
    }

    #[test]
    fn bad_notify_keys_name_field_and_line() {
        let err = parse("[notify]\nblocked_after = \"soon\"\n").unwrap_err();
        assert_eq!(err.line, Some(5));
        assert_eq!(err.field.as_deref(), Some("notify.blocked_after"));
        let err = parse("[notify]\nwebhook = [\"ops\"]\n").unwrap_err();
        assert_eq!(err.line, Some(5));
        assert!(err.to_string().contains("webhook"), "{err}");
        let err = parse("[notify]\nwebhooks = [\"ops\", \"ops\"]\n").unwrap_err();
        assert!(err.to_string().contains("named twice"), "{err}");
    }
}
