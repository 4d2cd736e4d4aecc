//! Domain mode (host.md 1.1): one TLS listener serving the API at `api_host` and every
//! published alias at `<alias>.<proxy_zone>`, told apart by the `Host` header. Anything else is
//! 404. The request's whole path goes to the sandbox (no alias in it).

use axum::Router;
use axum::extract::Request;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use tower::ServiceExt as _;

use crate::error::ApiError;
use crate::state::AppState;

/// The names the domain listener answers for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    /// The API's host name (`api.example.com`).
    pub api_host: String,
    /// Aliases live below it (`apps.example.com` -> `<alias>.apps.example.com`).
    pub zone: String,
}

/// What a request's host names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// The API.
    Api,
    /// A published alias.
    Alias(&'a str),
    /// Nothing served here.
    Unknown,
}

/// Classifies a `Host` value (port and a trailing dot ignored, case-insensitive). An alias is
/// exactly one label below the zone.
pub fn classify<'a>(host: &'a str, domain: &Domain) -> Target<'a> {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.eq_ignore_ascii_case(&domain.api_host) {
        return Target::Api;
    }
    let zone = domain.zone.as_str();
    if name.len() > zone.len() + 1 {
        let (label, rest) = name.split_at(name.len() - zone.len() - 1);
        if rest[1..].eq_ignore_ascii_case(zone) && rest.starts_with('.') && !label.contains('.') {
            return Target::Alias(label);
        }
    }
    Target::Unknown
}

/// The domain listener's service: the API or the public proxy by host.
pub fn router(state: AppState, domain: Domain) -> Router {
    let api = crate::router(state.clone());
    let service = tower::service_fn(move |request: Request| {
        let (api, state, domain) = (api.clone(), state.clone(), domain.clone());
        async move {
            let host = request
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
                .unwrap_or_default();
            let response: Response = match classify(&host, &domain) {
                Target::Api => api.oneshot(request).await.into_response(),
                Target::Alias(alias) => {
                    let alias = alias.to_ascii_lowercase();
                    match super::check_client(&state, super::client_of(&request)) {
                        Err(e) => e.into_response(),
                        Ok(()) => {
                            let rest = request.uri().path().to_owned();
                            super::to_alias(&state, request, &alias, &rest, "https")
                                .await
                                .into_response()
                        }
                    }
                }
                Target::Unknown => ApiError::NotFound("not found".into()).into_response(),
            };
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    Router::new().fallback_service(service).layer(axum::middleware::from_fn(crate::request::around))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_name_the_api_an_alias_or_nothing() {
        let domain = Domain { api_host: "api.example.com".into(), zone: "apps.example.com".into() };
        let rows: &[(&str, Target)] = &[
            ("api.example.com", Target::Api),
            ("API.Example.com:443", Target::Api),
            ("api.example.com.", Target::Api),
            ("site.apps.example.com", Target::Alias("site")),
            ("site.apps.example.com:8443", Target::Alias("site")),
            ("a.b.apps.example.com", Target::Unknown),
            ("apps.example.com", Target::Unknown),
            (".apps.example.com", Target::Unknown),
            ("siteapps.example.com", Target::Unknown),
            ("site.apps.example.org", Target::Unknown),
            ("", Target::Unknown),
        ];
        for (host, want) in rows {
            assert_eq!(classify(host, &domain), *want, "{host:?}");
        }
    }
}
