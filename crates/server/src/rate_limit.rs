//! The middleware of the API's per-user rate limits (`rate_limits.rs`): after authentication
//! (it needs the user), before the route. A refusal is v1's 429 `rate limit exceeded` with
//! `Retry-After` (seconds to the next token of that class, at least 1). Requests without a user
//! (`/health`, the web shell) are not limited here.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::auth::CurrentUser;
use crate::state::AppState;

/// The middleware.
pub async fn limit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(CurrentUser(user)) = request.extensions().get::<CurrentUser>() else {
        return next.run(request).await;
    };
    let class = crate::rate_limits::classify(request.method().as_str(), request.uri().path());
    match state.rate_limits.check(&user.id, class, std::time::Instant::now()) {
        Ok(()) => next.run(request).await,
        Err(wait) => {
            tracing::info!(user = %user.name, class = class.as_str(), "rate limited");
            crate::telemetry::rate_limited(class.as_str());
            crate::error::ApiError::RateLimitedFor(crate::rate_limits::retry_after_secs(wait))
                .into_response()
        }
    }
}
