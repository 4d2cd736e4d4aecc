//! Who may call the admin routes (`/admin/...`, `/metrics`): the user named `admin`, the one
//! `bhatti serve` makes on its first start (its key in `<data_dir>/admin.key`). Users have no
//! admin flag (v1 had no HTTP admin surface at all: `bhatti admin` read the SQLite file); user
//! names are unique, so no one else can take the name. Anyone else gets the router's own 404,
//! as if the routes did not exist (never a 403, the API's rule for what is not yours).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::auth::CurrentUser;
use crate::error::ApiError;

/// The admin user's name.
pub const ADMIN_USER: &str = "admin";

/// Whether `user` may call the admin routes.
pub fn is_admin(user: &store::User) -> bool {
    user.name == ADMIN_USER
}

/// The authenticated admin; any other caller is answered 404 `not found`.
#[derive(Debug, Clone)]
pub struct Admin(pub store::User);

impl<S: Send + Sync> FromRequestParts<S> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let CurrentUser(user) = CurrentUser::from_request_parts(parts, state).await?;
        if is_admin(&user) { Ok(Admin(user)) } else { Err(ApiError::NotFound("not found".into())) }
    }
}
