//! The :8082 front door: sticky main/nightly routing, response log, releases. Built in issue #5.
