//! Fuzz target `campaign_spec`: an operator's campaign file, parsed as the coordinator parses
//! `pitcrew campaign plan|create FILE`, then planned, made into a run over a fixed fleet, and
//! taken through the engine's first turn: decided and applied for as many rounds as a turn
//! has, each dispatch made into the request the engine sends (`wire::action_request`).
//!
//! Nothing may panic. What is checked besides: the run breaks no campaign invariant, a request
//! asks for the action the run dispatched with no shorter a timeout than the file gave it, and
//! the run survives the store's JSON round trip unchanged (the coordinator reads runs back that
//! way after a restart).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pitcrew_coordinator::wire;
use pitcrew_fuzz::{NOW_MS, fleet};
use pitcrew_scheduler::{
    CampaignRun, CampaignSpec, Decision, Event, Fleet, apply, decide, invariants, plan,
};

/// The rounds of one engine turn (`MAX_ROUNDS_PER_TURN`): a start enables a dispatch.
const ROUNDS: usize = 8;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(spec) = CampaignSpec::parse(text, "fuzz.toml") else {
        return;
    };
    let hosts = fleet();
    let _ = plan(&spec, "c-fuzz", &hosts, NOW_MS);
    let Ok(mut run) = CampaignRun::new("c-fuzz", &spec, &hosts, NOW_MS) else {
        return;
    };
    let fleet = Fleet::from_hosts(hosts);
    check(&fleet, &run);

    for _ in 0..ROUNDS {
        let decided = decide(&fleet, std::slice::from_ref(&run), NOW_MS);
        if decided.decisions.is_empty() {
            break;
        }
        for decision in decided.decisions {
            if let Decision::Dispatch(dispatch) = &decision {
                let request = wire::action_request(dispatch);
                assert_eq!(request.action_id, dispatch.action_id);
                assert_eq!(request.action, Some(dispatch.action.to_proto()));
                assert!(
                    u64::from(request.timeout_seconds) * 1000
                        >= u64::try_from(dispatch.timeout_ms).unwrap_or(0)
                        || request.timeout_seconds == u32::MAX,
                    "a timeout of {} ms was sent as {} s",
                    dispatch.timeout_ms,
                    request.timeout_seconds
                );
            }
            apply(&mut run, &fleet, &Event::Decision(decision), NOW_MS)
                .unwrap_or_else(|e| panic!("a decision does not apply: {e}"));
        }
        check(&fleet, &run);
    }

    let json = serde_json::to_value(&run).expect("a run serialises to JSON");
    let back: CampaignRun = serde_json::from_value(json).expect("a run reads back from JSON");
    assert_eq!(back, run, "a run changed through the store's JSON form");
});

/// Fails when the run breaks a campaign invariant.
fn check(fleet: &Fleet, run: &CampaignRun) {
    let broken = invariants::check(fleet, std::slice::from_ref(run));
    assert!(broken.is_empty(), "campaign invariants broken: {broken:?}");
}
