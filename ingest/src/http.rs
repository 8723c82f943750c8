//! The HTTP API (SPEC §6): reads, history, op submission, health, metrics.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use ot::SentOp;
use prometheus::{Encoder, TextEncoder};
use protocol::{ClientMsg, ErrorCode, OutRecord, ProtoError};
use serde_json::json;

use crate::feed::Waited;
use crate::gateway::{error_response, op_error_response, overloaded, Gateway, MAX_PAGE};

pub fn router(gw: Gateway) -> Router {
    // Bodies are read up to the limit and no further: past it the body
    // extractor stops and the answer is TOO_LARGE.
    let max_body = gw.ingest.limits().max_frame_bytes;
    Router::new()
        .route("/", get(editor_page))
        .route("/d/{doc}", get(editor_page))
        .route("/assets/editor.js", get(editor_script))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/docs/{doc}", get(get_doc))
        .route("/v1/docs/{doc}/ops", get(get_ops).post(post_op))
        .route("/v1/docs/{doc}/ws", get(crate::ws::upgrade))
        .fallback(|| async {
            error_response(&ProtoError::new(ErrorCode::NotFound, "no such route"))
        })
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(gw)
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
        let (seq, text) = gw.feed.read(&doc, at).await?;
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
        let ops = gw.feed.history(&doc, after, limit as usize).await?;
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
    let rx = match gw
        .feed
        .wait_for(&doc, &client, cseq, req.base, &who.user)
        .await
    {
        Ok(Waited::AlreadyApplied(r)) => return Json(OutRecord::Applied(*r)).into_response(),
        Ok(Waited::Pending(rx)) => rx,
        Err(e) => return fail(e),
    };
    if let Err(e) = gw
        .ingest
        .submit(&doc, &who.user, &client, cseq, req.base, req.op)
        .await
    {
        gw.feed.forget_waiter(&doc, &client, cseq).await;
        return fail(e);
    }
    let outcome = tokio::time::timeout(gw.post_timeout, rx).await;
    match outcome {
        Ok(Ok(OutRecord::Applied(a))) => Json(OutRecord::Applied(a)).into_response(),
        Ok(Ok(OutRecord::Rejected(r))) => fail(ProtoError::new(r.code, r.message)),
        Ok(Err(_)) | Err(_) => {
            gw.feed.forget_waiter(&doc, &client, cseq).await;
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
    if gw.feed.ready().await {
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

/// The browser editor (`web/`), built by `npm run build:page` into
/// `web/dist/` and embedded here, so the binary serves it without Node.
const EDITOR_HTML: &str = include_str!("../../web/dist/index.html");
const EDITOR_JS: &str = include_str!("../../web/dist/editor.js");

async fn editor_page() -> Response {
    ([(header::CACHE_CONTROL, "no-cache")], Html(EDITOR_HTML)).into_response()
}

async fn editor_script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        EDITOR_JS,
    )
        .into_response()
}
