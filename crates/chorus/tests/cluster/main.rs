//! Distributed mode: several `chorus serve` processes joined only by a real
//! Kafka-protocol broker, PostgreSQL and Redis.
//!
//! Needs `CHORUS_TEST_KAFKA`, `CHORUS_TEST_POSTGRES` and `CHORUS_TEST_REDIS` (the test
//! script sets them, starting the servers); without them every test says it is skipped.
//! The broker-outage test also needs `CHORUS_TEST_TANSU`, the broker binary, to run a
//! broker of its own. Each test uses its own topic prefix, database and Redis keys.
#![cfg(feature = "kafka")]

#[path = "../api/helpers.rs"]
#[allow(dead_code, reason = "shared with the api tests, which use other parts")]
mod helpers;

mod harness;
mod scenarios;
