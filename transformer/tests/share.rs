//! The text share (`document::TextShare`): the transformer offers a
//! batch's text before it produces the batch's records, so the text is
//! there whenever fanout reads one of them. Offered after the produce,
//! fanout (woken by the record) was often first, and edited its own copy.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use document::{TextShare, Topics};
use oplog::{Call, Intercept, Intercepted};
use protocol::RawRecord;
use tokio_util::sync::CancellationToken;
use transformer::{Metrics, TransformerConfig};

/// Notes, at each produce to the applied topic, the version offered for
/// `doc` then (taking it and putting it back).
struct AtProduce {
    applied: String,
    doc: String,
    share: Arc<TextShare>,
    seen: Mutex<Vec<Option<(u64, String)>>>,
}

#[async_trait::async_trait]
impl Intercept for AtProduce {
    async fn before(&self, call: Call<'_>) -> oplog::Result<()> {
        if let Call::Produce { topic, .. } = call {
            if topic == self.applied {
                let mut offered = None;
                for v in 1..=8 {
                    if let Some(o) = self.share.take(&self.doc, v) {
                        offered = Some((o.version, o.text.to_string()));
                        self.share.offer(&self.doc, o);
                    }
                }
                self.seen.lock().unwrap().push(offered);
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
    let shutdown = CancellationToken::new();
    let role = tokio::spawn(transformer::run(
        config,
        seen_log,
        store,
        Metrics::new(&prometheus::Registry::new()),
        shutdown.clone(),
    ));

    // Two ops, one at a time: two batches, two produces.
    for (cseq, (base, op)) in [
        (0, serde_json::json!(["héllo"])),
        (1, serde_json::json!([5, " wörld"])),
    ]
    .into_iter()
    .enumerate()
    {
        let raw = RawRecord {
            v: 1,
            doc: doc.into(),
            client: "c".into(),
            cseq: cseq as u64 + 1,
            base,
            op: serde_json::from_value(op).unwrap(),
            user: "u".into(),
            ts: 1,
        };
        log.produce(&topics.ops, vec![(doc.into(), raw.encode())])
            .await
            .unwrap();
        let want = cseq as u64 + 1;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while log.high_watermark(&topics.applied, 0).await.unwrap() < want {
            assert!(
                tokio::time::Instant::now() < deadline,
                "op {want} not applied"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    shutdown.cancel();
    role.await.unwrap().unwrap();

    let seen = hook.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            Some((1, "héllo".to_string())),
            Some((2, "héllo wörld".to_string()))
        ],
        "the text each produce makes, offered before it"
    );
}
