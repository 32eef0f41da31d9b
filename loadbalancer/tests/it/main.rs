//! Integration tests of the load balancer in front of real servers (the server crate on a
//! private Postgres holding the default dataset, real embeddings in qdrant-edge). A fault
//! injector (a TCP proxy that can be cut) stands in for a crashing backend: the only fake.

use testkit::{fleet, stack as helpers};

mod admin;
mod contract;
mod durability;
mod faults;
mod hostile;
mod journal;
mod overload;
mod replicas;
mod sticky;
