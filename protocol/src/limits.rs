/// Configurable limits (SPEC §7 defaults).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest WebSocket frame or HTTP body, in bytes.
    pub max_frame_bytes: usize,
    /// Largest total insert of one op, in bytes.
    pub max_insert_bytes: usize,
    /// Largest document, in bytes.
    pub max_doc_bytes: usize,
    /// Ops per second per connection, and burst.
    pub ops_per_sec: f64,
    pub ops_burst: f64,
    /// Presence updates per second per connection (burst = 2x).
    pub presence_per_sec: f64,
    /// Outbound messages queued per subscriber before it is cut off.
    pub subscriber_queue: usize,
    /// Open WebSocket connections; more are refused with OVERLOADED.
    pub max_connections: usize,
    /// `POST …/ops` requests waiting for their op at once.
    pub max_pending_posts: usize,
    /// How long `POST …/ops` waits for its op to be applied, milliseconds.
    pub post_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 1 << 20,
            max_insert_bytes: 256 << 10,
            max_doc_bytes: 64 << 20,
            ops_per_sec: 200.0,
            ops_burst: 400.0,
            presence_per_sec: 30.0,
            subscriber_queue: 1024,
            max_connections: 10_000,
            max_pending_posts: 1024,
            post_timeout_ms: 30_000,
        }
    }
}
