//! Who may use the dashboard's API, and from where: the token (bearer, or a session cookie got by logging in
//! with it), same-site requests only for actions, and read-only mode.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{ApiError, Dashboard};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "jobstream_session";
/// How long a session lasts.
const SESSION_LIFE: Duration = Duration::from_secs(12 * 3600);
/// Most sessions kept at once; the oldest go first.
const MAX_SESSIONS: usize = 10_000;

/// Logged-in sessions: random ids, kept in memory (a restart logs everyone out).
#[derive(Debug, Default)]
pub(crate) struct Sessions(Mutex<HashMap<String, Instant>>);

impl Sessions {
    fn create(&self) -> String {
        let id: String = (0..32).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
        let mut sessions = self.0.lock().expect("sessions poisoned");
        let now = Instant::now();
        sessions.retain(|_, born| now.duration_since(*born) < SESSION_LIFE);
        if sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = sessions.iter().min_by_key(|(_, born)| **born).map(|(id, _)| id.clone()) {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(id.clone(), now);
        id
    }

    fn valid(&self, id: &str) -> bool {
        let sessions = self.0.lock().expect("sessions poisoned");
        sessions
            .iter()
            .any(|(known, born)| constant_time_eq(known.as_bytes(), id.as_bytes()) && born.elapsed() < SESSION_LIFE)
    }

    fn remove(&self, id: &str) {
        self.0.lock().expect("sessions poisoned").remove(id);
    }
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(name)?.strip_prefix('='))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credentials) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| credentials.trim_start())
}

/// True when the request is authenticated (or no token is set); `bearer` says whether by a bearer token.
fn authenticated(dashboard: &Dashboard, headers: &HeaderMap) -> Result<bool, ApiError> {
    let Some(token) = &dashboard.token else { return Ok(false) };
    if let Some(given) = bearer(headers) {
        return if constant_time_eq(given.as_bytes(), token.as_bytes()) {
            Ok(true)
        } else {
            Err(ApiError::new(StatusCode::UNAUTHORIZED, "invalid bearer token"))
        };
    }
    match cookie(headers, SESSION_COOKIE) {
        Some(id) if dashboard.sessions.valid(id) => Ok(false),
        _ => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "log in (POST /ui/login with the token) or send Authorization: Bearer <token>",
        )),
    }
}

/// Refuses a request a browser says comes from another site: its `Sec-Fetch-Site` is `cross-site` or
/// `same-site`, or its `Origin` is not this host. A script (curl) sends neither and passes.
fn same_site(headers: &HeaderMap) -> Result<(), ApiError> {
    let forbidden = |why: &str| Err(ApiError::new(StatusCode::FORBIDDEN, format!("refused: {why}")));
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if !matches!(site, "same-origin" | "none") {
            return forbidden("the request comes from another site (Sec-Fetch-Site)");
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        if origin == "null" || !origin_host.eq_ignore_ascii_case(host) {
            return forbidden("the request's Origin is not this dashboard");
        }
    }
    Ok(())
}

/// The API's gate: authentication, then for anything but a read, same-site and not read-only.
pub(crate) async fn guard(State(dashboard): State<Arc<Dashboard>>, request: Request, next: Next) -> Response {
    let checked = (|| {
        authenticated(&dashboard, request.headers())?;
        if !matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
            same_site(request.headers())?;
            if dashboard.read_only {
                return Err(ApiError::new(StatusCode::FORBIDDEN, "the dashboard is read-only (--ui-read-only)"));
            }
        }
        Ok(())
    })();
    match checked {
        Ok(()) => {
            let mut response = next.run(request).await;
            response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(e) => e.into_response(),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Login {
    token: String,
}

/// `POST /ui/login {"token"}`: sets the session cookie when the token is right (204), else 401.
pub(crate) async fn login(
    State(dashboard): State<Arc<Dashboard>>,
    headers: HeaderMap,
    body: Result<Json<Login>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Err(e) = same_site(&headers) {
        return e.into_response();
    }
    let Json(login) = match body {
        Ok(body) => body,
        Err(e) => return ApiError::bad(e.body_text()).into_response(),
    };
    let Some(token) = &dashboard.token else {
        return StatusCode::NO_CONTENT.into_response();
    };
    if !constant_time_eq(login.token.as_bytes(), token.as_bytes()) {
        tracing::warn!("dashboard login refused: wrong token");
        return ApiError::new(StatusCode::UNAUTHORIZED, "wrong token").into_response();
    }
    let id = dashboard.sessions.create();
    let cookie =
        format!("{SESSION_COOKIE}={id}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age={}", SESSION_LIFE.as_secs());
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).expect("ASCII cookie"));
    response
}

/// `POST /ui/logout`: forgets the session and clears the cookie (204).
pub(crate) async fn logout(State(dashboard): State<Arc<Dashboard>>, headers: HeaderMap) -> Response {
    if let Some(id) = cookie(&headers, SESSION_COOKIE) {
        dashboard.sessions.remove(id);
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    let clear = format!("{SESSION_COOKIE}=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0");
    response.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&clear).expect("ASCII cookie"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn only_same_site_requests_may_act() {
        assert!(same_site(&headers(&[])).is_ok(), "a script sends neither header");
        assert!(same_site(&headers(&[("sec-fetch-site", "same-origin")])).is_ok());
        assert!(same_site(&headers(&[("sec-fetch-site", "cross-site")])).is_err());
        assert!(same_site(&headers(&[("host", "a:8080"), ("origin", "http://a:8080")])).is_ok());
        assert!(same_site(&headers(&[("host", "a:8080"), ("origin", "http://evil.example")])).is_err());
        assert!(same_site(&headers(&[("host", "a:8080"), ("origin", "null")])).is_err());
    }

    #[test]
    fn cookies_and_sessions() {
        let sessions = Sessions::default();
        let id = sessions.create();
        assert_eq!(id.len(), 64);
        assert!(sessions.valid(&id) && !sessions.valid("nope"));
        let h = headers(&[("cookie", &format!("a=1; {SESSION_COOKIE}={id}; b=2"))]);
        assert_eq!(cookie(&h, SESSION_COOKIE), Some(id.as_str()));
        sessions.remove(&id);
        assert!(!sessions.valid(&id));
    }
}
