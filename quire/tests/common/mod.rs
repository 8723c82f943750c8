//! Test harness: a real `quire serve` process on port 0, a tiny HTTP client,
//! and token minting.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Server {
    child: Child,
    pub addr: String,
    pub data: PathBuf,
    /// `serve`, or a role: `gateway`, `transformer`, `compactor`.
    cmd: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    _tmp: Option<tempfile::TempDir>,
}

impl Server {
    /// Starts `quire serve` on a fresh data folder with extra flags.
    pub fn start(extra: &[&str]) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let mut s = Server::spawn(&data, extra.iter().map(|s| s.to_string()).collect(), vec![]);
        s._tmp = Some(tmp);
        s
    }

    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut s = Server::spawn(&data, extra.iter().map(|s| s.to_string()).collect(), env);
        s._tmp = Some(tmp);
        s
    }

    fn spawn(data: &Path, mut args: Vec<String>, env: Vec<(String, String)>) -> Server {
        args.extend(kafka_args());
        let (child, addr) = launch("serve", data, &args, &env);
        Server {
            child,
            addr,
            data: data.to_owned(),
            cmd: "serve".into(),
            args,
            env,
            _tmp: None,
        }
    }

    /// One role as its own process (`gateway`, `transformer`, `compactor`)
    /// on `data`, with exactly `args` (broker, store and topics included).
    pub fn role(cmd: &str, data: &Path, args: &[String]) -> Server {
        let (child, addr) = launch(cmd, data, args, &[]);
        Server {
            child,
            addr,
            data: data.to_owned(),
            cmd: cmd.into(),
            args: args.to_vec(),
            env: vec![],
            _tmp: None,
        }
    }

    /// Like [`Server::role`], with extra environment (kept across restarts).
    pub fn role_with_env(
        cmd: &str,
        data: &Path,
        args: &[String],
        env: &[(String, String)],
    ) -> Server {
        let (child, addr) = launch(cmd, data, args, env);
        Server {
            child,
            addr,
            data: data.to_owned(),
            cmd: cmd.into(),
            args: args.to_vec(),
            env: env.to_vec(),
            _tmp: None,
        }
    }

    /// `kill -9`, without a restart.
    pub fn kill(&mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }

    /// A new process with the same command, folder and flags.
    pub fn restart(&mut self) {
        let (child, addr) = launch(&self.cmd, &self.data, &self.args, &self.env);
        self.child = child;
        self.addr = addr;
    }

    /// The flags it was started with (broker and topics included).
    pub fn args(&self) -> &[String] {
        &self.args
    }

    pub fn ws(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// `kill -9`, then a new process on the same data folder.
    pub fn kill_and_restart(&mut self) {
        self.kill();
        self.restart();
    }

    pub fn get(&self, path: &str) -> (u16, serde_json::Value) {
        http(&self.addr, "GET", path, None, None)
    }

    pub fn post(&self, path: &str, body: &str) -> (u16, serde_json::Value) {
        http(&self.addr, "POST", path, Some(body), None)
    }
}

/// The broker the scenarios run on: `QUIRE_TEST_LOG=kafka` with
/// `QUIRE_TEST_KAFKA=host:port` (`.ci/run` runs the suite once on the
/// embedded log and once on its broker). Each server gets topics of its
/// own, kept across its restarts.
pub fn kafka_broker() -> Option<String> {
    if std::env::var("QUIRE_TEST_LOG").as_deref() != Ok("kafka") {
        return None;
    }
    let b = std::env::var("QUIRE_TEST_KAFKA")
        .expect("QUIRE_TEST_LOG=kafka needs QUIRE_TEST_KAFKA=host:port");
    Some(b)
}

pub fn kafka_args() -> Vec<String> {
    match kafka_broker() {
        None => vec![],
        Some(b) => vec![
            "--kafka".into(),
            b,
            "--topic-prefix".into(),
            unique_prefix(),
        ],
    }
}

/// A topic prefix no other server or test run uses.
pub fn unique_prefix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "t{}-{}-{}.",
        std::process::id(),
        nanos % 1_000_000_000_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn launch(sub: &str, data: &Path, args: &[String], env: &[(String, String)]) -> (Child, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quire"));
    cmd.arg(sub)
        .arg("--addr")
        .arg("127.0.0.1:0")
        .arg("--data")
        .arg(data);
    cmd.args(args);
    cmd.env_remove("QUIRE_JWT_SECRET");
    for (k, v) in env {
        cmd.env(k, v);
    }
    // QUIRE_TEST_SERVER_LOG=info shows the servers' logs when debugging.
    cmd.env(
        "QUIRE_LOG",
        std::env::var("QUIRE_TEST_SERVER_LOG").unwrap_or_else(|_| "error".into()),
    );
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = cmd.spawn().expect("spawn quire");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("quire exited before listening")
            .unwrap();
        if let Some(rest) = line.strip_prefix("quire listening on http://") {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    if kafka_broker().is_some() || args.iter().any(|a| a == "--kafka") {
        // On a broker the roles first join their consumer groups.
        wait_ready(&addr, Duration::from_secs(90));
    }
    (child, addr)
}

/// Waits for `/readyz` to answer 200.
pub fn wait_ready(addr: &str, limit: Duration) {
    let began = std::time::Instant::now();
    loop {
        let (status, body) = http(addr, "GET", "/readyz", None, None);
        if status == 200 {
            return;
        }
        assert!(
            began.elapsed() < limit,
            "{addr} not ready after {limit:?}: {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request with `Connection: close`; the body parsed as JSON
/// (or a JSON string holding the raw text).
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> (u16, serde_json::Value) {
    try_http(addr, method, path, body, token)
        .unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"))
}

/// [`http`] for a server that may be going away: a refused connection is
/// an error instead of a panic.
pub fn try_http(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> std::io::Result<(u16, serde_json::Value)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let body = body.unwrap_or("");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n",
        body.len()
    );
    // The server may answer (413) and close before reading a large body.
    let _ = s
        .write_all(head.as_bytes())
        .and_then(|_| s.write_all(body.as_bytes()));
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let rest = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    let json = serde_json::from_str(&rest).unwrap_or(serde_json::Value::String(rest));
    Ok((status, json))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

pub fn token(secret: &str, sub: &str, docs: &[&str], role: &str, exp_from_now: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims =
        serde_json::json!({ "sub": sub, "docs": docs, "role": role, "exp": now + exp_from_now });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A tiny seeded PRNG for tests.
pub fn random_edit(r: &mut testkit::SplitMix64, text: &str) -> ot::Op {
    let len = text.chars().count();
    let pos = r.below(len as u64 + 1) as usize;
    if len > 0 && r.chance(1, 3) {
        let del = 1 + r.below((len - pos).clamp(1, 4) as u64) as usize;
        let del = del.min(len - pos);
        ot::Op::splice(pos, del, "")
    } else {
        const WORDS: &[&str] = &["a", "bc", "é", "中文", "😀", " ", "\n", "xyz"];
        ot::Op::splice(pos, 0, r.pick::<&str>(WORDS))
    }
}

/// One page of a document's history (`GET …/ops`).
pub fn history_page(addr: &str, doc: &str, after: u64) -> serde_json::Value {
    let (status, page) = http(
        addr,
        "GET",
        &format!("/v1/docs/{doc}/ops?after={after}&limit=2000"),
        None,
        None,
    );
    assert_eq!(status, 200, "{page}");
    page
}

/// Every op of a document's history, `(client, cseq) -> seq`; panics on an
/// op applied twice.
pub fn all_ops(addr: &str, doc: &str) -> std::collections::HashMap<(String, u64), u64> {
    let mut out = std::collections::HashMap::new();
    let mut after = 0;
    loop {
        let p = history_page(addr, doc, after);
        for o in p["ops"].as_array().unwrap() {
            let key = (
                o["client"].as_str().unwrap().to_owned(),
                o["cseq"].as_u64().unwrap(),
            );
            assert!(
                out.insert(key.clone(), o["seq"].as_u64().unwrap())
                    .is_none(),
                "{key:?} applied twice"
            );
        }
        match p["next"].as_u64() {
            Some(n) => after = n,
            None => return out,
        }
    }
}

/// The text at every version, replayed from the history; panics on a gap
/// in the `prev` chain.
pub fn replay_history(addr: &str, doc: &str) -> std::collections::BTreeMap<u64, String> {
    let mut texts = std::collections::BTreeMap::from([(0, String::new())]);
    let mut text = String::new();
    let mut after = 0;
    loop {
        let p = history_page(addr, doc, after);
        for o in p["ops"].as_array().unwrap() {
            let (seq, prev) = (o["seq"].as_u64().unwrap(), o["prev"].as_u64().unwrap());
            assert_eq!(
                Some(&prev),
                texts.last_key_value().map(|(v, _)| v),
                "{doc}: history has a gap before {seq}"
            );
            let op: ot::Op = serde_json::from_value(o["op"].clone()).unwrap();
            text = ot::apply(&text, &op).unwrap();
            texts.insert(seq, text.clone());
        }
        match p["next"].as_u64() {
            Some(n) => after = n,
            None => return texts,
        }
    }
}

/// An editor that keeps typing until `stop`, moving to the next of
/// `gateways` (reconnecting with `since`) when its own goes away.
pub async fn edit_until(
    mut c: client::Client,
    doc: &'static str,
    mut gateway: usize,
    gateways: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    seed: u64,
    stop: tokio_util::sync::CancellationToken,
) -> client::Client {
    const T: Duration = Duration::from_secs(60);
    let mut r = testkit::SplitMix64::new(seed);
    while !stop.is_cancelled() {
        let op = random_edit(&mut r, &c.text());
        let ok = c.edit(op).await.is_ok() && c.settle(T).await.is_ok();
        if ok {
            continue;
        }
        // The gateway died under us (or stalled): the other one serves the
        // same documents. Try until one answers.
        let began = tokio::time::Instant::now();
        loop {
            assert!(
                began.elapsed() < T,
                "{doc}: no gateway took the editor back within {T:?}"
            );
            gateway = (gateway + 1) % gateways.lock().unwrap().len();
            let base = format!("ws://{}", gateways.lock().unwrap()[gateway]);
            c.retarget(&base, doc);
            if c.reconnect().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    c
}

/// `quire serve`'s configuration for in-process tests: embedded backends
/// under `data`, two partitions, short compaction intervals.
pub fn serve_config(data: &std::path::Path, max_restarts: u32) -> quire::ServeConfig {
    quire::ServeConfig {
        roles: quire::Roles::ALL,
        kafka: None,
        addr: "127.0.0.1:0".parse().unwrap(),
        data: data.to_owned(),
        jwt_secret: None,
        insecure: false,
        postgres: None,
        scylla: None,
        partitions: 2,
        topic_prefix: "quire.".into(),
        limits: protocol::Limits::default(),
        window: document::WindowPolicy::default(),
        snapshot_every: 1000,
        doc_cache: 16,
        idle_doc_cache: 16,
        retain_records: 100,
        truncate_every: Duration::from_millis(200),
        grace: Duration::from_secs(2),
        restarts: quire::RestartPolicy {
            max_restarts,
            backoff: Duration::from_millis(400),
            healthy_after: Duration::from_secs(60),
        },
    }
}

/// What an editor saw, against the document's history (`all_ops`): every op
/// after its first join exactly once and in order, no gap or desync, and
/// each of its acks in the history at the seq it was told. Returns its acks.
pub fn check_editor(
    c: &client::Client,
    label: &str,
    history: &std::collections::HashMap<(String, u64), u64>,
) -> usize {
    use client::CoreEvent;
    let seqs: std::collections::BTreeSet<u64> = history.values().copied().collect();
    let mut first_ready = None;
    let mut applied = Vec::new();
    let mut acked = 0;
    for e in &c.events {
        match e {
            CoreEvent::Ready(v) => {
                first_ready.get_or_insert(*v);
            }
            CoreEvent::Applied { seq, .. } => applied.push(*seq),
            CoreEvent::Acked { cseq, seq } => {
                acked += 1;
                assert_eq!(
                    history.get(&(c.core.client_id.clone(), *cseq)),
                    Some(seq),
                    "{label}: acknowledged op {cseq} lost or moved"
                );
            }
            CoreEvent::Gap { .. } | CoreEvent::Desync { .. } => panic!("{label}: saw {e:?}"),
            _ => {}
        }
    }
    first_ready.expect("the editor joined");
    // Ops the first join caught the editor up with (they come before its
    // first `ready`) count from the empty document; after a first join by
    // snapshot, from the snapshot's version.
    let from = match c
        .events
        .iter()
        .find(|e| matches!(e, CoreEvent::Ready(_) | CoreEvent::Applied { .. }))
    {
        Some(CoreEvent::Ready(v)) => *v,
        _ => 0,
    };
    let expected: Vec<u64> = seqs.range(from + 1..).copied().collect();
    if applied != expected {
        let got: std::collections::BTreeSet<u64> = applied.iter().copied().collect();
        let missing: Vec<u64> = expected
            .iter()
            .filter(|s| !got.contains(s))
            .copied()
            .collect();
        let extra: Vec<u64> = applied
            .iter()
            .filter(|s| !seqs.contains(s) || **s <= from)
            .copied()
            .collect();
        let repeated = applied.len() - got.len();
        let readies: Vec<&CoreEvent> = c
            .events
            .iter()
            .filter(|e| matches!(e, CoreEvent::Ready(_)))
            .collect();
        panic!(
            "{label}: every op after its join, once each, in order: missing {missing:?}, \
             not in the history {extra:?}, {repeated} repeated, in order: {}; joins: {readies:?}",
            applied.windows(2).all(|w| w[0] < w[1])
        );
    }
    acked
}

/// A new, empty database `{name}_{pid}` on the PostgreSQL server that
/// `server_url` (`key=value` settings, no `dbname`) names; its settings
/// and its name.
pub async fn fresh_database(server_url: &str, name: &str) -> (String, String) {
    let (admin, conn) = tokio_postgres::connect(server_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let db = format!("{name}_{}", std::process::id());
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db}"))
        .await
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .unwrap();
    (format!("{server_url} dbname={db}"), db)
}

/// Drops a database `fresh_database` made, whoever is still connected.
pub async fn drop_database(server_url: &str, db: &str) {
    let (admin, conn) = tokio_postgres::connect(server_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    admin
        .batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .await
        .unwrap();
}
