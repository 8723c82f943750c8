//! The compose stack's Quire services, run natively: the services of
//! `infra/compose.yaml` (2 gateways, 2 transformers, a compactor) start with
//! the commands and environment the file gives them, against the local
//! Kafka-protocol broker, so the stack's wiring cannot drift from the code.
//! What must differ on this machine is replaced, and only that: the broker
//! address, replication 1 (one broker), DeleteRecords off and a short fetch
//! wait (tansu), PostgreSQL for ScyllaDB (no CQL server can run here), a topic
//! prefix of the test's own, and the listen address and data folder.
//! Through them: editors converge across both gateways, move to the other
//! gateway when theirs dies, and a `kill -9` of a transformer and a gateway
//! loses nothing. Every metric the Grafana dashboard queries is exported,
//! and Prometheus scrapes every Quire service.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use client::Client;
use common::{check_editor, edit_until, fresh_database, http, token, unique_prefix, Server};
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(60);
const DOCS: [&str; 2] = ["stack-a", "stack-b"];
const SECRET: &str = "stack-test-secret";

fn infra(path: &str) -> String {
    let p = format!("{}/../infra/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// A Quire service of the compose file.
#[derive(Debug)]
struct Service {
    name: String,
    command: Vec<String>,
    env: BTreeMap<String, String>,
}

/// Compose's `${VAR}`, `${VAR:-default}`, `${VAR:?error}` and `$$`.
fn interpolate(s: &str, vars: &HashMap<&str, &str>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = rest.strip_prefix('{') {
            let end = r.find('}').expect("closed ${");
            let body = &r[..end];
            let (name, fallback) = match body.find(":-").or_else(|| body.find(":?")) {
                Some(k) => (&body[..k], Some(&body[k..])),
                None => (body, None),
            };
            match (vars.get(name), fallback) {
                (Some(v), _) if !v.is_empty() => out.push_str(v),
                (_, Some(f)) if f.starts_with(":-") => out.push_str(&f[2..]),
                _ => panic!("compose.yaml needs {name}: {body}"),
            }
            rest = &r[end + 1..];
        } else {
            panic!("bare $ in {s}");
        }
    }
    out.push_str(rest);
    out
}

fn scalar(v: &serde_yaml::Value) -> String {
    match v {
        serde_yaml::Value::String(s) => s.clone(),
        serde_yaml::Value::Number(n) => n.to_string(),
        serde_yaml::Value::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// The Quire services (built from this repository's Dockerfile).
fn quire_services(vars: &HashMap<&str, &str>) -> Vec<Service> {
    let mut doc: serde_yaml::Value = serde_yaml::from_str(&infra("compose.yaml")).unwrap();
    doc.apply_merge().unwrap();
    let services = doc["services"].as_mapping().expect("services");
    let mut out = Vec::new();
    for (name, svc) in services {
        let mut svc = svc.clone();
        svc.apply_merge().unwrap();
        if svc["image"].as_str() != Some("quire:latest") {
            continue;
        }
        let command = svc["command"]
            .as_sequence()
            .expect("a Quire service names its role")
            .iter()
            .map(scalar)
            .collect();
        let mut env_map = svc["environment"].clone();
        env_map.apply_merge().unwrap();
        let env = env_map
            .as_mapping()
            .expect("environment as a mapping")
            .iter()
            .map(|(k, v)| (scalar(k), interpolate(&scalar(v), vars)))
            .collect();
        out.push(Service {
            name: scalar(name),
            command,
            env,
        });
    }
    out
}

/// Metric names a PromQL expression uses.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_alphabetic() || b[i] == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            let word = &expr[start..i];
            // A metric: followed by `{`, `[` or `)`, and not a function or label.
            let next = expr[i..].trim_start().chars().next();
            let before = expr[..start].trim_end().chars().last();
            if word.starts_with("quire_")
                || (matches!(next, Some('{' | '[')) && before != Some('(') && !word.contains("by"))
            {
                names.insert(word.to_owned());
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn dashboard_queries_name_metrics() {
    let d: serde_json::Value =
        serde_json::from_str(&infra("grafana/dashboards/quire.json")).unwrap();
    let mut all = BTreeSet::new();
    for p in d["panels"].as_array().unwrap() {
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for t in targets {
            let names = metric_names(t["expr"].as_str().unwrap());
            assert!(!names.is_empty(), "no metric in {}", t["expr"]);
            all.extend(names);
        }
    }
    assert!(all.contains("quire_consumer_lag"), "{all:?}");
    assert!(all.contains("quire_fanout_queue_depth_bucket"), "{all:?}");
}

fn services_available() -> Option<(String, String)> {
    let get = |k: &str| std::env::var(k).ok().filter(|s| !s.trim().is_empty());
    match (get("QUIRE_TEST_KAFKA"), get("QUIRE_TEST_POSTGRES")) {
        (Some(k), Some(p)) => Some((k, p)),
        _ => {
            println!(
                "SKIPPED: running infra/compose.yaml's Quire services needs a Kafka broker and PostgreSQL (set QUIRE_TEST_KAFKA and QUIRE_TEST_POSTGRES)"
            );
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_stacks_quire_services_run_and_survive_kill_9() {
    let Some((broker, pg)) = services_available() else {
        return;
    };
    let vars = HashMap::from([("QUIRE_JWT_SECRET", SECRET)]);
    let services = quire_services(&vars);
    let count = |role: &str| services.iter().filter(|s| s.command[0] == role).count();
    assert!(
        count("gateway") >= 2 && count("transformer") >= 2 && count("compactor") >= 1,
        "{services:?}"
    );

    // Prometheus scrapes every Quire service, on the port it listens on.
    let prom: serde_yaml::Value =
        serde_yaml::from_str(&infra("prometheus/prometheus.yml")).unwrap();
    let mut scraped = BTreeSet::new();
    for job in prom["scrape_configs"].as_sequence().unwrap() {
        for sc in job["static_configs"].as_sequence().unwrap() {
            for t in sc["targets"].as_sequence().unwrap() {
                scraped.insert(scalar(t));
            }
        }
    }
    for s in &services {
        let port = s.env["QUIRE_ADDR"].rsplit(':').next().unwrap();
        assert!(
            scraped.contains(&format!("{}:{port}", s.name)),
            "Prometheus does not scrape {} ({scraped:?})",
            s.name
        );
        assert!(
            s.env.contains_key("QUIRE_KAFKA") && s.env.contains_key("QUIRE_SCYLLA"),
            "{s:?}"
        );
    }

    // This machine's stand-ins for the stack's servers.
    let (pg_url, _db) = fresh_database(&pg, "quire_stack").await;
    let prefix = unique_prefix();
    let tmp = tempfile::tempdir().unwrap();
    let local = |s: &Service| -> Vec<(String, String)> {
        let mut env = s.env.clone();
        env.insert("QUIRE_KAFKA".into(), broker.clone());
        env.insert("QUIRE_KAFKA_REPLICATION".into(), "1".into());
        env.insert("QUIRE_KAFKA_DELETE_RECORDS".into(), "false".into());
        env.insert("QUIRE_KAFKA_FETCH_WAIT_MS".into(), "10".into());
        env.remove("QUIRE_SCYLLA");
        env.insert("QUIRE_POSTGRES".into(), pg_url.clone());
        env.insert("QUIRE_TOPIC_PREFIX".into(), prefix.clone());
        env.into_iter().collect()
    };
    // In the compose file's dependency order: consumers before gateways.
    let mut running: BTreeMap<String, Server> = BTreeMap::new();
    for role in ["compactor", "transformer", "gateway"] {
        for s in services.iter().filter(|s| s.command[0] == role) {
            let server =
                Server::role_with_env(role, &tmp.path().join(&s.name), &s.command[1..], &local(s));
            running.insert(s.name.clone(), server);
        }
    }
    let gateway_names: Vec<String> = services
        .iter()
        .filter(|s| s.command[0] == "gateway")
        .map(|s| s.name.clone())
        .collect();
    let gateways = Arc::new(Mutex::new(
        gateway_names
            .iter()
            .map(|n| running[n].addr.clone())
            .collect::<Vec<_>>(),
    ));

    // Four editors with tokens, two a document, on alternating gateways.
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    for i in 0..4 {
        let doc = DOCS[i % DOCS.len()];
        let g = i % gateway_names.len();
        let tok = token(SECRET, &format!("user{i}"), &["stack-*"], "write", 3600);
        let base = format!("ws://{}", gateways.lock().unwrap()[g]);
        let c = Client::connect(&base, doc, &format!("s{i}"), Some(&tok))
            .await
            .unwrap();
        tasks.push(tokio::spawn(edit_until(
            c,
            doc,
            g,
            gateways.clone(),
            40 + i as u64,
            stop.clone(),
        )));
    }
    // Progress is counted, not timed: group rebalances on a slow broker
    // stall the pipeline for seconds.
    let reader = token(SECRET, "auditor", &["*"], "read", 3600);
    let progress = |min: usize| {
        let addr = gateways.lock().unwrap()[1].clone();
        let reader = reader.clone();
        async move {
            let began = tokio::time::Instant::now();
            loop {
                let counts: Vec<usize> = DOCS
                    .iter()
                    .map(|d| all_ops_with(&addr, d, &reader).len())
                    .collect();
                if counts.iter().all(|n| *n >= min) {
                    return;
                }
                assert!(began.elapsed() < T, "no progress: {counts:?} of {min} ops");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    progress(10).await;
    // A transformer and a gateway die mid-stream and come back.
    let first_transformer = services
        .iter()
        .find(|s| s.command[0] == "transformer")
        .unwrap()
        .name
        .clone();
    for name in [&first_transformer, &gateway_names[0]] {
        running.get_mut(name).unwrap().kill();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for name in [&first_transformer, &gateway_names[0]] {
        running.get_mut(name).unwrap().restart();
    }
    gateways.lock().unwrap()[0] = running[&gateway_names[0]].addr.clone();
    progress(30).await;
    stop.cancel();
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    for c in clients.iter_mut() {
        c.settle(T).await.unwrap();
    }

    let addrs: Vec<String> = gateways.lock().unwrap().clone();
    let mut acked = 0;
    for (d, doc) in DOCS.iter().enumerate() {
        let (status, state) = http(
            &addrs[1],
            "GET",
            &format!("/v1/docs/{doc}"),
            None,
            Some(&reader),
        );
        assert_eq!(status, 200, "{state}");
        let (_, other) = http(
            &addrs[0],
            "GET",
            &format!("/v1/docs/{doc}"),
            None,
            Some(&reader),
        );
        assert_eq!(state, other, "{doc}: the gateways disagree");
        let version = state["seq"].as_u64().unwrap();
        let history = all_ops_with(&addrs[1], doc, &reader);
        for (i, c) in clients
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| i % DOCS.len() == d)
        {
            c.wait_version(version, T).await.unwrap();
            assert_eq!(
                c.text(),
                state["text"].as_str().unwrap(),
                "{doc}: editor {i} diverged"
            );
            acked += check_editor(c, &format!("{doc}: editor {i}"), &history);
        }
    }
    assert!(acked > 20, "only {acked} ops acknowledged");
    println!("stack: {acked} ops acknowledged through the compose services, lost: 0");

    // Every metric the dashboard queries is exported by some service.
    let mut exported = BTreeSet::new();
    for s in running.values() {
        let (_, text) = http(&s.addr, "GET", "/metrics", None, None);
        for line in text.as_str().unwrap_or_default().lines() {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let name = line.split(['{', ' ']).next().unwrap();
            exported.insert(name.to_owned());
        }
    }
    let d: serde_json::Value =
        serde_json::from_str(&infra("grafana/dashboards/quire.json")).unwrap();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            for name in metric_names(t["expr"].as_str().unwrap()) {
                assert!(
                    exported.contains(&name),
                    "the dashboard's panel {} queries {name}, which no Quire service exports",
                    p["title"]
                );
            }
        }
    }
}

/// The whole history of `doc` through `addr`, with a token.
fn all_ops_with(addr: &str, doc: &str, tok: &str) -> HashMap<(String, u64), u64> {
    let mut out = HashMap::new();
    let mut after = 0;
    loop {
        let (status, page) = http(
            addr,
            "GET",
            &format!("/v1/docs/{doc}/ops?after={after}&limit=2000"),
            None,
            Some(tok),
        );
        assert_eq!(status, 200, "{page}");
        for op in page["ops"].as_array().unwrap() {
            let key = (
                op["client"].as_str().unwrap().to_owned(),
                op["cseq"].as_u64().unwrap(),
            );
            let fresh = out
                .insert(key.clone(), op["seq"].as_u64().unwrap())
                .is_none();
            assert!(fresh, "{key:?} applied twice");
        }
        match page["next"].as_u64() {
            Some(n) => after = n,
            None => return out,
        }
    }
}
