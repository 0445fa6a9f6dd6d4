//! Business rules outside the review core, free of HTTP: users and login, projects and their
//! membership and access. They read and write through the [`ReviewCore`]'s store (users,
//! projects and memberships are theirs; task, lease and submission state is the core's).

pub mod projects;
pub mod users;

pub use crate::review::{blocking, hashing, ReviewCore};

/// The handle every service takes.
pub type Core = std::sync::Arc<ReviewCore>;
