//! Encryption at rest: a key per database, kept in control's store wrapped by the
//! installation's master key, and a chunked AES-256-GCM stream format, so whoever runs the
//! bucket can neither read a backup nor change, cut or reorder one without restore noticing.
//!
//! ```text
//!  header  "DMBK" 0x01 0 0 0 | nonce prefix (8 bytes, random per object)
//!  chunk   length (u32 BE, ciphertext + tag) | ciphertext | tag     (repeated)
//!  nonce   prefix | chunk number (u32 BE);  aad  object id | 0 (more) or 1 (last)
//! ```
//! The last chunk is sealed as last (it may be empty), so a stream cut at a chunk boundary
//! fails too.

use std::io::{self, Read, Write};
use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

const MAGIC: [u8; 8] = *b"DMBK\x01\0\0\0";
const HEADER: usize = 16;
const TAG: usize = 16;
/// Plain bytes per chunk: large enough that the 20 bytes of framing and the per-chunk call
/// cost are nothing, small enough to hold in memory a few at a time.
pub const CHUNK: usize = 1 << 20;

/// A 256-bit key. `Debug` never shows it.
#[derive(Clone)]
pub struct DataKey([u8; 32]);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(***)")
    }
}

impl DataKey {
    pub fn generate() -> Self {
        let mut key = [0u8; 32];
        rand::fill(&mut key);
        Self(key)
    }

    fn aead(&self) -> LessSafeKey {
        // AES-256 takes any 32 bytes; this cannot fail.
        #[allow(clippy::expect_used)]
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &self.0).expect("a 32-byte AES key"))
    }

    /// This key sealed by `master` for the store, bound to `database_id`.
    pub fn wrap(&self, master: &DataKey, database_id: &str) -> Vec<u8> {
        let mut nonce = [0u8; 12];
        rand::fill(&mut nonce);
        let mut sealed = self.0.to_vec();
        // Sealing into a Vec only fails for absurd lengths.
        let _ = master.aead().seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(database_id.as_bytes()),
            &mut sealed,
        );
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        out
    }

    pub fn unwrap_with(
        wrapped: &[u8],
        master: &DataKey,
        database_id: &str,
    ) -> Result<Self, CryptoError> {
        if wrapped.len() != 12 + 32 + TAG {
            return Err(CryptoError::BadKey);
        }
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&wrapped[..12]);
        let mut sealed = wrapped[12..].to_vec();
        let plain = master
            .aead()
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(database_id.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| CryptoError::BadKey)?;
        let mut key = [0u8; 32];
        key.copy_from_slice(plain);
        Ok(Self(key))
    }

    /// The master key in `path`, made (mode 0600) on first use.
    pub fn load_or_create(path: &Path) -> io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        match std::fs::read(path) {
            Ok(bytes) if bytes.len() == 32 => {
                let mut key = [0u8; 32];
                key.copy_from_slice(&bytes);
                Ok(Self(key))
            }
            Ok(_) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a 32-byte key", path.display()),
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let key = Self::generate();
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)?;
                file.write_all(&key.0)?;
                file.sync_all()?;
                Ok(key)
            }
            Err(e) => Err(e),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error(
        "the database's backup key could not be unsealed (is this the data directory that took the backup?)"
    )]
    BadKey,
}

fn nonce(prefix: &[u8; 8], counter: u32) -> Nonce {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(prefix);
    n[8..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

fn aad(object: &str, last: bool) -> Vec<u8> {
    let mut aad = object.as_bytes().to_vec();
    aad.push(u8::from(last));
    aad
}

/// Encrypts what is written to it into `inner` in the format above. Call [`Sealer::finish`]:
/// a sealer dropped without it leaves a stream restore refuses as cut short.
pub struct Sealer<W: Write> {
    inner: W,
    key: LessSafeKey,
    object: String,
    prefix: [u8; 8],
    counter: u32,
    buf: Vec<u8>,
    started: bool,
}

impl<W: Write> Sealer<W> {
    pub fn new(inner: W, key: &DataKey, object: &str) -> Self {
        let mut prefix = [0u8; 8];
        rand::fill(&mut prefix);
        Self {
            inner,
            key: key.aead(),
            object: object.to_owned(),
            prefix,
            counter: 0,
            buf: Vec::with_capacity(CHUNK + TAG),
            started: false,
        }
    }

    fn seal(&mut self, last: bool) -> io::Result<()> {
        if !self.started {
            let mut header = MAGIC.to_vec();
            header.extend_from_slice(&self.prefix);
            self.inner.write_all(&header)?;
            self.started = true;
        }
        let counter = self.counter;
        self.counter = counter
            .checked_add(1)
            .ok_or_else(|| io::Error::other("backup too large for one object (4 PiB)"))?;
        self.key
            .seal_in_place_append_tag(
                nonce(&self.prefix, counter),
                Aad::from(aad(&self.object, last)),
                &mut self.buf,
            )
            .map_err(|_| io::Error::other("encryption failed"))?;
        let len = u32::try_from(self.buf.len()).map_err(io::Error::other)?;
        self.inner.write_all(&len.to_be_bytes())?;
        self.inner.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }

    /// Seals the last chunk and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.seal(true)?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for Sealer<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() == CHUNK {
            self.seal(false)?;
        }
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Decrypts a stream written by [`Sealer`]; any change to it is an `InvalidData` error before
/// the changed chunk's bytes are returned, and a stream that ends early is one too.
pub struct Opener<R: Read> {
    inner: R,
    key: LessSafeKey,
    object: String,
    prefix: Option<[u8; 8]>,
    counter: u32,
    /// The length of the chunk after the current one, read ahead to learn whether the current
    /// one is the last.
    next_len: Option<u32>,
    plain: Vec<u8>,
    pos: usize,
    done: bool,
}

fn tampered(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the backup is corrupt or was tampered with ({what})"),
    )
}

impl<R: Read> Opener<R> {
    pub fn new(inner: R, key: &DataKey, object: &str) -> Self {
        Self {
            inner,
            key: key.aead(),
            object: object.to_owned(),
            prefix: None,
            counter: 0,
            next_len: None,
            plain: Vec::new(),
            pos: 0,
            done: false,
        }
    }

    /// Reads exactly `buf.len()` bytes; false on a clean end before the first byte.
    fn read_full(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        let mut got = 0;
        while got < buf.len() {
            match self.inner.read(&mut buf[got..]) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => return Err(tampered("cut short")),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    fn read_len(&mut self) -> io::Result<Option<u32>> {
        let mut len = [0u8; 4];
        if !self.read_full(&mut len)? {
            return Ok(None);
        }
        let len = u32::from_be_bytes(len);
        if (len as usize) < TAG || len as usize > CHUNK + TAG {
            return Err(tampered("bad chunk length"));
        }
        Ok(Some(len))
    }

    fn next_chunk(&mut self) -> io::Result<()> {
        let prefix = match self.prefix {
            Some(p) => p,
            None => {
                let mut header = [0u8; HEADER];
                if !self.read_full(&mut header)? || header[..8] != MAGIC {
                    return Err(tampered("not a Dormouse backup"));
                }
                let mut p = [0u8; 8];
                p.copy_from_slice(&header[8..]);
                self.prefix = Some(p);
                self.next_len = self.read_len()?;
                p
            }
        };
        let len = self.next_len.take().ok_or_else(|| tampered("cut short"))?;
        self.plain.resize(len as usize, 0);
        let mut sealed = std::mem::take(&mut self.plain);
        let complete = self.read_full(&mut sealed);
        let complete = complete.and_then(|ok| if ok { Ok(()) } else { Err(tampered("cut short")) });
        if let Err(e) = complete {
            self.plain = sealed;
            return Err(e);
        }
        self.next_len = self.read_len()?;
        let last = self.next_len.is_none();
        let plain_len = self
            .key
            .open_in_place(
                nonce(&prefix, self.counter),
                Aad::from(aad(&self.object, last)),
                &mut sealed,
            )
            .map_err(|_| tampered("a chunk failed authentication"))?
            .len();
        sealed.truncate(plain_len);
        self.plain = sealed;
        self.pos = 0;
        self.counter = self.counter.wrapping_add(1);
        self.done = last;
        Ok(())
    }
}

impl<R: Read> Read for Opener<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.plain.len() {
            if self.done {
                return Ok(0);
            }
            self.next_chunk()?;
        }
        let n = out.len().min(self.plain.len() - self.pos);
        out[..n].copy_from_slice(&self.plain[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal(data: &[u8], key: &DataKey, object: &str) -> Vec<u8> {
        let mut s = Sealer::new(Vec::new(), key, object);
        s.write_all(data).expect("write");
        s.finish().expect("finish")
    }

    fn open(sealed: &[u8], key: &DataKey, object: &str) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        Opener::new(sealed, key, object).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn round_trips_empty_small_and_multi_chunk_streams() {
        let key = DataKey::generate();
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let sealed = seal(&data, &key, "b-1");
            assert_eq!(open(&sealed, &key, "b-1").expect("opens"), data, "{len}");
        }
    }

    #[test]
    fn a_changed_cut_or_foreign_stream_is_refused() {
        let key = DataKey::generate();
        let data = vec![7u8; 2 * CHUNK + 5];
        let sealed = seal(&data, &key, "b-1");
        let mut flipped = sealed.clone();
        flipped[HEADER + 4 + 100] ^= 1;
        assert_eq!(
            open(&flipped, &key, "b-1").map_err(|e| e.kind()),
            Err(io::ErrorKind::InvalidData)
        );
        // Cut at a chunk boundary: every chunk left authenticates, but none was the last.
        let cut = &sealed[..HEADER + 4 + CHUNK + TAG];
        assert!(open(cut, &key, "b-1").is_err());
        assert!(open(&sealed[..sealed.len() - 1], &key, "b-1").is_err());
        assert!(open(&sealed, &DataKey::generate(), "b-1").is_err(), "another key");
        assert!(open(&sealed, &key, "b-2").is_err(), "another backup's object");
        assert!(open(b"plain text", &key, "b-1").is_err());
    }

    #[test]
    fn keys_unwrap_only_with_their_master_and_database() {
        let (master, key) = (DataKey::generate(), DataKey::generate());
        let wrapped = key.wrap(&master, "i-1");
        let back = DataKey::unwrap_with(&wrapped, &master, "i-1").expect("unwraps");
        assert_eq!(back.0, key.0);
        assert!(DataKey::unwrap_with(&wrapped, &master, "i-2").is_err());
        assert!(DataKey::unwrap_with(&wrapped, &DataKey::generate(), "i-1").is_err());
        assert!(!format!("{key:?}").contains(&format!("{}", key.0[0])));
    }
}
