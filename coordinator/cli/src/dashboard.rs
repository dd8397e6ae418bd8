//! `pitcrew dashboard`: a one-time login link to the coordinator's web dashboard, for the
//! operator whose certificate asks (the browser's session then has that operator's role).

use crate::connect::{ConnectArgs, admin, status};
use crate::output::{self, Format};
use crate::say;

/// Asks for a login link and prints it (`-o json`: `{"url", "expires_at_ms"}`).
pub async fn dashboard(connect: &ConnectArgs, format: Format) -> anyhow::Result<()> {
    let mut client = admin(connect).await?;
    let login = client
        .create_dashboard_login(pitcrew_proto::v1::CreateDashboardLoginRequest {})
        .await
        .map_err(status)?
        .into_inner();
    match format {
        Format::Json => output::json(&serde_json::json!({
            "url": login.url,
            "expires_at_ms": login.expires_at_ms,
        })),
        // `-o csv` is refused before any command runs.
        Format::Table | Format::Csv => {
            say!("{}", login.url);
            say!(
                "Open it in a browser before {} (it works once). The dashboard trusts the fleet CA's server certificate: import the CA (ca.crt) into the browser, or accept the certificate once.",
                output::clock(login.expires_at_ms)
            );
            Ok(())
        }
    }
}
