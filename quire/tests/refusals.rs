//! Bad input and auth: each gets its code, nothing changes, nobody else is
//! disturbed (SPEC §7, §8, §12.7).

mod common;

use std::time::Duration;

use client::Client;
use common::{http, token, Server};
use ot::Op;
use protocol::{ClientMsg, ErrorCode, ServerMsg};
use tokio::time::Instant;

const T: Duration = Duration::from_secs(30);

async fn next_msg(c: &mut Client) -> ServerMsg {
    c.recv(Instant::now() + T)
        .await
        .unwrap()
        .expect("a message")
}

/// `m` is an error with `code` (and about op `cseq`, when given).
fn assert_error(m: &ServerMsg, code: ErrorCode, cseq: Option<u64>, ctx: &str) {
    match m {
        ServerMsg::Error {
            code: got,
            cseq: got_cseq,
            ..
        } if *got == code && (cseq.is_none() || *got_cseq == cseq) => {}
        other => panic!("{ctx}: expected {code} (cseq {cseq:?}), got {other:?}"),
    }
}

async fn expect_error(c: &mut Client, code: ErrorCode, what: &str) -> ServerMsg {
    let m = next_msg(c).await;
    match &m {
        ServerMsg::Error { code: got, .. } if *got == code => m,
        other => panic!("{what}: expected {code}, got {other:?}"),
    }
}

/// The connection is still usable: ping answers pong.
async fn still_open(c: &mut Client) {
    c.send(&ClientMsg::Ping).await.unwrap();
    assert_eq!(next_msg(c).await, ServerMsg::Pong);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_websocket_input_gets_its_code_and_changes_nothing() {
    let server = Server::start(&[
        "--max-frame-bytes",
        "4096",
        "--max-insert-bytes",
        "1024",
        "--ops-per-sec",
        "1000",
        "--ops-burst",
        "1000",
    ]);
    let mut w = Client::connect(&server.ws(), "bad", "writer", None)
        .await
        .unwrap();
    w.edit(Op::splice(0, 0, "stable")).await.unwrap();
    w.settle(T).await.unwrap();
    let (_, before) = server.get("/v1/docs/bad");

    let mut c = Client::new(&server.ws(), "bad", "evil", None);
    c.join().await.unwrap();
    let cases: Vec<(String, ErrorCode)> = vec![
        ("not json".into(), ErrorCode::BadMessage),
        (r#"{"type":"launch"}"#.into(), ErrorCode::BadMessage),
        (r#"{"no":"type"}"#.into(), ErrorCode::BadMessage),
        (
            r#"{"type":"op","client":"evil","cseq":"one","base":0,"op":[]}"#.into(),
            ErrorCode::BadMessage,
        ),
        (
            r#"{"type":"op","client":"evil","cseq":1,"base":-1,"op":[]}"#.into(),
            ErrorCode::BadMessage,
        ),
        (
            r#"{"type":"op","client":"evil","cseq":1,"base":0,"op":[1.5]}"#.into(),
            ErrorCode::BadMessage,
        ),
        (
            r#"{"type":"op","client":"evil","cseq":1,"base":0,"op":[null]}"#.into(),
            ErrorCode::BadMessage,
        ),
        (
            r#"{"type":"op","client":"e v i l","cseq":1,"base":0,"op":["x"]}"#.into(),
            ErrorCode::BadMessage,
        ),
        (
            r#"{"type":"op","client":"someone-else","cseq":1,"base":0,"op":["x"]}"#.into(),
            ErrorCode::Protocol,
        ),
        (
            r#"{"type":"hello","client":"evil"}"#.into(),
            ErrorCode::Protocol,
        ),
        (
            format!(
                r#"{{"type":"op","client":"evil","cseq":1,"base":{},"op":[7,"x"]}}"#,
                before["seq"]
            ),
            ErrorCode::InvalidOp,
        ),
        (
            format!(
                r#"{{"type":"op","client":"evil","cseq":2,"base":{},"op":[-7]}}"#,
                before["seq"]
            ),
            ErrorCode::InvalidOp,
        ),
        (
            r#"{"type":"op","client":"evil","cseq":3,"base":99999,"op":["x"]}"#.into(),
            ErrorCode::InvalidOp,
        ),
        (
            format!(
                r#"{{"type":"op","client":"evil","cseq":4,"base":0,"op":["{}"]}}"#,
                "y".repeat(2000)
            ),
            ErrorCode::TooLarge,
        ),
        // SPEC §3: an op fits when its retains plus deletes, trailing
        // retain included, are at most the length at its base.
        (
            r#"{"type":"op","client":"evil","cseq":5,"base":0,"op":[3]}"#.into(),
            ErrorCode::InvalidOp,
        ),
        (
            format!(
                r#"{{"type":"op","client":"evil","cseq":6,"base":{},"op":[2,"x",5]}}"#,
                before["seq"]
            ),
            ErrorCode::InvalidOp,
        ),
        (
            r#"{"type":"presence","seq":0,"meta":[1,2]}"#.into(),
            ErrorCode::BadMessage,
        ),
    ];
    for (text, code) in &cases {
        c.send_text(text.clone()).await.unwrap();
        let m = expect_error(&mut c, *code, text).await;
        if let ServerMsg::Error { message, .. } = m {
            assert!(!message.is_empty());
        }
        still_open(&mut c).await;
    }
    // Binary frames are not part of the protocol.
    {
        use futures_util::SinkExt;
        let (mut ws, _) =
            tokio_tungstenite::connect_async(format!("{}/v1/docs/bad/ws", server.ws()))
                .await
                .unwrap();
        ws.send(tokio_tungstenite::tungstenite::Message::Binary(
            vec![1, 2, 3].into(),
        ))
        .await
        .unwrap();
        use futures_util::StreamExt;
        let m = ws.next().await.unwrap().unwrap();
        let m: ServerMsg = serde_json::from_str(m.to_text().unwrap()).unwrap();
        assert_error(&m, ErrorCode::BadMessage, None, "");
        // And an op before hello is a protocol error.
        ws.send(tokio_tungstenite::tungstenite::Message::Text(
            r#"{"type":"op","client":"x","cseq":1,"base":0,"op":["x"]}"#.into(),
        ))
        .await
        .unwrap();
        let m = ws.next().await.unwrap().unwrap();
        let m: ServerMsg = serde_json::from_str(m.to_text().unwrap()).unwrap();
        assert_error(&m, ErrorCode::Protocol, None, "");
    }
    // Oversized messages: TOO_LARGE, then the connection closes with 1009
    // (reading stops at the limit, so the rest cannot be skipped), at any
    // size past the limit.
    for size in [5000, 100 * 4096] {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let (mut ws, _) =
            tokio_tungstenite::connect_async(format!("{}/v1/docs/bad/ws", server.ws()))
                .await
                .unwrap();
        let big = format!(r#"{{"type":"ping","pad":"{}"}}"#, "p".repeat(size));
        // The server may close before the whole message is written.
        let _ = ws.send(Message::Text(big.into())).await;
        let m = ws.next().await.unwrap().unwrap();
        let m: ServerMsg = serde_json::from_str(m.to_text().unwrap()).unwrap();
        assert_error(&m, ErrorCode::TooLarge, None, &format!("{size} bytes"));
        match ws.next().await {
            Some(Ok(Message::Close(Some(f)))) => assert_eq!(u16::from(f.code), 1009),
            other => panic!("{size} bytes: expected close 1009, got {other:?}"),
        }
    }
    // A second op in flight (base below the seq of the previous op).
    let v: u64 = before["seq"].as_u64().unwrap();
    c.send(&ClientMsg::Op {
        client: "evil".into(),
        cseq: 10,
        base: v,
        op: Op::splice(0, 0, "1").into(),
    })
    .await
    .unwrap();
    c.send(&ClientMsg::Op {
        client: "evil".into(),
        cseq: 11,
        base: v,
        op: Op::splice(0, 0, "2").into(),
    })
    .await
    .unwrap();
    let mut codes = Vec::new();
    while codes.len() < 2 {
        match next_msg(&mut c).await {
            ServerMsg::Applied { cseq: 10, .. } => codes.push("applied".to_owned()),
            ServerMsg::Error {
                code,
                cseq: Some(11),
                ..
            } => codes.push(code.as_str().to_owned()),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(codes, ["applied", "PROTOCOL"]);

    // The writer saw only the one good op, and the text has only it.
    w.pump_for(Duration::from_millis(300)).await.unwrap();
    let (_, after) = server.get("/v1/docs/bad");
    assert_eq!(after["text"], "1stable");
    assert_eq!(w.text(), "1stable");
    assert_eq!(w.applied.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_with_retry_after() {
    // One token per 10 s: the bucket cannot refill during the test.
    let server = Server::start(&["--ops-per-sec", "0.1", "--ops-burst", "2"]);
    let mut c = Client::connect(&server.ws(), "rl", "c", None)
        .await
        .unwrap();
    for cseq in 1..=2 {
        let base = c.version();
        c.send(&ClientMsg::Op {
            client: "c".into(),
            cseq,
            base,
            op: Op::splice(0, 0, "x").into(),
        })
        .await
        .unwrap();
        c.wait_version(base + 1, T).await.unwrap();
    }
    c.send(&ClientMsg::Op {
        client: "c".into(),
        cseq: 3,
        base: 0,
        op: Op::splice(0, 0, "x").into(),
    })
    .await
    .unwrap();
    match next_msg(&mut c).await {
        ServerMsg::Error {
            code: ErrorCode::RateLimited,
            retry_after_ms: Some(ms),
            cseq: Some(3),
            ..
        } => assert!(ms > 0 && ms <= 10_000),
        other => panic!("expected RATE_LIMITED, got {other:?}"),
    }
    // The budget is checked before anything that may cost the server work:
    // an old cseq (which needs the archive to answer) and a resend of an
    // applied op are both rate-limited first.
    for cseq in [1, 2] {
        c.send(&ClientMsg::Op {
            client: "c".into(),
            cseq,
            base: 0,
            op: Op::splice(0, 0, "x").into(),
        })
        .await
        .unwrap();
        match next_msg(&mut c).await {
            ServerMsg::Error {
                code: ErrorCode::RateLimited,
                ..
            } => {}
            other => panic!("cseq {cseq}: expected RATE_LIMITED first, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_http_requests_get_codes_and_statuses() {
    let server = Server::start(&["--max-frame-bytes", "4096"]);
    let ok = server.post(
        "/v1/docs/h/ops",
        r#"{"client":"c","cseq":1,"base":0,"op":["abc"]}"#,
    );
    assert_eq!(ok.0, 200);
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        ("POST", "/v1/docs/h/ops", "{".into(), 400, "BAD_MESSAGE"),
        // Does not fit the empty document: its trailing retain counts.
        (
            "POST",
            "/v1/docs/empty/ops",
            r#"{"client":"a","cseq":1,"base":0,"op":[100]}"#.into(),
            400,
            "INVALID_OP",
        ),
        (
            "POST",
            "/v1/docs/h/ops",
            r#"{"client":"c","cseq":2}"#.into(),
            400,
            "BAD_MESSAGE",
        ),
        (
            "POST",
            "/v1/docs/h/ops",
            r#"{"client":"c","cseq":0,"base":0,"op":[]}"#.into(),
            400,
            "BAD_MESSAGE",
        ),
        (
            "POST",
            "/v1/docs/h/ops",
            r#"{"client":"c","cseq":2,"base":1,"op":[9,"x"]}"#.into(),
            400,
            "INVALID_OP",
        ),
        (
            "POST",
            "/v1/docs/h/ops",
            r#"{"client":"c","cseq":3,"base":7,"op":["x"]}"#.into(),
            400,
            "INVALID_OP",
        ),
        (
            "POST",
            "/v1/docs/h/ops",
            format!(
                r#"{{"client":"c","cseq":4,"base":1,"op":["{}"]}}"#,
                "z".repeat(5000)
            ),
            413,
            "TOO_LARGE",
        ),
        (
            "POST",
            "/v1/docs/bad%20id/ops",
            r#"{"client":"c","cseq":1,"base":0,"op":["x"]}"#.into(),
            400,
            "BAD_MESSAGE",
        ),
        (
            "GET",
            "/v1/docs/h?at=yesterday",
            String::new(),
            400,
            "BAD_MESSAGE",
        ),
        (
            "GET",
            "/v1/docs/h/ops?after=-1",
            String::new(),
            400,
            "BAD_MESSAGE",
        ),
        ("GET", "/v1/nothing/here", String::new(), 404, "NOT_FOUND"),
        // Far past the limit: still a coded answer.
        (
            "POST",
            "/v1/docs/h/ops",
            "x".repeat(200_000),
            413,
            "TOO_LARGE",
        ),
    ];
    for (method, path, body, status, code) in &cases {
        let (got, json) = http(&server.addr, method, path, Some(body), None);
        assert_eq!(
            (got, json["code"].as_str()),
            (*status, Some(*code)),
            "{method} {path} {body:.60}: {json}"
        );
    }
    let (_, doc) = server.get("/v1/docs/h");
    assert_eq!(
        (doc["seq"].as_u64(), doc["text"].as_str()),
        (ok.1["seq"].as_u64(), Some("abc"))
    );
    let (_, empty) = server.get("/v1/docs/empty");
    assert_eq!(
        (empty["seq"].as_u64(), empty["text"].as_str()),
        (Some(0), Some("")),
        "a refused op leaves the document at version 0"
    );
    assert_eq!(server.get("/healthz").0, 200);
    assert_eq!(server.get("/readyz").0, 200);
    let (status, metrics) = server.get("/metrics");
    assert_eq!(status, 200);
    let metrics = metrics.as_str().unwrap();
    assert!(
        metrics.contains("quire_ingest_errors_total{code=\"INVALID_OP\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("quire_transformer_ops_applied_total 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_tokens_roles_documents_and_client_binding() {
    let secret = "test-secret";
    let server = Server::start_with_env(&[], &[("QUIRE_JWT_SECRET", secret)]);
    let alice = token(secret, "alice", &["team-a.*"], "write", 3600);
    let bob = token(secret, "bob", &["*"], "write", 3600);
    let reader = token(secret, "rita", &["team-a.*"], "read", 3600);
    let expired = token(secret, "alice", &["*"], "write", -10);
    let forged = token("not-the-secret", "alice", &["*"], "write", 3600);

    // WebSocket: no token, a forged one, an expired one: UNAUTHORIZED then close.
    for (tok, what) in [
        (None, "none"),
        (Some(forged.as_str()), "forged"),
        (Some(expired.as_str()), "expired"),
    ] {
        let mut c = Client::new(&server.ws(), "team-a.doc", "c", tok);
        let err = c.join().await.unwrap_err();
        assert!(
            matches!(err, client::ClientError::Closed),
            "{what}: {err:?}"
        );
        assert!(
            matches!(
                c.events.as_slice(),
                [client::CoreEvent::Error {
                    code: ErrorCode::Unauthorized,
                    ..
                }]
            ),
            "{what}: {:?}",
            c.events
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(match tok {
            Some(t) => format!("{}/v1/docs/team-a.doc/ws?token={t}", server.ws()),
            None => format!("{}/v1/docs/team-a.doc/ws", server.ws()),
        })
        .await
        .unwrap();
        use futures_util::StreamExt;
        let m = ws.next().await.unwrap().unwrap();
        let m: ServerMsg = serde_json::from_str(m.to_text().unwrap()).unwrap();
        assert_error(&m, ErrorCode::Unauthorized, None, what);
        assert!(matches!(
            ws.next().await,
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_))) | None
        ));
    }
    // A document the token does not grant: FORBIDDEN.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "{}/v1/docs/team-b.doc/ws?token={alice}",
        server.ws()
    ))
    .await
    .unwrap();
    {
        use futures_util::StreamExt;
        let m = ws.next().await.unwrap().unwrap();
        let m: ServerMsg = serde_json::from_str(m.to_text().unwrap()).unwrap();
        assert_error(&m, ErrorCode::Forbidden, None, "");
    }
    // Alice writes; user is stamped from the token.
    let mut a = Client::connect(&server.ws(), "team-a.doc", "alice-laptop", Some(&alice))
        .await
        .unwrap();
    a.edit(Op::splice(0, 0, "hi")).await.unwrap();
    a.settle(T).await.unwrap();
    let (_, hist) = http(
        &server.addr,
        "GET",
        "/v1/docs/team-a.doc/ops",
        None,
        Some(&alice),
    );
    assert_eq!(hist["ops"][0]["user"], "alice");
    // The reader may join, read and send presence, but not submit ops.
    let mut r = Client::connect(&server.ws(), "team-a.doc", "rita-1", Some(&reader))
        .await
        .unwrap();
    assert_eq!(r.text(), "hi");
    r.send(&ClientMsg::Presence {
        seq: r.version(),
        cursor: None,
        meta: None,
    })
    .await
    .unwrap();
    r.send(&ClientMsg::Op {
        client: "rita-1".into(),
        cseq: 1,
        base: r.version(),
        op: Op::splice(0, 0, "x").into(),
    })
    .await
    .unwrap();
    let m = next_msg(&mut r).await;
    assert_error(&m, ErrorCode::Forbidden, Some(1), "");
    // Bob may not use Alice's client id.
    let mut b = Client::connect(&server.ws(), "team-a.doc", "alice-laptop", Some(&bob))
        .await
        .unwrap();
    b.send(&ClientMsg::Op {
        client: "alice-laptop".into(),
        cseq: 9,
        base: b.version(),
        op: Op::splice(0, 0, "x").into(),
    })
    .await
    .unwrap();
    let m = next_msg(&mut b).await;
    assert_error(&m, ErrorCode::Forbidden, Some(9), "");
    // HTTP: statuses.
    let body = r#"{"client":"h1","cseq":1,"base":0,"op":["x"]}"#;
    assert_eq!(
        http(&server.addr, "GET", "/v1/docs/team-a.doc", None, None).0,
        401
    );
    assert_eq!(
        http(
            &server.addr,
            "GET",
            "/v1/docs/team-a.doc",
            None,
            Some(&expired)
        )
        .0,
        401
    );
    assert_eq!(
        http(
            &server.addr,
            "GET",
            "/v1/docs/team-b.doc",
            None,
            Some(&alice)
        )
        .0,
        403
    );
    assert_eq!(
        http(
            &server.addr,
            "POST",
            "/v1/docs/team-a.doc/ops",
            Some(body),
            Some(&reader)
        )
        .0,
        403
    );
    let (status, json) = http(
        &server.addr,
        "POST",
        "/v1/docs/team-a.doc/ops",
        Some(r#"{"client":"alice-laptop","cseq":5,"base":1,"op":["x"]}"#),
        Some(&bob),
    );
    assert_eq!((status, json["code"].as_str()), (403, Some("FORBIDDEN")));
    let (status, doc) = http(
        &server.addr,
        "GET",
        "/v1/docs/team-a.doc",
        None,
        Some(&reader),
    );
    assert_eq!((status, doc["text"].as_str()), (200, Some("hi")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_refused_with_overloaded() {
    let server = Server::start(&["--max-connections", "2"]);
    let _a = Client::connect(&server.ws(), "full", "a", None)
        .await
        .unwrap();
    let mut b = Client::connect(&server.ws(), "full", "b", None)
        .await
        .unwrap();
    match tokio_tungstenite::connect_async(format!("{}/v1/docs/full/ws", server.ws())).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 503);
            let body: serde_json::Value =
                serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).unwrap();
            assert_eq!(body["code"], "OVERLOADED");
            assert!(
                body["retryAfterMs"].as_u64().is_some_and(|ms| ms > 0),
                "{body}"
            );
        }
        other => panic!("expected a 503, got {:?}", other.map(|_| ())),
    }
    // A slot frees when a connection closes.
    b.disconnect();
    drop(b);
    let mut ok = false;
    for _ in 0..50 {
        if Client::connect(&server.ws(), "full", "c", None)
            .await
            .is_ok()
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "a freed slot is usable again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn document_size_and_presence_rate_limits() {
    let server = Server::start(&["--max-doc-bytes", "64", "--presence-per-sec", "0.1"]);
    let mut c = Client::connect(&server.ws(), "cap", "c", None)
        .await
        .unwrap();
    c.send(&ClientMsg::Op {
        client: "c".into(),
        cseq: 1,
        base: 0,
        op: Op::splice(0, 0, &"a".repeat(60)).into(),
    })
    .await
    .unwrap();
    let v = match next_msg(&mut c).await {
        ServerMsg::Applied { cseq: 1, seq, .. } => seq,
        other => panic!("expected applied, got {other:?}"),
    };
    c.send(&ClientMsg::Op {
        client: "c".into(),
        cseq: 2,
        base: v,
        op: Op::splice(0, 0, "0123456789").into(),
    })
    .await
    .unwrap();
    match next_msg(&mut c).await {
        ServerMsg::Error {
            code: ErrorCode::TooLarge,
            cseq: Some(2),
            ..
        } => {}
        other => panic!("expected TOO_LARGE for the document limit, got {other:?}"),
    }
    let (_, doc) = server.get("/v1/docs/cap");
    assert_eq!(doc["text"].as_str().unwrap().len(), 60, "nothing changed");
    // Presence: a burst of 2 (twice the rate, at least 1 token), then refused.
    let mut refused = None;
    for _ in 0..5 {
        c.send(&ClientMsg::Presence {
            seq: v,
            cursor: None,
            meta: None,
        })
        .await
        .unwrap();
    }
    c.send(&ClientMsg::Ping).await.unwrap();
    loop {
        match next_msg(&mut c).await {
            ServerMsg::Error {
                code: ErrorCode::RateLimited,
                retry_after_ms,
                ..
            } => refused = retry_after_ms,
            ServerMsg::Pong => break,
            _ => {}
        }
    }
    assert!(
        refused.is_some_and(|ms| ms > 0),
        "presence beyond the rate is RATE_LIMITED with retryAfterMs"
    );
}

/// SPEC §7: every record is at most `--max-record-bytes`; an op whose
/// applied record would be larger gets TOO_LARGE and changes nothing, and
/// the Rust client splits a large edit (select all, delete) into ops that
/// fit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_edits_are_split_by_the_client_and_refused_whole() {
    let server = Server::start(&[]);
    let big = "abcdefgh".repeat(3 << 17); // 3 MiB
    let mut w = Client::connect(&server.ws(), "big", "w", None)
        .await
        .unwrap();
    w.edit(Op::splice(0, 0, &big)).await.unwrap();
    w.settle(T).await.unwrap();
    let (_, doc) = server.get("/v1/docs/big");
    assert_eq!(doc["text"].as_str().map(str::len), Some(big.len()));
    let version = doc["seq"].as_u64().unwrap();

    // One op deleting everything would make a 3 MiB record: refused.
    let (status, body) = server.post(
        "/v1/docs/big/ops",
        &format!(
            r#"{{"client":"h","cseq":1,"base":{version},"op":[-{}]}}"#,
            big.len()
        ),
    );
    assert_eq!(
        (status, body["code"].as_str()),
        (413, Some("TOO_LARGE")),
        "{body}"
    );
    let (_, after) = server.get("/v1/docs/big");
    assert_eq!(after["seq"].as_u64(), Some(version), "nothing changed");

    // The client deletes it all in parts.
    w.edit(Op::splice(0, big.len(), "")).await.unwrap();
    w.settle(T).await.unwrap();
    let (_, doc) = server.get("/v1/docs/big");
    assert_eq!(doc["text"].as_str(), Some(""));
    let (_, page) = server.get(&format!("/v1/docs/big/ops?after={version}&limit=100"));
    let ops = page["ops"].as_array().unwrap();
    assert!(
        ops.len() >= 12,
        "3 MiB in parts of at most 256 KiB: {}",
        ops.len()
    );
    for op in ops {
        let size = serde_json::to_vec(op).unwrap().len();
        assert!(size <= 1 << 20, "a record of {size} bytes");
    }
}
