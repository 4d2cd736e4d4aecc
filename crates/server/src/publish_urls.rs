//! The URL a published alias answers at (host.md 1.15): domain mode
//! `https://<alias>.<zone>`, path mode `http://<public_proxy_listen>/<alias>/`, and without a
//! public proxy v1's literal `(no public proxy configured) alias: <alias>` (the CLI recognises
//! it by [`bhatti_core::publish::NO_PROXY_MARKER`]).

/// Where the public proxy serves aliases, if anywhere.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PublicUrls {
    /// No public proxy: the marker text and the alias.
    #[default]
    None,
    /// Path mode: `base` is the proxy's `host:port` (`public_proxy_listen`).
    Path {
        /// `host:port`, as configured.
        base: String,
    },
    /// Domain mode: each alias is a host under `zone`.
    Domain {
        /// The DNS zone (`domain.proxy_zone`).
        zone: String,
    },
}

impl PublicUrls {
    /// The URL of `alias`.
    pub fn url_for(&self, alias: &str) -> String {
        match self {
            PublicUrls::None => {
                format!("{} alias: {alias}", bhatti_core::publish::NO_PROXY_MARKER)
            }
            PublicUrls::Path { base } => {
                // v1 writes `:8080` for every interface; a URL needs a host.
                let base = base.trim_end_matches('/');
                let host =
                    if base.starts_with(':') { format!("localhost{base}") } else { base.into() };
                format!("http://{host}/{alias}/")
            }
            PublicUrls::Domain { zone } => {
                format!("https://{alias}.{}", zone.trim_start_matches('.').trim_end_matches('.'))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_table() {
        let path = |b: &str| PublicUrls::Path { base: b.into() };
        let domain = |z: &str| PublicUrls::Domain { zone: z.into() };
        let rows = [
            ("none", PublicUrls::None, "(no public proxy configured) alias: web"),
            ("path", path("1.2.3.4:8081"), "http://1.2.3.4:8081/web/"),
            ("path, every interface", path(":8081"), "http://localhost:8081/web/"),
            ("path, trailing slash", path("box.lan:80/"), "http://box.lan:80/web/"),
            ("domain", domain("apps.example.com"), "https://web.apps.example.com"),
            ("domain, dotted", domain(".apps.example.com."), "https://web.apps.example.com"),
        ];
        for (name, urls, want) in rows {
            assert_eq!(urls.url_for("web"), want, "{name}");
        }
        assert!(PublicUrls::None.url_for("x").contains(bhatti_core::publish::NO_PROXY_MARKER));
    }
}
