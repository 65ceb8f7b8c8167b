//! Test tools for checkpoints in S3-compatible object storage.
//!
//! - [`servers`]: the local S3 servers `scripts/s3-up` starts (moto and
//!   SeaweedFS), their endpoints and credentials, and a clear failure when
//!   one is not running.
//! - [`proxy`]: a fault-injecting HTTP proxy to put between a job and a
//!   server: it refuses, delays, cuts a request mid-body, or answers an
//!   error status, at chosen requests.
//!
//! Owns no part of the checkpoint protocol: that is `exactly::storage`.

pub mod proxy;
pub mod servers;
