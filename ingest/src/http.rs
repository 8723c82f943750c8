use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use fanout::{Fanout, FanoutError, Waited};
use ot::SentOp;
use prometheus::{Encoder, Registry, TextEncoder};
use protocol::{validate_doc_id, ClientMsg, ErrorCode, OutRecord, ProtoError, ServerMsg};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::{Auth, Health, Ingest, Principal};

/// Everything the front door needs. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    pub auth: Auth,
    pub ingest: Ingest,
    pub fanout: Fanout,
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
        fanout: Fanout,
        registry: Registry,
        health: Health,
        shutdown: CancellationToken,
    ) -> Gateway {
        let limits = ingest.limits().clone();
        Gateway {
            auth,
            ingest,
            fanout,
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

/// Frames and bodies are read up to this many times the configured limit,
/// so that oversized input gets a TOO_LARGE answer rather than a cut
/// connection; beyond it the transport gives up.
pub const HARD_LIMIT_FACTOR: usize = 16;

/// Bytes read from a WebSocket per read call.
const READ_BUFFER: usize = 8 << 10;

/// Maximum page of `GET …/ops`.
pub const MAX_PAGE: usize = 2000;

pub fn router(gw: Gateway) -> Router {
    // Bodies up to HARD_LIMIT_FACTOR x the limit are read so the answer can
    // say how large is too large; past that reading stops (still TOO_LARGE).
    let hard_limit = gw
        .ingest
        .limits()
        .max_frame_bytes
        .saturating_mul(HARD_LIMIT_FACTOR);
    Router::new()
        .route("/", get(editor_page))
        .route("/d/{doc}", get(editor_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/docs/{doc}", get(get_doc))
        .route("/v1/docs/{doc}/ops", get(get_ops).post(post_op))
        .route("/v1/docs/{doc}/ws", get(crate::ws::upgrade))
        .fallback(|| async {
            error_response(&ProtoError::new(ErrorCode::NotFound, "no such route"))
        })
        .layer(DefaultBodyLimit::max(hard_limit))
        .with_state(gw)
}

pub(crate) fn error_response(e: &ProtoError) -> Response {
    error_body(e, ServerMsg::error(e))
}

/// An op's refusal (the body names the op).
fn op_error_response(e: &ProtoError, client: &str, cseq: u64) -> Response {
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

pub(crate) fn fanout_error(e: FanoutError) -> ProtoError {
    match e {
        FanoutError::Refused(p) => p,
        other => {
            tracing::error!(error = %other, "backend error");
            ProtoError::new(
                ErrorCode::Overloaded,
                format!("backend unavailable: {other}"),
            )
        }
    }
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

    fn count(&self, e: &ProtoError) {
        self.ingest
            .metrics()
            .errors
            .with_label_values(&[e.code.as_str()])
            .inc();
    }

    /// The error as an HTTP response, counted in the metrics.
    fn refuse(&self, e: &ProtoError) -> Response {
        self.count(e);
        error_response(e)
    }

    fn respond(&self, result: Result<Response, ProtoError>) -> Response {
        result.unwrap_or_else(|e| self.refuse(&e))
    }
}

fn parse_u64(query: &HashMap<String, String>, key: &str) -> Result<Option<u64>, ProtoError> {
    match query.get(key) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            ProtoError::new(
                ErrorCode::BadMessage,
                format!("{key} must be a non-negative integer"),
            )
        }),
    }
}

async fn get_doc(
    State(gw): State<Gateway>,
    Path(doc): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        gw.admit(&doc, &headers, &query)?;
        let at = parse_u64(&query, "at")?;
        let (seq, text) = gw.fanout.read(&doc, at).await.map_err(fanout_error)?;
        Ok::<_, ProtoError>(Json(json!({ "doc": doc, "seq": seq, "text": text })).into_response())
    }
    .await;
    gw.respond(result)
}

async fn get_ops(
    State(gw): State<Gateway>,
    Path(doc): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        gw.admit(&doc, &headers, &query)?;
        let after = parse_u64(&query, "after")?.unwrap_or(0);
        // Pages hold at most MAX_PAGE ops; a larger limit gets a full page.
        let limit = parse_u64(&query, "limit")?
            .unwrap_or(100)
            .min(MAX_PAGE as u64);
        if limit == 0 {
            return Err(ProtoError::new(
                ErrorCode::BadMessage,
                "limit must be at least 1",
            ));
        }
        let ops = gw
            .fanout
            .history(&doc, after, limit as usize)
            .await
            .map_err(fanout_error)?;
        // `next` is the `after` of the following page; null once this page
        // was not full (the history ends here for now).
        let next = if ops.len() as u64 == limit {
            ops.last().map(|r| r.seq)
        } else {
            None
        };
        let ops: Vec<OutRecord> = ops.into_iter().map(OutRecord::Applied).collect();
        Ok::<_, ProtoError>(Json(json!({ "ops": ops, "next": next })).into_response())
    }
    .await;
    gw.respond(result)
}

struct PostOp {
    client: String,
    cseq: u64,
    base: u64,
    op: SentOp,
}

async fn post_op(
    State(gw): State<Gateway>,
    Path(doc): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let who = match gw.admit(&doc, &headers, &query) {
        Ok(w) => w,
        Err(e) => return gw.refuse(&e),
    };
    let max = gw.ingest.limits().max_frame_bytes;
    let too_large = || ProtoError::new(ErrorCode::TooLarge, format!("body is over {max} bytes"));
    let body = match body {
        Ok(b) if b.len() <= max => b,
        Ok(_) => return gw.refuse(&too_large()),
        Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => return gw.refuse(&too_large()),
        Err(r) => {
            return gw.refuse(&ProtoError::new(
                ErrorCode::BadMessage,
                format!("unreadable body: {r}"),
            ))
        }
    };
    // The body is an op message without its `type`: the same checks apply.
    let req = match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&body)
        .map_err(|e| ProtoError::new(ErrorCode::BadMessage, format!("unreadable op: {e}")))
        .and_then(|mut fields| {
            fields.insert("type".into(), "op".into());
            let msg: ClientMsg = serde_json::from_value(fields.into()).map_err(|e| {
                ProtoError::new(ErrorCode::BadMessage, format!("unreadable op: {e}"))
            })?;
            msg.check()?;
            match msg {
                ClientMsg::Op {
                    client,
                    cseq,
                    base,
                    op,
                } => Ok(PostOp {
                    client,
                    cseq,
                    base,
                    op,
                }),
                _ => unreachable!("tagged as an op above"),
            }
        }) {
        Ok(r) => r,
        Err(e) => return gw.refuse(&e),
    };
    let (client, cseq) = (req.client.clone(), req.cseq);
    let fail = |e: ProtoError| {
        gw.count(&e);
        op_error_response(&e, &client, cseq)
    };
    let Ok(_permit) = gw.pending_posts.clone().try_acquire_owned() else {
        return fail(overloaded("pending submissions"));
    };
    if let Err(e) = who.check_write() {
        return fail(e);
    }
    // Binding and duplicate checks come before anything else about the op.
    let rx = match gw.fanout.wait_for(&doc, &client, cseq, &who.user).await {
        Ok(Waited::AlreadyApplied(r)) => return Json(OutRecord::Applied(*r)).into_response(),
        Ok(Waited::Pending(rx)) => rx,
        Err(e) => return fail(fanout_error(e)),
    };
    if let Err(e) = gw
        .ingest
        .submit(&doc, &who.user, &client, cseq, req.base, req.op)
        .await
    {
        gw.fanout.forget_waiter(&doc, &client, cseq).await;
        return fail(e);
    }
    let outcome = tokio::time::timeout(gw.post_timeout, rx).await;
    match outcome {
        Ok(Ok(OutRecord::Applied(a))) => Json(OutRecord::Applied(a)).into_response(),
        Ok(Ok(OutRecord::Rejected(r))) => fail(ProtoError::new(r.code, r.message)),
        Ok(Err(_)) | Err(_) => {
            gw.fanout.forget_waiter(&doc, &client, cseq).await;
            // The op is in the log and will be applied (or refused); a
            // resend with the same cseq answers with its record.
            fail(ProtoError::new(
                ErrorCode::Overloaded,
                "the op is queued but not applied yet; resend the same (client, cseq) to learn its outcome",
            ))
        }
    }
}

async fn readyz(State(gw): State<Gateway>) -> Response {
    let down = gw.health.down();
    if !down.is_empty() {
        let msg = format!("role down: {}\n", down.join(", "));
        return (StatusCode::SERVICE_UNAVAILABLE, msg).into_response();
    }
    if gw.fanout.ready().await {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "log or store unavailable\n",
        )
            .into_response()
    }
}

async fn metrics(State(gw): State<Gateway>) -> Response {
    let mut buf = Vec::new();
    let enc = TextEncoder::new();
    if let Err(e) = enc.encode(&gw.registry.gather(), &mut buf) {
        return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
    }
    ([(header::CONTENT_TYPE, enc.format_type().to_owned())], buf).into_response()
}

async fn editor_page() -> Html<&'static str> {
    Html(
        "<!doctype html><meta charset=utf-8><title>Quire</title>\
         <h1>Quire</h1><p>The browser editor is not built yet. \
         Connect an editor to <code>/v1/docs/{doc}/ws</code> or read a document at \
         <code>/v1/docs/{doc}</code>.</p>",
    )
}

/// Used by the WebSocket handler to refuse before upgrading is impossible.
pub(crate) fn ws_upgrade_limits(ws: WebSocketUpgrade, max_frame: usize) -> WebSocketUpgrade {
    let hard = max_frame.saturating_mul(HARD_LIMIT_FACTOR);
    // tungstenite zero-fills its read buffer before every read (128 KiB by
    // default): with small frames that memset dominated the profile.
    ws.max_message_size(hard)
        .max_frame_size(hard)
        .read_buffer_size(READ_BUFFER)
}
