//! The scheduler's vocabulary on the wire: the request a dispatch sends and the outcome an
//! agent reports. The scheduler itself knows nothing of protobuf; this is the one mapping.

use pitcrew_proto::v1;
use pitcrew_scheduler::{Dispatch, Outcome};

/// The request a dispatch sends to its target agent. Its timeout is rounded up to whole
/// seconds, and a longer one than the wire holds becomes the longest it holds.
pub fn action_request(d: &Dispatch) -> v1::ActionRequest {
    v1::ActionRequest {
        action_id: d.action_id.clone(),
        action: Some(d.action.to_proto()),
        // Saturating: a campaign file may give a step a timeout of up to i64::MAX ms.
        timeout_seconds: u32::try_from(d.timeout_ms.saturating_add(999) / 1000).unwrap_or(u32::MAX),
    }
}

/// The scheduler's outcome for a wire outcome; anything unknown is a failure.
pub fn outcome(value: i32) -> Outcome {
    match v1::Outcome::try_from(value) {
        Ok(v1::Outcome::Succeeded) => Outcome::Succeeded,
        Ok(v1::Outcome::Refused) => Outcome::Refused,
        Ok(v1::Outcome::TimedOut) => Outcome::TimedOut,
        Ok(v1::Outcome::Cancelled) => Outcome::Cancelled,
        Ok(v1::Outcome::Interrupted) => Outcome::Interrupted,
        _ => Outcome::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pitcrew_scheduler::{Phase, StepAction};

    #[test]
    fn a_dispatch_becomes_the_request_its_agent_journals() {
        let d = Dispatch {
            campaign: "c1".into(),
            host: "w1".into(),
            target_host: "w1".into(),
            action_id: "c1:w1:main-0:a1".into(),
            phase: Phase::Main,
            step: 0,
            step_label: "noop".into(),
            action: StepAction::DaemonReload(Default::default()),
            timeout_ms: 1500,
        };
        let request = action_request(&d);
        assert_eq!(request.action_id, "c1:w1:main-0:a1");
        assert_eq!(request.timeout_seconds, 2);
        assert!(matches!(
            request.action.and_then(|a| a.kind),
            Some(v1::action::Kind::DaemonReload(_))
        ));
        assert_eq!(outcome(v1::Outcome::Refused as i32), Outcome::Refused);
        assert_eq!(outcome(999), Outcome::Failed);
    }

    /// The longest timeout a campaign file allows overflowed the rounding up to seconds: a
    /// panic in the engine's turn (debug builds). Its fuzz input is in
    /// `tests/fuzz/regressions/campaign_spec/`.
    #[test]
    fn the_longest_timeout_a_campaign_file_allows_becomes_the_longest_the_wire_holds() {
        let text = "name = \"long\"\n[[steps]]\naction = \"daemon_reload\"\n\
                    timeout = \"9223372036854775s 807ms\"\n";
        let spec = pitcrew_scheduler::CampaignSpec::parse(text, "long.toml").expect("parses");
        let step = &spec.worker.main[0];
        assert_eq!(step.timeout_ms, i64::MAX);
        let d = Dispatch {
            campaign: "c1".into(),
            host: "w1".into(),
            target_host: "w1".into(),
            action_id: "c1:w1:main-0:a1".into(),
            phase: Phase::Main,
            step: 0,
            step_label: step.label(),
            action: step.action.clone(),
            timeout_ms: step.timeout_ms,
        };
        assert_eq!(action_request(&d).timeout_seconds, u32::MAX);
    }
}
