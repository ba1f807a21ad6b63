//! Prometheus metrics at `/metrics` (issue 18). Being built.
