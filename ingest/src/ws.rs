//! One WebSocket connection: hello/join, ops, presence, ping (SPEC §5).

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use protocol::{
    now_ms, ClientMsg, ErrorCode, PresenceRecord, ProtoError, ServerMsg, RECORD_VERSION,
};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tracing::Instrument;

use crate::feed::{Frame, Subscription};
use crate::gateway::{error_response, overloaded, ws_config, Gateway};
use crate::ratelimit::TokenBucket;
use crate::socket::{Socket, Upgrade};
use crate::Principal;

pub(crate) async fn upgrade(
    State(gw): State<Gateway>,
    Path(doc): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: Upgrade,
) -> Response {
    let admitted = gw.admit(&doc, &headers, &query);
    let Ok(permit) = gw.connections.clone().try_acquire_owned() else {
        return error_response(&overloaded("connections"));
    };
    let max = gw.ingest.limits().max_frame_bytes;
    let user = admitted
        .as_ref()
        .map(|p| p.user.clone())
        .unwrap_or_default();
    let span = tracing::info_span!("conn", %doc, %user);
    ws.on_upgrade(ws_config(max), move |socket| {
        async move {
            let _permit = permit;
            let metrics = gw.ingest.metrics().connections.clone();
            metrics.inc();
            let limits = gw.ingest.limits().clone();
            let conn = Conn {
                gw,
                doc,
                socket,
                joined: None,
                ops: TokenBucket::new(limits.ops_per_sec, limits.ops_burst),
                presence: TokenBucket::new(limits.presence_per_sec, limits.presence_per_sec * 2.0),
                sent_presence: false,
            };
            conn.run(admitted).await;
            metrics.dec();
        }
        .instrument(span)
    })
}

struct Live {
    id: u64,
    client: String,
    rx: mpsc::Receiver<Frame>,
    kicked: oneshot::Receiver<ErrorCode>,
}

struct Conn {
    gw: Gateway,
    doc: String,
    socket: Socket,
    joined: Option<Live>,
    ops: TokenBucket,
    presence: TokenBucket,
    sent_presence: bool,
}

/// Whether the connection goes on after a message.
enum Flow {
    Continue,
    Close,
}

/// Close codes: 1008 policy violation (auth), 1013 try again later (overload).
const CLOSE_POLICY: u16 = 1008;
const CLOSE_TRY_AGAIN: u16 = 1013;
const CLOSE_GOING_AWAY: u16 = 1001;
/// 1009: message too big.
const CLOSE_TOO_BIG: u16 = 1009;

/// Whether a read failed because the message is over the size limit.
fn is_too_long(e: &WsError) -> bool {
    matches!(e, WsError::Capacity(_))
}

impl Conn {
    async fn send(&mut self, msg: &ServerMsg) -> Result<(), ()> {
        if let ServerMsg::Error { code, .. } = msg {
            self.gw
                .ingest
                .metrics()
                .errors
                .with_label_values(&[code.as_str()])
                .inc();
        }
        self.socket.send_text(msg.to_json()).await.map_err(|_| ())
    }

    async fn send_frame(&mut self, f: &Frame) -> Result<(), ()> {
        self.socket.send_shared(f).await.map_err(|_| ())
    }

    /// Sends a close frame and waits briefly for the peer's, so the client
    /// reads our last messages instead of a connection reset.
    async fn close(&mut self, code: u16, reason: &str) {
        if self.socket.send_close(code, reason).await.is_err() {
            return;
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            while let Some(Ok(m)) = self.socket.recv().await {
                if matches!(m, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }

    async fn run(mut self, admitted: Result<Principal, ProtoError>) {
        let who = match admitted {
            Ok(w) => w,
            Err(e) => {
                if self.send(&ServerMsg::error(&e)).await.is_ok() {
                    self.close(CLOSE_POLICY, e.code.as_str()).await;
                }
                return;
            }
        };
        let shutdown = self.gw.shutdown.clone();
        loop {
            let live = self.joined.as_mut();
            let (rx, kicked) = match live {
                Some(l) => (Some(&mut l.rx), Some(&mut l.kicked)),
                None => (None, None),
            };
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    self.close(CLOSE_GOING_AWAY, "server shutting down").await;
                    break;
                }
                code = async { kicked.expect("guarded").await }, if kicked.is_some() => {
                    let code = code.unwrap_or(ErrorCode::Overloaded);
                    let e = ProtoError::new(code, "too far behind: reconnect and re-join with since");
                    if self.send(&ServerMsg::error(&e)).await.is_ok() {
                        self.close(CLOSE_TRY_AGAIN, code.as_str()).await;
                    }
                    break;
                }
                f = async { rx.expect("guarded").recv().await }, if rx.is_some() => {
                    match f {
                        Some(f) => if self.send_frame(&f).await.is_err() { break },
                        None => {
                            let e = ProtoError::new(ErrorCode::Overloaded, "subscription ended: re-join with since");
                            if self.send(&ServerMsg::error(&e)).await.is_ok() {
                                self.close(CLOSE_TRY_AGAIN, "OVERLOADED").await;
                            }
                            break;
                        }
                    }
                }
                m = self.socket.recv() => match m {
                    Some(Err(e)) if is_too_long(&e) => {
                        // Reading stopped at the limit; the rest of the
                        // message cannot be skipped, so the connection ends.
                        let max = self.gw.ingest.limits().max_frame_bytes;
                        let e = ProtoError::new(ErrorCode::TooLarge, format!("message is over {max} bytes"));
                        if self.send(&ServerMsg::error(&e)).await.is_ok() {
                            self.close(CLOSE_TOO_BIG, "TOO_LARGE").await;
                        }
                        break;
                    }
                    Some(Ok(Message::Close(_))) => {
                        // The library queued the closing reply: send it.
                        self.socket.finish().await;
                        break;
                    }
                    None | Some(Err(_)) => break,
                    Some(Ok(Message::Text(t))) => {
                        // Boxed: handling a message needs far more state
                        // than waiting does, and a future is as large as
                        // its largest state, for every idle connection.
                        if let Flow::Close = Box::pin(self.handle(&who, t.as_str())).await { break }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        let e = ProtoError::new(ErrorCode::BadMessage, "binary frames are not part of the protocol; send JSON text");
                        if self.send(&ServerMsg::error(&e)).await.is_err() { break }
                    }
                    Some(Ok(_)) => {} // ping/pong: answered by the library
                },
            }
        }
        if let Some(l) = self.joined.take() {
            self.gw.feed.leave(&self.doc, l.id).await;
            if self.sent_presence {
                let rec = PresenceRecord::Leave {
                    v: RECORD_VERSION,
                    doc: self.doc.clone(),
                    client: l.client,
                    ts: now_ms(),
                };
                self.gw.ingest.presence(rec).await;
            }
        }
    }

    async fn handle(&mut self, who: &Principal, text: &str) -> Flow {
        let max = self.gw.ingest.limits().max_frame_bytes;
        let sent = if text.len() > max {
            let e = ProtoError::new(ErrorCode::TooLarge, format!("frame is over {max} bytes"));
            self.send(&ServerMsg::error(&e)).await
        } else {
            match ClientMsg::parse(text) {
                Err(e) => self.send(&ServerMsg::error(&e)).await,
                Ok(msg) => self.dispatch(who, msg).await,
            }
        };
        match sent {
            Ok(()) => Flow::Continue,
            Err(()) => Flow::Close,
        }
    }

    async fn dispatch(&mut self, who: &Principal, msg: ClientMsg) -> Result<(), ()> {
        match msg {
            ClientMsg::Ping => self.send(&ServerMsg::Pong).await,
            ClientMsg::Hello { client, since } => {
                if self.joined.is_some() {
                    let e = ProtoError::new(
                        ErrorCode::Protocol,
                        "hello was already sent on this connection",
                    );
                    return self.send(&ServerMsg::error(&e)).await;
                }
                match self.gw.feed.join(&self.doc, &client, since).await {
                    Ok(Subscription {
                        id,
                        catchup,
                        rx,
                        kicked,
                    }) => {
                        self.joined = Some(Live {
                            id,
                            client,
                            rx,
                            kicked,
                        });
                        for f in catchup {
                            self.send_frame(&f).await?;
                        }
                        Ok(())
                    }
                    Err(e) => self.send(&ServerMsg::error(&e)).await,
                }
            }
            ClientMsg::Op {
                client,
                cseq,
                base,
                op,
            } => {
                let refusal = |e: ProtoError| ServerMsg::op_error(&e, &client, cseq);
                let Some(live) = &self.joined else {
                    let e = ProtoError::new(ErrorCode::Protocol, "op before hello");
                    return self.send(&refusal(e)).await;
                };
                if live.client != client {
                    let e = ProtoError::new(
                        ErrorCode::Protocol,
                        format!(
                            "op from {client} on a connection that said hello as {}",
                            live.client
                        ),
                    );
                    return self.send(&refusal(e)).await;
                }
                if let Err(e) = who.check_write() {
                    return self.send(&refusal(e)).await;
                }
                // The connection's rate comes first: nothing expensive is
                // done for a client over its budget.
                if let Err(wait) = self.ops.take() {
                    let e = ProtoError::new(
                        ErrorCode::RateLimited,
                        "too many ops; resend this op later",
                    );
                    let msg = ServerMsg::Error {
                        code: e.code,
                        message: e.message,
                        client: Some(client),
                        cseq: Some(cseq),
                        retry_after_ms: Some(wait),
                    };
                    return self.send(&msg).await;
                }
                // Binding and duplicate checks before anything else about the op.
                match self
                    .gw
                    .feed
                    .check_op(&self.doc, &client, cseq, base, &who.user)
                    .await
                {
                    Ok(Some(seq)) => {
                        return self
                            .send(&ServerMsg::Ack {
                                client,
                                cseq,
                                seq,
                                dup: true,
                            })
                            .await;
                    }
                    Ok(None) => {}
                    Err(e) => return self.send(&refusal(e)).await,
                }
                match self
                    .gw
                    .ingest
                    .submit(&self.doc, &who.user, &client, cseq, base, op)
                    .await
                {
                    // The ack is the applied op, arriving through fanout.
                    Ok(_) => Ok(()),
                    Err(e) => self.send(&ServerMsg::op_error(&e, &client, cseq)).await,
                }
            }
            ClientMsg::Presence { seq, cursor, meta } => {
                let Some(live) = &self.joined else {
                    let e = ProtoError::new(ErrorCode::Protocol, "presence before hello");
                    return self.send(&ServerMsg::error(&e)).await;
                };
                let client = live.client.clone();
                if let Err(wait) = self.presence.take() {
                    let msg = ServerMsg::Error {
                        code: ErrorCode::RateLimited,
                        message: "too many presence updates".into(),
                        client: None,
                        cseq: None,
                        retry_after_ms: Some(wait),
                    };
                    return self.send(&msg).await;
                }
                self.sent_presence = true;
                let rec = PresenceRecord::Presence {
                    v: RECORD_VERSION,
                    doc: self.doc.clone(),
                    client,
                    user: who.user.clone(),
                    seq,
                    cursor,
                    meta,
                    ts: now_ms(),
                };
                self.gw.ingest.presence(rec).await;
                Ok(())
            }
        }
    }
}
