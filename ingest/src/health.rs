//! Which roles of this process are up, for `/readyz`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The roles a process runs and whether each is up. Cheap to clone.
#[derive(Clone, Default)]
pub struct Health {
    roles: Arc<Vec<Role>>,
}

struct Role {
    name: &'static str,
    up: AtomicBool,
    /// Set by the role once it has work: its first consumer-group
    /// assignment.
    joined: Arc<AtomicBool>,
}

impl Health {
    /// Every named role starts up.
    pub fn new(roles: &[&'static str]) -> Health {
        Health {
            roles: Arc::new(
                roles
                    .iter()
                    .map(|r| Role {
                        name: r,
                        up: AtomicBool::new(true),
                        joined: Arc::new(AtomicBool::new(true)),
                    })
                    .collect(),
            ),
        }
    }

    pub fn set(&self, role: &str, up: bool) {
        for r in self.roles.iter() {
            if r.name == role {
                r.up.store(up, Ordering::Relaxed);
            }
        }
    }

    /// The role counts as down until it sets the returned flag (when its
    /// consumer group first assigns it partitions).
    pub fn until_joined(&self, role: &str) -> Arc<AtomicBool> {
        let r = self
            .roles
            .iter()
            .find(|r| r.name == role)
            .expect("a role of this process");
        r.joined.store(false, Ordering::Relaxed);
        r.joined.clone()
    }

    /// The roles that are down.
    pub fn down(&self) -> Vec<&'static str> {
        self.roles
            .iter()
            .filter(|r| !r.up.load(Ordering::Relaxed) || !r.joined.load(Ordering::Relaxed))
            .map(|r| r.name)
            .collect()
    }
}
