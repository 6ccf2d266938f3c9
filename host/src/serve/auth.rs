//! Who may talk to the service: the bearer token (created on first start,
//! kept 0600 in the data directory) and the Host and Origin checks that
//! stop DNS rebinding and cross-site requests.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::AppState;

/// The token in `dir/token`, created (32 random bytes, hex) when absent.
pub fn load_or_create_token(dir: &Path) -> Result<String, String> {
    let path = dir.join("token");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let token = text.trim().to_string();
            if token.len() < 32 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "{} does not hold a token (32 or more hex digits); remove it to get a new one",
                    path.display()
                ));
            }
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = [0u8; 32];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut bytes))
                .map_err(|e| format!("reading /dev/urandom: {e}"))?;
            let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| format!("creating {}: {e}", path.display()))?;
            writeln!(f, "{token}").map_err(|e| format!("writing {}: {e}", path.display()))?;
            Ok(token)
        }
        Err(e) => Err(format!("reading {}: {e}", path.display())),
    }
}

/// Compares without leaking, through timing, how much of a guess was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Refuses requests whose Host is not the listen address, or whose Origin
/// is not a page of the service (403).
pub async fn check_host_origin(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    // One Host only: with two, a proxy and the service could each read a
    // different one.
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next().and_then(|h| h.to_str().ok()).unwrap_or("");
    if hosts.next().is_some() {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "more than one Host header: send exactly one",
        )
        .into_response();
    }
    if !state.hosts.iter().any(|h| h == host) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "Host `{host}` is not this service's address (expected `{}`)",
                state.hosts[0]
            ),
        )
        .into_response();
    }
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let ok = state
            .hosts
            .iter()
            .any(|h| origin.strip_prefix("http://") == Some(h.as_str()));
        if !ok {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "Origin `{origin}` is not this service (expected `http://{}`)",
                    state.hosts[0]
                ),
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// The credentials of an `Authorization` value of the Bearer scheme, whose
/// name is case-insensitive (RFC 7235, section 2.1).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(rest)
}

/// Requires `Authorization: Bearer TOKEN` (401 otherwise).
pub async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(bearer);
    match given {
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing `Authorization: Bearer TOKEN` (the token is in the data directory's \
             `token` file, and in the URL printed at start-up)",
        )
        .into_response(),
        Some(t) if !same(t.trim().as_bytes(), state.token.as_bytes()) => {
            ApiError::new(StatusCode::UNAUTHORIZED, "wrong bearer token").into_response()
        }
        Some(_) => next.run(req).await,
    }
}

#[cfg(test)]
mod tests {
    use super::{bearer, same};

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        for (value, want) in [
            ("Bearer abc", Some("abc")),
            ("bearer abc", Some("abc")),
            ("BEARER abc", Some("abc")),
            ("Basic abc", None),
            ("Bearerabc", None),
            ("abc", None),
        ] {
            assert_eq!(bearer(value), want, "{value}");
        }
    }

    #[test]
    fn compare() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
    }
}
