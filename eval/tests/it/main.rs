//! Integration tests of the evaluator on a real Postgres.

mod default_data;
