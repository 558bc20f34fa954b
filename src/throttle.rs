//! `kube-authd throttle status|reset`: shows or empties the failed-verification budgets of
//! one username (or one PostgreSQL token id) through authd's Admin service, with the same
//! connection options and admin credentials as `kube-authd revoke`.

use std::time::Duration;

use authd_proto::v1::ThrottleRequest;

use crate::revoke::{refused, Admin, AdminConn};

/// Whose budgets (exactly one of --user and --credential-id).
#[derive(clap::Args, Clone)]
#[group(required = true, multiple = false)]
pub struct Subject {
    /// A username as the `user:password` tokens carry it (case is ignored).
    #[arg(long)]
    pub user: Option<String>,
    /// A PostgreSQL token id.
    #[arg(long)]
    pub credential_id: Option<String>,
}

/// Narrows the call to one source.
#[derive(clap::Args, Clone)]
pub struct Filter {
    /// Only this source (by its configured name); default: every throttled source.
    #[arg(long)]
    pub source: Option<String>,
}

pub enum Action {
    Status,
    Reset,
}

fn request(subject: Subject, filter: Filter) -> ThrottleRequest {
    ThrottleRequest {
        username: subject.user.unwrap_or_default(),
        credential_id: subject.credential_id.unwrap_or_default(),
        source: filter.source.unwrap_or_default(),
    }
}

fn shown(ms: u64) -> String {
    humantime::format_duration(Duration::from_millis(ms)).to_string()
}

pub async fn run(
    conn: AdminConn,
    subject: Subject,
    filter: Filter,
    action: Action,
) -> anyhow::Result<()> {
    let mut admin = Admin::connect(&conn).await?;
    let req = admin.request(request(subject, filter));
    let hint = admin.transport_hint;
    match action {
        Action::Status => {
            let r = admin
                .client
                .throttle_status(req)
                .await
                .map_err(|s| refused(s, hint))?
                .into_inner();
            if r.budgets.is_empty() {
                println!("no throttled source keys credentials this way");
            }
            for b in r.budgets {
                let state = if b.remaining == 0 {
                    format!(
                        "throttled, next failure allowed in {}",
                        shown(b.retry_in_ms)
                    )
                } else {
                    format!("{} more failures allowed now", b.remaining)
                };
                println!(
                    "{} ({}): {state}; full again in {}; burst {}, then one per {} [{}]",
                    b.source,
                    b.kind,
                    shown(b.recovers_in_ms),
                    b.burst,
                    shown(b.period_ms),
                    if b.shared {
                        "shared (Redis)"
                    } else {
                        "this replica only"
                    },
                );
            }
        }
        Action::Reset => {
            let r = admin
                .client
                .throttle_reset(req)
                .await
                .map_err(|s| refused(s, hint))?
                .into_inner();
            println!("reset: {} sources' budgets", r.reset);
        }
    }
    Ok(())
}
