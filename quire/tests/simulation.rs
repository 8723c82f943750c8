//! A deterministic in-memory simulation of the whole pipeline.
//!
//! Seeded clients edit several documents over simulated connections with
//! random delivery order, disconnects (losing messages in both directions)
//! and reconnects with ops in flight. The server side runs the real decision
//! code: `fanout::dedup_check` and `fanout::join_messages` at the gateway,
//! `transformer::process` on a shared raw log (one partition: seqs are not
//! contiguous per document), and a fanout read model that lags the
//! transformer. Asserts convergence, exactly-once in-order delivery, and that
//! no acknowledged op is lost. A failure prints the seed:
//! `QUIRE_SIM_SEED=<seed> cargo test -p quire --test simulation`.

use std::collections::{HashMap, HashSet, VecDeque};

use client::{ClientCore, CoreEvent};
use document::{DocState, WindowPolicy};
use fanout::{dedup_check, join_messages, Dedup};
use ot::Op;
use protocol::{AppliedRecord, ClientMsg, ErrorCode, OutRecord, RawRecord, ServerMsg};
use testkit::SplitMix64;
use transformer::{process, CoreConfig, Outcome};

struct Conn {
    to_server: VecDeque<ClientMsg>,
    to_client: VecDeque<ServerMsg>,
    subscribed: bool,
}

struct SimClient {
    core: ClientCore,
    doc: usize,
    user: String,
    conn: Option<Conn>,
    acked: Vec<(u64, u64)>,
    last_seq: u64,
}

struct Sim {
    rng: SplitMix64,
    cfg: CoreConfig,
    docs: Vec<String>,
    /// The transformer's documents.
    tx_docs: Vec<DocState>,
    /// Fanout's read model (lags the transformer).
    fan_docs: Vec<DocState>,
    raw_log: Vec<RawRecord>,
    transformed: usize,
    applied_log: Vec<OutRecord>,
    fanned: usize,
    history: HashMap<(String, String, u64), u64>,
    clients: Vec<SimClient>,
    step: i64,
    stats: Stats,
}

/// What the runs exercised, so a quiet simulation cannot pass unnoticed.
#[derive(Default, Debug, Clone, Copy)]
struct Stats {
    applied: usize,
    acks: usize,
    dup_acks: usize,
    stale: usize,
    disconnects: usize,
    snapshots_with_pending: usize,
    restarts: usize,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = SplitMix64::new(seed);
        let small_window = seed.is_multiple_of(3);
        let cfg = CoreConfig {
            window: if small_window {
                WindowPolicy {
                    min_ops: 3,
                    min_age_ms: 0,
                    max_ops: 3,
                }
            } else {
                WindowPolicy::default()
            },
            ..CoreConfig::default()
        };
        let docs: Vec<String> = (0..2).map(|d| format!("doc{d}")).collect();
        let n_clients = 2 + rng.below(4) as usize;
        let clients = (0..n_clients)
            .map(|i| SimClient {
                core: ClientCore::new(&format!("c{i}")),
                doc: i % docs.len(),
                user: format!("user{}", i % 2),
                conn: None,
                acked: Vec::new(),
                last_seq: 0,
            })
            .collect();
        Sim {
            rng,
            cfg,
            tx_docs: docs.iter().map(|d| DocState::empty(d)).collect(),
            fan_docs: docs.iter().map(|d| DocState::empty(d)).collect(),
            docs,
            raw_log: Vec::new(),
            transformed: 0,
            applied_log: Vec::new(),
            fanned: 0,
            history: HashMap::new(),
            clients,
            step: 0,
            stats: Stats::default(),
        }
    }

    fn connect(&mut self, c: usize) {
        let cl = &mut self.clients[c];
        let hello = cl.core.hello();
        cl.conn = Some(Conn {
            to_server: VecDeque::from([hello]),
            to_client: VecDeque::new(),
            subscribed: false,
        });
    }

    fn disconnect(&mut self, c: usize) {
        self.stats.disconnects += 1;
        let cl = &mut self.clients[c];
        cl.conn = None;
        cl.core.disconnected();
    }

    fn flush_outbox(&mut self, c: usize) {
        let cl = &mut self.clients[c];
        let out = cl.core.take_outbox();
        if let Some(conn) = &mut cl.conn {
            conn.to_server.extend(out);
        }
    }

    fn local_edit(&mut self, c: usize) {
        let text = self.clients[c].core.text();
        let len = text.chars().count();
        let pos = self.rng.below(len as u64 + 1) as usize;
        let op = if len > 0 && self.rng.chance(1, 3) {
            let del = (1 + self.rng.below(3) as usize).min(len - pos);
            Op::splice(pos, del, "")
        } else {
            let s = *self.rng.pick(&["a", "b", "xy", "é", "😀", "\n"][..]);
            Op::splice(pos, 0, s)
        };
        self.clients[c]
            .core
            .edit(op)
            .expect("edits fit the local text");
        self.flush_outbox(c);
    }

    /// The gateway (ingest + fanout join) handles one client message.
    fn server_receive(&mut self, c: usize) {
        let Some(conn) = self.clients[c].conn.as_mut() else {
            return;
        };
        let Some(msg) = conn.to_server.pop_front() else {
            return;
        };
        let d = self.clients[c].doc;
        let user = self.clients[c].user.clone();
        match msg {
            ClientMsg::Hello { since, .. } => {
                let msgs = join_messages(&self.fan_docs[d], since);
                let conn = self.clients[c].conn.as_mut().unwrap();
                conn.to_client.extend(msgs);
                conn.subscribed = true;
            }
            ClientMsg::Op {
                client,
                cseq,
                base,
                op,
            } => {
                let reply = match dedup_check(&self.fan_docs[d], &client, cseq, &user) {
                    Err(e) => Some(ServerMsg::op_error(&e, &client, cseq)),
                    Ok(Dedup::Applied(r)) => Some(ServerMsg::Ack {
                        client: client.clone(),
                        cseq,
                        seq: r.seq,
                        dup: true,
                    }),
                    Ok(Dedup::Forgotten { seq }) => Some(ServerMsg::Ack {
                        client: client.clone(),
                        cseq,
                        seq: seq.unwrap_or(0),
                        dup: true,
                    }),
                    Ok(Dedup::New) => {
                        self.raw_log.push(RawRecord {
                            v: 1,
                            doc: self.docs[d].clone(),
                            client,
                            cseq,
                            base,
                            op,
                            user,
                            ts: self.step,
                        });
                        None
                    }
                };
                if let Some(r) = reply {
                    self.clients[c]
                        .conn
                        .as_mut()
                        .unwrap()
                        .to_client
                        .push_back(r);
                }
            }
            ClientMsg::Ping | ClientMsg::Presence { .. } => {}
        }
    }

    fn transform_one(&mut self) {
        let Some(raw) = self.raw_log.get(self.transformed).cloned() else {
            return;
        };
        let seq = self.transformed as u64 + 1;
        self.transformed += 1;
        let d = self.docs.iter().position(|x| *x == raw.doc).unwrap();
        match process(&mut self.tx_docs[d], &raw, seq, &self.cfg) {
            Outcome::Applied(a) => {
                self.stats.applied += 1;
                let key = (a.doc.clone(), a.client.clone(), a.cseq);
                assert!(
                    self.history.insert(key, a.seq).is_none(),
                    "op {}/{} applied twice",
                    a.client,
                    a.cseq
                );
                self.applied_log.push(OutRecord::Applied(a));
            }
            Outcome::Rejected(r) => self.applied_log.push(OutRecord::Rejected(r)),
            Outcome::Duplicate { .. } => {}
        }
    }

    fn fanout_one(&mut self) {
        let Some(rec) = self.applied_log.get(self.fanned).cloned() else {
            return;
        };
        self.fanned += 1;
        let d = self.docs.iter().position(|x| x == rec.doc()).unwrap();
        match rec {
            OutRecord::Applied(a) => {
                self.fan_docs[d]
                    .apply_record(&a)
                    .expect("fanout follows the transformer");
                self.fan_docs[d].trim(self.cfg.window);
                self.deliver(d, None, ServerMsg::applied(&a));
            }
            OutRecord::Rejected(r) => {
                let e = protocol::ProtoError::new(r.code, r.message.clone());
                self.deliver(
                    d,
                    Some(&r.client),
                    ServerMsg::op_error(&e, &r.client, r.cseq),
                );
            }
        }
    }

    fn deliver(&mut self, d: usize, only: Option<&str>, msg: ServerMsg) {
        for cl in self.clients.iter_mut().filter(|cl| cl.doc == d) {
            if only.is_some_and(|o| o != cl.core.client_id) {
                continue;
            }
            if let Some(conn) = cl.conn.as_mut().filter(|c| c.subscribed) {
                conn.to_client.push_back(msg.clone());
            }
        }
    }

    fn client_receive(&mut self, c: usize) {
        let Some(conn) = self.clients[c].conn.as_mut() else {
            return;
        };
        let Some(msg) = conn.to_client.pop_front() else {
            return;
        };
        let cl = &mut self.clients[c];
        if let ServerMsg::Applied { seq, prev, .. } = &msg {
            assert!(
                *seq > cl.last_seq,
                "{}: seq {seq} after {} (duplicate or out of order)",
                cl.core.client_id,
                cl.last_seq
            );
            assert_eq!(
                *prev,
                cl.core.version(),
                "{}: gap before seq {seq}",
                cl.core.client_id
            );
            cl.last_seq = *seq;
        }
        if let ServerMsg::Snapshot { seq, .. } = &msg {
            cl.last_seq = cl.last_seq.max(*seq);
            if !cl.core.is_settled() {
                self.stats.snapshots_with_pending += 1;
            }
        }
        if matches!(msg, ServerMsg::Ack { .. }) {
            self.stats.dup_acks += 1;
        }
        for e in cl.core.on_message(msg) {
            match e {
                CoreEvent::Acked { cseq, seq } => {
                    self.stats.acks += 1;
                    cl.acked.push((cseq, seq))
                }
                CoreEvent::Gap { .. } => panic!("{}: gap", cl.core.client_id),
                CoreEvent::Desync { reason } => panic!("{}: desync: {reason}", cl.core.client_id),
                CoreEvent::Error { code, message, .. } => {
                    self.stats.stale += 1;
                    assert!(
                        code == ErrorCode::StaleBase,
                        "{}: unexpected {code}: {message}",
                        cl.core.client_id
                    )
                }
                _ => {}
            }
        }
        self.flush_outbox(c);
    }

    fn random_step(&mut self) {
        self.step += 1;
        let n = self.clients.len();
        let c = self.rng.below(n as u64) as usize;
        match self.rng.below(100) {
            0..=24 => {
                if self.clients[c].conn.is_some() || self.rng.chance(1, 2) {
                    self.local_edit(c)
                }
            }
            25..=44 => self.server_receive(c),
            45..=59 => self.transform_one(),
            60..=74 => self.fanout_one(),
            75..=95 => self.client_receive(c),
            96..=97 => {
                if self.clients[c].conn.is_some() {
                    self.disconnect(c)
                }
            }
            98 if self.rng.chance(1, 10) => self.restart_roles(),
            _ => {
                if self.clients[c].conn.is_none() {
                    self.connect(c)
                }
            }
        }
    }

    /// A crash and restart of the transformer and fanout: their documents
    /// are rebuilt from the applied log alone (SPEC §12.5) and must equal
    /// what they held; every connection drops (it was the same process).
    fn restart_roles(&mut self) {
        self.stats.restarts += 1;
        for d in 0..self.docs.len() {
            let rebuilt = |upto: usize| {
                let mut st = DocState::empty(&self.docs[d]);
                for rec in &self.applied_log[..upto] {
                    if let OutRecord::Applied(a) = rec {
                        if a.doc == self.docs[d] {
                            st.apply_record(a).expect("the applied log replays");
                        }
                    }
                }
                st.trim(self.cfg.window);
                st
            };
            for (mine, upto, role) in [
                (&self.tx_docs[d], self.applied_log.len(), "transformer"),
                (&self.fan_docs[d], self.fanned, "fanout"),
            ] {
                let again = rebuilt(upto);
                assert_eq!(again.text, mine.text, "{role}: text after replay");
                assert_eq!(
                    (again.version, again.floor),
                    (mine.version, mine.floor),
                    "{role}: version/window after replay"
                );
                assert_eq!(
                    again.clients, mine.clients,
                    "{role}: dedup table after replay"
                );
            }
            self.tx_docs[d] = rebuilt(self.applied_log.len());
            self.fan_docs[d] = rebuilt(self.fanned);
        }
        for c in 0..self.clients.len() {
            if self.clients[c].conn.is_some() {
                self.disconnect(c);
            }
        }
    }

    fn quiescent(&self) -> bool {
        self.transformed == self.raw_log.len()
            && self.fanned == self.applied_log.len()
            && self.clients.iter().all(|c| {
                c.core.is_settled()
                    && c.core.is_live()
                    && c.conn
                        .as_ref()
                        .is_some_and(|k| k.to_server.is_empty() && k.to_client.is_empty())
            })
    }

    fn drain(&mut self) {
        for c in 0..self.clients.len() {
            if self.clients[c].conn.is_none() {
                self.connect(c);
            }
        }
        let mut rounds = 0;
        while !self.quiescent() {
            rounds += 1;
            assert!(rounds < 100_000, "did not settle");
            for c in 0..self.clients.len() {
                self.server_receive(c);
            }
            self.transform_one();
            self.fanout_one();
            for c in 0..self.clients.len() {
                self.client_receive(c);
            }
        }
    }

    fn check(&self) {
        for (d, doc) in self.docs.iter().enumerate() {
            let truth = self.tx_docs[d].text.to_string();
            assert_eq!(
                self.fan_docs[d].text.to_string(),
                truth,
                "{doc}: fanout diverged"
            );
            for cl in self.clients.iter().filter(|c| c.doc == d) {
                assert_eq!(
                    cl.core.text(),
                    truth,
                    "{doc}: {} diverged",
                    cl.core.client_id
                );
                for (cseq, seq) in &cl.acked {
                    let got = self
                        .history
                        .get(&(doc.clone(), cl.core.client_id.clone(), *cseq));
                    assert_eq!(
                        got,
                        Some(seq),
                        "{}: acknowledged op {cseq} lost",
                        cl.core.client_id
                    );
                }
            }
        }
        let ids: HashSet<_> = self.history.keys().collect();
        assert_eq!(ids.len(), self.history.len());
    }
}

fn run(seed: u64, steps: usize) -> Stats {
    let mut sim = Sim::new(seed);
    for c in 0..sim.clients.len() {
        sim.connect(c);
    }
    for _ in 0..steps {
        sim.random_step();
    }
    sim.drain();
    sim.check();
    sim.stats
}

#[test]
fn seeded_pipeline_simulation_converges() {
    let (seeds, steps) = match std::env::var("QUIRE_SIM_SEED") {
        Ok(s) => {
            let s: u64 = s.parse().expect("QUIRE_SIM_SEED must be a number");
            (s..s + 1, 2000)
        }
        Err(_) => {
            let n = std::env::var("QUIRE_SIM_SEEDS")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(300);
            (0..n, 1500)
        }
    };
    let single = seeds.end - seeds.start == 1;
    let mut total = Stats::default();
    for seed in seeds {
        match std::panic::catch_unwind(|| run(seed, steps)) {
            Ok(s) => {
                total.applied += s.applied;
                total.acks += s.acks;
                total.dup_acks += s.dup_acks;
                total.stale += s.stale;
                total.disconnects += s.disconnects;
                total.snapshots_with_pending += s.snapshots_with_pending;
                total.restarts += s.restarts;
            }
            Err(e) => {
                eprintln!("simulation failed with seed {seed}: rerun with QUIRE_SIM_SEED={seed}");
                std::panic::resume_unwind(e);
            }
        }
    }
    println!("simulation exercised: {total:?}");
    if !single {
        assert!(total.applied > 10_000 && total.acks > 10_000, "{total:?}");
        assert!(
            total.stale > 0 && total.disconnects > 100 && total.dup_acks > 0,
            "{total:?}"
        );
        assert!(
            total.snapshots_with_pending > 0 && total.restarts > 10,
            "{total:?}"
        );
    }
}

#[test]
fn simulation_catches_a_broken_transform() {
    // The simulation must be able to fail: the same run with ops applied
    // untransformed on the server diverges for some seed.
    let diverged = (0..50).any(|seed| {
        let mut sim = Sim::new(seed);
        for c in 0..sim.clients.len() {
            sim.connect(c);
        }
        for _ in 0..400 {
            sim.random_step();
        }
        sim.drain();
        // Replay the raw log naively (no transformation) and compare.
        let mut naive: Vec<String> = vec![String::new(); sim.docs.len()];
        for a in sim.applied_log.iter().filter_map(|r| match r {
            OutRecord::Applied(a) => Some(a),
            _ => None,
        }) {
            let d = sim.docs.iter().position(|x| *x == a.doc).unwrap();
            let raw = sim.raw_log[(a.seq - 1) as usize].op.op().clone();
            naive[d] = ot::apply(&naive[d], &raw).unwrap_or_else(|_| naive[d].clone());
        }
        (0..sim.docs.len()).any(|d| naive[d] != sim.tx_docs[d].text)
    });
    assert!(
        diverged,
        "without transformation the documents should differ for some seed"
    );
    let _ = AppliedRecord::encode;
}
