use std::sync::Arc;

use oplog::OpLog;
use ot::{Op, SentOp};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use protocol::{now_ms, ErrorCode, Limits, PresenceRecord, ProtoError, RawRecord, RECORD_VERSION};

#[derive(Clone)]
pub struct Metrics {
    pub produced: IntCounter,
    pub produce_seconds: Histogram,
    pub errors: IntCounterVec,
    pub connections: IntGauge,
}

impl Metrics {
    pub fn new(registry: &Registry) -> Metrics {
        let produced = IntCounter::new(
            "quire_ingest_ops_produced_total",
            "Raw ops produced to the log",
        )
        .unwrap();
        let produce_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "quire_ingest_produce_seconds",
                "Time to produce one raw op durably",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0,
            ]),
        )
        .unwrap();
        let errors = IntCounterVec::new(
            Opts::new(
                "quire_ingest_errors_total",
                "Errors sent to clients, by code",
            ),
            &["code"],
        )
        .unwrap();
        // Every code's series exists from the start (at 0), so a rate over
        // it is defined before the first error.
        for code in ErrorCode::ALL {
            errors.with_label_values(&[code.as_str()]);
        }
        let connections =
            IntGauge::new("quire_ingest_connections", "Open WebSocket connections").unwrap();
        let _ = registry.register(Box::new(produced.clone()));
        let _ = registry.register(Box::new(produce_seconds.clone()));
        let _ = registry.register(Box::new(errors.clone()));
        let _ = registry.register(Box::new(connections.clone()));
        Metrics {
            produced,
            produce_seconds,
            errors,
            connections,
        }
    }
}

/// The ingest role: checks and produces raw ops.
#[derive(Clone)]
pub struct Ingest {
    log: Arc<dyn OpLog>,
    topic: String,
    presence_topic: String,
    limits: Limits,
    metrics: Metrics,
}

impl Ingest {
    /// `topic` takes raw ops, `presence_topic` presence and leaves.
    pub fn new(
        log: Arc<dyn OpLog>,
        topic: String,
        presence_topic: String,
        limits: Limits,
        metrics: Metrics,
    ) -> Ingest {
        Ingest {
            log,
            topic,
            presence_topic,
            limits,
            metrics,
        }
    }

    /// Limits on the op itself (after the duplicate check).
    pub fn check(&self, op: &Op) -> Result<(), ProtoError> {
        let bytes = op.inserted_bytes();
        if bytes > self.limits.max_insert_bytes {
            return Err(ProtoError::new(
                ErrorCode::TooLarge,
                format!(
                    "op inserts {bytes} bytes, the limit is {}",
                    self.limits.max_insert_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Produces the raw record durably; returns its seq (offset + 1).
    pub async fn submit(
        &self,
        doc: &str,
        user: &str,
        client: &str,
        cseq: u64,
        base: u64,
        op: SentOp,
    ) -> Result<u64, ProtoError> {
        self.check(op.op())?;
        let rec = RawRecord {
            v: RECORD_VERSION,
            doc: doc.to_owned(),
            client: client.to_owned(),
            cseq,
            base,
            op,
            user: user.to_owned(),
            ts: now_ms(),
        };
        let value = rec.encode();
        if value.len() > self.limits.max_record_bytes {
            return Err(ProtoError::new(
                ErrorCode::TooLarge,
                format!(
                    "the op's record would be {} bytes, over the {} byte limit",
                    value.len(),
                    self.limits.max_record_bytes
                ),
            ));
        }
        let timer = self.metrics.produce_seconds.start_timer();
        let out = self
            .log
            .produce(&self.topic, vec![(doc.to_owned(), value)])
            .await;
        timer.observe_duration();
        match out {
            Ok(o) => {
                self.metrics.produced.inc();
                Ok(o[0].1 + 1)
            }
            Err(e) => {
                tracing::error!(error = %e, "produce failed");
                Err(ProtoError::new(
                    ErrorCode::Overloaded,
                    format!("the log did not take the op: {e}"),
                ))
            }
        }
    }

    /// Produces a presence update or a leave to the presence topic. Presence
    /// is ephemeral: a failure is logged, not reported to anyone.
    pub async fn presence(&self, rec: PresenceRecord) {
        let doc = match &rec {
            PresenceRecord::Presence { doc, .. } | PresenceRecord::Leave { doc, .. } => doc.clone(),
        };
        if let Err(e) = self
            .log
            .produce(&self.presence_topic, vec![(doc, rec.encode())])
            .await
        {
            tracing::warn!(error = %e, "presence not produced");
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}
