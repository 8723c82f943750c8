//! The WebSocket upgrade and a connection's socket, on tokio-tungstenite
//! itself rather than axum's wrapper, which can only send whole messages.
//!
//! Why: tungstenite writes every frame into one buffer per connection and
//! keeps that buffer's capacity for the connection's life. A `ready`
//! carrying a 10 kB document left every idle editor holding a 10 kB buffer
//! (benches/README.md: memory per idle editor). Messages longer than
//! [`FRAGMENT`] therefore go out as a text frame followed by continuation
//! frames (RFC 6455 §5.4; every WebSocket client reassembles them), each
//! written to the socket before the next is buffered, so the buffer stays
//! near one fragment. Frames are built over shared bytes, so a frame that
//! fanout broadcasts to many editors is not copied per connection.

use std::future::Future;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error, Message};
use tokio_tungstenite::WebSocketStream;

/// The most bytes of one message a single frame carries.
pub(crate) const FRAGMENT: usize = 4 << 10;

/// A WebSocket handshake request (RFC 6455 §4.2.1), answered with 101 by
/// [`Upgrade::on_upgrade`]. Anything else is refused with 400 (426 when
/// the connection cannot be upgraded) before the handler runs.
pub(crate) struct Upgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
}

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

fn refuse(status: StatusCode, why: &'static str) -> Response {
    (status, why).into_response()
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Response> {
        if parts.method != Method::GET {
            return Err(refuse(
                StatusCode::METHOD_NOT_ALLOWED,
                "a WebSocket handshake is a GET",
            ));
        }
        if !has_token(&parts.headers, header::CONNECTION, "upgrade") {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "Connection header did not include 'upgrade'",
            ));
        }
        if !has_token(&parts.headers, header::UPGRADE, "websocket") {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "`Upgrade` header did not include 'websocket'",
            ));
        }
        if parts.headers.get(header::SEC_WEBSOCKET_VERSION) != Some(&HeaderValue::from_static("13"))
        {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "`Sec-WebSocket-Version` header did not include '13'",
            ));
        }
        let Some(key) = parts.headers.get(header::SEC_WEBSOCKET_KEY).cloned() else {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "`Sec-WebSocket-Key` header missing",
            ));
        };
        let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
            return Err(refuse(
                StatusCode::UPGRADE_REQUIRED,
                "WebSocket request couldn't be upgraded since no upgrade state was present",
            ));
        };
        Ok(Upgrade { key, on_upgrade })
    }
}

impl Upgrade {
    /// Answers 101 and runs `callback` on the socket once the connection
    /// is handed over.
    pub(crate) fn on_upgrade<F, Fut>(self, config: WebSocketConfig, callback: F) -> Response
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let accept = derive_accept_key(self.key.as_bytes());
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return; // the client went away during the handshake
            };
            // Each frame is written as soon as it is buffered (see the
            // module doc); writes of whole small messages are unchanged.
            let config = config.write_buffer_size(0);
            let inner = WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                Role::Server,
                Some(config),
            )
            .await;
            callback(Socket { inner }).await;
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_ACCEPT, accept)
            .body(Body::empty())
            .expect("static headers")
    }
}

/// The bytes of a shared frame, without a copy.
struct Shared(Arc<str>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// Where `text` is cut into fragments of at most `max` bytes each, never
/// inside a UTF-8 sequence (so each fragment is valid text on its own).
fn cuts(text: &str, max: usize) -> Vec<(usize, usize)> {
    assert!(max >= 4, "a fragment must hold any code point");
    let mut out = Vec::with_capacity(text.len() / max + 1);
    let mut start = 0;
    while text.len() - start > max {
        let mut end = start + max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        out.push((start, end));
        start = end;
    }
    out.push((start, text.len()));
    out
}

pub(crate) struct Socket {
    inner: WebSocketStream<TokioIo<Upgraded>>,
}

impl Socket {
    /// Sends one text message, in fragments if it is long.
    pub(crate) async fn send_text(&mut self, text: Bytes) -> Result<(), Error> {
        // `text` is valid UTF-8: it came from a `str`.
        let s = std::str::from_utf8(&text).expect("send_text takes text");
        let parts = cuts(s, FRAGMENT);
        let last = parts.len() - 1;
        for (i, (a, b)) in parts.into_iter().enumerate() {
            let op = if i == 0 { Data::Text } else { Data::Continue };
            let frame = Frame::message(text.slice(a..b), OpCode::Data(op), i == last);
            self.inner.feed(Message::Frame(frame)).await?;
        }
        self.inner.flush().await
    }

    /// Sends a frame that may be shared with other connections.
    pub(crate) async fn send_shared(&mut self, frame: &Arc<str>) -> Result<(), Error> {
        self.send_text(Bytes::from_owner(Shared(frame.clone())))
            .await
    }

    pub(crate) async fn send_close(&mut self, code: u16, reason: &str) -> Result<(), Error> {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        };
        self.inner.send(Message::Close(Some(frame))).await
    }

    /// The next message; pings are answered by the library.
    pub(crate) async fn recv(&mut self) -> Option<Result<Message, Error>> {
        self.inner.next().await
    }
}

#[cfg(test)]
mod tests {
    use super::cuts;

    #[test]
    fn fragments_cover_the_text_and_keep_code_points_whole() {
        assert_eq!(cuts("", 4), [(0, 0)]);
        assert_eq!(cuts("abcd", 4), [(0, 4)]);
        assert_eq!(cuts("abcdefghi", 4), [(0, 4), (4, 8), (8, 9)]);
        // "é" is two bytes: a cut never falls inside it.
        let s = "abcé€fg";
        let parts = cuts(s, 4);
        assert_eq!(parts, [(0, 3), (3, 5), (5, 9), (9, 10)]);
        let joined: String = parts.iter().map(|&(a, b)| &s[a..b]).collect();
        assert_eq!(joined, s);
    }
}
