//! The web console at `/` (issue 18). Being built; `[console]` parses to nothing yet.

use serde::{Deserialize, Serialize};

/// `[console]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {}
