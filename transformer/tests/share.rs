//! The text share (`document::TextShare`): the transformer offers a
//! batch's text before it produces the batch's records, so the text is
//! there whenever fanout reads one of them. Offered after the produce,
//! fanout (woken by the record) was often first, and edited its own copy.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use document::{TextShare, Topics};
use oplog::{Call, Intercept, Intercepted};
use protocol::{chain, decode_out_record, OutRecord, RawRecord};
use tokio_util::sync::CancellationToken;
use transformer::{Metrics, TransformerConfig};

/// An offer as the hook saw it: version, text, chain hash in hex.
type Offered = (u64, String, String);

/// Notes, at each produce to the applied topic, the offer held for `doc`
/// then (taken and put back).
struct AtProduce {
    applied: String,
    doc: String,
    share: Arc<TextShare>,
    /// Per produce: its record count, and the offer then.
    seen: Mutex<Vec<(usize, Option<Offered>)>>,
}

#[async_trait::async_trait]
impl Intercept for AtProduce {
    async fn before(&self, call: Call<'_>) -> oplog::Result<()> {
        if let Call::Produce { topic, records } = call {
            if topic == self.applied {
                let mut offered = None;
                for v in 1..=8 {
                    if let Some(o) = self.share.take(&self.doc, v) {
                        offered = Some((o.version, o.text.to_string(), chain::to_hex(&o.chain)));
                        self.share.offer(&self.doc, o);
                        break;
                    }
                }
                self.seen.lock().unwrap().push((records, offered));
            }
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_text_is_offered_before_its_records_are_produced() {
    let dir = tempfile::tempdir().unwrap();
    // The embedded log, or the broker (`QUIRE_TEST_LOG=kafka`).
    let prefix = kafkalog::testing::topic_prefix();
    let topics = Topics::with_prefix(&prefix);
    let log = kafkalog::testing::open_log(dir.path(), &prefix, 1).await;
    let store = Arc::new(store::EmbeddedStore::open(&dir.path().join("store")).unwrap());
    let share = Arc::new(TextShare::new(16, 1 << 20));
    let doc = "shared-doc";
    let hook = Arc::new(AtProduce {
        applied: topics.applied.clone(),
        doc: doc.into(),
        share: share.clone(),
        seen: Mutex::new(Vec::new()),
    });
    struct Shared(Arc<AtProduce>);
    #[async_trait::async_trait]
    impl Intercept for Shared {
        async fn before(&self, call: Call<'_>) -> oplog::Result<()> {
            self.0.before(call).await
        }
    }
    let seen_log: Arc<dyn oplog::OpLog> = Arc::new(Intercepted {
        inner: log.clone(),
        hook: Shared(hook.clone()),
    });
    let config = TransformerConfig {
        topics: topics.clone(),
        text_share: Some(share.clone()),
        ..TransformerConfig::default()
    };
    let raw = |cseq: u64, base: u64, op: serde_json::Value| {
        let r = RawRecord {
            v: 1,
            doc: doc.into(),
            client: "c".into(),
            cseq,
            base,
            op: serde_json::from_value(op).unwrap(),
            user: "u".into(),
            ts: 1,
        };
        (doc.to_string(), r.encode())
    };
    let applied_up_to = |want: u64| {
        let (log, topic) = (log.clone(), topics.applied.clone());
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while log.high_watermark(&topic, 0).await.unwrap() < want {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "op {want} not applied"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    // Two ops in the log before the transformer starts: one batch, one
    // produce, and only the version it ends at is offered.
    log.produce(
        &topics.ops,
        vec![
            raw(1, 0, serde_json::json!(["héllo"])),
            raw(2, 1, serde_json::json!([5, " wörld"])),
        ],
    )
    .await
    .unwrap();
    let shutdown = CancellationToken::new();
    let role = tokio::spawn(transformer::run(
        config,
        seen_log,
        store,
        Metrics::new(&prometheus::Registry::new()),
        shutdown.clone(),
    ));
    applied_up_to(2).await;
    // Then one op alone.
    log.produce(&topics.ops, vec![raw(3, 2, serde_json::json!(["¡"]))])
        .await
        .unwrap();
    applied_up_to(3).await;
    shutdown.cancel();
    role.await.unwrap().unwrap();

    // The chain hash each version's record carries.
    let hashes: Vec<String> = log
        .fetch(&topics.applied, 0, 0, 10, Duration::ZERO)
        .await
        .unwrap()
        .iter()
        .map(|r| match decode_out_record(&r.value).unwrap() {
            OutRecord::Applied(a) => a.hash.expect("a hash"),
            other => panic!("not applied: {other:?}"),
        })
        .collect();
    assert_eq!(hashes.len(), 3);
    let seen = hook.seen.lock().unwrap().clone();
    let texts = ["héllo", "héllo wörld", "¡héllo wörld"];
    let mut version = 0;
    for (records, offered) in &seen {
        // Each produce finds the text it makes offered, with the chain
        // hash its last record carries.
        version += *records as u64;
        let v = version as usize;
        assert_eq!(
            offered.as_ref(),
            Some(&(version, texts[v - 1].to_string(), hashes[v - 1].clone())),
            "at the produce up to version {version}: {seen:?}"
        );
    }
    assert_eq!(version, 3, "{seen:?}");
    if kafkalog::testing::kafka().is_none() {
        // The embedded log gives the transformer both waiting ops at once.
        assert_eq!(seen.len(), 2, "{seen:?}");
    }
}
