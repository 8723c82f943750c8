//! Every flag is validated at start-up: a bad value is a clear error naming
//! the flag, before anything listens (never a panic at the first request).

use std::process::Command;

fn serve(args: &[&str]) -> (bool, String) {
    run("serve", args)
}

fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_quire"))
        .arg(cmd)
        .args(["--addr", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("data"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_flags_are_refused_at_start_up_naming_the_flag() {
    for (args, flag) in [
        (&["--subscriber-queue", "0"][..], "--subscriber-queue"),
        (&["--max-connections", "0"][..], "--max-connections"),
        (&["--max-record-bytes", "100"][..], "--max-record-bytes"),
        (
            &["--max-record-bytes", "65536", "--max-insert-bytes", "65536"][..],
            "--max-insert-bytes",
        ),
        (&["--ops-per-sec", "0"][..], "--ops-per-sec"),
        (
            &["--window-ops", "10", "--window-max-ops", "5"][..],
            "--window-max-ops",
        ),
        (&["--doc-cache", "0"][..], "--doc-cache"),
        (&["--topic-prefix", "a b"][..], "--topic-prefix"),
        (&["--truncate-every-ms", "0"][..], "--truncate-every-ms"),
    ] {
        let (ok, stderr) = serve(args);
        assert!(!ok, "{args:?} was accepted");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// A role on its own would write where no other process reads: it refuses
/// the embedded log and store, naming the flags that work.
#[test]
fn a_role_process_refuses_the_embedded_log_and_store() {
    for role in ["gateway", "transformer", "compactor"] {
        let (ok, stderr) = run(role, &[]);
        assert!(!ok, "{role} started on the embedded log");
        assert!(stderr.contains("--kafka"), "{role}: {stderr}");
        // The broker need not answer: the store is checked first.
        let (ok, stderr) = run(role, &["--kafka", "127.0.0.1:1"]);
        assert!(!ok, "{role} started on the embedded store");
        assert!(stderr.contains("--postgres"), "{role}: {stderr}");
        assert!(stderr.contains("quire serve"), "{role}: {stderr}");
    }
    // `serve` keeps its embedded default (checked by every other test) and
    // takes a broker with the embedded store.
}
