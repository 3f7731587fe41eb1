//! The live sessions, one per agent: when an agent connects again while its older connection
//! still looks alive (a restart, a network change), the newer connection wins and the older is
//! closed with [`close_code::REPLACED`](outpost_common::wire::close_code::REPLACED).
//!
//! "Newer" is by connection id, which the listener hands out in the order connections arrive,
//! not by the order in which sessions get established: an older connection whose Hello took
//! longer to record does not push out the newer one. Only the current connection of an agent
//! may record its disconnect; a replaced one ends quietly.
//!
//! The handle `H` is whatever lets the caller reach a session (in the service, a channel to its
//! driver); this structure only decides.

use std::collections::{HashMap, HashSet};

/// Identifies one connection; increases with each accepted connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnectionId(pub u64);

/// What registering an established session did.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission<H> {
    /// No other connection of this agent was registered.
    First,
    /// It replaced this older connection of the agent, which the caller now closes.
    Replaces(H),
    /// A newer connection of the agent is registered already: this one is the one to close.
    Superseded,
}

#[derive(Debug)]
struct Entry<H> {
    connection: ConnectionId,
    serial: Vec<u8>,
    handle: H,
}

/// The current connection of each connected agent.
#[derive(Debug)]
pub struct Sessions<H> {
    by_agent: HashMap<String, Entry<H>>,
}

impl<H> Default for Sessions<H> {
    fn default() -> Self {
        Sessions {
            by_agent: HashMap::new(),
        }
    }
}

impl<H> Sessions<H> {
    /// Registers `connection` of `agent_id`, whose certificate has `serial`, as established.
    pub fn establish(
        &mut self,
        agent_id: &str,
        connection: ConnectionId,
        serial: Vec<u8>,
        handle: H,
    ) -> Admission<H> {
        let entry = Entry {
            connection,
            serial,
            handle,
        };
        match self.by_agent.get_mut(agent_id) {
            None => {
                self.by_agent.insert(agent_id.to_owned(), entry);
                Admission::First
            }
            Some(current) if current.connection > connection => Admission::Superseded,
            Some(current) => {
                let older = std::mem::replace(current, entry);
                if older.connection == connection {
                    // Registered twice; nothing to close.
                    Admission::First
                } else {
                    Admission::Replaces(older.handle)
                }
            }
        }
    }

    /// Forgets `connection` of `agent_id` when it ends; returns whether it may record the
    /// agent's disconnect: it was the agent's current connection, or no connection of the agent
    /// is registered (one that ended before its session was established).
    pub fn end(&mut self, agent_id: &str, connection: ConnectionId) -> bool {
        match self.by_agent.get(agent_id) {
            None => true,
            Some(e) if e.connection == connection => {
                self.by_agent.remove(agent_id);
                true
            }
            Some(_) => false,
        }
    }

    /// The sessions whose certificate serial is in `revoked`, as (agent id, serial, handle).
    pub fn revoked<'a>(
        &'a self,
        revoked: &'a HashSet<Vec<u8>>,
    ) -> impl Iterator<Item = (&'a str, &'a [u8], &'a H)> + 'a {
        self.by_agent
            .iter()
            .filter(|(_, e)| revoked.contains(&e.serial))
            .map(|(id, e)| (id.as_str(), e.serial.as_slice(), &e.handle))
    }

    /// How many agents have a registered session.
    pub fn len(&self) -> usize {
        self.by_agent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_agent.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> ConnectionId {
        ConnectionId(n)
    }

    #[test]
    fn a_newer_connection_replaces_the_older_which_then_ends_quietly() {
        let mut s = Sessions::default();
        assert_eq!(s.establish("a", id(1), vec![1], "first"), Admission::First);
        assert_eq!(
            s.establish("a", id(2), vec![1], "second"),
            Admission::Replaces("first")
        );
        assert_eq!(s.len(), 1);
        assert!(!s.end("a", id(1)), "the replaced connection is not current");
        assert_eq!(s.len(), 1, "ending the older one leaves the newer");
        assert!(s.end("a", id(2)));
        assert!(s.is_empty());
    }

    #[test]
    fn an_older_connection_established_late_is_superseded() {
        let mut s = Sessions::default();
        assert_eq!(s.establish("a", id(5), vec![1], "newer"), Admission::First);
        assert_eq!(
            s.establish("a", id(4), vec![1], "older"),
            Admission::Superseded
        );
        assert!(!s.end("a", id(4)));
        assert!(s.end("a", id(5)));
    }

    #[test]
    fn agents_do_not_replace_each_other() {
        let mut s = Sessions::default();
        assert_eq!(s.establish("a", id(1), vec![1], 'a'), Admission::First);
        assert_eq!(s.establish("b", id(2), vec![2], 'b'), Admission::First);
        assert_eq!(s.len(), 2);
        assert!(!s.end("b", id(1)), "another agent's connection id");
        assert!(s.end("a", id(1)));
        assert!(s.end("b", id(2)));
    }

    #[test]
    fn a_connection_that_never_established_disconnects_only_an_agent_without_a_session() {
        let mut s = Sessions::default();
        assert_eq!(s.establish("a", id(1), vec![1], ()), Admission::First);
        assert!(
            !s.end("a", id(2)),
            "a later connection that failed its Hello speaks not for the agent"
        );
        assert_eq!(s.len(), 1);
        assert!(
            s.end("b", id(3)),
            "no other connection speaks for this agent"
        );
    }

    #[test]
    fn revoked_serials_find_their_sessions() {
        let mut s = Sessions::default();
        s.establish("a", id(1), vec![0xaa], 1);
        s.establish("b", id(2), vec![0xbb], 2);
        let revoked: HashSet<Vec<u8>> = [vec![0xbb], vec![0xcc]].into_iter().collect();
        let found: Vec<_> = s.revoked(&revoked).collect();
        assert_eq!(found, [("b", &[0xbb_u8][..], &2)]);
    }
}
