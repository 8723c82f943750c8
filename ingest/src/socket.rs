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
//! near one fragment. A frame fanout broadcasts to many editors is handed
//! to tungstenite as the shared bytes themselves (tungstenite still copies
//! it into each connection's write buffer, but no intermediate string is
//! made per connection).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

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

/// How long a write may make no progress (a frame not taken by the
/// socket). A client that stops reading then loses its connection, so its
/// task cannot hold a connection permit (or miss its cut-off) for ever; a
/// slow reader of a large snapshot keeps it, as long as each fragment goes.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// `fut`, or a timed-out error once it has waited `limit`.
async fn in_time<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(Error::Io(std::io::ErrorKind::TimedOut.into())),
    }
}

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
            callback(Socket::new(TokioIo::new(upgraded), config, WRITE_TIMEOUT).await).await;
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

/// The end of the fragment of UTF-8 `text` that starts at `start`: at most
/// `max` bytes on, never inside a code point (so each fragment is valid
/// text on its own). A continuation byte is `0b10xx_xxxx`.
fn cut(text: &[u8], start: usize, max: usize) -> usize {
    debug_assert!(max >= 4, "a fragment must hold any code point");
    let mut end = text.len().min(start + max);
    while end < text.len() && text[end] & 0xC0 == 0x80 {
        end -= 1;
    }
    end
}

/// A connection's WebSocket: on the upgraded HTTP connection, or in tests
/// on any stream.
pub(crate) struct Socket<S = TokioIo<Upgraded>> {
    inner: WebSocketStream<S>,
    /// [`WRITE_TIMEOUT`], but for tests.
    write_timeout: Duration,
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Socket<S> {
    /// The server's side of an upgraded connection on `stream`.
    async fn new(stream: S, config: WebSocketConfig, write_timeout: Duration) -> Socket<S> {
        // Each frame is written as soon as it is buffered (see the module
        // doc); writes of whole small messages are unchanged.
        let config = config.write_buffer_size(0);
        Socket {
            inner: WebSocketStream::from_raw_socket(stream, Role::Server, Some(config)).await,
            write_timeout,
        }
    }

    /// Sends one text message, in fragments if it is long.
    pub(crate) async fn send_text(&mut self, text: String) -> Result<(), Error> {
        self.send_utf8(Bytes::from(text)).await
    }

    /// Sends a frame that may be shared with other connections.
    pub(crate) async fn send_shared(&mut self, frame: &Arc<str>) -> Result<(), Error> {
        self.send_utf8(Bytes::from_owner(Shared(frame.clone())))
            .await
    }

    /// `text` (UTF-8) as a text frame, then continuation frames if longer
    /// than a fragment.
    async fn send_utf8(&mut self, text: Bytes) -> Result<(), Error> {
        let mut start = 0;
        loop {
            let end = cut(&text, start, FRAGMENT);
            let op = if start == 0 {
                Data::Text
            } else {
                Data::Continue
            };
            let last = end == text.len();
            let frame = Frame::message(text.slice(start..end), OpCode::Data(op), last);
            in_time(self.write_timeout, self.inner.feed(Message::Frame(frame))).await?;
            if last {
                break;
            }
            start = end;
        }
        in_time(self.write_timeout, self.inner.flush()).await
    }

    pub(crate) async fn send_close(&mut self, code: u16, reason: &str) -> Result<(), Error> {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        };
        in_time(
            self.write_timeout,
            self.inner.send(Message::Close(Some(frame))),
        )
        .await
    }

    /// Sends what the library queued on its own: after the peer's close,
    /// the closing reply (RFC 6455 §5.5.1), which ends the connection.
    pub(crate) async fn finish(&mut self) {
        let _ = in_time(self.write_timeout, self.inner.flush()).await;
    }

    /// The next message; pings are answered by the library.
    pub(crate) async fn recv(&mut self) -> Option<Result<Message, Error>> {
        self.inner.next().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer that stops reading loses its connection once a frame has
    /// waited the write timeout, instead of holding its task for ever.
    #[tokio::test]
    async fn a_peer_that_stops_reading_is_cut_off() {
        // The peer's end is kept open and never read.
        let (ours, _peer) = tokio::io::duplex(1024);
        let config = crate::gateway::ws_config(1 << 20);
        let mut socket = Socket::new(ours, config, Duration::from_millis(200)).await;
        let sent = tokio::time::timeout(
            Duration::from_secs(30),
            socket.send_text("x".repeat(64 << 10)),
        )
        .await
        .expect("the write timeout ends the send");
        assert!(
            matches!(&sent, Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut),
            "{sent:?}"
        );
    }

    fn parts(s: &str, max: usize) -> Vec<(usize, usize)> {
        let mut out = vec![];
        let mut start = 0;
        loop {
            let end = cut(s.as_bytes(), start, max);
            out.push((start, end));
            if end == s.len() {
                return out;
            }
            start = end;
        }
    }

    #[test]
    fn fragments_cover_the_text_and_keep_code_points_whole() {
        assert_eq!(parts("", 4), [(0, 0)]);
        assert_eq!(parts("abcd", 4), [(0, 4)]);
        assert_eq!(parts("abcdefghi", 4), [(0, 4), (4, 8), (8, 9)]);
        // "é" is two bytes and "€" three: a cut never falls inside them.
        let s = "abcé€fg";
        let p = parts(s, 4);
        assert_eq!(p, [(0, 3), (3, 5), (5, 9), (9, 10)]);
        let joined: String = p.iter().map(|&(a, b)| &s[a..b]).collect();
        assert_eq!(joined, s);
        let s = "😀".repeat(3);
        assert_eq!(parts(&s, 5), [(0, 4), (4, 8), (8, 12)]);
    }
}
