//! Authentication and authorization (issue 18): who may publish, read, play back recordings,
//! use the API and read the metrics, per path pattern. Being built; `[auth]` parses to nothing
//! yet.

use serde::{Deserialize, Serialize};

/// `[auth]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {}
