//! Identities shared by the actors: workers and the fencing tokens of leases.
//!
//! Plain `u64` newtypes, serde-transparent, so they cross the API as numbers and the network as
//! MessagePack integers.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A worker's identity, unique within a node's journal (and, later, a cluster's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WorkerId(pub u64);

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A lease's fencing token. Tokens are handed out in strictly increasing order and the highest
/// one is persisted, so a token is never reused, not even across restarts: a larger token always
/// means a newer attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FencingToken(pub u64);

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
