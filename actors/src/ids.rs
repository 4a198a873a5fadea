//! Identities shared by the actors: workers (who they are, and the id of one registration)
//! and the fencing tokens of leases.
//!
//! The ids are plain `u64` newtypes, serde-transparent, so they cross the API as numbers and the
//! network as MessagePack integers.

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

/// Who a worker is, across its restarts and reconnections: its node's name and its own name on
/// that node. Two nodes may both call a worker `cpu-0`; only the same pair registering again
/// replaces an earlier registration.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WorkerIdentity {
    /// The node's name (unique in a cluster).
    pub node: String,
    /// The worker's name on its node (`cpu-0`).
    pub name: String,
}

impl WorkerIdentity {
    /// The identity of worker `name` on node `node`.
    pub fn new(node: impl Into<String>, name: impl Into<String>) -> WorkerIdentity {
        WorkerIdentity {
            node: node.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for WorkerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.node, self.name)
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
