//! Crash-only roles: a role that keeps failing is restarted a bounded
//! number of times, `/readyz` fails while it is down, and then the process
//! gives up with an error (a supervisor restarts it) instead of running on
//! with a dead role.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{http, serve_config, try_http};
use store::{Call, Intercept, Intercepted, StoreError};
use tokio_util::sync::CancellationToken;

/// Archive writes fail while the flag is set.
struct Flaky(Arc<AtomicBool>);

#[async_trait::async_trait]
impl Intercept for Flaky {
    async fn before(&self, call: Call<'_>) -> store::Result<()> {
        if matches!(call, Call::PutHistory(_)) && self.0.load(Ordering::Relaxed) {
            return Err(StoreError::Storage("disk on fire".into()));
        }
        Ok(())
    }
}

struct Running {
    addr: String,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    broken: Arc<AtomicBool>,
    shutdown: CancellationToken,
    _tmp: tempfile::TempDir,
}

/// `quire::run` in process with a store whose archive writes fail, after
/// one op was applied (so the compactor has something to archive).
async fn start(max_restarts: u32) -> Running {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = serve_config(tmp.path(), max_restarts);
    let mut backends = quire::open_backends(&cfg).await.unwrap();
    let broken = Arc::new(AtomicBool::new(true));
    backends.store = Arc::new(Intercepted {
        inner: backends.store.clone(),
        hook: Flaky(broken.clone()),
    });
    let listener = tokio::net::TcpListener::bind(cfg.addr).await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(quire::run(cfg, backends, listener, shutdown.clone()));
    let a = addr.clone();
    let (status, _) = tokio::task::spawn_blocking(move || {
        http(
            &a,
            "POST",
            "/v1/docs/d/ops",
            Some(r#"{"client":"c","cseq":1,"base":0,"op":["x"]}"#),
            None,
        )
    })
    .await
    .unwrap();
    assert_eq!(status, 200);
    Running {
        addr,
        server,
        broken,
        shutdown,
        _tmp: tmp,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_keeps_failing_fails_readiness_then_the_process() {
    // An op goes through (the transformer and fanout are fine); the
    // compactor then fails to archive it, again and again.
    let Running {
        addr, server, _tmp, ..
    } = start(3).await;

    let mut saw_down = None;
    let mut restarts_seen = false;
    for _ in 0..200 {
        let a = addr.clone();
        // The process may end between any two requests: a refused
        // connection is only "not up any more".
        let probe = tokio::task::spawn_blocking(move || {
            let ready = try_http(&a, "GET", "/readyz", None, None).ok();
            let metrics = try_http(&a, "GET", "/metrics", None, None)
                .ok()
                .map(|r| r.1);
            (ready, metrics)
        })
        .await
        .unwrap();
        if let (Some((503, body)), _) = &probe {
            saw_down = Some(body.to_string());
        }
        if let (_, Some(m)) = &probe {
            restarts_seen |= m
                .as_str()
                .is_some_and(|m| m.contains("quire_role_restarts_total{role=\"compactor\"}"));
        }
        if server.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let outcome = tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("the process gives up")
        .unwrap();
    let err = outcome.expect_err("a dead role ends the process with an error");
    assert!(err.to_string().contains("compactor"), "{err}");
    let down = saw_down.expect("/readyz failed while the compactor was down");
    assert!(down.contains("compactor"), "{down}");
    assert!(
        restarts_seen,
        "quire_role_restarts_total counts the restarts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_recovers_keeps_the_process_up() {
    let Running {
        addr,
        server,
        broken,
        shutdown,
        _tmp,
    } = start(5).await;
    // Two failures, then the disk is back.
    tokio::time::sleep(Duration::from_millis(700)).await;
    broken.store(false, Ordering::Relaxed);
    let mut ready = false;
    for _ in 0..100 {
        let a = addr.clone();
        let (status, _) =
            tokio::task::spawn_blocking(move || http(&a, "GET", "/readyz", None, None))
                .await
                .unwrap();
        if status == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "ready again once the compactor recovered");
    assert!(!server.is_finished(), "the process stays up");
    shutdown.cancel();
    server.await.unwrap().unwrap();
}
