//! `rigctl earnings --owner NAME --dashboard URL`: an owner's earnings read from the owners'
//! dashboard JSON API, as the owner's page shows them. rigctl logs in with the owner's
//! password (from a file or `RIGD_OWNER_PASSWORD`), reads `/api/earnings` with the session's
//! bearer token and logs out again. The dashboard's answers are hostile input like any other:
//! bounded in size and time, decoded into typed values or refused with the reason.

use rigd_client::http::{exchange, Bounds, HttpError, Request, Url};
use rigd_protocol::owner_api::OwnerEarnings;
use std::path::Path;
use std::time::Duration;

/// The environment variable rigctl reads an owner's password from when no file is given.
pub const PASSWORD_ENV: &str = "RIGD_OWNER_PASSWORD";
/// Most bytes of one dashboard answer read.
pub const MAX_ANSWER: usize = 8 << 20;
/// The longest one exchange with the dashboard may take.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Why an owner's earnings could not be read.
#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    /// `--dashboard` is not an http:// or https:// URL.
    #[error("--dashboard: {0}")]
    Url(HttpError),
    /// No password: neither `--password-file` nor the environment variable.
    #[error("no password: give --password-file FILE or set {PASSWORD_ENV}")]
    NoPassword,
    /// The password file could not be read.
    #[error("{path}: {reason}")]
    PasswordFile {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The dashboard could not be reached or answered too much.
    #[error("the dashboard: {0}")]
    Http(#[from] HttpError),
    /// The dashboard refused (wrong name or password, too many tries, ...).
    #[error("the dashboard answered {status}: {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The dashboard's sentence, or the start of its answer.
        message: String,
    },
    /// The answer is not the JSON the API documents.
    #[error("the dashboard's answer to {path} is not what its API documents: {reason}")]
    Answer {
        /// The request's path.
        path: &'static str,
        /// Why it was refused.
        reason: String,
    },
}

/// The owner's password: the first line of `file`, or the environment variable.
pub fn password(file: Option<&Path>) -> Result<String, OwnerError> {
    let Some(file) = file else {
        return std::env::var(PASSWORD_ENV).map_err(|_| OwnerError::NoPassword);
    };
    let text = std::fs::read_to_string(file).map_err(|e| OwnerError::PasswordFile {
        path: file.display().to_string(),
        reason: e.to_string(),
    })?;
    Ok(text.lines().next().unwrap_or("").to_owned())
}

/// Reads `owner`'s earnings from the dashboard at `dashboard`.
pub async fn earnings(
    dashboard: &str,
    owner: &str,
    password: &str,
) -> Result<OwnerEarnings, OwnerError> {
    let base = Url::parse(dashboard).map_err(OwnerError::Url)?;
    let login = serde_json::json!({ "name": owner, "password": password }).to_string();
    let session: Session = call(&base, "POST", "/api/login", None, Some(&login)).await?;
    let read = call(&base, "GET", "/api/earnings", Some(&session.token), None).await;
    if let Err(e) =
        call::<serde_json::Value>(&base, "POST", "/api/logout", Some(&session.token), None).await
    {
        tracing::warn!(error = %e, "the session could not be ended; it expires by itself");
    }
    read
}

#[derive(serde::Deserialize)]
struct Session {
    token: String,
}

#[derive(serde::Deserialize)]
struct ApiRefusal {
    error: String,
}

async fn call<T: serde::de::DeserializeOwned>(
    base: &Url,
    method: &str,
    path: &'static str,
    token: Option<&str>,
    json: Option<&str>,
) -> Result<T, OwnerError> {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .as_deref()
        .map(|b| ("authorization", b))
        .into_iter()
        .collect();
    let request = Request {
        method,
        headers: &headers,
        json,
    };
    let bounds = Bounds {
        timeout: TIMEOUT,
        max_body: MAX_ANSWER,
        reach: |_| true,
        agent: "rigctl",
    };
    let answer = exchange(&base.join(path), request, bounds).await?;
    if !(200..300).contains(&answer.status) {
        let message = serde_json::from_slice::<ApiRefusal>(&answer.body).map_or_else(
            |_| {
                String::from_utf8_lossy(&answer.body)
                    .chars()
                    .take(200)
                    .collect()
            },
            |r| r.error,
        );
        return Err(OwnerError::Refused {
            status: answer.status,
            message: message.chars().filter(|c| !c.is_control()).collect(),
        });
    }
    serde_json::from_slice(&answer.body).map_err(|e| OwnerError::Answer {
        path,
        reason: e.to_string(),
    })
}

/// Keeps only the rows of `rig` (the sums are then that rig's; per-day sums are dropped, the
/// API does not split them by rig).
pub fn only_rig(mut e: OwnerEarnings, rig: &str) -> OwnerEarnings {
    e.cards.retain(|c| c.rig == rig);
    let mut total = rigd_protocol::owner_api::Totals::default();
    for c in &e.cards {
        total.add(&c.totals);
    }
    e.total = total;
    e.days.clear();
    e
}

/// The calendar date (UTC) of Unix day `day`, as `YYYY-MM-DD`.
pub fn date(day: u64) -> String {
    // Howard Hinnant's days-to-civil, on days since 1970-01-01.
    let z = i128::from(day) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i128::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_days_are_calendar_dates() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(59), "1970-03-01");
        assert_eq!(date(11_016), "2000-02-29");
        assert_eq!(date(20_792), "2026-12-05");
        assert!(!date(u64::MAX).is_empty());
    }

    #[test]
    fn a_password_comes_from_the_first_line_of_its_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret pass\nignored\n").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(password(Some(&file)).ok().as_deref(), Some("s3cret pass"));
        let missing = dir.path().join("none");
        assert!(matches!(
            password(Some(&missing)),
            Err(OwnerError::PasswordFile { .. })
        ));
    }
}
