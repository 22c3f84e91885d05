//! The token-signing key: an Ed25519 key generated on first start and kept in the data
//! directory (mode 0600). Tokens carry its `kid`; the JWKS endpoint serves the public half,
//! which is all the proxy needs to verify them.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use aws_lc_rs::signature::Ed25519KeyPair;
use dormouse_proxy::claims::{Claims, MAX_TOKEN_BYTES};
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

/// File name of the private key (PKCS#8 v1 DER) in the data directory.
pub const KEY_FILE: &str = "signing-key.der";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("the signing key in {0} is not a valid Ed25519 key")]
    BadKey(String),
    #[error("token: {0}")]
    Jwt(#[from] jsonwebtoken::errors::Error),
    #[error("token would be {0} bytes, over the {MAX_TOKEN_BYTES}-byte limit")]
    TooLong(usize),
}

pub struct KeyRing {
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    jwks: JwkSet,
}

impl KeyRing {
    /// Loads the key from `dir`, or creates one there on first start.
    pub fn load_or_create(dir: &Path) -> Result<Self, KeyError> {
        let path = dir.join(KEY_FILE);
        let der = match std::fs::read(&path) {
            Ok(der) => der,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let der = generate().ok_or_else(|| KeyError::BadKey("(generated)".into()))?;
                write_private(&path, &der).map_err(|source| KeyError::Io {
                    context: format!("writing {}", path.display()),
                    source,
                })?;
                tracing::info!(path = %path.display(), "created a token-signing key");
                der
            }
            Err(source) => {
                return Err(KeyError::Io {
                    context: format!("reading {}", path.display()),
                    source,
                });
            }
        };
        Self::from_der(&der).ok_or_else(|| KeyError::BadKey(path.display().to_string()))
    }

    fn from_der(der: &[u8]) -> Option<Self> {
        Ed25519KeyPair::from_pkcs8(der).ok()?;
        let encoding = EncodingKey::from_ed_der(der);
        let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::EdDSA).ok()?;
        // A short kid keeps tokens small; 11 characters of the thumbprint are 66 bits.
        let kid: String = jwk.thumbprint(ThumbprintHash::SHA256).ok()?.chars().take(11).collect();
        jwk.common.key_id = Some(kid.clone());
        jwk.common.key_algorithm = Some(KeyAlgorithm::EdDSA);
        let decoding = DecodingKey::from_jwk(&jwk).ok()?;
        Some(Self { kid, encoding, decoding, jwks: JwkSet { keys: vec![jwk] } })
    }

    pub fn jwks(&self) -> &JwkSet {
        &self.jwks
    }

    /// Signs `claims`; refuses to produce a token over the size limit.
    pub fn sign(&self, claims: &Claims) -> Result<String, KeyError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        let token = jsonwebtoken::encode(&header, claims, &self.encoding)?;
        if token.len() > MAX_TOKEN_BYTES {
            return Err(KeyError::TooLong(token.len()));
        }
        Ok(token)
    }

    /// Verifies a token's signature and expiry (not revocation: that is the caller's check).
    pub fn verify(&self, token: &str) -> Result<Claims, KeyError> {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = 5;
        Ok(jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)?.claims)
    }
}

fn generate() -> Option<Vec<u8>> {
    let pair = Ed25519KeyPair::generate().ok()?;
    Some(pair.to_pkcs8v1().ok()?.as_ref().to_vec())
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use dormouse_proxy::claims::Role;
    use std::os::unix::fs::PermissionsExt;

    fn claims(db: Option<&str>) -> Claims {
        Claims {
            sub: Some("t-0123456789ab".into()),
            db: db.map(Into::into),
            role: Role::Readwrite,
            exp: jsonwebtoken::get_current_timestamp() + 3600,
            jti: "0123456789abcdef".into(),
        }
    }

    #[test]
    fn the_key_is_created_once_private_and_reloaded() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let first = KeyRing::load_or_create(dir.path())?;
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))?.permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = KeyRing::load_or_create(dir.path())?;
        assert_eq!(first.kid, again.kid);
        let token = first.sign(&claims(None))?;
        assert_eq!(again.verify(&token)?, claims(None));
        Ok(())
    }

    #[test]
    fn the_longest_token_fits_in_400_bytes() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let keys = KeyRing::load_or_create(dir.path())?;
        let longest_name = "a".repeat(63);
        let token = keys.sign(&claims(Some(&longest_name)))?;
        assert!(token.len() <= MAX_TOKEN_BYTES, "{} bytes", token.len());
        Ok(())
    }

    #[test]
    fn tampered_and_foreign_tokens_are_rejected() -> anyhow::Result<()> {
        let (a, b) = (tempfile::tempdir()?, tempfile::tempdir()?);
        let (ours, theirs) =
            (KeyRing::load_or_create(a.path())?, KeyRing::load_or_create(b.path())?);
        let token = ours.sign(&claims(None))?;
        assert!(theirs.verify(&token).is_err());
        // Flip a character in the middle of the signature (the last one may be padding bits).
        let sig_start = token.rfind('.').expect("three parts") + 1;
        let mid = sig_start + (token.len() - sig_start) / 2;
        let mut bytes = token.into_bytes();
        bytes[mid] = if bytes[mid] == b'A' { b'B' } else { b'A' };
        assert!(ours.verify(std::str::from_utf8(&bytes)?).is_err());
        let mut expired = claims(None);
        expired.exp = 1000;
        assert!(ours.verify(&ours.sign(&expired)?).is_err());
        Ok(())
    }
}
