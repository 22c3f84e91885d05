//! Extractors that turn bad requests into our error JSON: a JSON body, path parameters, and the
//! bearer token resolved to a [`Caller`].

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::AppState;
use super::error::ApiError;
use crate::service::{Caller, ServiceError};

/// `axum::Json` whose rejections use our error format.
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Json(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    let code = match rejection {
        JsonRejection::MissingJsonContentType(_) => "unsupported_media_type",
        _ => "invalid_json",
    };
    ApiError::new(rejection.status(), code, rejection.body_text())
}

/// `axum::extract::Path` whose rejections use our error format.
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(rejection) => Err(path_rejection(rejection)),
        }
    }
}

fn path_rejection(rejection: PathRejection) -> ApiError {
    ApiError::new(rejection.status(), "invalid_path", rejection.body_text())
}

/// `axum::extract::Query` whose rejections use our error format.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Query(value)),
            Err(rejection) => {
                Err(ApiError::new(rejection.status(), "invalid_query", rejection.body_text()))
            }
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts.headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
        let token = header
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::from(ServiceError::Unauthorized(
                    "missing token: send 'Authorization: Bearer <token>'".into(),
                ))
            })?;
        Ok(state.service.caller(token).await?)
    }
}

/// The caller's tenant, for endpoints that act within one; `admin` demands the admin role.
pub fn tenant_of(caller: &Caller, admin: bool) -> Result<&crate::store::Tenant, ApiError> {
    match caller {
        Caller::Operator => {
            Err(ApiError::forbidden("this endpoint needs a tenant's token, not the operator's"))
        }
        Caller::Tenant { role, .. } if admin && *role != dormouse_proxy::claims::Role::Admin => {
            Err(ApiError::forbidden("this needs a token with the admin role"))
        }
        Caller::Tenant { tenant, .. } => Ok(tenant),
    }
}
