//! Where a process stands in its tree: its parent, process group and
//! session (the capture side is `crate::capture::tree`, the restore side
//! `pool::restore::tree`).
//!
//! Every id is a pid as the capturer saw it; a copy is restored with the
//! same pids in its own pid namespace, so an id naming a process of the
//! captured tree names the same process in the copy. An id naming a
//! process outside the tree (the session of the shell that started the
//! root, say) cannot be recreated: the copy's root keeps the session and
//! group the restorer gives it, and a process whose group or session was
//! the root's inherits the root's.

use serde::{Deserialize, Serialize};

/// Most processes a snapshot may describe (each one costs the restorer a
/// ptrace hold, a plan of descriptors and, in `uffd` mode, a page server).
pub const MAX_PROCESSES: usize = 64;

/// The parent, process group and session of a process (fields 4, 5 and 6
/// of `/proc/PID/stat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ProcessIds {
    /// The parent's pid.
    pub ppid: i32,
    /// The process group id.
    pub pgid: i32,
    /// The session id.
    pub sid: i32,
}

impl ProcessIds {
    /// Whether the process leads its own session.
    pub fn leads_session(&self, pid: i32) -> bool {
        self.sid == pid
    }

    /// Whether the process leads its process group.
    pub fn leads_group(&self, pid: i32) -> bool {
        self.pgid == pid
    }
}

/// What one process of a tree must do, after it was created by its parent,
/// to get its saved session and group (see [`plan_ids`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdStep {
    /// Nothing: it inherits what it must have from its parent (or it is the
    /// root and keeps what the restorer gives it).
    Inherit,
    /// `setsid()` right after it is created, before it creates children.
    NewSession,
    /// `setpgid(0, 0)`: it leads a new group in its session.
    LeadGroup,
    /// `setpgid(0, pgid)` once that group's leader leads it.
    JoinGroup(i32),
}

/// Why the sessions and groups of a tree cannot be recreated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeIdsError {
    /// A session or group names a process outside the tree that is not the
    /// root's.
    #[error("process {pid}: its {what} {id} is neither the root's nor a process of the tree")]
    Outside {
        /// The process.
        pid: i32,
        /// "session" or "process group".
        what: &'static str,
        /// The id.
        id: i32,
    },
    /// A process is in a session other than its parent's without leading it.
    #[error("process {pid}: session {sid} is neither its parent's ({parent_sid}) nor its own")]
    Session {
        /// The process.
        pid: i32,
        /// Its session.
        sid: i32,
        /// Its parent's.
        parent_sid: i32,
    },
    /// A group whose leader is not in the member's session.
    #[error("process {pid}: process group {pgid} is led by a process of another session")]
    Group {
        /// The process.
        pid: i32,
        /// Its group.
        pgid: i32,
    },
}

/// For every process of a tree (`(pid, ids)`, the root first, parents
/// before their children), the step that gives it its saved session and
/// group. The root's own session or group is recreated when it led them
/// (`NewSession` / `LeadGroup`); otherwise its session and group are
/// outside the tree and the root keeps the restorer's, and so does every
/// process that shared them.
pub fn plan_ids(tree: &[(i32, ProcessIds)]) -> Result<Vec<IdStep>, TreeIdsError> {
    let Some(&(root, root_ids)) = tree.first() else {
        return Ok(Vec::new());
    };
    let member = |id: i32| tree.iter().any(|(p, _)| *p == id);
    let ids_of = |id: i32| tree.iter().find(|(p, _)| *p == id).map(|(_, i)| *i);
    let mut steps = Vec::with_capacity(tree.len());
    for &(pid, ids) in tree {
        if ids.leads_session(pid) {
            steps.push(IdStep::NewSession);
            continue;
        }
        // Not a session leader: the session comes from the parent.
        if pid != root {
            let parent_sid = ids_of(ids.ppid).map(|p| p.sid).unwrap_or(root_ids.sid);
            if ids.sid != parent_sid {
                return Err(TreeIdsError::Session {
                    pid,
                    sid: ids.sid,
                    parent_sid,
                });
            }
            if ids.sid != root_ids.sid && !member(ids.sid) {
                return Err(TreeIdsError::Outside {
                    pid,
                    what: "session",
                    id: ids.sid,
                });
            }
        }
        let step = if ids.leads_group(pid) {
            IdStep::LeadGroup
        } else if pid == root || ids.pgid == root_ids.pgid && !member(ids.pgid) {
            IdStep::Inherit
        } else if let Some(leader) = ids_of(ids.pgid) {
            if leader.sid != ids.sid {
                return Err(TreeIdsError::Group {
                    pid,
                    pgid: ids.pgid,
                });
            }
            IdStep::JoinGroup(ids.pgid)
        } else {
            return Err(TreeIdsError::Outside {
                pid,
                what: "process group",
                id: ids.pgid,
            });
        };
        steps.push(step);
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(ppid: i32, pgid: i32, sid: i32) -> ProcessIds {
        ProcessIds { ppid, pgid, sid }
    }

    #[test]
    fn a_session_leader_with_a_grouped_helper_and_a_setsid_grandchild() {
        let tree = [
            (100, ids(1, 100, 100)),
            (101, ids(100, 101, 100)),
            (102, ids(101, 102, 102)),
            (103, ids(101, 101, 100)),
        ];
        assert_eq!(
            plan_ids(&tree).unwrap(),
            vec![
                IdStep::NewSession,
                IdStep::LeadGroup,
                IdStep::NewSession,
                IdStep::JoinGroup(101)
            ]
        );
    }

    #[test]
    fn the_roots_outside_session_and_group_are_inherited() {
        let tree = [(100, ids(7, 50, 40)), (101, ids(100, 50, 40))];
        assert_eq!(
            plan_ids(&tree).unwrap(),
            vec![IdStep::Inherit, IdStep::Inherit]
        );
    }

    #[test]
    fn a_group_outside_the_tree_is_refused() {
        let tree = [(100, ids(7, 50, 40)), (101, ids(100, 60, 40))];
        let err = plan_ids(&tree).unwrap_err().to_string();
        assert_eq!(
            err,
            "process 101: its process group 60 is neither the root's nor a process of the tree"
        );
    }

    #[test]
    fn a_session_other_than_the_parents_is_refused() {
        let tree = [
            (100, ids(7, 100, 100)),
            (101, ids(100, 101, 101)),
            (102, ids(101, 102, 100)),
        ];
        let err = plan_ids(&tree).unwrap_err().to_string();
        assert!(err.contains("process 102: session 100"), "{err}");
    }
}
