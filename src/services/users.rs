//! Users: creation, updates, revocation, the first admin, and login.

use serde::Deserialize;

use super::{blocking, hashing, Core};
use crate::auth::password;
use crate::domain::{AuditAction, GlobalRole, Id, User};
use crate::error::{AppError, AppResult, ErrorCode};
use crate::store::Store;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub username: String,
    pub password: String,
    #[serde(default = "member")]
    pub role: GlobalRole,
    #[serde(default)]
    pub skills: Vec<String>,
    #[serde(default)]
    pub hourly_rate: Option<f64>,
}

fn member() -> GlobalRole {
    GlobalRole::Member
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserPatch {
    pub password: Option<String>,
    pub role: Option<GlobalRole>,
    pub skills: Option<Vec<String>>,
    pub hourly_rate: Option<f64>,
    pub active: Option<bool>,
}

/// Longest username, in bytes.
const MAX_USERNAME: usize = 64;

fn check_username(name: &str) -> AppResult<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_USERNAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(AppError::field(
            "username",
            "must be 1-64 characters: letters, digits, . _ - @",
        ))
    }
}

fn check_skills(skills: &[String]) -> AppResult<()> {
    if skills.len() > 100 {
        return Err(AppError::field("skills", "at most 100 skills"));
    }
    if skills.iter().any(|s| s.trim().is_empty() || s.len() > 64) {
        return Err(AppError::field(
            "skills",
            "each skill must be 1-64 characters",
        ));
    }
    Ok(())
}

fn check_rate(rate: Option<f64>) -> AppResult<()> {
    match rate {
        Some(r) if !(0.0..=100_000.0).contains(&r) => Err(AppError::field(
            "hourly_rate",
            "must be between 0 and 100000",
        )),
        _ => Ok(()),
    }
}

/// Creates a user (blocking: hashes the password).
pub fn create_blocking(store: &dyn Store, new: NewUser) -> AppResult<User> {
    check_username(&new.username)?;
    password::check_policy(&new.password).map_err(|m| AppError::field("password", m))?;
    check_skills(&new.skills)?;
    check_rate(new.hourly_rate)?;
    let hash = password::hash(&new.password).map_err(AppError::internal)?;
    let user = User {
        id: 0,
        username: new.username,
        password_hash: hash,
        role: new.role,
        skills: new.skills,
        hourly_rate: new.hourly_rate,
        active: true,
        token_generation: 0,
        created_at: crate::now_ms(),
    };
    Ok(store.create_user(user)?)
}

pub async fn create(state: &Core, actor: Id, new: NewUser) -> AppResult<User> {
    let st = state.clone();
    let user = hashing(move || {
        let user = create_blocking(st.store().as_ref(), new)?;
        st.audit(
            Some(actor),
            AuditAction::UserCreate,
            format!("user:{}", user.id),
            serde_json::json!({"username": user.username}),
        );
        Ok(user)
    })
    .await?;
    state.durable().await?;
    Ok(user)
}

pub async fn update(state: &Core, actor: Id, id: Id, patch: UserPatch) -> AppResult<User> {
    let st = state.clone();
    let user = hashing(move || {
        let mut user = st.store().user(id)?.ok_or(AppError::NotFound("user"))?;
        let before = user.clone();
        if let Some(p) = &patch.password {
            password::check_policy(p).map_err(|m| AppError::field("password", m))?;
            user.password_hash = password::hash(p).map_err(AppError::internal)?;
            user.token_generation += 1;
        }
        if let Some(role) = patch.role {
            user.role = role;
        }
        if let Some(skills) = patch.skills {
            check_skills(&skills)?;
            user.skills = skills;
        }
        if patch.hourly_rate.is_some() {
            check_rate(patch.hourly_rate)?;
            user.hourly_rate = patch.hourly_rate;
        }
        if let Some(active) = patch.active {
            if !active && actor == id {
                return Err(AppError::field("active", "you cannot deactivate yourself"));
            }
            if !active && user.active {
                // Deactivation ends every session now; reactivating does not bring them back.
                user.token_generation += 1;
            }
            user.active = active;
        }
        let was_admin = before.active && before.role == GlobalRole::Admin;
        let still_admin = user.active && user.role == GlobalRole::Admin;
        if was_admin && !still_admin && !another_admin(st.store().as_ref(), id)? {
            return Err(AppError::conflict(
                ErrorCode::LastAdmin,
                "this is the last active admin: make another admin first",
            ));
        }
        st.store().update_user(&user)?;
        st.audit(
            Some(actor),
            AuditAction::UserUpdate,
            format!("user:{id}"),
            // Never the hash; the generation bump shows as a change of its own.
            crate::domain::audit_changes(&before, &user, &["password_hash"]),
        );
        Ok(user)
    })
    .await?;
    state.durable().await?;
    Ok(user)
}

/// Whether an active admin other than `id` exists.
fn another_admin(store: &dyn Store, id: Id) -> AppResult<bool> {
    Ok(store
        .users()?
        .iter()
        .any(|u| u.id != id && u.active && u.role == GlobalRole::Admin))
}

/// Revokes every token of a user by bumping their generation.
pub async fn revoke(state: &Core, actor: Id, id: Id) -> AppResult<User> {
    let st = state.clone();
    let user = blocking(move || {
        let mut user = st.store().user(id)?.ok_or(AppError::NotFound("user"))?;
        user.token_generation += 1;
        st.store().update_user(&user)?;
        st.audit(
            Some(actor),
            AuditAction::UserRevoke,
            format!("user:{id}"),
            serde_json::json!({}),
        );
        Ok(user)
    })
    .await?;
    state.durable().await?;
    Ok(user)
}

/// On first start with no users, creates `admin` with the given password or a random one.
/// Returns the generated password so the caller can print it once.
pub fn ensure_first_admin(
    store: &dyn Store,
    password: Option<String>,
) -> AppResult<Option<String>> {
    if store.user_count()? > 0 {
        return Ok(None);
    }
    let generated = password.is_none();
    let password = password.unwrap_or_else(password::random);
    create_blocking(
        store,
        NewUser {
            username: "admin".into(),
            password: password.clone(),
            role: GlobalRole::Admin,
            skills: vec![],
            hourly_rate: None,
        },
    )?;
    store.flush()?;
    Ok(generated.then_some(password))
}

/// Checks a username and password and issues a session token.
pub async fn login(
    state: &Core,
    username: String,
    password: String,
    address: String,
) -> AppResult<(User, String, i64)> {
    let now = crate::now_ms();
    // Whatever is typed is capped before it is kept anywhere (limiter, audit, log): a name or
    // password longer than any that can be set cannot sign in, and is not looked up.
    let impossible = username.len() > MAX_USERNAME || password.len() > password::MAX_BYTES;
    let username = crate::text::truncate(&username, MAX_USERNAME).to_owned();
    let address = crate::text::truncate(&address, 64).to_owned();
    if !state.login_limiter.allowed(&username, &address, now) {
        return Err(AppError::TooManyRequests);
    }
    let st = state.clone();
    let name = username.clone();
    let from = address.clone();
    let user = hashing(move || {
        let user = if impossible {
            None
        } else {
            st.store().user_by_name(&name)?
        };
        // Verify against a dummy hash when the user does not exist, so timing does not tell.
        let ok = match &user {
            Some(u) => password::verify(&password, &u.password_hash) && u.active,
            None if impossible => false,
            None => {
                password::verify(&password, DUMMY_HASH);
                false
            }
        };
        let detail = serde_json::json!({"username": name, "ok": ok, "over_length": impossible, "address": from});
        st.audit(
            user.as_ref().map(|u| u.id),
            AuditAction::Login,
            format!("user:{name}"),
            detail,
        );
        Ok(if ok { user } else { None })
    })
    .await?;
    let Some(user) = user else {
        state.login_limiter.failed(&username, &address, now);
        return Err(AppError::Unauthorized("wrong username or password"));
    };
    state.login_limiter.succeeded(&username, &address);
    let (token, exp) = state
        .keys
        .session(user.id, user.token_generation, now / 1000)
        .map_err(AppError::internal)?;
    Ok((user, token, exp))
}

/// Ends one session (the token's) for good, before its expiry.
pub async fn logout(state: &Core, user: &User, token: &str) -> AppResult<()> {
    let claims = state
        .keys
        .verify_session(token)
        .ok_or(AppError::Unauthorized("the token is invalid or expired"))?;
    if claims.sid.is_empty() {
        return Ok(());
    }
    let (st, actor) = (state.clone(), user.id);
    let sid = claims.sid.clone();
    blocking(move || {
        let now = crate::now_ms() / 1000;
        st.store().revoke_session(&sid, claims.exp, now)?;
        st.audit(
            Some(actor),
            AuditAction::Logout,
            format!("user:{actor}"),
            serde_json::json!({}),
        );
        Ok(())
    })
    .await?;
    state.durable().await?;
    state
        .revoked
        .insert(claims.sid, claims.exp, crate::now_ms() / 1000);
    Ok(())
}

const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$4bF6lBpv3P1CrgW9fTrNs/Jm1Lr0n0Kz0JxWw2kTqY8";
