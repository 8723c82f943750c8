/// Configurable limits (SPEC §7 defaults).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest WebSocket frame or HTTP body, in bytes.
    pub max_frame_bytes: usize,
    /// Largest total insert of one op, in bytes.
    pub max_insert_bytes: usize,
    /// Largest document, in bytes.
    pub max_doc_bytes: usize,
    /// Largest record any role produces or stores (Kafka's default
    /// `message.max.bytes` is about 1 MiB): an op whose applied record would
    /// be larger is refused with TOO_LARGE.
    pub max_record_bytes: usize,
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
            max_record_bytes: 1 << 20,
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

impl Limits {
    /// Checks that the limits make sense together; the message names the
    /// flag to change.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("--max-frame-bytes", self.max_frame_bytes),
            ("--max-insert-bytes", self.max_insert_bytes),
            ("--max-doc-bytes", self.max_doc_bytes),
            ("--max-record-bytes", self.max_record_bytes),
            ("--subscriber-queue", self.subscriber_queue),
            ("--max-connections", self.max_connections),
            ("--max-pending-posts", self.max_pending_posts),
        ];
        for (flag, v) in positive {
            if v == 0 {
                return Err(format!("{flag} must be at least 1"));
            }
        }
        for (flag, v) in [
            ("--ops-per-sec", self.ops_per_sec),
            ("--ops-burst", self.ops_burst),
            ("--presence-per-sec", self.presence_per_sec),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("{flag} must be a positive number, got {v}"));
            }
        }
        if self.ops_burst < 1.0 {
            return Err("--ops-burst must be at least 1".into());
        }
        if self.post_timeout_ms == 0 {
            return Err("--post-timeout-ms must be at least 1".into());
        }
        if self.max_record_bytes < RECORD_OVERHEAD * 4 {
            return Err(format!(
                "--max-record-bytes must be at least {} bytes",
                RECORD_OVERHEAD * 4
            ));
        }
        if self.max_insert_bytes > self.max_record_bytes - RECORD_OVERHEAD {
            return Err(format!(
                "--max-insert-bytes ({}) must leave room for a record's other fields: at most --max-record-bytes minus {RECORD_OVERHEAD}",
                self.max_insert_bytes
            ));
        }
        Ok(())
    }
}

/// Room for the fields of a record other than its op text and deleted text
/// (ids of at most 64 and 128 characters, user, numbers, field names).
pub const RECORD_OVERHEAD: usize = 4096;
