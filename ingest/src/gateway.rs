//! The front door's shared pieces: the [`Gateway`] state every handler
//! gets, admission (authentication, doc id, grant), and error responses.
//! `http` (which routes to `ws`) and `ws` both use these; `ws` uses
//! nothing of `http`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use prometheus::Registry;
use protocol::{validate_doc_id, ErrorCode, ProtoError, ServerMsg};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

use crate::{Auth, Feed, Health, Ingest, Principal};

/// Everything the front door needs. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    pub auth: Auth,
    pub ingest: Ingest,
    /// Subscriptions, reads and duplicate checks (fanout, in `quire serve`).
    pub feed: Arc<dyn Feed>,
    pub registry: Registry,
    /// The roles of this process, for `/readyz`.
    pub health: Health,
    pub shutdown: CancellationToken,
    /// How long `POST …/ops` waits for the op to be applied.
    pub post_timeout: Duration,
    /// Permits for open WebSocket connections and pending HTTP submissions.
    pub connections: Arc<Semaphore>,
    pub pending_posts: Arc<Semaphore>,
}

impl Gateway {
    pub fn new(
        auth: Auth,
        ingest: Ingest,
        feed: Arc<dyn Feed>,
        registry: Registry,
        health: Health,
        shutdown: CancellationToken,
    ) -> Gateway {
        let limits = ingest.limits().clone();
        Gateway {
            auth,
            ingest,
            feed,
            registry,
            health,
            shutdown,
            post_timeout: Duration::from_millis(limits.post_timeout_ms),
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            pending_posts: Arc::new(Semaphore::new(limits.max_pending_posts)),
        }
    }
}

pub(crate) fn overloaded(what: &str) -> ProtoError {
    ProtoError::new(
        ErrorCode::Overloaded,
        format!("too many {what}; retry later"),
    )
}

/// Bytes read from a WebSocket per read call. Every connection holds one
/// such buffer while it lives: editors' frames are small, a large frame
/// takes a few more reads (benches/README.md: memory per idle editor).
const READ_BUFFER: usize = 2 << 10;

/// Maximum page of `GET …/ops`.
pub const MAX_PAGE: usize = 2000;

pub(crate) fn error_response(e: &ProtoError) -> Response {
    error_body(e, ServerMsg::error(e))
}

/// An op's refusal (the body names the op).
pub(crate) fn op_error_response(e: &ProtoError, client: &str, cseq: u64) -> Response {
    error_body(e, ServerMsg::op_error(e, client, cseq))
}

/// The status for the code; RATE_LIMITED and OVERLOADED also get `Retry-After`.
fn error_body(e: &ProtoError, msg: ServerMsg) -> Response {
    let status =
        StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let retry = match &msg {
        ServerMsg::Error {
            retry_after_ms: Some(ms),
            ..
        } => Some(ms.div_ceil(1000).max(1)),
        _ => None,
    };
    let mut resp = (status, Json(serde_json::to_value(msg).expect("serialises"))).into_response();
    if let Some(secs) = retry {
        resp.headers_mut().insert(header::RETRY_AFTER, secs.into());
    }
    resp
}

/// The bearer token from the `Authorization` header or `?token=`.
pub(crate) fn token<'a>(
    headers: &'a HeaderMap,
    query: &'a HashMap<String, String>,
) -> Option<&'a str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .or_else(|| query.get("token").map(String::as_str))
}

impl Gateway {
    /// Authentication, doc id and document grant, in that order.
    pub(crate) fn admit(
        &self,
        doc: &str,
        headers: &HeaderMap,
        query: &HashMap<String, String>,
    ) -> Result<Principal, ProtoError> {
        let who = self.auth.authenticate(token(headers, query))?;
        validate_doc_id(doc)?;
        who.check_doc(doc)?;
        Ok(who)
    }

    pub(crate) fn count(&self, e: &ProtoError) {
        self.ingest
            .metrics()
            .errors
            .with_label_values(&[e.code.as_str()])
            .inc();
    }

    /// The error as an HTTP response, counted in the metrics.
    pub(crate) fn refuse(&self, e: &ProtoError) -> Response {
        self.count(e);
        error_response(e)
    }

    pub(crate) fn respond(&self, result: Result<Response, ProtoError>) -> Response {
        result.unwrap_or_else(|e| self.refuse(&e))
    }
}

/// WebSocket limits: a message over `max_frame` bytes is not read past the
/// limit (the connection is answered TOO_LARGE and closed, see `ws`).
pub(crate) fn ws_config(max_frame: usize) -> WebSocketConfig {
    // tungstenite zero-fills its read buffer before every read (128 KiB by
    // default): with small frames that memset dominated the profile.
    WebSocketConfig::default()
        .max_message_size(Some(max_frame))
        .max_frame_size(Some(max_frame))
        .read_buffer_size(READ_BUFFER)
}
