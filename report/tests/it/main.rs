//! Integration tests of the reports on a real Postgres.

mod known_telemetry;
