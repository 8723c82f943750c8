//! Which roles of this process are up, for `/readyz`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The roles a process runs and whether each is up. Cheap to clone.
#[derive(Clone, Default)]
pub struct Health {
    roles: Arc<Vec<(&'static str, AtomicBool)>>,
}

impl Health {
    /// Every named role starts up.
    pub fn new(roles: &[&'static str]) -> Health {
        Health {
            roles: Arc::new(roles.iter().map(|r| (*r, AtomicBool::new(true))).collect()),
        }
    }

    pub fn set(&self, role: &str, up: bool) {
        for (name, flag) in self.roles.iter() {
            if *name == role {
                flag.store(up, Ordering::Relaxed);
            }
        }
    }

    /// The roles that are down.
    pub fn down(&self) -> Vec<&'static str> {
        self.roles
            .iter()
            .filter(|(_, up)| !up.load(Ordering::Relaxed))
            .map(|(name, _)| *name)
            .collect()
    }
}
