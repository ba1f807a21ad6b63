//! Hooks (issue 18): HTTP POSTs or local commands on publish, unpublish, read start and stop,
//! and a recording segment complete, sent in the background, never delaying media. Being
//! built; `[hooks]` parses to nothing yet.

use serde::{Deserialize, Serialize};

/// `[hooks]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HooksConfig {}
