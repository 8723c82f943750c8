//! `quire serve --kafka` across a broker `kill -9` and restart: `/readyz`
//! fails while the broker is gone, nothing acknowledged is lost, and every
//! editor converges once it is back. Runs a durable tansu broker of its own
//! (`QUIRE_TEST_TANSU=/path/to/tansu`, which `.ci/run` sets).

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use client::Client;
use common::{all_ops, check_editor, edit_until, http, unique_prefix, Server};
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(60);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A tansu broker with SQLite storage in `dir` on `port`.
fn broker(tansu: &str, dir: &Path, port: u16) -> Child {
    let url = format!("tcp://127.0.0.1:{port}");
    let child = Command::new(tansu)
        .current_dir(dir)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", "sqlite://tansu.db"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tansu");
    let began = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(began.elapsed() < T, "tansu did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn ready(addr: &str) -> u16 {
    http(addr, "GET", "/readyz", None, None).0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_kill_9_loses_nothing_acknowledged() {
    let Ok(tansu) = std::env::var("QUIRE_TEST_TANSU") else {
        println!(
            "SKIPPED: no broker binary to kill and restart (set QUIRE_TEST_TANSU=/path/to/tansu)"
        );
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut b = broker(&tansu, tmp.path(), port);
    let args: Vec<String> = [
        "--kafka".to_owned(),
        format!("127.0.0.1:{port}"),
        "--topic-prefix".to_owned(),
        unique_prefix(),
        "--partitions".to_owned(),
        "2".to_owned(),
    ]
    .to_vec();
    let server = Server::role("serve", &tmp.path().join("quire"), &args);
    let addrs = Arc::new(Mutex::new(vec![server.addr.clone()]));

    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    for i in 0..4 {
        let doc = ["b-a", "b-b"][i % 2];
        let c = Client::connect(&server.ws(), doc, &format!("b{i}"), None)
            .await
            .unwrap();
        tasks.push(tokio::spawn(edit_until(
            c,
            doc,
            0,
            addrs.clone(),
            i as u64,
            stop.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The broker dies: the server stops being ready.
    b.kill().unwrap();
    b.wait().unwrap();
    let began = Instant::now();
    while ready(&server.addr) == 200 {
        assert!(
            began.elapsed() < Duration::from_secs(20),
            "/readyz still 200 with the broker gone"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // It comes back on the same storage and port.
    let mut b = broker(&tansu, tmp.path(), port);
    let began = Instant::now();
    while ready(&server.addr) != 200 {
        assert!(
            began.elapsed() < T,
            "/readyz not 200 after the broker came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    let mut acked = 0;
    for (d, doc) in ["b-a", "b-b"].iter().enumerate() {
        let (_, state) = http(&server.addr, "GET", &format!("/v1/docs/{doc}"), None, None);
        let version = state["seq"].as_u64().unwrap();
        let history = all_ops(&server.addr, doc);
        for (i, c) in clients.iter_mut().enumerate().filter(|(i, _)| i % 2 == d) {
            c.settle(T).await.unwrap();
            c.wait_version(version, T).await.unwrap();
            assert_eq!(
                c.text(),
                state["text"].as_str().unwrap(),
                "{doc}: editor {i}"
            );
            acked += check_editor(c, &format!("{doc}: editor {i}"), &history);
        }
    }
    println!("broker kill -9: {acked} ops acknowledged, none lost");
    assert!(acked > 20, "only {acked} acks");
    let _ = b.kill();
    let _ = b.wait();
}
