//! `pitcrew operator ...`: add an operator with a role (admin), list and revoke them (admin),
//! and renew the certificate this command line is using (anyone).
//!
//! Keys are made here, where the command runs: only a CSR goes to the coordinator, which signs
//! it for the name and role it was asked for. Key files are written 0600, and a renewal
//! replaces the key and certificate files together.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use pitcrew_proto::v1;

use super::connect::{ConnectArgs, admin, status};
use super::output::{self, Format};

#[derive(Clone, Subcommand)]
pub enum OperatorCommand {
    /// Issue a certificate for a new operator with a role; writes DIR/NAME.crt and DIR/NAME.key
    /// (0600) for you to hand to them.
    Add {
        /// The operator's name (letters, digits, - _ . @): what the audit trail shows.
        name: String,
        /// viewer reads; operator also runs actions, campaigns and maintenance; admin also
        /// manages join tokens and operators.
        #[arg(long, value_parser = ["viewer", "operator", "admin"])]
        role: String,
        /// Where to write the certificate and key.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// How long the certificate is valid, e.g. 30d, 12h (default: the coordinator's
        /// operator_cert_lifetime, 30 days unless configured; at most 365 days).
        #[arg(long, value_parser = humantime::parse_duration)]
        lifetime: Option<std::time::Duration>,
    },
    /// List operators' certificates: name, role, serial, expiry, state and who issued each.
    Ls,
    /// Revoke every certificate of an operator; in force for their next call, and their open
    /// streams end.
    Revoke { name: String },
    /// Renew the certificate you are using (same name and role): a new key is made here and the
    /// files given by --cert and --key are replaced together.
    Renew,
}

pub async fn operator(
    connect: &ConnectArgs,
    format: Format,
    command: OperatorCommand,
) -> anyhow::Result<()> {
    match command {
        OperatorCommand::Add {
            name,
            role,
            out,
            lifetime,
        } => add(connect, format, name, role, out, lifetime).await,
        OperatorCommand::Ls => list(connect, format).await,
        OperatorCommand::Revoke { name } => revoke(connect, format, name).await,
        OperatorCommand::Renew => renew(connect, format).await,
    }
}

/// "2026-01-31 12:00:00 (in 29d)".
fn expiry(not_after_ms: i64) -> String {
    let left = (not_after_ms - pitcrew_proto::now_ms()) / 1000;
    let when = match left {
        i64::MIN..=0 => "expired".to_owned(),
        1..=3599 => format!("in {}m", left / 60),
        3600..=86399 => format!("in {}h", left / 3600),
        _ => format!("in {}d", left / 86400),
    };
    format!("{} ({when})", output::clock(not_after_ms))
}

fn refuse_to_overwrite(path: &Path) -> anyhow::Result<()> {
    if path.exists() {
        anyhow::bail!(
            "{} already exists; choose another --out directory or move it away",
            path.display()
        );
    }
    Ok(())
}

async fn add(
    connect: &ConnectArgs,
    format: Format,
    name: String,
    role: String,
    out: PathBuf,
    lifetime: Option<std::time::Duration>,
) -> anyhow::Result<()> {
    let cert_path = out.join(format!("{name}.crt"));
    let key_path = out.join(format!("{name}.key"));
    if name.contains('/') || name.starts_with('.') {
        anyhow::bail!("the operator name {name:?} is not valid: use letters, digits and - _ . @");
    }
    refuse_to_overwrite(&cert_path)?;
    refuse_to_overwrite(&key_path)?;
    let made = pitcrew_proto::csr::key_and_csr(&name)?;
    let mut client = admin(connect).await?;
    let issued = client
        .add_operator(v1::AddOperatorRequest {
            name: name.clone(),
            role,
            csr_der: made.csr_der.clone(),
            lifetime_seconds: lifetime.map(|l| l.as_secs().max(1)).unwrap_or(0),
        })
        .await
        .map_err(status)?
        .into_inner();
    let info = issued.info.clone().unwrap_or_default();
    pitcrew_proto::files::write_private(&key_path, made.key_pem.as_bytes())
        .with_context(|| format!("the certificate was issued (serial {}) but its key cannot be written to {}; revoke it (pitcrew operator revoke {name}) and try again", info.serial, key_path.display()))?;
    pitcrew_proto::files::write_public(&cert_path, issued.certificate_pem.as_bytes())
        .with_context(|| format!("cannot write {}", cert_path.display()))?;
    // The fleet CA too, so that the directory is all the new operator needs (it is public).
    let ca_path = out.join("ca.crt");
    if !ca_path.exists() {
        pitcrew_proto::files::write_public(&ca_path, issued.ca_pem.as_bytes())
            .with_context(|| format!("cannot write {}", ca_path.display()))?;
    }
    if format == Format::Json {
        return output::json(&serde_json::json!({
            "info": info,
            "certificate": cert_path,
            "key": key_path,
            "ca": ca_path,
        }));
    }
    crate::say!(
        "operator {} (role {}): certificate {}, key {} (keep it private), valid until {}",
        info.name,
        info.role,
        cert_path.display(),
        key_path.display(),
        expiry(info.not_after_ms)
    );
    crate::say!(
        "They connect with PITCREW_COORDINATOR={} PITCREW_CA=<{}> PITCREW_CERT=<{name}.crt> PITCREW_KEY=<{name}.key>, and renew before it expires with: pitcrew operator renew",
        connect.coordinator,
        ca_path.display()
    );
    Ok(())
}

async fn list(connect: &ConnectArgs, format: Format) -> anyhow::Result<()> {
    let mut client = admin(connect).await?;
    let operators = client
        .list_operators(v1::ListOperatorsRequest {})
        .await
        .map_err(status)?
        .into_inner()
        .operators;
    if format == Format::Json {
        return output::json(&operators);
    }
    let now = pitcrew_proto::now_ms();
    let mut table = output::table(&["name", "role", "serial", "expires", "state", "created by"]);
    for o in operators {
        let state = if o.revoked {
            "revoked"
        } else if o.not_after_ms <= now {
            "expired"
        } else {
            "valid"
        };
        table.add_row(vec![
            o.name,
            o.role,
            o.serial,
            expiry(o.not_after_ms),
            state.to_owned(),
            o.created_by,
        ]);
    }
    crate::say!("{table}");
    Ok(())
}

async fn revoke(connect: &ConnectArgs, format: Format, name: String) -> anyhow::Result<()> {
    let mut client = admin(connect).await?;
    let revoked = client
        .revoke_operator(v1::RevokeOperatorRequest { name: name.clone() })
        .await
        .map_err(status)?
        .into_inner()
        .operators;
    if format == Format::Json {
        return output::json(&revoked);
    }
    crate::say!(
        "revoked operator {name}: {} certificate(s); their next call is refused and their open streams end",
        revoked.len()
    );
    Ok(())
}

async fn renew(connect: &ConnectArgs, format: Format) -> anyhow::Result<()> {
    let made = pitcrew_proto::csr::key_and_csr("")?;
    let mut client = admin(connect).await?;
    let issued = client
        .renew_operator(v1::RenewOperatorRequest {
            csr_der: made.csr_der.clone(),
        })
        .await
        .map_err(status)?
        .into_inner();
    let info = issued.info.clone().unwrap_or_default();
    pitcrew_proto::files::replace_key_and_cert(
        &connect.key,
        made.key_pem.as_bytes(),
        &connect.cert,
        issued.certificate_pem.as_bytes(),
    )
    .with_context(|| {
        format!(
            "a new certificate was issued (serial {}) but {} and {} could not be replaced; the certificate you have keeps working until it expires",
            info.serial,
            connect.cert.display(),
            connect.key.display()
        )
    })?;
    if format == Format::Json {
        return output::json(&info);
    }
    crate::say!(
        "renewed operator {} (role {}): new certificate {} in {}, valid until {}",
        info.name,
        info.role,
        info.serial,
        connect.cert.display(),
        expiry(info.not_after_ms)
    );
    Ok(())
}
