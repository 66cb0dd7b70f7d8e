//! `rigctl claims` and `rigctl rigs revoke|registry`: requests to the provisioner over
//! MQTT 5 request/response on `rigd/v1/provision/admin`. The broker lets only operator
//! certificates write there; the answer comes back on the operator's own mailbox,
//! `rigd/v1/provision/admin-reply/{certificate CN}`.

use crate::collect::Collect;
use rigd_protocol::claim::{AdminRequest, AdminResponse, ADMIN_REPLY_PREFIX, ADMIN_TOPIC};
use std::path::Path;
use std::time::Duration;

/// Why a request to the provisioner failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No TLS settings: the provisioner is reached with an operator certificate only.
    #[error(
        "the provisioner needs an operator certificate: give --tls-ca, --tls-cert and --tls-key"
    )]
    NoCertificate,
    /// The certificate could not be read.
    #[error(transparent)]
    Tls(#[from] rigd_client::TlsError),
    /// No answer, or a broken one.
    #[error("provisioner at {addr}: {reason}")]
    Exchange {
        /// `host:port`.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// The provisioner refused.
    #[error("provisioner: {0}")]
    Refused(String),
}

/// Sends `request` and returns the provisioner's answer (an error answer is an `Err`).
pub async fn request(
    opts: &Collect,
    cert: &Path,
    request: &AdminRequest,
) -> Result<AdminResponse, AdminError> {
    let tls = opts.tls.clone().ok_or(AdminError::NoCertificate)?;
    let cn = rigd_client::common_name(cert)?;
    let addr = format!("{}:{}", opts.host, opts.port);
    let exchange = |reason: String| AdminError::Exchange {
        addr: addr.clone(),
        reason,
    };
    let mailbox = format!("{ADMIN_REPLY_PREFIX}/{cn}");
    let client_id = format!("rigctl-{}", hex::encode(rand::random::<[u8; 8]>()));
    let options = rigd_client::options(
        client_id,
        opts.host.clone(),
        opts.port,
        Some(tls),
        rigd_client::Lifetime::Fresh,
    );
    let body = serde_json::to_vec(request).map_err(|e| exchange(e.to_string()))?;
    let wait = opts.wait.max(Duration::from_secs(5));
    let answer = rigd_client::request(options, ADMIN_TOPIC, &mailbox, body, wait)
        .await
        .map_err(|e| exchange(e.to_string()))?;
    match serde_json::from_slice(&answer).map_err(|e| exchange(format!("bad answer: {e}")))? {
        AdminResponse::Error { message } => Err(AdminError::Refused(message)),
        ok => Ok(ok),
    }
}
