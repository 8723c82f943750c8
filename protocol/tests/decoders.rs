//! A seeded fuzzer over every decoder: mutated valid inputs must give a
//! value or a coded error, never a panic. Rerun one seed with
//! `QUIRE_SEED=<seed>`.

use protocol::{decode_out_record, decode_raw_record, ClientMsg, ErrorCode, ServerMsg};
use testkit::SplitMix64;

const SEEDS: &[&str] = &[
    r#"{"type":"hello","client":"c1","since":4}"#,
    r#"{"type":"op","client":"c1","cseq":1,"base":0,"op":[1,"x😀",-2]}"#,
    r#"{"type":"presence","seq":3,"cursor":{"anchor":1,"head":2},"meta":{"name":"a"}}"#,
    r#"{"type":"ping"}"#,
    r#"{"v":1,"doc":"d","client":"c","cseq":1,"base":0,"op":["hi"],"user":"u","ts":1}"#,
    r#"{"kind":"applied","v":1,"doc":"d","seq":5,"prev":2,"client":"c","cseq":1,"base":2,"user":"u","ts":7,"op":[1,"x",-1],"del":["y"]}"#,
    r#"{"v":1,"kind":"rejected","doc":"d","seq":5,"client":"c","cseq":1,"code":"INVALID_OP","message":"no"}"#,
];

const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "-",
    "1e99",
    "-0",
    "null",
    "true",
    "1.5",
    "\\u0000",
    "😀",
    "99999999999999999999",
];

fn mutate(r: &mut SplitMix64, s: &str) -> Vec<u8> {
    let mut b = s.as_bytes().to_vec();
    for _ in 0..1 + r.below(4) {
        let at = r.below(b.len() as u64 + 1) as usize;
        match r.below(4) {
            0 if !b.is_empty() => {
                let end = (at + 1 + r.below(6) as usize).min(b.len());
                b.drain(at.min(end)..end);
            }
            1 => {
                let t = r.pick::<&str>(TOKENS).as_bytes().to_vec();
                b.splice(at..at, t);
            }
            2 if at < b.len() => b[at] = r.below(256) as u8,
            _ => {
                let t = r.pick::<&str>(SEEDS).as_bytes().to_vec();
                let cut = r.below(t.len() as u64) as usize;
                b.splice(at..at, t[..cut].to_vec());
            }
        }
    }
    b
}

#[test]
fn decoders_never_panic_on_mutated_input() {
    let (start, n) = match std::env::var("QUIRE_SEED") {
        Ok(s) => (s.parse().unwrap(), 1),
        Err(_) => (0u64, 20_000),
    };
    let mut accepted = 0;
    for seed in start..start + n {
        let mut r = SplitMix64::new(seed);
        let base = *r.pick::<&str>(SEEDS);
        let input = mutate(&mut r, base);
        let result = std::panic::catch_unwind(|| {
            let text = String::from_utf8_lossy(&input);
            let a = ClientMsg::parse(&text);
            if let Err(e) = &a {
                assert!(ErrorCode::ALL.contains(&e.code));
            }
            let _ = serde_json::from_str::<ServerMsg>(&text);
            let b = decode_raw_record(&input);
            let c = decode_out_record(&input);
            a.is_ok() as usize + b.is_ok() as usize + c.is_ok() as usize
        });
        match result {
            Ok(k) => accepted += k,
            Err(e) => {
                eprintln!(
                    "decoder panicked on seed {seed}: {:?}",
                    String::from_utf8_lossy(&input)
                );
                std::panic::resume_unwind(e);
            }
        }
    }
    // Some mutations stay valid; most must be refused.
    if n > 1 {
        assert!(
            accepted > 100 && accepted < n as usize,
            "accepted {accepted} of {n}"
        );
    }
}
