//! Integration tests of the simulator: determinism against a fixed endpoint, the closed loop on
//! the real stack (Postgres, servers with real embeddings, the load balancer, the ingester
//! following the simulator's log), and the Kafka path against a real broker (tansu, when
//! installed; SKIPPED with the reason otherwise), and the monitoring configuration (real
//! Prometheus and Alertmanager) on that stack.

use testkit::stack as helpers;

mod determinism;
mod kafka;
mod loop_closing;
mod monitoring;
