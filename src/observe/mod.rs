//! What the gateway tells its operators: Prometheus metrics for the admin
//! listener, and the log subscriber the access and security lines go to.

pub mod logs;
pub mod metrics;
