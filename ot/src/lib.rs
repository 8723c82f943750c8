//! Operational transformation over plain text (SPEC §3).
//!
//! An [`Op`] is a list of [`Component`]s walking the document from the start:
//! retain `n` code points, insert a string, or delete `n` code points. Anything
//! after the last component is retained implicitly. Every position and length
//! counts Unicode scalar values, never bytes.
//!
//! This crate does no I/O, keeps no clock and cannot fail on valid input: the
//! only errors are "this op does not fit this document" and malformed input.

mod op;

pub use op::{
    apply, apply_rope, apply_with_deleted, compose, invert, transform, transform_by,
    transform_cursor, Component, Move, Op, OtError, SentOp, Side,
};
