//! Integration tests against a real `quire serve` over WebSocket and HTTP.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use client::{Client, CoreEvent};
use common::{random_edit, Server};
use ot::Op;
use protocol::{ClientMsg, ErrorCode, ServerMsg};
use testkit::SplitMix64;
use tokio::time::Instant;

const T: Duration = Duration::from_secs(30);

/// Every applied op a client saw chains on the previous one: no gap, no repeat.
fn assert_exactly_once(c: &Client) {
    let mut seen = HashSet::new();
    for (seq, _) in &c.applied {
        assert!(
            seen.insert(*seq),
            "{} saw seq {seq} twice",
            c.core.client_id
        );
    }
    assert!(
        !c.events.iter().any(|e| matches!(e, CoreEvent::Gap { .. })),
        "{} saw a gap",
        c.core.client_id
    );
}

async fn next_msg(c: &mut Client) -> ServerMsg {
    c.recv(Instant::now() + T)
        .await
        .unwrap()
        .expect("a message")
}

async fn next_non_presence(c: &mut Client) -> ServerMsg {
    loop {
        let m = next_msg(c).await;
        if !matches!(m, ServerMsg::Presence { .. } | ServerMsg::Leave { .. }) {
            return m;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_editors_converge_and_equal_http() {
    let server = Server::start(&[]);
    let mut clients = Vec::new();
    for i in 0..4 {
        clients.push(
            Client::connect(&server.ws(), "conv", &format!("c{i}"), None)
                .await
                .unwrap(),
        );
    }
    let mut r = SplitMix64::new(7);
    for _round in 0..40 {
        for c in clients.iter_mut() {
            if r.chance(2, 3) {
                let op = random_edit(&mut r, &c.text());
                c.edit(op).await.unwrap();
            }
            c.pump_for(Duration::from_millis(r.below(3))).await.unwrap();
        }
    }
    for c in clients.iter_mut() {
        c.settle(T).await.unwrap();
    }
    let (_, doc) = server.get("/v1/docs/conv");
    let version = doc["seq"].as_u64().unwrap();
    for c in clients.iter_mut() {
        c.wait_version(version, T).await.unwrap();
    }
    let (_, doc) = server.get("/v1/docs/conv");
    for c in &clients {
        assert_eq!(
            c.text(),
            doc["text"].as_str().unwrap(),
            "{} diverged",
            c.core.client_id
        );
        assert_eq!(c.version(), doc["seq"].as_u64().unwrap());
        assert_exactly_once(c);
    }
    assert!(!clients[0].text().is_empty());
    // Fanout took the transformer's texts (document::TextShare) for some
    // of these versions; this debug build checked each against its own,
    // and a failed check would have restarted a role.
    let (_, metrics) = server.get("/metrics");
    let metrics = metrics.as_str().unwrap();
    let shared = metric(metrics, "quire_fanout_texts_shared_total");
    eprintln!("texts shared: {shared} of version {version}");
    assert!(shared > 0.0, "no text was shared");
    let restarts: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("quire_role_restarts_total") && !l.ends_with(" 0"))
        .collect();
    assert!(restarts.is_empty(), "{restarts:?}");
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_with_an_op_in_flight_applies_it_once() {
    let server = Server::start(&[]);
    let mut a = Client::connect(&server.ws(), "recon", "alice", None)
        .await
        .unwrap();
    let mut b = Client::connect(&server.ws(), "recon", "bob", None)
        .await
        .unwrap();
    a.edit(Op::splice(0, 0, "hello")).await.unwrap();
    a.settle(T).await.unwrap();
    b.wait_version(a.version(), T).await.unwrap();
    // a sends an op and drops the connection before its ack can arrive.
    a.edit(Op::splice(5, 0, " world")).await.unwrap();
    let cseq = a.core.inflight_cseq().unwrap();
    a.disconnect();
    b.edit(Op::splice(0, 0, ">> ")).await.unwrap();
    b.settle(T).await.unwrap();
    a.join().await.unwrap();
    a.settle(T).await.unwrap();
    let (_, doc) = server.get("/v1/docs/recon");
    b.wait_version(doc["seq"].as_u64().unwrap(), T)
        .await
        .unwrap();
    a.wait_version(doc["seq"].as_u64().unwrap(), T)
        .await
        .unwrap();
    assert_eq!(doc["text"], ">> hello world");
    assert_eq!(a.text(), ">> hello world");
    assert_eq!(b.text(), ">> hello world");
    let (_, hist) = server.get("/v1/docs/recon/ops?after=0&limit=100");
    let n = hist["ops"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["client"] == "alice" && o["cseq"] == cseq)
        .count();
    assert_eq!(n, 1, "the resent op is applied exactly once");
    assert_exactly_once(&a);
    assert_exactly_once(&b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resending_an_applied_op_gets_ack_dup_and_the_original_record() {
    let server = Server::start(&[]);
    let mut c = Client::new(&server.ws(), "dup", "c1", None);
    c.join().await.unwrap();
    let op = ClientMsg::Op {
        client: "c1".into(),
        cseq: 1,
        base: 0,
        op: Op::splice(0, 0, "x").into(),
    };
    c.send(&op).await.unwrap();
    let seq = match next_non_presence(&mut c).await {
        ServerMsg::Applied { seq, cseq: 1, .. } => seq,
        other => panic!("expected applied, got {other:?}"),
    };
    c.send(&op).await.unwrap();
    match next_non_presence(&mut c).await {
        ServerMsg::Ack {
            client,
            cseq: 1,
            seq: s,
            dup: true,
        } => assert_eq!((client.as_str(), s), ("c1", seq)),
        other => panic!("expected ack dup, got {other:?}"),
    }
    // Over HTTP the same resend answers with the original applied record.
    let (status, rec) = server.post(
        "/v1/docs/dup/ops",
        r#"{"client":"c1","cseq":1,"base":0,"op":["x"]}"#,
    );
    assert_eq!(status, 200);
    assert_eq!(rec["seq"], seq);
    // And a dup is answered even if the resent op would no longer fit.
    let (status, rec) = server.post(
        "/v1/docs/dup/ops",
        r#"{"client":"c1","cseq":1,"base":0,"op":[99,"y"]}"#,
    );
    assert_eq!((status, rec["seq"].as_u64()), (200, Some(seq)));
    let (_, doc) = server.get("/v1/docs/dup");
    assert_eq!(doc["text"], "x");
}

/// The dedup table forgets clients whose last op left the window (it is
/// bounded by the window); a resend of such an op is still answered from
/// the archive, never applied again and never refused as stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_older_than_the_window_is_answered_from_the_archive() {
    let server = Server::start(&[
        "--window-ops",
        "2",
        "--window-ms",
        "0",
        "--window-max-ops",
        "2",
    ]);
    let (status, first) = server.post(
        "/v1/docs/old/ops",
        r#"{"client":"early","cseq":1,"base":0,"op":["a"]}"#,
    );
    assert_eq!(status, 200);
    let seq = first["seq"].as_u64().unwrap();
    // Others push the early op out of the window (and the early client out
    // of the dedup table).
    let mut other = Client::connect(&server.ws(), "old", "later", None)
        .await
        .unwrap();
    for _ in 0..5 {
        other.edit(Op::splice(0, 0, "b")).await.unwrap();
        other.settle(T).await.unwrap();
    }
    let resend = r#"{"client":"early","cseq":1,"base":0,"op":["a"]}"#;
    // The compactor archives within its next batch; wait for it.
    let mut answer = None;
    for _ in 0..100 {
        let (status, rec) = server.post("/v1/docs/old/ops", resend);
        if status == 200 {
            answer = Some(rec);
            break;
        }
        assert_eq!(status, 503, "{rec}"); // not archived yet: retry
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rec = answer.expect("the resend is answered with the original record");
    assert_eq!(rec["seq"].as_u64(), Some(seq));
    let mut c = Client::new(&server.ws(), "old", "early", None);
    c.join().await.unwrap();
    c.send(&ClientMsg::Op {
        client: "early".into(),
        cseq: 1,
        base: 0,
        op: Op::splice(0, 0, "a").into(),
    })
    .await
    .unwrap();
    match next_non_presence(&mut c).await {
        ServerMsg::Ack {
            cseq: 1,
            seq: s,
            dup: true,
            ..
        } => assert_eq!(s, seq),
        other => panic!("expected ack dup, got {other:?}"),
    }
    let (_, doc) = server.get("/v1/docs/old");
    assert_eq!(doc["text"], "bbbbba", "applied once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_travel_and_history_paging() {
    // Snapshots every 4 ops so time travel crosses snapshots.
    let server = Server::start(&[
        "--snapshot-every",
        "4",
        "--truncate-every-ms",
        "100",
        "--retain-records",
        "2",
    ]);
    let mut expected = vec![(0u64, String::new())];
    let mut text = String::new();
    for i in 1..=12u64 {
        let base = expected.last().unwrap().0;
        let body = format!(
            r#"{{"client":"h","cseq":{i},"base":{base},"op":[{}, "{i},"]}}"#,
            text.chars().count()
        );
        let (status, rec) = server.post("/v1/docs/tt/ops", &body);
        assert_eq!(status, 200, "{rec}");
        text.push_str(&format!("{i},"));
        expected.push((rec["seq"].as_u64().unwrap(), text.clone()));
    }
    tokio::time::sleep(Duration::from_millis(600)).await; // let compaction and truncation run
    for (seq, want) in &expected {
        let (status, doc) = server.get(&format!("/v1/docs/tt?at={seq}"));
        assert_eq!(status, 200);
        assert_eq!(
            (doc["seq"].as_u64().unwrap(), doc["text"].as_str().unwrap()),
            (*seq, want.as_str())
        );
        // A version between two seqs gives the earlier one.
        let (_, doc) = server.get(&format!("/v1/docs/tt?at={}", seq + 1));
        if *seq + 1 < expected.iter().map(|e| e.0).max().unwrap()
            && !expected.iter().any(|e| e.0 == seq + 1)
        {
            assert_eq!(doc["seq"].as_u64().unwrap(), *seq);
        }
    }
    let mut after = 0;
    let mut got = Vec::new();
    loop {
        let (status, page) = server.get(&format!("/v1/docs/tt/ops?after={after}&limit=5"));
        assert_eq!(status, 200);
        let ops = page["ops"].as_array().unwrap();
        assert!(ops.len() <= 5);
        got.extend(ops.iter().map(|o| o["seq"].as_u64().unwrap()));
        match page["next"].as_u64() {
            Some(n) => after = n,
            None => break,
        }
    }
    let want: Vec<u64> = expected[1..].iter().map(|e| e.0).collect();
    assert_eq!(got, want);
    // Pages are capped at 2000; a larger limit is a full page, 0 is refused.
    let (status, page) = server.get("/v1/docs/tt/ops?limit=5000");
    assert_eq!(
        (status, page["ops"].as_array().map(Vec::len)),
        (200, Some(12))
    );
    assert_eq!(server.get("/v1/docs/tt/ops?limit=0").0, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_relayed_and_leave_announced() {
    let server = Server::start(&[]);
    let mut a = Client::connect(&server.ws(), "pres", "a", None)
        .await
        .unwrap();
    let mut b = Client::connect(&server.ws(), "pres", "b", None)
        .await
        .unwrap();
    a.send(&ClientMsg::Presence {
        seq: 0,
        cursor: Some(protocol::Cursor { anchor: 0, head: 0 }),
        meta: Some(serde_json::json!({"name": "Ann"})),
    })
    .await
    .unwrap();
    match next_msg(&mut b).await {
        ServerMsg::Presence {
            client, user, meta, ..
        } => {
            assert_eq!((client.as_str(), user.as_str()), ("a", "anonymous"));
            assert_eq!(meta.unwrap()["name"], "Ann");
        }
        other => panic!("expected presence, got {other:?}"),
    }
    a.send(&ClientMsg::Ping).await.unwrap();
    assert_eq!(next_msg(&mut a).await, ServerMsg::Pong);
    drop(a);
    match next_msg(&mut b).await {
        ServerMsg::Leave { client } => assert_eq!(client, "a"),
        other => panic!("expected leave, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_base_client_rebases_and_loses_nothing() {
    let server = Server::start(&["--window-ops", "2", "--window-ms", "0"]);
    let mut a = Client::connect(&server.ws(), "stale", "a", None)
        .await
        .unwrap();
    let mut b = Client::connect(&server.ws(), "stale", "b", None)
        .await
        .unwrap();
    a.edit(Op::splice(0, 0, "start ")).await.unwrap();
    a.settle(T).await.unwrap();
    b.wait_version(a.version(), T).await.unwrap();
    // b races ahead by many ops that a does not read yet.
    for i in 0..8 {
        let len = b.text().chars().count();
        b.edit(Op::splice(len, 0, &format!("b{i} "))).await.unwrap();
        b.settle(T).await.unwrap();
    }
    // a's op is based on a version now outside the window.
    a.edit(Op::splice(0, 0, "A:")).await.unwrap();
    a.settle(T).await.unwrap();
    assert!(
        a.events.iter().any(|e| matches!(
            e,
            CoreEvent::Error {
                code: ErrorCode::StaleBase,
                ..
            }
        )),
        "expected STALE_BASE, events: {:?}",
        a.events
    );
    let (_, doc) = server.get("/v1/docs/stale");
    b.wait_version(doc["seq"].as_u64().unwrap(), T)
        .await
        .unwrap();
    let text = doc["text"].as_str().unwrap();
    assert!(text.starts_with("A:start "), "{text}");
    assert!(text.ends_with("b7 "), "{text}");
    assert_eq!(a.text(), text);
    assert_eq!(b.text(), text);
    // Over HTTP the same refusal is a 409. Until the compactor's archive
    // (written in batches) reaches this tiny window's floor, the gateway
    // cannot tell a new op from an archived one and answers OVERLOADED:
    // resend, as a client does.
    let deadline = std::time::Instant::now() + T;
    let (status, e) = loop {
        let (status, e) = server.post(
            "/v1/docs/stale/ops",
            r#"{"client":"h","cseq":1,"base":1,"op":["z"]}"#,
        );
        if status == 503 && std::time::Instant::now() < deadline {
            assert_eq!(e["code"].as_str(), Some("OVERLOADED"));
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        break (status, e);
    };
    assert_eq!((status, e["code"].as_str()), (409, Some("STALE_BASE")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_falls_behind_is_cut_off_then_catches_up() {
    let server = Server::start(&[
        "--subscriber-queue",
        "2",
        "--ops-per-sec",
        "10000",
        "--ops-burst",
        "10000",
    ]);
    let mut slow = Client::connect(&server.ws(), "slow", "slow", None)
        .await
        .unwrap();
    let mut w = Client::connect(&server.ws(), "slow", "w", None)
        .await
        .unwrap();
    // Big inserts (20 MB in all) fill the socket buffers, whatever their
    // autotuned size, while `slow` reads nothing.
    const CHUNKS: usize = 100;
    let chunk = "x".repeat(200_000);
    for _ in 0..CHUNKS {
        w.edit(Op::splice(0, 0, &chunk)).await.unwrap();
        w.settle(T).await.unwrap();
    }
    let version = w.version();
    let mut cut_off = false;
    let deadline = Instant::now() + T;
    loop {
        match slow.recv(deadline).await {
            Ok(Some(ServerMsg::Error {
                code: ErrorCode::Overloaded,
                ..
            })) => cut_off = true,
            Ok(Some(m)) => slow.handle(m).await.unwrap(),
            Ok(None) => panic!("timed out"),
            Err(_) => break, // closed
        }
    }
    assert!(
        cut_off,
        "the slow subscriber was told OVERLOADED before the close"
    );
    slow.join().await.unwrap();
    slow.wait_version(version, T).await.unwrap();
    assert_eq!(slow.text().len(), chunk.len() * CHUNKS);
    assert_exactly_once(&slow);
}

/// `/` and `/d/{doc}` serve the browser editor built into the binary, and
/// the script it loads is there (web/dist, embedded at build time).
#[test]
fn the_binary_serves_the_browser_editor() {
    let s = Server::start(&[]);
    for path in ["/", "/d/notes"] {
        let (status, page) = s.get(path);
        assert_eq!(status, 200, "{path}");
        let page = page.as_str().expect("an HTML page");
        assert!(page.contains("<div id=\"editor\">"), "{path}: {page}");
        assert!(page.contains("src=\"/assets/editor.js\""), "{path}");
    }
    let (status, script) = s.get("/assets/editor.js");
    assert_eq!(status, 200);
    let script = script.as_str().expect("the script as text");
    // The bundle carries CodeMirror and Quire's client (its WebSocket path).
    assert!(script.len() > 50_000, "script of {} bytes", script.len());
    assert!(
        script.contains("/ws"),
        "the bundle speaks to the WebSocket endpoint"
    );
    assert!(script.contains("cm-content"), "the bundle has CodeMirror");
}

/// History pages while the archive lags a tiny window (the compactor
/// archives in batches): the rest comes from the applied topic, and an
/// `after` that falls between two of the document's versions (another
/// document's op took the seq in between) pages on like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_while_the_archive_lags_the_window() {
    let server = Server::start(&["--window-ops", "2", "--window-ms", "0"]);
    // Two documents on one partition (8 by default): their seqs interleave.
    let a = "lag-a";
    let b = (0..1000)
        .map(|i| format!("lag-b{i}"))
        .find(|d| oplog::partition_for(d, 8) == oplog::partition_for(a, 8))
        .unwrap();
    let mut versions = Vec::new();
    let mut base_b = 0;
    for i in 1..=10u64 {
        let base_a = versions.last().copied().unwrap_or(0);
        let (status, rec) = server.post(
            &format!("/v1/docs/{a}/ops"),
            &format!(r#"{{"client":"ha","cseq":{i},"base":{base_a},"op":["a"]}}"#),
        );
        assert_eq!(status, 200, "{rec}");
        versions.push(rec["seq"].as_u64().unwrap());
        let (status, rec) = server.post(
            &format!("/v1/docs/{b}/ops"),
            &format!(r#"{{"client":"hb","cseq":{i},"base":{base_b},"op":["b"]}}"#),
        );
        assert_eq!(status, 200, "{rec}");
        base_b = rec["seq"].as_u64().unwrap();
    }
    // At once, while the newest ops are likely not archived yet: from every
    // version, and from just after it (not a version of this document).
    for (k, v) in versions.iter().enumerate() {
        for after in [*v, v + 1] {
            let (status, page) = server.get(&format!("/v1/docs/{a}/ops?after={after}&limit=100"));
            assert_eq!(status, 200, "{page}");
            let got: Vec<u64> = page["ops"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["seq"].as_u64().unwrap())
                .collect();
            assert_eq!(got, versions[k + 1..], "{a}: ops after {after}");
        }
    }
}

/// A WebSocket to `doc` over a plain TCP socket, read frame by frame (every
/// WebSocket client library reassembles fragments and answers closes).
fn raw_websocket(
    s: &Server,
    doc: &str,
) -> tokio_tungstenite::tungstenite::protocol::frame::FrameSocket<std::net::TcpStream> {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(&s.addr).unwrap();
    tcp.set_read_timeout(Some(T)).unwrap();
    write!(
        tcp,
        "GET /v1/docs/{doc}/ws HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        s.addr
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    tokio_tungstenite::tungstenite::protocol::frame::FrameSocket::new(tcp)
}

/// Writes one client frame (`first`: FIN and opcode), masked as a client's
/// must be; a zero key leaves the payload as it is.
fn send_raw(
    ws: &mut tokio_tungstenite::tungstenite::protocol::frame::FrameSocket<std::net::TcpStream>,
    first: u8,
    payload: &[u8],
) {
    use std::io::Write;
    assert!(payload.len() < 126);
    let mut frame = vec![first, 0x80 | payload.len() as u8, 0, 0, 0, 0];
    frame.extend_from_slice(payload);
    ws.get_mut().write_all(&frame).unwrap();
}

/// A message longer than a fragment (the snapshot of a 20 kB document)
/// leaves the server as a text frame and continuation frames of at most
/// 4 KiB each, cut between code points, which reassemble to the message:
/// the gateway's write buffer then never grows to a whole document
/// (benches/README.md, memory per idle editor).
#[test]
fn long_messages_leave_in_fragments_that_reassemble() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

    let s = Server::start(&[]);
    // 20,000 bytes of text, two bytes per "é". The message's prefix
    // (`{"type":"snapshot","seq":1,"text":"`) is 35 bytes, so every "é"
    // starts at an odd offset and a cut every 4,096 bytes would split one.
    let text = "é".repeat(10_000);
    let body = serde_json::json!({"client": "w", "cseq": 1, "base": 0, "op": [text]});
    let (status, _) = s.post("/v1/docs/big/ops", &body.to_string());
    assert_eq!(status, 200);

    let mut frames = raw_websocket(&s, "big");
    send_raw(&mut frames, 0x81, br#"{"type":"hello","client":"reader"}"#);
    let mut sizes = Vec::new();
    let mut message = Vec::new();
    loop {
        let f = frames.read(None).unwrap().expect("the snapshot's frames");
        let want = if sizes.is_empty() {
            Data::Text
        } else {
            Data::Continue
        };
        assert_eq!(
            f.header().opcode,
            OpCode::Data(want),
            "frame {}",
            sizes.len()
        );
        let fin = f.header().is_final;
        sizes.push(f.payload().len());
        std::str::from_utf8(f.payload()).expect("each fragment is whole code points");
        message.extend_from_slice(f.payload());
        if fin {
            break;
        }
    }
    assert!(sizes.len() >= 5, "fragments of {sizes:?}");
    assert!(sizes.iter().all(|&n| n <= 4096), "fragments of {sizes:?}");
    let msg: serde_json::Value = serde_json::from_slice(&message).unwrap();
    assert_eq!(msg["type"], "snapshot");
    assert_eq!(msg["text"].as_str(), Some(text.as_str()));
    // A short message is one frame.
    let f = frames.read(None).unwrap().expect("ready");
    assert!(f.header().is_final);
    assert_eq!(f.header().opcode, OpCode::Data(Data::Text));
    assert!(std::str::from_utf8(f.payload())
        .unwrap()
        .contains("\"ready\""));
}

/// A client that closes gets the server's closing frame back, echoing its
/// code (RFC 6455 §5.5.1), not a dropped connection (1006 in a browser).
#[test]
fn a_client_close_is_answered_with_a_close() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, OpCode};

    let s = Server::start(&[]);
    let mut frames = raw_websocket(&s, "closing");
    send_raw(&mut frames, 0x81, br#"{"type":"hello","client":"c"}"#);
    let ready = frames.read(None).unwrap().expect("snapshot");
    assert!(std::str::from_utf8(ready.payload())
        .unwrap()
        .contains("snapshot"));
    frames.read(None).unwrap().expect("ready");
    // Close, code 1000.
    send_raw(&mut frames, 0x88, &1000u16.to_be_bytes());
    let f = frames.read(None).unwrap().expect("the closing reply");
    assert_eq!(f.header().opcode, OpCode::Control(Control::Close));
    assert_eq!(f.payload()[..2], 1000u16.to_be_bytes());
}
