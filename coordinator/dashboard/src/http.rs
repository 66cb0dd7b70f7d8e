//! The dashboard over HTTP/1.1: the page (`/`, `/app.js`, `/app.css`) and the JSON API under
//! `/api`. A session is a 256-bit token, sent back by the browser in the `rigd_session` cookie
//! (HttpOnly, SameSite=Strict) or by an owner's script as `Authorization: Bearer`. Every API
//! answer is JSON, `Cache-Control: no-store`; every answer carries a strict
//! Content-Security-Policy. Request bodies are at most 4 KiB.

use crate::auth::{LoginLimiter, Sessions};
use crate::data::{Store, StoreError, MAX_LINES};
use crate::reasons::explain;
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rigctl::report::{card_rows, rig_state, CardRow};
use rigd_exporter::fleet::Fleet;
use rigd_protocol::{RigId, RigState};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// The session cookie's name.
pub const COOKIE: &str = "rigd_session";
/// Largest request body taken.
pub const MAX_BODY: usize = 4096;

/// A clock in Unix milliseconds (the system's in production, a test's own in tests).
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Everything a request may need.
pub struct App {
    /// The registry and the ledger.
    pub store: Store,
    /// Rigs as the broker last had them.
    pub fleet: Mutex<Fleet>,
    /// Live sessions.
    pub sessions: Mutex<Sessions>,
    /// Failed logins.
    pub limiter: Mutex<LoginLimiter>,
    /// Owners' alert settings, incidents and notices.
    pub alerts: Mutex<crate::alerts::Alerts>,
    /// Whether webhooks may point at loopback and private addresses (tests, closed networks).
    pub allow_private_webhooks: bool,
    /// Whether the session cookie is marked `Secure` (off only for plain-HTTP loopback use).
    pub secure_cookie: bool,
    /// The time.
    pub clock: Clock,
}

/// Locks `m`, whatever a panicked holder left (every guarded value stays consistent).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An answer other than success: a status and a sentence, as `{"error": ...}`.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "dashboard query failed");
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the fleet's records cannot be read just now".into(),
        )
    }
}

fn unauthorized() -> ApiError {
    ApiError(StatusCode::UNAUTHORIZED, "log in first".into())
}

fn not_found() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "no such thing".into())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        tracing::error!(error = %e, "dashboard task failed");
        Err(ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error".into(),
        ))
    })
}

/// The token a request carries, from `Authorization: Bearer` or the session cookie; only a
/// well-formed token (64 lowercase hex digits) counts.
fn token(headers: &HeaderMap) -> Option<String> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let cookie = || {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == COOKIE)
            .map(|(_, v)| v.trim())
    };
    bearer
        .or_else(cookie)
        .filter(|t| t.len() == 64 && t.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .map(str::to_owned)
}

/// The owner of the request's session.
fn owner(app: &App, headers: &HeaderMap) -> Result<String, ApiError> {
    let token = token(headers).ok_or_else(unauthorized)?;
    let now = (app.clock)();
    lock(&app.sessions)
        .owner(&token, now)
        .ok_or_else(unauthorized)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    name: String,
    password: String,
}

#[derive(Serialize)]
struct LoggedIn {
    owner: String,
    token: String,
    expires_ms: u64,
}

async fn login(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Json<LoginBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(|e| ApiError(e.status(), e.body_text()))?;
    if body.name.len() > 64 || body.password.len() > 128 {
        return Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            "name or password too long".into(),
        ));
    }
    let now = (app.clock)();
    if !lock(&app.limiter).allows(&body.name, peer.ip(), now) {
        tracing::warn!(owner = %body.name, peer = %peer.ip(), "login refused: too many failures");
        return Err(ApiError(
            StatusCode::TOO_MANY_REQUESTS,
            "too many failed logins; try again later".into(),
        ));
    }
    let found = {
        let app = app.clone();
        let (name, password) = (body.name.clone(), body.password);
        blocking(move || Ok(app.store.login(&name, &password)?)).await?
    };
    let Some(owner) = found else {
        lock(&app.limiter).failed(&body.name, peer.ip(), now);
        tracing::info!(owner = %body.name, peer = %peer.ip(), "login failed");
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "wrong name or password".into(),
        ));
    };
    lock(&app.limiter).succeeded(&owner.name);
    let (token, expires_ms) = lock(&app.sessions).start(&owner.name, now);
    tracing::info!(owner = %owner.name, peer = %peer.ip(), "owner logged in");
    let max_age = expires_ms.saturating_sub(now) / 1000;
    let secure = if app.secure_cookie { "; Secure" } else { "" };
    let cookie =
        format!("{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{secure}");
    let cookie = HeaderValue::from_str(&cookie)
        .map_err(|_| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal error".into()))?;
    Ok((
        [(header::SET_COOKIE, cookie)],
        Json(LoggedIn {
            owner: owner.name,
            token,
            expires_ms,
        }),
    )
        .into_response())
}

async fn logout(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Some(t) = token(&headers) {
        lock(&app.sessions).end(&t);
    }
    let cookie = format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    let mut response = Json(serde_json::json!({ "ended": true })).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

#[derive(Serialize)]
struct Me {
    owner: String,
    payout: String,
    rigs: usize,
    now_ms: u64,
}

async fn me(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Json<Me>, ApiError> {
    let name = owner(&app, &headers)?;
    let now_ms = (app.clock)();
    blocking(move || {
        let owner = app.store.owner(&name)?.ok_or_else(unauthorized)?;
        let rigs = app.store.rigs(&name)?.len();
        Ok(Json(Me {
            owner: owner.name,
            payout: owner.payout.checksummed(),
            rigs,
            now_ms,
        }))
    })
    .await
}

/// One rig as an owner sees it.
#[derive(Serialize)]
struct RigView {
    rig: String,
    registry_state: String,
    online: bool,
    state: Option<String>,
    agent_version: Option<String>,
    last_seen_ms: Option<u64>,
    units_running: Option<u32>,
    receipts_unacked: Option<u64>,
    cards: Vec<CardRow>,
}

fn rig_view(fleet: &Fleet, rig: &RigId, registry_state: String) -> RigView {
    let seen = fleet.get(rig);
    let status = seen.and_then(|s| s.status.as_ref());
    let telemetry = seen.and_then(|s| s.telemetry.as_ref());
    let last_seen_ms = match (status.map(|s| s.sent_ms), telemetry.map(|(_, at)| *at)) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    RigView {
        rig: rig.to_string(),
        registry_state,
        online: status.is_some_and(|s| s.state != RigState::Offline),
        state: status.map(|s| rig_state(s.state).to_owned()),
        agent_version: status.map(|s| s.agent_version.clone()),
        last_seen_ms,
        units_running: status.map(|s| s.units_running),
        receipts_unacked: status.map(|s| s.receipts_unacked),
        cards: card_rows(status, telemetry.map(|(t, _)| t)),
    }
}

async fn rigs(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let name = owner(&app, &headers)?;
    let records = {
        let app = app.clone();
        blocking(move || Ok(app.store.rigs(&name)?)).await?
    };
    let fleet = lock(&app.fleet);
    let rigs: Vec<RigView> = records
        .into_iter()
        .map(|r| rig_view(&fleet, &r.rig, r.state))
        .collect();
    Ok(Json(serde_json::json!({ "rigs": rigs })))
}

async fn earnings(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> Result<Json<rigd_protocol::owner_api::OwnerEarnings>, ApiError> {
    let name = owner(&app, &headers)?;
    blocking(move || Ok(Json(app.store.earnings(&name)?))).await
}

/// A receipt with its reason explained.
#[derive(Serialize)]
struct ReceiptView {
    rig: String,
    seq: u64,
    card: String,
    job: String,
    unit: u64,
    state: String,
    reason: Option<String>,
    explanation: Option<&'static str>,
    micros: u64,
    changed_ms: u64,
}

impl From<rigd_coordinator::ledger::ReceiptLine> for ReceiptView {
    fn from(l: rigd_coordinator::ledger::ReceiptLine) -> Self {
        let explanation = l.reason.as_deref().map(explain);
        Self {
            rig: l.rig,
            seq: l.seq,
            card: l.card,
            job: l.job,
            unit: l.unit,
            state: l.state,
            reason: l.reason,
            explanation,
            micros: l.micros,
            changed_ms: l.changed_ms,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReceiptQuery {
    before: Option<u64>,
    rejected: Option<bool>,
    limit: Option<u32>,
}

async fn receipts(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(rig): Path<String>,
    query: Result<Query<ReceiptQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let name = owner(&app, &headers)?;
    let Query(q) = query.map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))?;
    let rig = RigId::new(rig).map_err(|_| not_found())?;
    let lines = blocking(move || {
        Ok(app.store.receipts(
            &name,
            &rig,
            q.before,
            q.rejected.unwrap_or(false),
            q.limit.unwrap_or(100).min(MAX_LINES),
        )?)
    })
    .await?
    .ok_or_else(not_found)?;
    let lines: Vec<ReceiptView> = lines.into_iter().map(ReceiptView::from).collect();
    Ok(Json(serde_json::json!({ "receipts": lines })))
}

#[derive(Serialize)]
struct RefusedView {
    rig: String,
    first_seq: u64,
    last_seq: u64,
    reason: String,
    explanation: &'static str,
    at_ms: u64,
}

async fn disputes(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let name = owner(&app, &headers)?;
    let (rejected, refused) = blocking(move || Ok(app.store.disputes(&name)?)).await?;
    let rejected: Vec<ReceiptView> = rejected.into_iter().map(ReceiptView::from).collect();
    let refused: Vec<RefusedView> = refused
        .into_iter()
        .map(|r| RefusedView {
            explanation: explain(&r.reason),
            rig: r.rig,
            first_seq: r.first_seq,
            last_seq: r.last_seq,
            reason: r.reason,
            at_ms: r.at_ms,
        })
        .collect();
    Ok(Json(
        serde_json::json!({ "rejected": rejected, "refused": refused }),
    ))
}

/// The owner's credit statements, each as `RigdSettlement.openDispute` takes it with the
/// deployment it is signed for.
async fn statements(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let name = owner(&app, &headers)?;
    let signed = blocking(move || Ok(app.store.statements(&name)?)).await?;
    let statements: Vec<serde_json::Value> = signed
        .into_iter()
        .map(|s| {
            serde_json::json!({
                "rig": s.statement.rig,
                "last_seq": s.statement.last_seq,
                "before_ms": s.statement.before_ms,
                "credited_total": s.statement.credited_total,
                "chain_id": s.domain.chain_id,
                "contract": s.domain.contract().to_string(),
                "signature": format!("0x{}", hex::encode(&s.signature)),
            })
        })
        .collect();
    Ok(Json(serde_json::json!({ "statements": statements })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertBody {
    url: String,
    offline_after_s: u64,
    #[serde(default)]
    quiet_after_s: u64,
}

/// Most seconds an alert delay may be (a week).
const MAX_DELAY_S: u64 = 7 * 86_400;

async fn set_alerts(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Json<AlertBody>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let name = owner(&app, &headers)?;
    let Json(body) = body.map_err(|e| ApiError(e.status(), e.body_text()))?;
    let bad = |what: &str| ApiError(StatusCode::UNPROCESSABLE_ENTITY, what.to_owned());
    rigd_client::http::Url::parse(&body.url)
        .map_err(|_| bad("url must be an http:// or https:// URL of at most 512 bytes"))?;
    if !(1..=MAX_DELAY_S).contains(&body.offline_after_s) || body.quiet_after_s > MAX_DELAY_S {
        return Err(bad("delays are 1 s to a week (quiet_after_s 0: off)"));
    }
    let settings = crate::alerts::Settings {
        url: body.url,
        offline_after_ms: body.offline_after_s * 1000,
        quiet_after_ms: body.quiet_after_s * 1000,
    };
    let secret = blocking(move || {
        lock(&app.alerts)
            .set(&name, &settings)
            .map(|secret| (secret, settings))
            .map_err(|e| {
                tracing::error!(error = %e, "alert settings not stored");
                ApiError(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not stored; try again".into(),
                )
            })
    })
    .await?;
    Ok(Json(
        serde_json::json!({ "secret": secret.0, "settings": secret.1 }),
    ))
}

async fn alerts(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let name = owner(&app, &headers)?;
    blocking(move || {
        let alerts = lock(&app.alerts);
        let read = alerts
            .settings(&name)
            .and_then(|s| Ok((s, alerts.incidents(&name, MAX_LINES)?)));
        let (settings, incidents) = read.map_err(|e| {
            tracing::error!(error = %e, "alerts not read");
            ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "not readable just now".into(),
            )
        })?;
        Ok(Json(
            serde_json::json!({ "settings": settings, "incidents": incidents }),
        ))
    })
    .await
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn index() -> Response {
    asset(
        "text/html; charset=utf-8",
        include_str!("../web/index.html"),
    )
}

async fn script() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("../web/app.js"),
    )
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", include_str!("../web/app.css"))
}

async fn fallback() -> ApiError {
    not_found()
}

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

async fn headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The routes.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/app.js", get(script))
        .route("/app.css", get(style))
        .route("/api/login", post(login))
        .route("/api/logout", post(logout))
        .route("/api/me", get(me))
        .route("/api/rigs", get(rigs))
        .route("/api/earnings", get(earnings))
        .route("/api/disputes", get(disputes))
        .route("/api/statements", get(statements))
        .route("/api/rigs/:rig/receipts", get(receipts))
        .route("/api/alerts", get(alerts).put(set_alerts))
        .fallback(fallback)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::map_response(headers))
        .with_state(app)
}
