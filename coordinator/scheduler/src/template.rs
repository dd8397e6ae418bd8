//! `{{...}}` variables in step string fields: `host.hostname`, `host.id`, `host.role`,
//! `host.label.KEY`, `campaign.name`, `campaign.id`.
//!
//! Variables are checked when the campaign file is parsed (an unknown name is an error with its
//! line) and rendered per host when a run is created, so the persisted run holds the exact
//! arguments every agent will receive.

use std::collections::BTreeMap;

/// The values a template can refer to, for one host in one campaign.
#[derive(Debug, Clone)]
pub struct Vars<'a> {
    pub hostname: &'a str,
    pub host_id: &'a str,
    pub role: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub campaign_name: &'a str,
    pub campaign_id: &'a str,
}

/// What went wrong in a template: the variable, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error(
        "unknown variable {{{{{0}}}}}; known: host.hostname, host.id, host.role, host.label.KEY, campaign.name, campaign.id"
    )]
    Unknown(String),
    #[error("unclosed '{{{{' in {0:?}")]
    Unclosed(String),
    #[error("variable {{{{host.label.{key}}}}} has no value: host {host} has no label {key:?}")]
    MissingLabel { host: String, key: String },
}

/// Checks that every variable in `text` is one pitcrew knows (values are not needed).
pub fn check(text: &str) -> Result<(), TemplateError> {
    walk(text, |name| {
        if is_known(name) {
            Ok(String::new())
        } else {
            Err(TemplateError::Unknown(name.to_owned()))
        }
    })
    .map(|_| ())
}

fn is_known(name: &str) -> bool {
    matches!(
        name,
        "host.hostname" | "host.id" | "host.role" | "campaign.name" | "campaign.id"
    ) || name
        .strip_prefix("host.label.")
        .is_some_and(|key| !key.is_empty())
}

/// Replaces every variable in `text` with its value for `vars`.
pub fn render(text: &str, vars: &Vars<'_>) -> Result<String, TemplateError> {
    walk(text, |name| match name {
        "host.hostname" => Ok(vars.hostname.to_owned()),
        "host.id" => Ok(vars.host_id.to_owned()),
        "host.role" => Ok(vars.role.to_owned()),
        "campaign.name" => Ok(vars.campaign_name.to_owned()),
        "campaign.id" => Ok(vars.campaign_id.to_owned()),
        other => match other.strip_prefix("host.label.") {
            Some(key) if !key.is_empty() => {
                vars.labels
                    .get(key)
                    .cloned()
                    .ok_or_else(|| TemplateError::MissingLabel {
                        host: vars.hostname.to_owned(),
                        key: key.to_owned(),
                    })
            }
            _ => Err(TemplateError::Unknown(other.to_owned())),
        },
    })
}

/// Scans `text` for `{{ name }}` and replaces each with `value(name)`.
fn walk(
    text: &str,
    mut value: impl FnMut(&str) -> Result<String, TemplateError>,
) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            return Err(TemplateError::Unclosed(text.to_owned()));
        };
        out.push_str(&value(after[..close].trim())?);
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(labels: &BTreeMap<String, String>) -> Vars<'_> {
        Vars {
            hostname: "node-1",
            host_id: "abc",
            role: "manager",
            labels,
            campaign_name: "patch",
            campaign_id: "c1",
        }
    }

    #[test]
    fn renders_every_known_variable() {
        let labels = BTreeMap::from([("rack".to_owned(), "r7".to_owned())]);
        let text = "{{host.hostname}} {{ host.id }} {{host.role}} {{host.label.rack}} {{campaign.name}} {{campaign.id}}";
        assert_eq!(
            render(text, &vars(&labels)).unwrap(),
            "node-1 abc manager r7 patch c1"
        );
        assert!(check(text).is_ok());
    }

    #[test]
    fn unknown_and_missing_variables_are_errors() {
        let labels = BTreeMap::new();
        assert_eq!(
            check("drain {{host.name}}").unwrap_err(),
            TemplateError::Unknown("host.name".into())
        );
        assert!(matches!(
            render("{{host.label.rack}}", &vars(&labels)).unwrap_err(),
            TemplateError::MissingLabel { .. }
        ));
        assert!(matches!(
            check("{{host.id").unwrap_err(),
            TemplateError::Unclosed(_)
        ));
    }
}
