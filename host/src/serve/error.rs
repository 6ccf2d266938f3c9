//! The one error type of the service's routes: a status and a message that
//! names the offending value, sent as `{"error": "..."}`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, naming the offending value.
    pub error: String,
}

/// An error a route answers with.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

/// The service's data directory, named by a 507 (one `wprobe serve` per
/// process: set once at start).
static DATA_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Records the data directory that disk-full answers name.
pub fn set_data_dir(dir: &Path) {
    let _ = DATA_DIR.set(dir.to_path_buf());
}

impl From<rusqlite::Error> for ApiError {
    fn from(e: rusqlite::Error) -> ApiError {
        // SQLITE_FULL: a write met ENOSPC (or the database's size limit).
        // The transaction was rolled back, so nothing was stored.
        if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
            let dir = DATA_DIR.get().map_or_else(
                || "the data directory".to_string(),
                |d| d.display().to_string(),
            );
            return ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                format!(
                    "the disk holding the data directory {dir} is full ({e}): nothing was \
                     stored; free space on that disk (or start the service with --data-dir \
                     on another one) and send the request again"
                ),
            );
        }
        ApiError::internal(format!("database: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response()
    }
}

/// A request body that could not be read: over the cap (413, naming the
/// cap and its option), or cut short.
pub fn body_error(e: BytesRejection, cap: usize) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            e.status(),
            format!("the body is larger than the cap of {cap} bytes (--max-body)"),
        )
    } else {
        ApiError::new(e.status(), e.body_text())
    }
}

/// A JSON body of type `T`; `what` names it in the error ("a probe").
pub fn json_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    what: &str,
    cap: usize,
) -> Result<T, ApiError> {
    let body = body.map_err(|e| body_error(e, cap))?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the body is not {what}: {e}")))
}
