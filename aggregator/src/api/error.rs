//! The one error shape of the API: `{"error": {"code", "message", "details"}}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// An error answered by the API.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: serde_json::Value,
    /// Seconds to wait before trying again (429).
    pub retry_after: Option<u64>,
}

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, for programs: `bad_request`, `unauthorized`, `forbidden`, `not_found`,
    /// `conflict`, `payload_too_large`, `unprocessable`, `rate_limited`, `timeout`, `internal`,
    /// `unavailable`.
    pub code: String,
    /// For people, naming what and where.
    pub message: String,
    /// More about it (the parameter at fault, the role needed); an object, maybe empty.
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            details: serde_json::json!({}),
            retry_after: None,
        }
    }

    /// 400, naming the parameter at fault.
    pub fn bad_parameter(parameter: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            details: serde_json::json!({ "parameter": parameter }),
            ..ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
        }
    }

    /// 400 about the request as a whole (a body that does not parse).
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 401: no token, or not a valid one.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403: a valid token whose role may not do this.
    pub fn forbidden(needed: crate::tokens::Role, has: crate::tokens::Role) -> ApiError {
        ApiError {
            details: serde_json::json!({ "required_role": needed, "role": has }),
            ..ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("this needs the {needed} role; the token has the {has} role"),
            )
        }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 422: the request was understood, but what it asks for cannot be done as things are
    /// (rule files that do not load); `details.errors` lists every problem.
    pub fn unprocessable(message: impl Into<String>, errors: &[String]) -> ApiError {
        ApiError {
            details: serde_json::json!({ "errors": errors }),
            ..ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable", message)
        }
    }

    /// 429, with how long to wait.
    pub fn rate_limited(what: &str, retry_after: std::time::Duration) -> ApiError {
        let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        ApiError {
            retry_after: Some(secs.max(1)),
            details: serde_json::json!({ "limit": what }),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("too many requests from this {what}; try again later"),
            )
        }
    }

    /// 500: logged in full here, told in general terms to the client.
    pub fn internal(context: &str, error: &dyn std::fmt::Display) -> ApiError {
        tracing::error!(%error, "{context}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{context} failed; the aggregator's log says why"),
        )
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// The answer to a request body above the limit.
    pub fn too_large(limit: u64) -> ApiError {
        ApiError {
            details: serde_json::json!({ "limit_bytes": limit }),
            ..ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the request body is larger than {limit} bytes"),
            )
        }
    }

    pub fn timeout() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "the request took too long and was abandoned",
        )
    }
}

#[cfg(test)]
impl ApiError {
    /// The body the error would be answered with.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": { "code": self.code, "message": self.message, "details": self.details }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
                details: self.details,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> ApiError {
        match e {
            crate::store::StoreError::Conflict(message) => ApiError::conflict(message),
            other => ApiError::internal("reading the store", &other),
        }
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(e: axum::extract::rejection::QueryRejection) -> ApiError {
        // "Failed to deserialize query string: limit: invalid digit found in string"
        let text = e.body_text();
        let detail = text
            .strip_prefix("Failed to deserialize query string: ")
            .unwrap_or(&text);
        match detail.split_once(": ") {
            Some((parameter, why)) if !parameter.contains(' ') => {
                ApiError::bad_parameter(parameter, format!("query parameter `{parameter}`: {why}"))
            }
            _ => ApiError::bad_request(format!("the query string is not valid: {detail}")),
        }
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(e: axum::extract::rejection::JsonRejection) -> ApiError {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                ..ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    e.body_text(),
                )
            };
        }
        ApiError::bad_request(format!("the request body is not valid: {}", e.body_text()))
    }
}

impl From<axum::extract::rejection::BytesRejection> for ApiError {
    fn from(e: axum::extract::rejection::BytesRejection) -> ApiError {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                e.body_text(),
            );
        }
        ApiError::bad_request(format!("the request body is not valid: {}", e.body_text()))
    }
}

impl From<axum::extract::rejection::PathRejection> for ApiError {
    fn from(e: axum::extract::rejection::PathRejection) -> ApiError {
        ApiError::bad_request(format!("the path is not valid: {}", e.body_text()))
    }
}
