//! Token verification and authorization. Tokens are verified offline against control's public
//! keys (cached; fetched again when a token names an unknown key id), then checked against
//! revocation. Every failure a client can cause looks the same from outside.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};

use crate::allowlist::AllowList;
use crate::claims::{Claims, MAX_TOKEN_BYTES, Role};
use crate::control::{ControlError, ControlPlane, Route};
use crate::limits::{Full, Ticket};
use crate::routes::RouteCache;
use crate::throttle::Throttle;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Malformed, badly signed, expired, revoked, or for someone else. Deliberately one kind:
    /// the client learns nothing about which.
    #[error("invalid credentials ({0})")]
    Refused(&'static str),
    /// The token is fine but names no single database, and the client named none either.
    #[error("token is not limited to one database")]
    NeedsDatabase,
    /// Keys or revocations could not be fetched.
    #[error(transparent)]
    Control(#[from] ControlError),
}

/// Who a verified connection is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub tenant: String,
    pub database: String,
    pub role: Role,
    pub token_id: String,
}

/// Decides which database a verified token may reach. `requested` is what the client named
/// (MySQL user, Redis AUTH user); it must agree with the token's scope if both are present.
pub fn authorize(claims: &Claims, requested: Option<&str>) -> Result<Identity, AuthError> {
    let tenant = claims.sub.clone().ok_or(AuthError::Refused("operator token"))?;
    // A name that could never have been created is refused before it goes anywhere (a path,
    // a query).
    if requested.is_some_and(|r| !crate::claims::valid_name(r)) {
        return Err(AuthError::Refused("invalid database name"));
    }
    let database = match (requested, claims.db.as_deref()) {
        (Some(r), Some(scope)) if r != scope => return Err(AuthError::Refused("other database")),
        (Some(r), _) => r.to_owned(),
        (None, Some(scope)) => scope.to_owned(),
        (None, None) => return Err(AuthError::NeedsDatabase),
    };
    Ok(Identity { tenant, database, role: claims.role, token_id: claims.jti.clone() })
}

/// The route for a verified client at `peer`, or `None` if it may not have one: no such
/// database, or the client's address is not on the database's allowlist. Both protocols find
/// a login's route here, so the allowlist is checked in this one place, before a sleeping
/// database is woken and on the route found. A refused address looks exactly like a bad token
/// to the client, so it learns nothing about the token; the log says which database and
/// address (never the token itself, only its id).
pub async fn route_for(
    routes: &RouteCache,
    identity: &Identity,
    peer: IpAddr,
) -> Result<Option<Route>, ControlError> {
    let admit = |allowed: &AllowList| address_allowed(identity, allowed, peer);
    routes.resolve_admitting(&identity.tenant, &identity.database, &admit).await
}

fn address_allowed(identity: &Identity, allowed: &AllowList, peer: IpAddr) -> bool {
    if allowed.permits(peer) {
        return true;
    }
    tracing::warn!(
        tenant = %identity.tenant,
        db = %identity.database,
        %peer,
        token_id = %identity.token_id,
        "login refused: address not in the database's allowlist"
    );
    false
}

/// Why [`log_in`] turned a login away.
#[derive(Debug, thiserror::Error)]
pub enum LoginRefused {
    /// No token verified for the database asked for. `throttled` when the client's address
    /// has failed too often for that database: it is told to slow down instead.
    #[error("invalid credentials")]
    Denied { throttled: bool },
    #[error("token is not limited to one database")]
    NeedsDatabase,
    #[error(transparent)]
    Control(ControlError),
    /// The token verified but the proxy has as many logged-in clients as it takes.
    #[error(transparent)]
    Busy(Full),
}

/// The login step every front end shares: the first of `tokens` (one, or the readings of an
/// RSA-encrypted password) that verifies and may reach `requested` logs the connection in,
/// moving its ticket from pending to logged-in. Failures count against the address and the
/// database named; a token that verifies is never throttled. Gives the identity and which
/// token it was.
pub async fn log_in(
    verifier: &TokenVerifier,
    throttle: &Throttle,
    ticket: &mut Ticket,
    requested: Option<&str>,
    tokens: &[&str],
) -> Result<(Identity, usize), LoginRefused> {
    let denied = || LoginRefused::Denied {
        throttled: throttle.record_failure(ticket.address(), requested.unwrap_or_default()),
    };
    for (i, token) in tokens.iter().enumerate() {
        let claims = match verifier.verify(token).await {
            Ok(claims) => claims,
            Err(AuthError::Control(e)) => return Err(LoginRefused::Control(e)),
            Err(_) => continue,
        };
        let identity = match authorize(&claims, requested) {
            Ok(identity) => identity,
            Err(AuthError::NeedsDatabase) => return Err(LoginRefused::NeedsDatabase),
            Err(_) => return Err(denied()),
        };
        ticket.logged_in().map_err(LoginRefused::Busy)?;
        return Ok((identity, i));
    }
    Err(denied())
}

/// Verifies tokens with cached keys.
pub struct TokenVerifier {
    control: Arc<dyn ControlPlane>,
    keys: RwLock<KeyCache>,
    refresh: tokio::sync::Mutex<()>,
    /// Tokens whose signature already checked out, with their claims: clients reconnect with
    /// the same token over and over, and a signature check costs more than the rest of a login.
    verified: Mutex<HashMap<Box<str>, Verified>>,
}

struct Verified {
    claims: Claims,
    kid: String,
}

/// Tokens remembered as verified; when full, the cache starts over.
const MAX_VERIFIED: usize = 16 * 1024;
/// Seconds of clock skew allowed on expiry.
const LEEWAY: u64 = 5;

#[derive(Default)]
struct KeyCache {
    keys: HashMap<String, Arc<DecodingKey>>,
    fetched: Option<Instant>,
}

/// Unknown key ids trigger a refetch at most this often, so garbage tokens cannot make the proxy
/// hammer control.
const MIN_REFETCH: Duration = Duration::from_secs(1);

impl TokenVerifier {
    pub fn new(control: Arc<dyn ControlPlane>) -> Self {
        Self {
            control,
            keys: RwLock::default(),
            refresh: tokio::sync::Mutex::new(()),
            verified: Mutex::default(),
        }
    }

    /// The token's claims if it is validly signed by a current key, unexpired and not revoked.
    pub async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        if token.len() > MAX_TOKEN_BYTES * 2 {
            return Err(AuthError::Refused("oversized"));
        }
        let claims = match self.remembered(token) {
            Some(claims) => claims,
            None => self.check_signature(token).await?,
        };
        // Revocation is asked every time: a remembered token may have been revoked since.
        if self.control.is_revoked(&claims.jti).await? {
            return Err(AuthError::Refused("revoked"));
        }
        Ok(claims)
    }

    /// The claims of a token verified before, if its key is still current and it has not
    /// expired since.
    fn remembered(&self, token: &str) -> Option<Claims> {
        let verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        let hit = verified.get(token)?;
        let now = jsonwebtoken::get_current_timestamp();
        (hit.claims.exp.saturating_add(LEEWAY) >= now && self.cached(&hit.kid).is_some())
            .then(|| hit.claims.clone())
    }

    async fn check_signature(&self, token: &str) -> Result<Claims, AuthError> {
        let header = decode_header(token).map_err(|_| AuthError::Refused("malformed"))?;
        if header.alg != Algorithm::EdDSA {
            return Err(AuthError::Refused("algorithm"));
        }
        let kid = header.kid.ok_or(AuthError::Refused("no key id"))?;
        let key = self.key(&kid).await?.ok_or(AuthError::Refused("unknown key"))?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = LEEWAY;
        let data = decode::<Claims>(token, &key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            AuthError::Refused(match e.kind() {
                ErrorKind::ExpiredSignature => "expired",
                ErrorKind::InvalidSignature => "signature",
                _ => "invalid",
            })
        })?;
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if verified.len() >= MAX_VERIFIED {
            verified.clear();
        }
        verified.insert(token.into(), Verified { claims: data.claims.clone(), kid });
        Ok(data.claims)
    }

    async fn key(&self, kid: &str) -> Result<Option<Arc<DecodingKey>>, ControlError> {
        if let Some(k) = self.cached(kid) {
            return Ok(Some(k));
        }
        let _one_fetch = self.refresh.lock().await;
        // Another task may have fetched while this one waited.
        if let Some(k) = self.cached(kid) {
            return Ok(Some(k));
        }
        let recently = self
            .keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .fetched
            .is_some_and(|t| t.elapsed() < MIN_REFETCH);
        if recently {
            return Ok(None);
        }
        let set = self.control.jwks().await?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let (Some(id), Ok(key)) = (jwk.common.key_id.clone(), DecodingKey::from_jwk(jwk))
            else {
                continue;
            };
            keys.insert(id, Arc::new(key));
        }
        let mut cache = self.keys.write().unwrap_or_else(|e| e.into_inner());
        cache.keys = keys;
        cache.fetched = Some(Instant::now());
        Ok(cache.keys.get(kid).cloned())
    }

    fn cached(&self, kid: &str) -> Option<Arc<DecodingKey>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).keys.get(kid).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(sub: Option<&str>, db: Option<&str>) -> Claims {
        Claims {
            sub: sub.map(Into::into),
            db: db.map(Into::into),
            role: Role::Readwrite,
            exp: u64::MAX,
            jti: "j".into(),
        }
    }

    struct NoControl;

    #[async_trait::async_trait]
    impl ControlPlane for NoControl {
        async fn jwks(&self) -> Result<jsonwebtoken::jwk::JwkSet, ControlError> {
            Ok(jsonwebtoken::jwk::JwkSet { keys: Vec::new() })
        }
        async fn is_revoked(&self, jti: &str) -> Result<bool, ControlError> {
            Ok(jti == "revoked")
        }
        async fn route(
            &self,
            _: &str,
            _: &str,
        ) -> Result<Option<crate::control::Route>, ControlError> {
            Ok(None)
        }
        async fn wake(
            &self,
            _: &str,
            _: &str,
        ) -> Result<Option<crate::control::Route>, ControlError> {
            Ok(None)
        }
        fn session_opened(&self, _: &str, _: &str) {}
        fn session_closed(&self, _: &str, _: &str) {}
    }

    #[tokio::test]
    async fn a_remembered_token_passes_only_while_valid_and_its_key_is_current() {
        let v = TokenVerifier::new(Arc::new(NoControl));
        let key = Arc::new(DecodingKey::from_ed_der(&[7; 32]));
        v.keys.write().unwrap_or_else(|e| e.into_inner()).keys.insert("k1".into(), key);
        let now = jsonwebtoken::get_current_timestamp();
        for (token, exp, jti) in
            [("fresh", now + 60, "j"), ("stale", now - 60, "j"), ("gone", now + 60, "revoked")]
        {
            let claims = Claims { exp, jti: jti.into(), ..claims(Some("t"), Some("db")) };
            let kid = "k1".to_owned();
            let mut verified = v.verified.lock().unwrap_or_else(|e| e.into_inner());
            verified.insert(token.into(), Verified { claims, kid });
        }
        assert_eq!(v.verify("fresh").await.ok().map(|c| c.exp), Some(now + 60));
        // Expired or revoked since they were remembered: checked again, and refused.
        assert!(matches!(v.verify("stale").await, Err(AuthError::Refused(_))));
        assert!(matches!(v.verify("gone").await, Err(AuthError::Refused("revoked"))));
        // Its key was retired: the token is checked in full again, and refused.
        v.keys.write().unwrap_or_else(|e| e.into_inner()).keys.clear();
        assert!(matches!(v.verify("fresh").await, Err(AuthError::Refused(_))));
    }

    #[tokio::test]
    async fn a_token_that_verifies_logs_in_however_many_failures_came_from_its_address() {
        use crate::limits::{Admission, AdmissionLimits, Full};
        let v = TokenVerifier::new(Arc::new(NoControl));
        let key = Arc::new(DecodingKey::from_ed_der(&[7; 32]));
        v.keys.write().unwrap_or_else(|e| e.into_inner()).keys.insert("k1".into(), key);
        let exp = jsonwebtoken::get_current_timestamp() + 60;
        let good = Claims { exp, ..claims(Some("t"), Some("shop")) };
        v.verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert("good".into(), Verified { claims: good, kid: "k1".into() });
        let throttle = Throttle::new(1, 1);
        let limits =
            AdmissionLimits { max_pending: 100, max_pending_per_address: 100, max_clients: 1 };
        let admission = Admission::new(limits);
        let ip: std::net::IpAddr = "10.0.0.9".parse().expect("ip");
        let mut throttled = 0;
        for _ in 0..20 {
            let mut ticket = admission.arrive(ip).expect("a pending place");
            match log_in(&v, &throttle, &mut ticket, Some("shop"), &["wrong"]).await {
                Err(LoginRefused::Denied { throttled: true }) => throttled += 1,
                Err(LoginRefused::Denied { throttled: false }) => {}
                other => panic!("a wrong token: {other:?}"),
            }
        }
        assert_eq!(throttled, 15, "past a burst of five, the address is told to slow down");
        let mut ticket = admission.arrive(ip).expect("a pending place");
        let (identity, which) = log_in(&v, &throttle, &mut ticket, Some("shop"), &["x", "good"])
            .await
            .expect("the valid token logs in");
        assert_eq!((identity.database.as_str(), which), ("shop", 1));
        assert_eq!(admission.counts(), (0, 1), "counted as logged in, no longer pending");
        // The proxy is full: the valid token is told so, and stays pending.
        let mut another = admission.arrive(ip).expect("a pending place");
        let full = log_in(&v, &throttle, &mut another, Some("shop"), &["good"]).await;
        assert!(matches!(full, Err(LoginRefused::Busy(Full::Clients))), "{full:?}");
        assert_eq!(admission.counts(), (1, 1));
    }

    #[test]
    fn a_scoped_token_reaches_only_its_database() {
        let c = claims(Some("t1"), Some("cache"));
        assert_eq!(authorize(&c, None).map(|i| i.database).ok(), Some("cache".into()));
        assert_eq!(authorize(&c, Some("cache")).map(|i| i.database).ok(), Some("cache".into()));
        assert!(matches!(authorize(&c, Some("other")), Err(AuthError::Refused(_))));
    }

    #[test]
    fn a_tenant_token_must_name_a_database() {
        let c = claims(Some("t1"), None);
        assert!(matches!(authorize(&c, None), Err(AuthError::NeedsDatabase)));
        assert_eq!(authorize(&c, Some("x")).map(|i| i.tenant).ok(), Some("t1".into()));
    }

    #[test]
    fn names_that_cannot_exist_are_refused() {
        let c = claims(Some("t1"), None);
        for bad in ["../t-victim/cache", "a/b", "A", "", "x y", "%2e%2e"] {
            assert!(matches!(authorize(&c, Some(bad)), Err(AuthError::Refused(_))), "{bad}");
        }
    }

    #[test]
    fn only_addresses_on_the_allowlist_are_allowed() -> Result<(), Box<dyn std::error::Error>> {
        let identity = authorize(&claims(Some("t1"), Some("cache")), None)?;
        let (inside, outside) = ("127.0.0.2".parse()?, "127.0.0.3".parse()?);
        assert!(address_allowed(&identity, &AllowList::default(), outside), "no list: any");
        let list = AllowList::parse(&["127.0.0.2/32"])?;
        assert!(address_allowed(&identity, &list, inside));
        assert!(!address_allowed(&identity, &list, outside));
        Ok(())
    }

    #[test]
    fn the_operator_token_reaches_no_database() {
        let mut c = claims(None, None);
        c.role = Role::Admin;
        assert!(matches!(authorize(&c, Some("x")), Err(AuthError::Refused(_))));
    }
}
