//! One error type for every HTTP answer: a status and a JSON body that never leaks internals.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(String),
}

impl AppError {
    pub fn internal(e: impl std::fmt::Display) -> Self {
        AppError::Internal(e.to_string())
    }
}

impl From<axum::extract::rejection::JsonRejection> for AppError {
    /// A body over the size limit is a 413, like the router's own limit; a body not declared
    /// `application/json` is a 415; any other rejection (not JSON, a wrong or missing field) is
    /// a 400 that says what is wrong.
    fn from(e: axum::extract::rejection::JsonRejection) -> Self {
        match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => AppError::TooLarge(e.body_text()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => AppError::UnsupportedMediaType(e.body_text()),
            _ => AppError::BadRequest(e.body_text()),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = match &self {
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AppError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Internal(detail) => {
                // Logged once here; the caller sees no internals.
                tracing::error!(error = %detail, "Request failed.");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let mut resp = (
            status,
            Json(json!({ "error": { "status": status.as_u16(), "message": self.to_string() } })),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert("www-authenticate", "Bearer".parse().expect("static header"));
        }
        resp
    }
}
