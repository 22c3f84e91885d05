//! Serving the API so that no client can starve the others: an accept loop with caps on open
//! connections (in total and per address, through the proxy's admission), HTTP/1.1 with a
//! deadline on request headers (slowloris), and a deadline and size limit on request bodies.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use dormouse_proxy::limits::{Admission, AdmissionLimits};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::error::ApiError;

/// What the API lets one connection and one request cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiLimits {
    /// Open connections; one more is answered 503 and closed.
    pub max_connections: usize,
    /// Open connections from one client address (an IPv6 /64).
    pub max_connections_per_address: usize,
    /// Time a client has to send a request's headers, and the longest a kept-alive
    /// connection may sit idle between requests.
    pub header_timeout: Duration,
    /// Time a client has to send a request's body.
    pub body_timeout: Duration,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            max_connections: 2_048,
            // Above what one `dormouse proxy` host asks at once (routes, wakes, reports).
            max_connections_per_address: 256,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_body_bytes: 64 * 1024,
        }
    }
}

/// Connections over a cap that are told so politely at once (an answer, then a moment to
/// read it before the close); past that they are just closed, so a flood costs nothing.
const POLITE_REFUSALS: usize = 64;
/// How long a refused connection is held for its client to read the answer.
const REFUSAL_LINGER: Duration = Duration::from_millis(500);
/// How long open requests may take to finish on shutdown.
const DRAIN: Duration = Duration::from_secs(5);

/// The answer to a connection over a cap, in our error format.
fn busy_response() -> Vec<u8> {
    let body = r#"{"error":{"code":"too_many_connections","message":"the API has too many open connections; try again shortly"}}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// `app` with request bodies read under the body deadline and size limit.
pub fn bound_requests(app: Router, limits: ApiLimits) -> Router {
    app.layer(axum::middleware::from_fn_with_state(limits, bounded_body))
        .layer(axum::extract::DefaultBodyLimit::max(limits.max_body_bytes))
}

/// Serves `app` on `listener` until `shutdown`, then lets open requests finish for a moment.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ApiLimits,
    shutdown: CancellationToken,
) {
    let app = bound_requests(app, limits);
    // Connections never log in here: the admission's pending caps are the connection caps.
    let admission = Admission::new(AdmissionLimits {
        max_pending: limits.max_connections,
        max_pending_per_address: limits.max_connections_per_address,
        max_clients: 0,
    });
    let polite = Arc::new(Semaphore::new(POLITE_REFUSALS));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "API accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let ticket = match admission.arrive(peer.ip()) {
            Ok(ticket) => ticket,
            Err(why) => {
                admission.log_refusal(peer.ip(), why);
                if let Ok(permit) = polite.clone().try_acquire_owned() {
                    tokio::spawn(async move {
                        refuse(stream).await;
                        drop(permit);
                    });
                }
                continue;
            }
        };
        let service = TowerToHyperService::new(app.clone());
        // The header deadline bounds a client that sends slowly; this one that reads slowly.
        let stream = super::write_deadline::WriteDeadline::new(stream, limits.header_timeout);
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "API connection ended");
            }
            drop(ticket);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::warn!("API requests still open at shutdown were cut off");
    }
}

/// Answers 503 and closes; reads what the client sent meanwhile, so that the close does not
/// turn into a reset that loses the answer.
async fn refuse(mut stream: TcpStream) {
    let answer = async {
        stream.write_all(&busy_response()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        std::io::Result::Ok(())
    };
    let _ = tokio::time::timeout(REFUSAL_LINGER, answer).await;
}

/// Reads the whole request body under the body deadline and size limit before the handler
/// runs, so a handler never waits on a slow client, and answers in our error format when
/// either is broken.
async fn bounded_body(State(limits): State<ApiLimits>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let read = axum::body::to_bytes(body, limits.max_body_bytes);
    let bytes = match tokio::time::timeout(limits.body_timeout, read).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => {
            let too_large =
                e.into_inner().downcast_ref::<http_body_util::LengthLimitError>().is_some();
            return if too_large {
                let message =
                    format!("request bodies are limited to {} bytes", limits.max_body_bytes);
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
                    .into_response()
            } else {
                ApiError::bad_request("invalid_body", "the request body could not be read")
                    .into_response()
            };
        }
        Err(_) => {
            let message = format!(
                "the request body did not arrive within {} s",
                limits.body_timeout.as_secs_f64()
            );
            let mut response =
                ApiError::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", message)
                    .into_response();
            // The rest of the body may still be coming: the connection cannot be reused.
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
            return response;
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

#[cfg(test)]
mod tests {
    use axum::routing::post;
    use futures::StreamExt;
    use tower::ServiceExt;

    use super::*;

    fn app() -> Router {
        let limits = ApiLimits {
            max_body_bytes: 16,
            body_timeout: Duration::from_secs(1),
            ..ApiLimits::default()
        };
        let echo = post(|body: axum::body::Bytes| async move { body.len().to_string() });
        bound_requests(Router::new().route("/", echo), limits)
    }

    async fn answer(body: Body) -> (StatusCode, String) {
        let request = Request::post("/").body(body).expect("request");
        let response = app().oneshot(request).await.expect("infallible");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 4096).await.unwrap_or_default();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn bodies_within_the_limit_reach_the_handler_and_larger_ones_get_413() {
        assert_eq!(answer(Body::from("small")).await, (StatusCode::OK, "5".to_owned()));
        let (status, body) = answer(Body::from("x".repeat(17))).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(body.contains("\"payload_too_large\""), "{body}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_arriving_gets_408() {
        let stalled =
            futures::stream::iter([Ok::<_, std::io::Error>(axum::body::Bytes::from("{"))])
                .chain(futures::stream::pending());
        let (status, body) = answer(Body::from_stream(stalled)).await;
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
        assert!(body.contains("\"request_timeout\""), "{body}");
    }

    #[test]
    fn the_busy_answer_is_a_complete_503_in_our_format() {
        let wire = String::from_utf8(busy_response()).unwrap_or_default();
        let (head, body) = wire.split_once("\r\n\r\n").unwrap_or_default();
        assert!(head.starts_with("HTTP/1.1 503"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let json: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        assert_eq!(json["error"]["code"], "too_many_connections");
    }
}
