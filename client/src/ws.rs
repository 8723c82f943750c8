use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use ot::Op;
use protocol::{ClientMsg, ErrorCode, ServerMsg};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::{ClientCore, CoreEvent};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("websocket: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("not connected")]
    NotConnected,
    #[error("the server closed the connection")]
    Closed,
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("server sent an unreadable message: {0}")]
    BadServerMessage(String),
    #[error("server refused: {code}: {message}")]
    Refused { code: ErrorCode, message: String },
    #[error("edit does not fit the local text: {0}")]
    Edit(#[from] ot::OtError),
}

/// A WebSocket editor of one document.
pub struct Client {
    url: String,
    token: Option<String>,
    ws: Option<Ws>,
    pub core: ClientCore,
    /// Every event the core reported, in order.
    pub events: Vec<CoreEvent>,
    /// Presence and leave messages received.
    pub presence: Vec<ServerMsg>,
    /// `(seq, prev)` of every applied op received, for exactly-once checks.
    pub applied: Vec<(u64, u64)>,
}

impl Client {
    /// `base` is `ws://host:port`. Does not connect yet.
    pub fn new(base: &str, doc: &str, client_id: &str, token: Option<&str>) -> Client {
        Client {
            url: format!("{base}/v1/docs/{doc}/ws"),
            token: token.map(str::to_owned),
            ws: None,
            core: ClientCore::new(client_id),
            events: Vec::new(),
            presence: Vec::new(),
            applied: Vec::new(),
        }
    }

    /// Connects and joins, returning once live.
    pub async fn connect(
        base: &str,
        doc: &str,
        client_id: &str,
        token: Option<&str>,
    ) -> Result<Client, ClientError> {
        let mut c = Client::new(base, doc, client_id, token);
        c.join().await?;
        Ok(c)
    }

    /// Opens a connection and says hello (with `since` when we have state).
    pub async fn join(&mut self) -> Result<(), ClientError> {
        let mut req = self.url.as_str().into_client_request()?;
        if let Some(t) = &self.token {
            req.headers_mut().insert(
                "authorization",
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| ClientError::BadServerMessage("token".into()))?,
            );
        }
        // Small read buffer: tungstenite zero-fills it before every read.
        let config = WebSocketConfig::default().read_buffer_size(8 << 10);
        let (ws, _) = tokio_tungstenite::connect_async_with_config(req, Some(config), true).await?;
        self.ws = Some(ws);
        let hello = self.core.hello();
        self.send(&hello).await?;
        self.pump_until(Duration::from_secs(30), "ready", |c| c.core.is_live())
            .await
    }

    /// Points the client at another server address (`ws://host:port`),
    /// keeping its state; the next `join` goes there.
    pub fn retarget(&mut self, base: &str, doc: &str) {
        self.url = format!("{base}/v1/docs/{doc}/ws");
    }

    pub fn disconnect(&mut self) {
        self.ws = None;
        self.core.disconnected();
    }

    pub async fn reconnect(&mut self) -> Result<(), ClientError> {
        self.disconnect();
        self.join().await
    }

    pub fn is_connected(&self) -> bool {
        self.ws.is_some()
    }

    pub fn text(&self) -> String {
        self.core.text()
    }

    pub fn version(&self) -> u64 {
        self.core.version()
    }

    /// Sends any message as is (tests use it to misbehave).
    pub async fn send(&mut self, msg: &ClientMsg) -> Result<(), ClientError> {
        let text = serde_json::to_string(msg).expect("client messages serialise");
        self.send_text(text).await
    }

    pub async fn send_text(&mut self, text: String) -> Result<(), ClientError> {
        let ws = self.ws.as_mut().ok_or(ClientError::NotConnected)?;
        ws.send(Message::Text(text.into())).await?;
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ClientError> {
        for m in self.core.take_outbox() {
            self.send(&m).await?;
        }
        Ok(())
    }

    /// A local edit on `text()`; sent when nothing is in flight.
    pub async fn edit(&mut self, op: Op) -> Result<(), ClientError> {
        self.core.edit(op)?;
        if self.ws.is_some() {
            self.flush().await?;
        }
        Ok(())
    }

    /// Receives one server message (None when the deadline passes).
    pub async fn recv(&mut self, deadline: Instant) -> Result<Option<ServerMsg>, ClientError> {
        let ws = self.ws.as_mut().ok_or(ClientError::NotConnected)?;
        loop {
            let next = tokio::time::timeout_at(deadline, ws.next()).await;
            let Ok(next) = next else { return Ok(None) };
            match next {
                None | Some(Ok(Message::Close(_))) => {
                    self.disconnect();
                    return Err(ClientError::Closed);
                }
                Some(Err(e)) => {
                    self.disconnect();
                    return Err(e.into());
                }
                Some(Ok(Message::Text(t))) => {
                    return serde_json::from_str(t.as_str()).map(Some).map_err(|e| {
                        ClientError::BadServerMessage(format!("{e}: {}", t.as_str()))
                    });
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Handles one message through the core; follows its advice.
    pub async fn handle(&mut self, msg: ServerMsg) -> Result<(), ClientError> {
        if let ServerMsg::Applied { seq, prev, .. } = &msg {
            self.applied.push((*seq, *prev));
        }
        if matches!(msg, ServerMsg::Presence { .. } | ServerMsg::Leave { .. }) {
            self.presence.push(msg.clone());
        }
        let events = self.core.on_message(msg);
        let mut rejoin = false;
        let mut retry = None;
        for e in &events {
            match e {
                CoreEvent::Gap { .. } | CoreEvent::Desync { .. } => rejoin = true,
                CoreEvent::Error {
                    code: ErrorCode::RateLimited | ErrorCode::Overloaded,
                    cseq: Some(c),
                    retry_after_ms,
                    ..
                } if Some(*c) == self.core.inflight_cseq() => {
                    retry = Some(retry_after_ms.unwrap_or(100));
                }
                _ => {}
            }
        }
        self.events.extend(events);
        if rejoin {
            return Box::pin(self.reconnect()).await;
        }
        if let Some(ms) = retry {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            self.core.resend();
        }
        self.flush().await
    }

    /// Handles messages until `done` holds or `timeout` passes.
    pub async fn pump_until(
        &mut self,
        timeout: Duration,
        what: &'static str,
        done: impl Fn(&Client) -> bool,
    ) -> Result<(), ClientError> {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            match self.recv(deadline).await? {
                Some(msg) => self.handle(msg).await?,
                None => return Err(ClientError::Timeout(what)),
            }
        }
        Ok(())
    }

    /// Handles whatever arrives for `dur`.
    pub async fn pump_for(&mut self, dur: Duration) -> Result<(), ClientError> {
        let deadline = Instant::now() + dur;
        while let Some(msg) = self.recv(deadline).await? {
            self.handle(msg).await?;
        }
        Ok(())
    }

    /// Waits until every local edit is acknowledged.
    pub async fn settle(&mut self, timeout: Duration) -> Result<(), ClientError> {
        self.pump_until(timeout, "acks", |c| c.core.is_settled())
            .await
    }

    /// Waits until the document reaches `version` (or later).
    pub async fn wait_version(
        &mut self,
        version: u64,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        self.pump_until(timeout, "version", move |c| c.core.version() >= version)
            .await
    }
}
