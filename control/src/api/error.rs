//! The API's one error type: every failure becomes `{"error": {"code", "message"}}` with the
//! right status. 5xx bodies never carry internal detail; that goes to the log.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::service::ServiceError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self { status, code: code.into(), message: message.into() }
    }

    pub fn bad_request(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Invalid { field, message } => {
                Self::bad_request(&format!("invalid_{field}"), message)
            }
            ServiceError::Conflict(m) => Self::new(StatusCode::CONFLICT, "already_exists", m),
            ServiceError::NotFound(m) => Self::not_found(m),
            ServiceError::Unauthorized(m) => Self::new(StatusCode::UNAUTHORIZED, "unauthorized", m),
            ServiceError::Forbidden(m) => Self::forbidden(m),
            ServiceError::RestoreFailed(m) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "restore_failed", m)
            }
            ServiceError::Corrupt(m) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "backup_corrupt", m)
            }
            ServiceError::Unavailable(m) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m)
            }
            ServiceError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, Json(body)).into_response()
    }
}
