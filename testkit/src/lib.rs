//! Helpers for Quire's tests and benches, kept out of the product crates'
//! public API: [`SplitMix64`], the seeded PRNG every deterministic test uses,
//! and [`traces`], the loader of the real editing traces in `testdata/`.
//!
//! It depends on no Quire crate, so any crate (`ot` included) can take it as
//! a dev-dependency without a dependency cycle.

mod rng;
pub mod traces;

pub use rng::SplitMix64;
