//! The vhost routing table shared by http, https and tcpmux (spec §11.1): routes keyed by
//! (domain, location, routeByHTTPUser), looked up in frp's order.

use std::collections::HashMap;

/// Adding a route whose (domain, location, user) is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("router config conflict")]
pub(crate) struct RouterConflict;

/// Routes by domain, then by routeByHTTPUser; each list sorted by location, descending.
pub(crate) struct Router<T> {
    by_domain: HashMap<String, HashMap<String, Vec<(String, T)>>>,
}

impl<T> Default for Router<T> {
    fn default() -> Self {
        Router {
            by_domain: HashMap::new(),
        }
    }
}

impl<T> Router<T> {
    /// Adds a route; the domain is matched case-insensitively.
    pub(crate) fn add(
        &mut self,
        domain: &str,
        location: &str,
        user: &str,
        payload: T,
    ) -> Result<(), RouterConflict> {
        let routes = self
            .by_domain
            .entry(domain.to_ascii_lowercase())
            .or_default()
            .entry(user.to_string())
            .or_default();
        if routes.iter().any(|(l, _)| l == location) {
            return Err(RouterConflict);
        }
        routes.push((location.to_string(), payload));
        // Descending: a longer location sorts before its own prefix.
        routes.sort_by(|a, b| b.0.cmp(&a.0));
        Ok(())
    }

    /// The route with exactly this key.
    pub(crate) fn get_exact(&self, domain: &str, location: &str, user: &str) -> Option<&T> {
        self.by_domain
            .get(&domain.to_ascii_lowercase())?
            .get(user)?
            .iter()
            .find(|(l, _)| l == location)
            .map(|(_, p)| p)
    }

    /// Removes the route with exactly this key.
    pub(crate) fn remove(&mut self, domain: &str, location: &str, user: &str) -> Option<T> {
        let domain = domain.to_ascii_lowercase();
        let by_user = self.by_domain.get_mut(&domain)?;
        let routes = by_user.get_mut(user)?;
        let i = routes.iter().position(|(l, _)| l == location)?;
        let (_, p) = routes.remove(i);
        if routes.is_empty() {
            by_user.remove(user);
            if by_user.is_empty() {
                self.by_domain.remove(&domain);
            }
        }
        Some(p)
    }

    /// frp's lookup (`getByRoute`): the exact host (with `user`, then with user ""), then
    /// wildcards replacing the leftmost label while at least three labels remain (never
    /// `*.com`), then the catch-all domain `*`. Within a host, the first location (in
    /// descending order) that is a string prefix of `path` wins. `host` must already be
    /// canonical (lowercase, no port, no trailing dot).
    pub(crate) fn lookup(&self, host: &str, path: &str, user: &str) -> Option<&T> {
        if let Some(p) = self.exact_or_all_users(host, path, user) {
            return Some(p);
        }
        let mut labels: Vec<&str> = host.split('.').collect();
        while labels.len() >= 3 {
            labels[0] = "*";
            let wildcard = labels.join(".");
            if let Some(p) = self.exact_or_all_users(&wildcard, path, user) {
                return Some(p);
            }
            labels.remove(0);
        }
        self.exact_or_all_users("*", path, user)
    }

    fn exact_or_all_users(&self, host: &str, path: &str, user: &str) -> Option<&T> {
        let by_user = self.by_domain.get(host)?;
        let find = |u: &str| {
            by_user
                .get(u)?
                .iter()
                .find(|(l, _)| path.starts_with(l.as_str()))
                .map(|(_, p)| p)
        };
        find(user).or_else(|| find(""))
    }

    /// Number of routes (tests, debugging).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_domain
            .values()
            .flat_map(|u| u.values())
            .map(Vec::len)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(routes: &[(&str, &str, &str, u32)]) -> Router<u32> {
        let mut r = Router::default();
        for &(d, l, u, p) in routes {
            r.add(d, l, u, p).unwrap();
        }
        r
    }

    #[test]
    fn exact_before_wildcard_before_catch_all() {
        let r = router(&[
            ("a.example.com", "", "", 1),
            ("*.example.com", "", "", 2),
            ("*", "", "", 3),
            ("*.b.example.com", "", "", 4),
        ]);
        assert_eq!(r.lookup("a.example.com", "/", ""), Some(&1));
        assert_eq!(r.lookup("x.example.com", "/", ""), Some(&2));
        assert_eq!(r.lookup("x.b.example.com", "/", ""), Some(&4));
        assert_eq!(r.lookup("x.y.example.com", "/", ""), Some(&2));
        assert_eq!(r.lookup("other.org", "/", ""), Some(&3));
        assert_eq!(r.lookup("", "/", ""), Some(&3));
    }

    #[test]
    fn wildcard_walk_never_reaches_the_top_level_domain() {
        let r = router(&[("*.com", "", "", 1)]);
        assert_eq!(r.lookup("example.com", "/", ""), None);
        // Three labels: the first step already is *.example.com, then the walk stops.
        assert_eq!(r.lookup("a.example.com", "/", ""), None);
    }

    #[test]
    fn locations_longest_prefix_first_and_empty_matches_all() {
        let r = router(&[
            ("h", "", "", 0),
            ("h", "/api", "", 1),
            ("h", "/api/v2", "", 2),
            ("h", "/", "", 3),
        ]);
        assert_eq!(r.lookup("h", "/api/v2/x", ""), Some(&2));
        assert_eq!(r.lookup("h", "/api/v1", ""), Some(&1));
        assert_eq!(r.lookup("h", "/apix", ""), Some(&1), "plain string prefix");
        assert_eq!(r.lookup("h", "/index.html", ""), Some(&3));
        assert_eq!(r.lookup("h", "", ""), Some(&0));
    }

    #[test]
    fn http_user_then_all_users() {
        let r = router(&[("h", "", "alice", 1), ("h", "", "", 2)]);
        assert_eq!(r.lookup("h", "/", "alice"), Some(&1));
        assert_eq!(r.lookup("h", "/", "bob"), Some(&2));
        assert_eq!(r.lookup("h", "/", ""), Some(&2));
        let r = router(&[("h", "", "alice", 1)]);
        assert_eq!(r.lookup("h", "/", "bob"), None);
    }

    #[test]
    fn conflicts_and_removal() {
        let mut r = router(&[("Example.COM", "/a", "", 1)]);
        assert_eq!(r.add("example.com", "/a", "", 2), Err(RouterConflict));
        assert!(r.add("example.com", "/a", "u", 3).is_ok());
        assert!(r.add("example.com", "/b", "", 4).is_ok());
        assert_eq!(r.get_exact("EXAMPLE.com", "/a", ""), Some(&1));
        assert_eq!(r.remove("example.com", "/a", ""), Some(1));
        assert_eq!(r.lookup("example.com", "/a", ""), None);
        assert_eq!(r.remove("example.com", "/a", ""), None);
        assert_eq!(r.len(), 2);
        r.remove("example.com", "/a", "u");
        r.remove("example.com", "/b", "");
        assert_eq!(r.len(), 0);
        assert!(r.by_domain.is_empty());
    }
}
