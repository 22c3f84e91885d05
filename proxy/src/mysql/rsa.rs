//! The RSA key for `caching_sha2_password` without TLS: the client fetches the public half and
//! sends `(token ‖ 0) XOR nonce`, encrypted with RSA-OAEP (SHA-1). 4096 bits, so tokens up to
//! 469 bytes fit; generated once and kept in the key directory (mode 0600).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeySize, OAEP_SHA1_MGF1SHA1, OaepPrivateDecryptingKey, PrivateDecryptingKey};
use base64::Engine;

/// File name of the key (PKCS#8 DER).
pub const KEY_FILE: &str = "mysql-rsa.der";

#[derive(Debug, thiserror::Error)]
pub enum RsaError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("the RSA key in {0} is unusable")]
    BadKey(String),
}

pub struct RsaKey {
    key: OaepPrivateDecryptingKey,
    pem: Vec<u8>,
}

impl RsaKey {
    pub fn load_or_create(dir: &Path) -> Result<Self, RsaError> {
        let path = dir.join(KEY_FILE);
        let shown = path.display().to_string();
        let der = match std::fs::read(&path) {
            Ok(der) => der,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = PrivateDecryptingKey::generate(KeySize::Rsa4096)
                    .map_err(|_| RsaError::BadKey("(generated)".into()))?;
                let der = key
                    .as_der()
                    .map_err(|_| RsaError::BadKey("(generated)".into()))?
                    .as_ref()
                    .to_vec();
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(|e| RsaError::Io(shown.clone(), e))?;
                file.write_all(&der).map_err(|e| RsaError::Io(shown.clone(), e))?;
                tracing::info!(path = %shown, "created the MySQL RSA key");
                der
            }
            Err(e) => return Err(RsaError::Io(shown, e)),
        };
        let private =
            PrivateDecryptingKey::from_pkcs8(&der).map_err(|_| RsaError::BadKey(shown.clone()))?;
        let public = private.public_key();
        let spki = public.as_der().map_err(|_| RsaError::BadKey(shown.clone()))?;
        let key = OaepPrivateDecryptingKey::new(private).map_err(|_| RsaError::BadKey(shown))?;
        Ok(Self { key, pem: pem("PUBLIC KEY", spki.as_ref()) })
    }

    /// The public key as `-----BEGIN PUBLIC KEY-----` PEM, as clients expect it.
    pub fn public_pem(&self) -> &[u8] {
        &self.pem
    }

    /// Ciphertexts are exactly this long.
    pub fn size(&self) -> usize {
        self.key.key_size_bytes()
    }

    /// The password in `ciphertext`, un-XORed with `nonce`. Correct clients XOR with the
    /// 20-byte nonce; some old ones used 21 bytes (with its NUL), so both readings are returned,
    /// the correct one first.
    pub fn decrypt_password(&self, ciphertext: &[u8], nonce: &[u8]) -> Option<[Vec<u8>; 2]> {
        let mut out = vec![0u8; self.key.min_output_size()];
        let plain = self.key.decrypt(&OAEP_SHA1_MGF1SHA1, ciphertext, &mut out, None).ok()?;
        let mut nonce21 = nonce.to_vec();
        nonce21.push(0);
        Some([unxor(plain, nonce), unxor(plain, &nonce21)])
    }
}

fn unxor(plain: &[u8], nonce: &[u8]) -> Vec<u8> {
    let mut password: Vec<u8> =
        plain.iter().enumerate().map(|(i, b)| b ^ nonce[i % nonce.len()]).collect();
    if password.last() == Some(&0) {
        password.pop();
    }
    password
}

fn pem(label: &str, der: &[u8]) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rsa::{OaepPublicEncryptingKey, PublicEncryptingKey};

    #[test]
    fn a_password_encrypted_like_clients_do_comes_back() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let key = RsaKey::load_or_create(dir.path())?;
        assert_eq!(key.size(), 512);
        let pem = String::from_utf8(key.public_pem().to_vec())?;
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));

        let nonce: Vec<u8> = (1..=20).collect();
        let token = b"eyJhbGciOiJFZERTQSJ9.payload-of-a-token-longer-than-twenty-bytes.sig";
        let mut plain = token.to_vec();
        plain.push(0);
        let xored: Vec<u8> = plain.iter().enumerate().map(|(i, b)| b ^ nonce[i % 20]).collect();
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let spki = base64::engine::general_purpose::STANDARD.decode(b64)?;
        let public = OaepPublicEncryptingKey::new(PublicEncryptingKey::from_der(&spki)?)?;
        let mut ciphertext = vec![0u8; public.ciphertext_size()];
        let ciphertext = public.encrypt(&OAEP_SHA1_MGF1SHA1, &xored, &mut ciphertext, None)?;

        let [right, _] = key.decrypt_password(ciphertext, &nonce).ok_or("decrypt")?;
        assert_eq!(right, token);
        assert!(key.decrypt_password(&[0u8; 512], &nonce).is_none());
        // Reloading reads the same key.
        let again = RsaKey::load_or_create(dir.path())?;
        assert_eq!(again.public_pem(), key.public_pem());
        Ok(())
    }
}
