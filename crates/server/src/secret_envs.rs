//! The decrypted environment each sandbox's secrets gave it, in memory only (the store keeps it
//! sealed, `sandbox_secret_env`). `secrets::add_env` fills it on first use after a restart and
//! adds it to every exec and shell the daemon starts. No state, no handlers here.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use zeroize::Zeroizing;

/// Variable name -> value; the values are wiped when the map goes.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretEnv(pub BTreeMap<String, Zeroizing<String>>);

impl std::fmt::Debug for SecretEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SecretEnv").field(&self.0.keys().collect::<Vec<_>>()).finish()
    }
}

/// Sandbox ID -> its secret environment (`None`: known to have none).
#[derive(Default)]
pub struct SecretEnvs {
    inner: Mutex<HashMap<String, Option<Arc<SecretEnv>>>>,
}

impl std::fmt::Debug for SecretEnvs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretEnvs").field("sandboxes", &self.map().len()).finish()
    }
}

impl SecretEnvs {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Option<Arc<SecretEnv>>>> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What is known of a sandbox: `None` if nothing yet, `Some(None)` if it has no secrets.
    pub fn get(&self, id: &str) -> Option<Option<Arc<SecretEnv>>> {
        self.map().get(id).cloned()
    }

    /// Sets a sandbox's environment (a create that named secrets).
    pub fn set(&self, id: &str, env: Option<Arc<SecretEnv>>) {
        self.map().insert(id.to_owned(), env);
    }

    /// Remembers what the store said, unless a create set it meanwhile (that one is newer).
    pub fn learn(&self, id: &str, env: Option<Arc<SecretEnv>>) -> Option<Arc<SecretEnv>> {
        self.map().entry(id.to_owned()).or_insert(env).clone()
    }

    /// Forgets a destroyed sandbox.
    pub fn forget(&self, id: &str) {
        self.map().remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_create_wins_over_a_lookup_that_raced_it() {
        let envs = SecretEnvs::default();
        let env = Arc::new(SecretEnv([("A".to_owned(), Zeroizing::new("v".to_owned()))].into()));
        // A lookup found nothing in the store, then the create's set came first.
        envs.set("s1", Some(Arc::clone(&env)));
        assert_eq!(envs.learn("s1", None), Some(Arc::clone(&env)));
        // The other order: the lookup's "none" is replaced by the create.
        assert_eq!(envs.learn("s2", None), None);
        envs.set("s2", Some(Arc::clone(&env)));
        assert_eq!(envs.get("s2"), Some(Some(env)));
        envs.forget("s2");
        assert_eq!(envs.get("s2"), None);
        let shown = format!("{envs:?} {:?}", envs.get("s1"));
        assert!(!shown.contains("\"v\""), "{shown}");
    }
}
