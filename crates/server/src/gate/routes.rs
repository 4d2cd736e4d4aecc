//! Alias -> sandbox port, remembered: a bounded LRU in front of the store's publish rules
//! (v1: 10,000 entries), so a hot sandbox's requests never touch SQLite. Unpublishing or
//! destroying forgets the entries it makes stale.

use std::num::NonZeroUsize;
use std::sync::Mutex;

use lru::LruCache;

/// Routes remembered.
pub const MAX_ROUTES: usize = 10_000;

/// Where an alias leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The sandbox (the store's ID, also the engine's).
    pub sandbox_id: String,
    /// The guest port.
    pub port: u16,
}

/// The route cache.
#[derive(Debug)]
pub struct Routes {
    cache: Mutex<LruCache<String, Route>>,
}

impl Routes {
    /// An empty cache of `capacity` routes.
    pub fn new(capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Self { cache: Mutex::new(LruCache::new(capacity)) }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, LruCache<String, Route>> {
        self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The route of `alias`, if remembered.
    pub fn get(&self, alias: &str) -> Option<Route> {
        self.cache().get(alias).cloned()
    }

    /// Remembers a route.
    pub fn put(&self, alias: &str, route: Route) {
        self.cache().put(alias.to_owned(), route);
    }

    /// Forgets one alias (unpublished).
    pub fn forget(&self, alias: &str) {
        self.cache().pop(alias);
    }

    /// Forgets every alias of a sandbox (destroyed, or found gone).
    pub fn forget_sandbox(&self, sandbox_id: &str) {
        let mut cache = self.cache();
        let stale: Vec<String> = cache
            .iter()
            .filter(|(_, route)| route.sandbox_id == sandbox_id)
            .map(|(alias, _)| alias.clone())
            .collect();
        for alias in stale {
            cache.pop(&alias);
        }
    }

    /// Routes remembered now.
    pub fn len(&self) -> usize {
        self.cache().len()
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for Routes {
    fn default() -> Self {
        Self::new(MAX_ROUTES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(id: &str, port: u16) -> Route {
        Route { sandbox_id: id.into(), port }
    }

    #[test]
    fn bounded_and_forgotten_by_alias_or_sandbox() {
        let routes = Routes::new(2);
        routes.put("a", route("sb1", 80));
        routes.put("b", route("sb1", 81));
        assert_eq!(routes.get("a"), Some(route("sb1", 80)));
        // "b" is now the least recently used: a third route pushes it out.
        routes.put("c", route("sb2", 80));
        assert_eq!((routes.get("b"), routes.len()), (None, 2));
        routes.forget_sandbox("sb1");
        assert_eq!(routes.get("a"), None);
        assert_eq!(routes.get("c"), Some(route("sb2", 80)));
        routes.forget("c");
        assert!(routes.is_empty());
    }
}
