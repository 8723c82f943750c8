use ot::{Op, Side};
use protocol::{ClientMsg, ErrorCode, ServerMsg};
use ropey::Rope;

/// The op in flight: sent, not yet acknowledged.
#[derive(Debug, Clone)]
struct Inflight {
    cseq: u64,
    /// The base it was sent with (kept for resends).
    base: u64,
    /// The op as sent (resends are byte-identical).
    sent: Op,
    /// The same op, rebased onto `server` as remote ops arrive.
    op: Op,
}

/// A snapshot arrived while edits were pending: until the in-flight op's
/// fate is known, local edits wait here.
#[derive(Debug, Clone)]
struct Rebase {
    /// Server text the pending edits were made against.
    old_server: String,
    /// In-flight op relative to `old_server` (None if there was none).
    inflight: Option<Op>,
    /// Buffered edits relative to `old_server` + inflight.
    buffer: Op,
}

/// What happened, for the application (and the tests).
#[derive(Debug, Clone, PartialEq)]
pub enum CoreEvent {
    /// Caught up and live at this version.
    Ready(u64),
    /// An applied op arrived (`own`: it acknowledges our in-flight op).
    Applied { seq: u64, prev: u64, own: bool },
    /// Our op `cseq` is known applied at `seq`.
    Acked { cseq: u64, seq: u64 },
    /// The server refused something; `retry_after_ms` when it may be retried.
    Error {
        code: ErrorCode,
        message: String,
        cseq: Option<u64>,
        retry_after_ms: Option<u64>,
    },
    /// An applied op did not fit our copy of the text: re-join (the next
    /// `hello` asks for a snapshot); pending edits are merged onto it.
    Desync { reason: String },
    /// The applied stream skipped a version: reconnect with `since`.
    Gap { expected_prev: u64, got_prev: u64 },
    /// The in-flight op `stale_cseq` was refused with STALE_BASE; its edits
    /// were rebased onto the current version and sent again with a new cseq.
    Resubmitted { stale_cseq: u64 },
}

/// SPEC §4 client discipline, sans I/O. Feed it server messages and local
/// edits; send what it puts in its outbox.
#[derive(Debug, Clone)]
pub struct ClientCore {
    pub client_id: String,
    /// Confirmed text at `version`.
    server: Rope,
    /// What the user sees: server + inflight + buffer.
    local: Rope,
    version: u64,
    next_cseq: u64,
    inflight: Option<Inflight>,
    buffer: Op,
    live: bool,
    rebase: Option<Rebase>,
    /// The next join asks for a snapshot (no `since`).
    fresh: bool,
    /// Largest text (inserted plus deleted, JSON-escaped bytes) one op may
    /// carry: larger edits go out as several ops, so their records stay
    /// under the server's record limit (SPEC §7: clients split large
    /// deletes).
    max_op_bytes: usize,
    outbox: Vec<ClientMsg>,
}

/// Default of [`ClientCore::with_max_op_bytes`]: a quarter of the default
/// 1 MiB record limit, also under the default 256 KiB insert limit.
pub const DEFAULT_MAX_OP_BYTES: usize = 256 << 10;

/// Bytes `c` takes inside a JSON string.
fn escaped_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// Splits `op` (on `text`) into `first` and `rest` with
/// `compose(first, rest) == op`, where `first` carries at most `budget`
/// bytes of inserted and deleted text (at least one code point of it, so
/// repeated splitting always progresses). `None` when `op` fits as it is.
pub fn split_op(op: &Op, text: &Rope, budget: usize) -> Option<(Op, Op)> {
    use ot::Component::{Delete, Insert, Retain};
    let (mut used, mut pos, mut out) = (0usize, 0usize, 0usize);
    let mut first = Vec::new();
    let comps = op.components();
    for (i, c) in comps.iter().enumerate() {
        // How many code points of this component fit what is left.
        let fitting = |chars: &mut dyn Iterator<Item = char>, used: usize| {
            let (mut n, mut bytes) = (0usize, used);
            for ch in chars {
                let b = escaped_len(ch);
                if bytes + b > budget && (n > 0 || used > 0) {
                    break;
                }
                bytes += b;
                n += 1;
            }
            (n, bytes)
        };
        let (take, total, cost) = match c {
            Retain(n) => {
                first.push(Retain(*n));
                pos += n;
                out += n;
                continue;
            }
            Insert(s) => {
                let (take, cost) = fitting(&mut s.chars(), used);
                (take, s.chars().count(), cost)
            }
            Delete(n) => {
                let (take, cost) = fitting(&mut text.slice(pos..pos + n).chars(), used);
                (take, *n, cost)
            }
        };
        if take == total {
            used = cost;
            match c {
                Insert(s) => out += s.chars().count(),
                Delete(n) => pos += n,
                Retain(_) => unreachable!(),
            }
            first.push(c.clone());
            continue;
        }
        // Split here: `first` ends with `take` code points of this
        // component; `rest` retains what `first` produced, then goes on.
        let mut rest = vec![];
        match c {
            Insert(s) => {
                let cut = s.char_indices().nth(take).map_or(s.len(), |(b, _)| b);
                first.push(Insert(s[..cut].to_owned()));
                out += take;
                rest.push(Retain(out));
                rest.push(Insert(s[cut..].to_owned()));
            }
            Delete(n) => {
                first.push(Delete(take));
                rest.push(Retain(out));
                rest.push(Delete(n - take));
            }
            Retain(_) => unreachable!(),
        }
        rest.extend(comps[i + 1..].iter().cloned());
        return Some((Op::from_components(first), Op::from_components(rest)));
    }
    None
}

/// The op turning `a` into `b`: a character-level Myers diff (with a
/// deadline, after which the diff gets coarser but stays correct).
fn diff(a: &str, b: &str) -> Op {
    use similar::{capture_diff_slices_deadline, Algorithm, DiffOp};
    let (ac, bc): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(200);
    let mut comps = Vec::new();
    for d in capture_diff_slices_deadline(Algorithm::Myers, &ac, &bc, Some(deadline)) {
        match d {
            DiffOp::Equal { len, .. } => comps.push(ot::Component::Retain(len)),
            DiffOp::Delete { old_len, .. } => comps.push(ot::Component::Delete(old_len)),
            DiffOp::Insert {
                new_index, new_len, ..
            } => comps.push(ot::Component::Insert(
                bc[new_index..new_index + new_len].iter().collect(),
            )),
            DiffOp::Replace {
                old_len,
                new_index,
                new_len,
                ..
            } => {
                comps.push(ot::Component::Insert(
                    bc[new_index..new_index + new_len].iter().collect(),
                ));
                comps.push(ot::Component::Delete(old_len));
            }
        }
    }
    Op::from_components(comps)
}

/// Three-way merge: the op that brings `ours`' changes (relative to `base`)
/// onto `theirs`. Their edits win ties; none of ours is dropped: our
/// inserts always survive, our deletes survive where theirs left the text.
pub fn three_way(base: &str, ours: &str, theirs: &str) -> Op {
    let mine = diff(base, ours);
    let other = diff(base, theirs);
    ot::transform(&mine, &other, Side::Right)
}

impl ClientCore {
    pub fn new(client_id: &str) -> ClientCore {
        ClientCore {
            client_id: client_id.to_owned(),
            server: Rope::new(),
            local: Rope::new(),
            version: 0,
            next_cseq: 1,
            inflight: None,
            buffer: Op::noop(),
            live: false,
            rebase: None,
            fresh: false,
            max_op_bytes: DEFAULT_MAX_OP_BYTES,
            outbox: Vec::new(),
        }
    }

    /// Ops carry at most this many bytes of inserted plus deleted text
    /// (at least 64); larger edits are sent as several ops in a row.
    pub fn with_max_op_bytes(mut self, max: usize) -> Self {
        self.max_op_bytes = max.max(64);
        self
    }

    /// Continues a session at `next_cseq` (cseqs are never reused).
    pub fn with_next_cseq(mut self, next_cseq: u64) -> Self {
        self.next_cseq = next_cseq;
        self
    }

    pub fn text(&self) -> String {
        self.local.to_string()
    }

    pub fn server_text(&self) -> String {
        self.server.to_string()
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn is_live(&self) -> bool {
        self.live
    }

    /// Nothing in flight, nothing buffered, nothing being rebased.
    pub fn is_settled(&self) -> bool {
        self.inflight.is_none() && self.buffer.is_noop() && self.rebase.is_none()
    }

    pub fn inflight_cseq(&self) -> Option<u64> {
        self.inflight.as_ref().map(|i| i.cseq)
    }

    pub fn take_outbox(&mut self) -> Vec<ClientMsg> {
        std::mem::take(&mut self.outbox)
    }

    /// The `hello` for a (re)connect. Call on every new connection.
    pub fn hello(&mut self) -> ClientMsg {
        self.live = false;
        self.outbox.clear();
        ClientMsg::Hello {
            client: self.client_id.clone(),
            since: (!self.fresh).then_some(self.version),
        }
    }

    /// The connection dropped.
    pub fn disconnected(&mut self) {
        self.live = false;
        self.outbox.clear();
    }

    /// A local edit made on `text()`. Fails if the op does not fit it.
    pub fn edit(&mut self, op: Op) -> Result<(), ot::OtError> {
        ot::apply_rope(&mut self.local, &op)?;
        if let Some(r) = &mut self.rebase {
            r.buffer = ot::compose(&r.buffer, &op);
        } else {
            self.buffer = ot::compose(&self.buffer, &op);
            self.flush();
        }
        Ok(())
    }

    /// Sends the buffer if nothing is in flight.
    fn flush(&mut self) {
        if !self.live || self.inflight.is_some() || self.buffer.is_noop() || self.rebase.is_some() {
            return;
        }
        let mut op = std::mem::take(&mut self.buffer);
        // An edit too large for one record goes out in parts, in order;
        // the rest waits in the buffer for the first part's ack.
        if let Some((first, rest)) = split_op(&op, &self.server, self.max_op_bytes) {
            op = first;
            self.buffer = rest;
        }
        let cseq = self.next_cseq;
        self.next_cseq += 1;
        self.inflight = Some(Inflight {
            cseq,
            base: self.version,
            sent: op.clone(),
            op,
        });
        self.send_inflight();
    }

    fn send_inflight(&mut self) {
        if let Some(i) = &self.inflight {
            self.outbox.push(ClientMsg::Op {
                client: self.client_id.clone(),
                cseq: i.cseq,
                base: i.base,
                op: i.sent.clone().into(),
            });
        }
    }

    /// Handles one server message.
    pub fn on_message(&mut self, msg: ServerMsg) -> Vec<CoreEvent> {
        let mut ev = Vec::new();
        match msg {
            ServerMsg::Snapshot { seq, text } => {
                let pending = self.inflight.is_some() || !self.buffer.is_noop();
                if pending && self.rebase.is_none() {
                    let old_server = self.server.to_string();
                    let inflight = self.inflight.as_ref().map(|i| i.op.clone());
                    self.rebase = Some(Rebase {
                        old_server,
                        inflight,
                        buffer: std::mem::take(&mut self.buffer),
                    });
                }
                self.fresh = false;
                self.server = Rope::from_str(&text);
                self.version = seq;
                if self.rebase.is_none() {
                    self.local = self.server.clone();
                }
            }
            ServerMsg::Ready { seq } => {
                self.live = true;
                ev.push(CoreEvent::Ready(seq));
                if self.inflight.is_some() {
                    // Resend unchanged: same id, same base (SPEC §4).
                    self.send_inflight();
                } else if self.rebase.is_some() {
                    self.finish_rebase(false);
                } else {
                    self.flush();
                }
            }
            ServerMsg::Applied {
                seq,
                prev,
                client,
                cseq,
                op,
                ..
            } => {
                if prev != self.version {
                    ev.push(CoreEvent::Gap {
                        expected_prev: self.version,
                        got_prev: prev,
                    });
                    return ev;
                }
                let own = client == self.client_id
                    && self.inflight.as_ref().is_some_and(|i| i.cseq == cseq);
                if let Err(e) = ot::apply_rope(&mut self.server, &op) {
                    // Our copy of the server text is wrong: keep our edits,
                    // re-join for a fresh snapshot and merge them onto it.
                    self.desync();
                    ev.push(CoreEvent::Desync {
                        reason: e.to_string(),
                    });
                    return ev;
                }
                self.version = seq;
                ev.push(CoreEvent::Applied { seq, prev, own });
                if own {
                    self.inflight = None;
                    ev.push(CoreEvent::Acked { cseq, seq });
                    if self.rebase.is_some() {
                        self.finish_rebase(true);
                    } else {
                        self.flush();
                    }
                } else if self.rebase.is_none() {
                    let mut r = op;
                    if let Some(i) = &mut self.inflight {
                        let r2 = ot::transform(&r, &i.op, Side::Left);
                        i.op = ot::transform(&i.op, &r, Side::Right);
                        r = r2;
                    }
                    let r2 = ot::transform(&r, &self.buffer, Side::Left);
                    self.buffer = ot::transform(&self.buffer, &r, Side::Right);
                    ot::apply_rope(&mut self.local, &r2)
                        .expect("rebased remote op fits the local text");
                }
            }
            ServerMsg::Ack { cseq, seq, .. } => {
                // An ack beyond our version (the gateway answered before
                // its applied op reached us): that applied op is on its way
                // and acknowledges the op when it comes; clearing the op now
                // would apply it a second time as someone else's.
                if self.inflight.as_ref().is_some_and(|i| i.cseq == cseq) && seq <= self.version {
                    self.inflight = None;
                    ev.push(CoreEvent::Acked { cseq, seq });
                    if self.rebase.is_some() {
                        self.finish_rebase(true);
                    } else {
                        // Applied before our version: the text has it already.
                        self.flush();
                    }
                }
            }
            ServerMsg::Error {
                code,
                message,
                cseq,
                retry_after_ms,
                ..
            } => {
                let ours = cseq.is_some() && cseq == self.inflight_cseq();
                ev.push(CoreEvent::Error {
                    code,
                    message,
                    cseq,
                    retry_after_ms,
                });
                if ours {
                    match code {
                        ErrorCode::RateLimited | ErrorCode::Overloaded => {
                            // Not taken: the caller resends after retry_after_ms.
                        }
                        ErrorCode::StaleBase => {
                            let i = self.inflight.take().expect("ours");
                            if self.rebase.is_some() {
                                // The resend after a snapshot was too old:
                                // merge onto the snapshot now.
                                self.finish_rebase(false);
                            } else {
                                // The rejection is sequenced after every op
                                // applied before it, and we have transformed
                                // our op through each of them as they came:
                                // it is already rebased onto our version.
                                // Resubmit it with a new cseq from there.
                                self.buffer = ot::compose(&i.op, &std::mem::take(&mut self.buffer));
                                ev.push(CoreEvent::Resubmitted { stale_cseq: i.cseq });
                                self.flush();
                            }
                        }
                        _ => {
                            // Refused for good (INVALID_OP, TOO_LARGE, …): the
                            // op's own change is dropped, later edits are kept.
                            let i = self.inflight.take().expect("ours");
                            if let Some(r) = &mut self.rebase {
                                if let Some(op) = r.inflight.take() {
                                    r.old_server =
                                        ot::apply(&r.old_server, &op).expect("inflight fits");
                                }
                                self.finish_rebase(false);
                            } else {
                                let base = ot::apply(&self.server.to_string(), &i.op)
                                    .expect("inflight fits");
                                self.buffer = three_way(
                                    &base,
                                    &self.local.to_string(),
                                    &self.server.to_string(),
                                );
                                let mut local = self.server.clone();
                                ot::apply_rope(&mut local, &self.buffer).expect("merged op fits");
                                self.local = local;
                                self.flush();
                            }
                        }
                    }
                }
            }
            ServerMsg::Presence { .. } | ServerMsg::Leave { .. } | ServerMsg::Pong => {}
        }
        ev
    }

    fn desync(&mut self) {
        let pending = self.inflight.is_some() || !self.buffer.is_noop();
        if pending && self.rebase.is_none() {
            self.rebase = Some(Rebase {
                old_server: self.server.to_string(),
                inflight: self.inflight.as_ref().map(|i| i.op.clone()),
                buffer: std::mem::take(&mut self.buffer),
            });
        }
        self.fresh = true;
        self.live = false;
    }

    /// Resend the in-flight op (after RATE_LIMITED / OVERLOADED).
    pub fn resend(&mut self) {
        if self.live {
            self.send_inflight();
        }
    }

    /// After a snapshot: merges the pending edits onto the fresh server text.
    /// `inflight_applied`: the in-flight op is part of the server text.
    fn finish_rebase(&mut self, inflight_applied: bool) {
        let Some(r) = self.rebase.take() else { return };
        let with_inflight = match &r.inflight {
            Some(i) => ot::apply(&r.old_server, i).expect("inflight fits old server text"),
            None => r.old_server.clone(),
        };
        let ours = ot::apply(&with_inflight, &r.buffer).expect("buffer fits");
        let base = if inflight_applied {
            with_inflight
        } else {
            r.old_server
        };
        let theirs = self.server.to_string();
        let pending = three_way(&base, &ours, &theirs);
        self.buffer = pending;
        let mut local = self.server.clone();
        ot::apply_rope(&mut local, &self.buffer).expect("merged op fits the server text");
        self.local = local;
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_way_merge_keeps_both_sides_edits_in_place() {
        let base = "hello world";
        let ours = "hello brave world";
        let theirs = "HELLO world!";
        let op = three_way(base, ours, theirs);
        assert_eq!(ot::apply(theirs, &op).unwrap(), "HELLO brave world!");
        // Their deletion of our surroundings keeps our insert.
        let op = three_way("abc def", "abc XY def", "def");
        assert_eq!(ot::apply("def", &op).unwrap(), "XY def");
    }

    #[test]
    fn stale_base_resubmits_rebased_edits_with_a_new_cseq() {
        let mut c = ClientCore::new("me");
        c.on_message(ServerMsg::Snapshot {
            seq: 10,
            text: "abc".into(),
        });
        c.on_message(ServerMsg::Ready { seq: 10 });
        c.edit(Op::splice(3, 0, "!")).unwrap();
        let sent = c.take_outbox();
        assert!(matches!(
            &sent[..],
            [ClientMsg::Op {
                cseq: 1,
                base: 10,
                ..
            }]
        ));
        // Someone else's op lands first, then ours is refused as stale.
        c.on_message(ServerMsg::Applied {
            seq: 12,
            prev: 10,
            client: "other".into(),
            cseq: 1,
            user: "u".into(),
            ts: 0,
            op: Op::splice(0, 0, ">"),
        });
        let ev = c.on_message(ServerMsg::Error {
            code: ErrorCode::StaleBase,
            message: "old".into(),
            client: Some("me".into()),
            cseq: Some(1),
            retry_after_ms: None,
        });
        assert!(ev.contains(&CoreEvent::Resubmitted { stale_cseq: 1 }));
        let sent = c.take_outbox();
        match &sent[..] {
            [ClientMsg::Op {
                cseq: 2,
                base: 12,
                op,
                ..
            }] => assert_eq!(op.op(), &Op::splice(4, 0, "!")),
            other => panic!("{other:?}"),
        }
        assert_eq!(c.text(), ">abc!");
    }
}

#[cfg(test)]
mod desync_tests {
    use super::*;

    #[test]
    fn an_op_that_does_not_fit_triggers_a_fresh_join_and_keeps_edits() {
        let mut c = ClientCore::new("me");
        c.on_message(ServerMsg::Snapshot {
            seq: 1,
            text: "ab".into(),
        });
        c.on_message(ServerMsg::Ready { seq: 1 });
        c.edit(Op::splice(2, 0, "!")).unwrap();
        let bad = ServerMsg::Applied {
            seq: 2,
            prev: 1,
            client: "other".into(),
            cseq: 1,
            user: "u".into(),
            ts: 0,
            op: Op::splice(9, 1, ""),
        };
        let ev = c.on_message(bad);
        assert!(
            matches!(ev.as_slice(), [CoreEvent::Desync { .. }]),
            "{ev:?}"
        );
        assert_eq!(
            c.hello(),
            ClientMsg::Hello {
                client: "me".into(),
                since: None
            }
        );
        // Fresh state from the server; our in-flight op turns out unapplied.
        c.on_message(ServerMsg::Snapshot {
            seq: 5,
            text: "xab".into(),
        });
        c.on_message(ServerMsg::Ready { seq: 5 });
        let resent = c.take_outbox();
        assert!(
            matches!(&resent[..], [ClientMsg::Op { cseq: 1, .. }]),
            "{resent:?}"
        );
        c.on_message(ServerMsg::Error {
            code: ErrorCode::StaleBase,
            message: "old".into(),
            client: Some("me".into()),
            cseq: Some(1),
            retry_after_ms: None,
        });
        assert_eq!(c.text(), "xab!");
        assert!(matches!(
            &c.take_outbox()[..],
            [ClientMsg::Op {
                cseq: 2,
                base: 5,
                ..
            }]
        ));
    }
}

#[cfg(test)]
mod split_tests {
    use super::*;
    use ot::Component;

    fn cost(op: &Op, text: &str) -> usize {
        let (_, del) = ot::apply_with_deleted(text, op).unwrap();
        let ins: usize = op
            .components()
            .iter()
            .map(|c| match c {
                Component::Insert(s) => s.chars().map(escaped_len).sum(),
                _ => 0,
            })
            .sum();
        ins + del
            .iter()
            .map(|d| d.chars().map(escaped_len).sum::<usize>())
            .sum::<usize>()
    }

    #[test]
    fn split_parts_compose_to_the_op_and_each_fits_the_budget() {
        let alphabet: Vec<char> = "ab\"\\\n\u{1}é中😀 ".chars().collect();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        for _ in 0..300 {
            let text: String = (0..next(200))
                .map(|_| alphabet[next(alphabet.len())])
                .collect();
            let len = text.chars().count();
            let mut comps = Vec::new();
            let mut left = len;
            while left > 0 || next(3) == 0 {
                match next(3) {
                    0 if left > 0 => {
                        let n = 1 + next(left);
                        comps.push(Component::Retain(n));
                        left -= n;
                    }
                    1 if left > 0 => {
                        let n = 1 + next(left);
                        comps.push(Component::Delete(n));
                        left -= n;
                    }
                    _ => comps.push(Component::Insert(
                        (0..1 + next(60))
                            .map(|_| alphabet[next(alphabet.len())])
                            .collect(),
                    )),
                }
                if comps.len() > 12 {
                    break;
                }
            }
            let op = Op::from_components(comps);
            let budget = 6 + next(40);
            let want = ot::apply(&text, &op).unwrap();
            // Split until it fits, as the client sends it: part by part.
            let (mut cur, mut rest) = (text.clone(), op.clone());
            let mut parts = 0;
            while let Some((first, more)) = split_op(&rest, &Rope::from_str(&cur), budget) {
                let c = cost(&first, &cur);
                assert!(c <= budget, "part costs {c} > {budget}");
                assert!(!first.is_noop(), "a split always progresses");
                assert_eq!(ot::compose(&first, &more), rest, "parts compose back");
                cur = ot::apply(&cur, &first).unwrap();
                rest = more;
                parts += 1;
                assert!(parts < 10_000);
            }
            assert!(cost(&rest, &cur) <= budget);
            assert_eq!(ot::apply(&cur, &rest).unwrap(), want);
        }
    }

    #[test]
    fn select_all_and_delete_goes_out_in_parts() {
        let mut c = ClientCore::new("c").with_max_op_bytes(1000);
        c.on_message(ServerMsg::Snapshot {
            seq: 5,
            text: "x".repeat(4500),
        });
        c.on_message(ServerMsg::Ready { seq: 5 });
        c.edit(Op::splice(0, 4500, "")).unwrap();
        assert_eq!(c.text(), "");
        let mut seq = 5;
        let mut sent = 0;
        loop {
            let out = c.take_outbox();
            let Some(ClientMsg::Op { cseq, base, op, .. }) = out.into_iter().next() else {
                break;
            };
            assert_eq!(base, seq);
            assert!(op.op().delete_count() == 1 && op.span() <= 1000);
            sent += 1;
            c.on_message(ServerMsg::Applied {
                seq: seq + 1,
                prev: seq,
                client: "c".into(),
                cseq,
                user: "u".into(),
                ts: 0,
                op: op.into_op(),
            });
            seq += 1;
        }
        assert_eq!(
            (sent, c.server_text().as_str(), c.is_settled()),
            (5, "", true)
        );
    }
}

#[cfg(test)]
mod ack_tests {
    use super::*;

    /// `ack dup` can overtake the applied op it names: the op stays in
    /// flight until that applied op arrives, and is applied once.
    #[test]
    fn an_ack_ahead_of_our_version_waits_for_its_applied_op() {
        let mut c = ClientCore::new("c");
        c.on_message(ServerMsg::Snapshot {
            seq: 3,
            text: "ab".into(),
        });
        c.on_message(ServerMsg::Ready { seq: 3 });
        c.edit(Op::splice(2, 0, "!")).unwrap();
        let sent = c.take_outbox();
        assert_eq!(sent.len(), 1);
        c.on_message(ServerMsg::Ack {
            client: "c".into(),
            cseq: 1,
            seq: 9,
            dup: true,
        });
        assert_eq!(c.inflight_cseq(), Some(1), "still in flight");
        let ev = c.on_message(ServerMsg::Applied {
            seq: 9,
            prev: 3,
            client: "c".into(),
            cseq: 1,
            user: "u".into(),
            ts: 0,
            op: Op::splice(2, 0, "!"),
        });
        assert!(ev.contains(&CoreEvent::Acked { cseq: 1, seq: 9 }), "{ev:?}");
        assert_eq!(
            (c.text(), c.server_text(), c.is_settled()),
            ("ab!".into(), "ab!".into(), true)
        );
    }
}
