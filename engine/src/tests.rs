//! Engine tests: one named test per rule of the rules table in the README ("The supervision rules"), each citing its
//! source, all driven through [`crate::testing::Harness`], which feeds inputs and keeps every record so that
//! replay can be checked too. The property test lives in `tests/proptest.rs` beside it, a cluster's
//! partitioning in `tests/partitioning.rs`.

mod partitioning;
mod proptests;
mod rules;
