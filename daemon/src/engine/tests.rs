//! Engine tests: one named test per rule of the rules table in the README ("The supervision rules"), each citing its
//! source, all driven through [`Harness`], which feeds inputs and keeps every record so that
//! replay can be checked too. The property test lives in `tests/proptest.rs` beside it.

pub(crate) mod harness;
mod proptests;
mod rules;
