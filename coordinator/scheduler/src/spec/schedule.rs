//! The campaign file's `schedule = { cron = "...", timezone = "..." }` and `[select] when`
//! conditions, read with the line and field of any mistake (the rest of the file is in
//! `mod.rs`).

use serde::Deserialize;
use toml::Spanned;

use super::{Cx, SpecError};
use crate::conditions::Condition;
use crate::schedule::{Schedule, ScheduleError};

/// `schedule = { cron = "0 3 * * *", timezone = "Europe/Berlin" }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSchedule {
    cron: Option<Spanned<String>>,
    timezone: Option<Spanned<String>>,
}

impl Cx<'_> {
    /// Checks the schedule: a five-field cron expression and an IANA time zone (UTC when
    /// none is given).
    pub(super) fn schedule(&self, raw: Spanned<RawSchedule>) -> Result<Schedule, SpecError> {
        let span = raw.span();
        let raw = raw.into_inner();
        let Some(cron) = raw.cron else {
            return Err(self.err(
                Some(span),
                "schedule.cron",
                "a schedule needs cron, e.g. schedule = { cron = \"0 3 * * *\", timezone = \"Europe/Berlin\" }",
            ));
        };
        let timezone = raw
            .timezone
            .as_ref()
            .map(|t| t.get_ref().trim().to_owned())
            .unwrap_or_else(|| "UTC".to_owned());
        Schedule::new(cron.get_ref(), &timezone).map_err(|e| match e {
            ScheduleError::Cron(..) => self.err(Some(cron.span()), "schedule.cron", e.to_string()),
            ScheduleError::Timezone(_) => self.err(
                raw.timezone.as_ref().map(|t| t.span()),
                "schedule.timezone",
                e.to_string(),
            ),
        })
    }

    /// Reads `[select] when`: every condition must hold on a host's facts.
    pub(super) fn conditions(
        &self,
        raw: Vec<Spanned<String>>,
    ) -> Result<Vec<Condition>, SpecError> {
        let mut out: Vec<Condition> = Vec::new();
        for (i, text) in raw.into_iter().enumerate() {
            let condition = Condition::parse(text.get_ref()).map_err(|message| {
                self.err(Some(text.span()), &format!("select.when[{i}]"), message)
            })?;
            if !out.contains(&condition) {
                out.push(condition);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use crate::conditions::{Compare, Condition, Fact};
    use crate::spec::CampaignSpec;

    fn parse(text: &str) -> Result<CampaignSpec, crate::spec::SpecError> {
        CampaignSpec::parse(text, "shm.toml")
    }

    #[test]
    fn a_schedule_and_fact_conditions_are_read() {
        let spec = parse(
            "name = \"shm\"\nschedule = { cron = \"30 2 * * *\", timezone = \"Europe/Berlin\" }\n[select]\nwhen = [\"shm_tmpfs_mounts > 1\", \"not reboot_required\"]\n[[steps]]\naction = \"dedupe_shm\"\n",
        )
        .unwrap();
        let schedule = spec.schedule.unwrap();
        assert_eq!(schedule.cron, "30 2 * * *");
        assert_eq!(schedule.timezone, "Europe/Berlin");
        assert_eq!(
            spec.select.when,
            vec![
                Condition::Count {
                    fact: Fact::ShmTmpfsMounts,
                    op: Compare::Gt,
                    value: 1
                },
                Condition::Flag {
                    fact: Fact::RebootRequired,
                    want: false
                }
            ]
        );
        // No zone: UTC. No schedule: run by hand.
        let spec = parse(
            "name = \"x\"\nschedule = { cron = \"0 3 * * *\" }\n[[steps]]\naction = \"patch\"\n",
        )
        .unwrap();
        assert_eq!(spec.schedule.unwrap().timezone, "UTC");
        let spec = parse("name = \"x\"\n[[steps]]\naction = \"patch\"\n").unwrap();
        assert_eq!(spec.schedule, None);
        assert!(spec.select.when.is_empty());
    }

    #[test]
    fn schedule_mistakes_name_line_and_field() {
        let err = parse(
            "name = \"x\"\n\nschedule = { cron = \"0 3 * *\" }\n[[steps]]\naction = \"patch\"\n",
        )
        .unwrap_err();
        assert_eq!(err.line, Some(3));
        assert_eq!(err.field.as_deref(), Some("schedule.cron"));
        assert!(
            err.to_string().starts_with(
                "shm.toml:3: field schedule.cron: \"0 3 * *\" is not a cron expression"
            ),
            "{err}"
        );
        let err = parse("name = \"x\"\n[schedule]\ncron = \"0 3 * * *\"\ntimezone = \"Berlin\"\n[[steps]]\naction = \"patch\"\n").unwrap_err();
        assert_eq!(err.line, Some(4));
        assert_eq!(err.field.as_deref(), Some("schedule.timezone"));
        assert!(err.message.contains("IANA time zone"), "{err}");
        let err =
            parse("name = \"x\"\n[schedule]\ntimezone = \"UTC\"\n[[steps]]\naction = \"patch\"\n")
                .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("schedule.cron"));
        assert_eq!(err.line, Some(2));
        let err = parse("name = \"x\"\n[schedule]\ncron = \"0 3 * * *\"\nevery = \"1d\"\n[[steps]]\naction = \"patch\"\n").unwrap_err();
        assert_eq!(err.line, Some(4));
        assert!(err.to_string().contains("every"), "{err}");
    }

    #[test]
    fn condition_mistakes_name_line_and_field() {
        let err = parse("name = \"x\"\n[select]\nroles = [\"worker\"]\nwhen = [\n  \"reboot_required\",\n  \"shm_mounts > 1\",\n]\n[[steps]]\naction = \"patch\"\n").unwrap_err();
        assert_eq!(err.line, Some(6));
        assert_eq!(err.field.as_deref(), Some("select.when[1]"));
        assert!(
            err.message.contains("\"shm_mounts\" is not a fact"),
            "{err}"
        );
        let err = parse(
            "name = \"x\"\n[select]\nwhen = \"reboot_required\"\n[[steps]]\naction = \"patch\"\n",
        )
        .unwrap_err();
        assert_eq!(err.line, Some(3), "{err}");
    }
}
