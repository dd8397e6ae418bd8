//! Campaigns and manual maintenance as the Admin service sees them (the engine arrives with the
//! scheduler; until then these calls say so).

use pitcrew_proto::v1;
use tonic::Status;

use crate::server::Coordinator;

fn not_yet() -> Status {
    Status::unimplemented("campaigns are not available in this build")
}

/// The maintenance state of a host and who holds it.
pub fn host_hold(_c: &Coordinator, _host_id: &str) -> (String, String) {
    ("running".to_owned(), String::new())
}

pub fn is_final(state: &str) -> bool {
    matches!(state, "completed" | "cancelled")
}

pub fn plan(_c: &Coordinator, _r: &v1::PlanCampaignRequest) -> Result<v1::CampaignPlan, Status> {
    Err(not_yet())
}
pub fn create(
    _c: &Coordinator,
    _operator: &str,
    _r: &v1::CreateCampaignRequest,
) -> Result<v1::CampaignInfo, Status> {
    Err(not_yet())
}
pub fn list(_c: &Coordinator) -> Result<v1::ListCampaignsResponse, Status> {
    Ok(v1::ListCampaignsResponse::default())
}
pub fn get(_c: &Coordinator, _id: &str) -> Result<v1::CampaignInfo, Status> {
    Err(not_yet())
}
pub fn control(
    _c: &Coordinator,
    _operator: &str,
    _r: &v1::ControlCampaignRequest,
) -> Result<v1::CampaignInfo, Status> {
    Err(not_yet())
}
pub fn control_host(
    _c: &Coordinator,
    _operator: &str,
    _r: &v1::ControlHostRequest,
) -> Result<v1::CampaignInfo, Status> {
    Err(not_yet())
}
pub fn set_maintenance(
    _c: &Coordinator,
    _operator: &str,
    _host_id: &str,
    _enable: bool,
) -> Result<(), Status> {
    Err(not_yet())
}

/// Starts the campaign runtime (resuming campaigns found in the store).
pub fn start(_c: std::sync::Arc<Coordinator>) {}
