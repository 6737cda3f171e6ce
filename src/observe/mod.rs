//! What the gateway tells its operators: Prometheus metrics for the admin
//! listener, the log subscriber, the access log and the audit trail, and
//! the non-blocking line sink the last two write through.

pub mod access;
pub mod audit;
pub mod logs;
pub mod metrics;
pub mod sink;
