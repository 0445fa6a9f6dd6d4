//! JWTs: HS256 only (the algorithm is pinned, so `alg: none` and algorithm swaps are refused),
//! a distinct issuer per purpose so a token for one cannot be used as another.

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::domain::{Assignment, Id};

const SESSION_ISSUER: &str = "assay/session";
const ASSIGNMENT_ISSUER: &str = "assay/assignment";
const QA_ISSUER: &str = "assay/qa";

/// A QA lease token: this reviewer holds this task of this project for a verdict.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QaClaims {
    pub iss: String,
    pub sub: Id,
    pub aid: Id,
    pub tid: Id,
    pub pid: Id,
    pub nbf: i64,
    pub exp: i64,
}

/// A login session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionClaims {
    pub iss: String,
    pub sub: Id,
    /// The user's token generation when issued; a bump revokes the token.
    pub gen: u64,
    /// This session's id, so a logout can revoke it alone (see `auth::revoked`).
    #[serde(default)]
    pub sid: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
}

/// An assignment token: proof that this lease was handed to this expert, signed so that a
/// submit can be accepted even if the lease record was lost in a crash.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AssignmentClaims {
    pub iss: String,
    pub sub: Id,
    pub aid: Id,
    pub tid: Id,
    pub pid: Id,
    pub fence: u64,
    pub rubric: String,
    pub rv: String,
    pub router: String,
    pub qv: String,
    pub served: i64,
    pub lease: i64,
    /// Not before it was served (older tokens lack it and are checked without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    pub exp: i64,
}

impl AssignmentClaims {
    /// The assignment as it was handed out, for when its record was lost.
    pub fn to_assignment(&self) -> Assignment {
        Assignment {
            id: self.aid,
            task_id: self.tid,
            project_id: self.pid,
            expert_id: self.sub,
            status: crate::domain::AssignmentStatus::Active,
            served_at: self.served,
            expires_at: self.lease,
            last_seen_at: self.served,
            active_seconds: 0.0,
            fence: self.fence,
            rubric: self.rubric.clone(),
            rubric_version: self.rv.clone(),
            router: self.router.clone(),
            router_version: self.qv.clone(),
            submission_id: None,
            reason: None,
        }
    }
}

pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// Key for CSRF tokens, derived from the secret so it needs no storage of its own.
    csrf_key: Vec<u8>,
    pub session_seconds: i64,
    sessions: Verified<SessionClaims>,
    assignments: Verified<AssignmentClaims>,
}

/// Tokens whose signature checked out, with their claims. Every request carries a session
/// token and a submit a lease token too; checking one (base64, HMAC, JSON) cost a twentieth of
/// the server's CPU in the review loop, so a token seen before is looked up instead (its time
/// limits are still checked at each use). Only tokens that verified or that this server signed
/// (a lease token, when it hands the lease out) get in, none longer than
/// [`MAX_REMEMBERED_TOKEN`], and the map is emptied when it reaches [`MAX_REMEMBERED`]: its
/// size is bounded whatever clients send.
struct Verified<T> {
    tokens: parking_lot::Mutex<std::collections::HashMap<String, T>>,
}

const MAX_REMEMBERED: usize = 8192;
const MAX_REMEMBERED_TOKEN: usize = 2048;

impl<T: Clone> Verified<T> {
    fn new() -> Self {
        Self {
            tokens: Default::default(),
        }
    }

    /// The claims of `token`: remembered, or from `verify` (and then remembered). `current`
    /// checks the time limits of remembered claims.
    fn get(
        &self,
        token: &str,
        verify: impl FnOnce() -> Option<T>,
        current: impl Fn(&T) -> bool,
    ) -> Option<T> {
        let remembered = self.tokens.lock().get(token).cloned();
        if let Some(claims) = remembered {
            return current(&claims).then_some(claims);
        }
        let claims = verify()?;
        self.remember(token, &claims);
        Some(claims)
    }

    /// Remembers a token known to be good: one that verified, or that this server signed.
    fn remember(&self, token: &str, claims: &T) {
        if token.len() <= MAX_REMEMBERED_TOKEN {
            let mut tokens = self.tokens.lock();
            if tokens.len() >= MAX_REMEMBERED {
                tokens.clear();
            }
            tokens.insert(token.to_owned(), claims.clone());
        }
    }
}

/// Whether `now` (seconds) lies in a token's `nbf ..= exp`, as the signature check tests it
/// (no leeway).
fn in_time(nbf: Option<i64>, exp: i64, now: i64) -> bool {
    nbf.is_none_or(|nbf| nbf <= now) && now <= exp
}

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

impl Keys {
    pub fn new(secret: &[u8], session_hours: u64) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            csrf_key: {
                use sha2::Digest;
                let mut h = sha2::Sha256::new();
                h.update(b"assay csrf key\0");
                h.update(secret);
                h.finalize().to_vec()
            },
            session_seconds: session_hours as i64 * 3600,
            sessions: Verified::new(),
            assignments: Verified::new(),
        }
    }

    fn sign<T: Serialize>(&self, claims: &T) -> Result<String, String> {
        encode(&Header::new(Algorithm::HS256), claims, &self.encoding).map_err(|e| e.to_string())
    }

    fn verify<T: DeserializeOwned>(
        &self,
        token: &str,
        issuer: &str,
        required: &[&str],
    ) -> Option<T> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[issuer]);
        validation.set_required_spec_claims(required);
        validation.validate_nbf = true;
        validation.leeway = 0;
        decode::<T>(token, &self.decoding, &validation)
            .ok()
            .map(|d| d.claims)
    }

    pub fn session(&self, user: Id, generation: u64, now_s: i64) -> Result<(String, i64), String> {
        let exp = now_s + self.session_seconds;
        let claims = SessionClaims {
            iss: SESSION_ISSUER.into(),
            sub: user,
            gen: generation,
            sid: hex::encode(rand::random::<[u8; 16]>()),
            iat: now_s,
            nbf: now_s,
            exp,
        };
        Ok((self.sign(&claims)?, exp))
    }

    fn csrf_mac(&self, seed: &str) -> Option<HmacSha256> {
        use hmac::Mac;
        let mut mac = HmacSha256::new_from_slice(&self.csrf_key).ok()?;
        mac.update(seed.as_bytes());
        Some(mac)
    }

    /// The CSRF token bound to `seed` (the session token, or a pre-login cookie): forms carry
    /// it and cookie-authenticated writes must send it back.
    pub fn csrf(&self, seed: &str) -> String {
        use hmac::Mac;
        match self.csrf_mac(seed) {
            Some(mac) => hex::encode(&mac.finalize().into_bytes()[..16]),
            None => String::new(),
        }
    }

    /// Constant-time check of a CSRF token against its seed.
    pub fn check_csrf(&self, seed: &str, token: &str) -> bool {
        use hmac::Mac;
        let (Some(mac), Ok(bytes)) = (self.csrf_mac(seed), hex::decode(token.trim())) else {
            return false;
        };
        bytes.len() == 16 && mac.verify_truncated_left(&bytes).is_ok()
    }

    /// A session token that is signed, current (`nbf` to `exp`), and no longer-lived than
    /// sessions are now (`exp - iat`), issued no later than now.
    pub fn verify_session(&self, token: &str) -> Option<SessionClaims> {
        let now = crate::now_ms() / 1000;
        let claims = self.sessions.get(
            token,
            || self.verify(token, SESSION_ISSUER, &["exp", "iss", "nbf"]),
            |c| in_time(Some(c.nbf), c.exp, now),
        )?;
        let sane = claims.iat <= now && claims.exp - claims.iat <= self.session_seconds;
        sane.then_some(claims)
    }

    pub fn assignment(&self, a: &Assignment) -> Result<String, String> {
        let claims = AssignmentClaims {
            iss: ASSIGNMENT_ISSUER.into(),
            sub: a.expert_id,
            aid: a.id,
            tid: a.task_id,
            pid: a.project_id,
            fence: a.fence,
            rubric: a.rubric.clone(),
            rv: a.rubric_version.clone(),
            router: a.router.clone(),
            qv: a.router_version.clone(),
            served: a.served_at,
            lease: a.expires_at,
            nbf: Some(a.served_at / 1000),
            // Valid for a week: heartbeats extend the lease in the store, not in the token.
            exp: a.served_at / 1000 + 7 * 24 * 3600,
        };
        let token = self.sign(&claims)?;
        // Signed here, so good: the expert's submit, moments later, need not check it again.
        self.assignments.remember(&token, &claims);
        Ok(token)
    }

    /// A QA lease token, valid for a day (heartbeats extend the lease, not the token).
    pub fn qa_lease(
        &self,
        reviewer: Id,
        lease: Id,
        task: Id,
        project: Id,
        now_s: i64,
    ) -> Result<String, String> {
        self.sign(&QaClaims {
            iss: QA_ISSUER.into(),
            sub: reviewer,
            aid: lease,
            tid: task,
            pid: project,
            nbf: now_s,
            exp: now_s + 24 * 3600,
        })
    }

    pub fn verify_qa(&self, token: &str) -> Option<QaClaims> {
        self.verify(token, QA_ISSUER, &["exp", "iss", "nbf"])
    }

    pub fn verify_assignment(&self, token: &str) -> Option<AssignmentClaims> {
        let now = crate::now_ms() / 1000;
        self.assignments.get(
            token,
            || self.verify(token, ASSIGNMENT_ISSUER, &["exp", "iss"]),
            |c| in_time(c.nbf, c.exp, now),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remembered_token_is_still_checked_for_time_and_the_memory_stays_bounded() {
        let verified = Verified::<i64>::new();
        // Verified once, then looked up without verifying again.
        assert_eq!(verified.get("a", || Some(1), |_| true), Some(1));
        assert_eq!(
            verified.get("a", || panic!("verified twice"), |_| true),
            Some(1)
        );
        // Remembered, but out of its time now: refused.
        assert_eq!(verified.get("a", || Some(1), |_| false), None);
        // A token that does not verify is not remembered.
        assert_eq!(verified.get("bad", || None, |_| true), None);
        assert!(!verified.tokens.lock().contains_key("bad"));
        // Overlong tokens are verified each time; the map never grows past its bound.
        let long = "x".repeat(MAX_REMEMBERED_TOKEN + 1);
        assert_eq!(verified.get(&long, || Some(2), |_| true), Some(2));
        assert!(!verified.tokens.lock().contains_key(&long));
        for i in 0..MAX_REMEMBERED + 10 {
            verified.get(&format!("t{i}"), || Some(3), |_| true);
        }
        assert!(verified.tokens.lock().len() <= MAX_REMEMBERED);
    }

    /// A lease token is remembered when it is signed, with exactly the claims its signature
    /// check gives; a token of other keys is still refused.
    #[test]
    fn a_signed_lease_token_is_remembered_with_the_claims_its_check_gives() {
        let keys = Keys::new(b"a secret of some length for the test", 1);
        let now = crate::now_ms();
        let lease: Assignment = serde_json::from_value(serde_json::json!({
            "id": 4, "task_id": 2, "project_id": 1, "expert_id": 3, "status": "active",
            "served_at": now, "expires_at": now + 60_000, "last_seen_at": now,
            "active_seconds": 0.0, "fence": 7, "rubric": "r", "rubric_version": "v",
            "router": "q", "router_version": "w", "submission_id": null, "reason": null
        }))
        .unwrap();
        let token = keys.assignment(&lease).unwrap();
        let remembered = keys.assignments.tokens.lock().get(&token).cloned();
        let checked: AssignmentClaims = keys
            .verify(&token, ASSIGNMENT_ISSUER, &["exp", "iss"])
            .unwrap();
        assert_eq!(
            serde_json::to_value(remembered.expect("remembered when signed")).unwrap(),
            serde_json::to_value(&checked).unwrap()
        );
        let other = Keys::new(b"another secret, also long enough", 1);
        assert!(other.verify_assignment(&token).is_none());
    }

    #[test]
    fn time_limits_match_the_signature_check() {
        assert!(in_time(Some(10), 20, 10));
        assert!(in_time(Some(10), 20, 20));
        assert!(!in_time(Some(10), 20, 9));
        assert!(!in_time(Some(10), 20, 21));
        assert!(in_time(None, 20, 0));
    }
}
