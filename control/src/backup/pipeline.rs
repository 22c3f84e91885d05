//! Moving a backup's bytes between a host agent and the object store: on the way out zstd,
//! then encryption, then a SHA-256 of what is stored; on the way back the same checks in
//! reverse, before the agent may treat its input as complete. Compression and encryption run
//! on a blocking thread, so a backup never stalls the proxy's connections on the runtime.

use std::future::Future;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use aws_lc_rs::digest;
use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::io::{AsyncRead, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::sync::mpsc;
use tokio_util::io::SyncIoBridge;

use super::crypto::{DataKey, Opener, Sealer};

/// zstd level: 1 compresses a database's files about 4:1 at hundreds of MB/s per core.
const LEVEL: i32 = 1;
/// Bytes handed between the agent, the blocking thread and the store at a time.
const BLOCK: usize = 1 << 20;

/// Bytes done out of an expected total, shared with whoever reports progress.
#[derive(Debug, Default)]
pub struct Progress {
    pub done: AtomicU64,
    pub total: AtomicU64,
}

impl Progress {
    pub fn with_total(total: u64) -> Arc<Self> {
        Arc::new(Self { done: AtomicU64::new(0), total: AtomicU64::new(total) })
    }

    pub fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }

    /// (done, total, percent); the percent stays below 100 until the job says it is complete,
    /// as totals are estimates.
    pub fn snapshot(&self) -> (u64, u64, u8) {
        let done = self.done.load(Ordering::Relaxed);
        let total = self.total.load(Ordering::Relaxed).max(done);
        let percent = (done * 100).checked_div(total).map_or(0, |p| p.min(99) as u8);
        (done, total, percent)
    }
}

/// What was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub plain_bytes: u64,
    pub stored_bytes: u64,
    /// SHA-256 of the stored object, lower-case hex.
    pub sha256: String,
}

/// Errors a tenant sees as a backup's reason: the store's own errors name its address and
/// the objects' keys, so they go to control's log and the reason only says what failed.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("the backup object store could not be read (details in the control log)")]
    Store(#[from] object_store::Error),
    #[error("the backup object store could not be written to (details in the control log)")]
    StoreWrite(io::Error),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the backup is corrupt or was tampered with (its checksum does not match)")]
    Checksum,
    /// The agent's side failed; its own error says why.
    #[error("{0}")]
    Producer(String),
}

/// Feeds stored bytes to the object store's writer through a channel, hashing and counting.
struct ChannelSink {
    tx: mpsc::Sender<Bytes>,
    buf: Vec<u8>,
    hash: digest::Context,
    bytes: u64,
}

impl ChannelSink {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let block = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(BLOCK)));
        self.tx
            .blocking_send(block)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))
    }
}

impl Write for ChannelSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.hash.update(data);
        self.bytes += data.len() as u64;
        self.buf.extend_from_slice(data);
        if self.buf.len() >= BLOCK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

fn seal_stream(
    mut input: impl Read,
    key: &DataKey,
    object: &str,
    tx: mpsc::Sender<Bytes>,
    progress: &Progress,
) -> io::Result<Stored> {
    let sink = ChannelSink {
        tx,
        buf: Vec::with_capacity(BLOCK),
        hash: digest::Context::new(&digest::SHA256),
        bytes: 0,
    };
    let mut zstd = zstd::stream::write::Encoder::new(Sealer::new(sink, key, object), LEVEL)?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut plain = 0u64;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        zstd.write_all(&buf[..n])?;
        plain += n as u64;
        progress.add(n as u64);
    }
    let mut sink = zstd.finish()?.finish()?;
    sink.flush()?;
    Ok(Stored { plain_bytes: plain, stored_bytes: sink.bytes, sha256: hex(sink.hash.finish()) })
}

fn hex(digest: digest::Digest) -> String {
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Stores what `produce` writes into the pipe it is given at `path`, sealed with `key` for
/// `object`. The object is completed only when `produce` and the pipeline both succeeded;
/// otherwise the upload is aborted and nothing is left under `path`.
pub async fn upload<T, F, Fut>(
    objects: Arc<dyn ObjectStore>,
    path: ObjectPath,
    key: DataKey,
    object: String,
    progress: Arc<Progress>,
    produce: F,
) -> Result<(T, Stored), PipelineError>
where
    F: FnOnce(DuplexStream) -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let (writer, reader) = tokio::io::duplex(BLOCK);
    let (tx, mut rx) = mpsc::channel::<Bytes>(4);
    let bridge = SyncIoBridge::new(reader);
    let sealing =
        tokio::task::spawn_blocking(move || seal_stream(bridge, &key, &object, tx, &progress));
    let mut out =
        object_store::buffered::BufWriter::with_capacity(objects.clone(), path.clone(), 8 << 20);
    // The receiver moves into this future and is dropped at the first failed write, so the
    // sealing thread, then the agent, stop instead of waiting on a full pipe.
    let store = async move {
        let mut result = Ok(());
        while let Some(block) = rx.recv().await {
            if let Err(e) = out.write_all(&block).await {
                result = Err(e);
                break;
            }
        }
        drop(rx);
        (out, result)
    };
    let (produced, (mut out, stored)) = tokio::join!(produce(writer), store);
    let sealed = sealing.await.map_err(|e| io::Error::other(format!("sealing: {e}")));
    let outcome = match (produced, stored, sealed) {
        (Ok(value), Ok(()), Ok(Ok(info))) => Ok((value, info)),
        // A store that failed broke the agent's pipe; an agent that failed explains the
        // rest.
        (_, Err(e), _) => {
            tracing::warn!(error = %e, "writing to the backup store");
            Err(PipelineError::StoreWrite(e))
        }
        (Err(e), _, _) => Err(PipelineError::Producer(e)),
        (_, _, Err(e)) | (_, _, Ok(Err(e))) => Err(PipelineError::Io(e)),
    };
    match outcome {
        Ok((value, info)) => match out.shutdown().await {
            Ok(()) => Ok((value, info)),
            Err(e) => {
                tracing::warn!(error = %e, "completing an upload to the backup store");
                let _ = objects.delete(&path).await;
                Err(PipelineError::StoreWrite(e))
            }
        },
        Err(e) => {
            // Nothing half-written stays: an unfinished multipart upload is aborted.
            let _ = out.abort().await;
            let _ = objects.delete(&path).await;
            Err(e)
        }
    }
}

/// Reads a channel of blocks as a byte stream, hashing and counting it.
struct ChannelSource {
    rx: mpsc::Receiver<Result<Bytes, object_store::Error>>,
    block: Bytes,
    hash: digest::Context,
    bytes: u64,
    failed: Option<object_store::Error>,
}

impl Read for ChannelSource {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.block.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Ok(block)) => self.block = block,
                Some(Err(e)) => {
                    let message = e.to_string();
                    self.failed = Some(e);
                    return Err(io::Error::other(message));
                }
            }
        }
        let n = out.len().min(self.block.len());
        let part = self.block.split_to(n);
        self.hash.update(&part);
        self.bytes += n as u64;
        out[..n].copy_from_slice(&part);
        Ok(n)
    }
}

/// The agent's side of a restore: the plain bytes, which end in an error rather than a clean
/// end unless the whole object was verified.
pub struct Verified {
    inner: DuplexStream,
    ok: Arc<AtomicBool>,
}

impl AsyncRead for Verified {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() == before && buf.remaining() > 0 => {
                if this.ok.load(Ordering::Acquire) {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the backup did not pass verification",
                    )))
                }
            }
            other => other,
        }
    }
}

/// What the stored object must be.
#[derive(Debug, Clone)]
pub struct Expected {
    pub stored_bytes: u64,
    pub sha256: String,
}

/// Reads the object at `path`, checks and opens it, and gives the plain bytes to `consume`,
/// which sees a clean end only once the object's size and SHA-256 matched `expected` and every
/// chunk authenticated.
pub async fn download<T, F, Fut>(
    objects: Arc<dyn ObjectStore>,
    path: ObjectPath,
    key: DataKey,
    object: String,
    expected: Expected,
    progress: Arc<Progress>,
    consume: F,
) -> Result<T, PipelineError>
where
    F: FnOnce(Verified) -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let (tx, rx) = mpsc::channel(4);
    let fetch = async move {
        let mut stream = match objects.get(&path).await {
            Ok(got) => got.into_stream(),
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        while let Some(block) = stream.next().await {
            progress.add(block.as_ref().map_or(0, |b| b.len() as u64));
            let failed = block.is_err();
            if tx.send(block).await.is_err() || failed {
                return;
            }
        }
    };
    let (writer, reader) = tokio::io::duplex(BLOCK);
    let ok = Arc::new(AtomicBool::new(false));
    let verified = ok.clone();
    let mut bridge = SyncIoBridge::new(writer);
    let opening = tokio::task::spawn_blocking(move || -> Result<(), PipelineError> {
        let mut source = ChannelSource {
            rx,
            block: Bytes::new(),
            hash: digest::Context::new(&digest::SHA256),
            bytes: 0,
            failed: None,
        };
        let copied = (|| -> io::Result<()> {
            let mut zstd =
                zstd::stream::read::Decoder::new(Opener::new(&mut source, &key, &object))?;
            io::copy(&mut zstd, &mut bridge)?;
            // What follows the last chunk (nothing, unless appended to) still counts.
            io::copy(&mut source, &mut io::sink())?;
            Ok(())
        })();
        if let Some(e) = source.failed.take() {
            tracing::warn!(error = %e, "reading from the backup store");
            return Err(PipelineError::Store(e));
        }
        copied?;
        let hash = hex(source.hash.finish());
        if source.bytes != expected.stored_bytes || hash != expected.sha256 {
            return Err(PipelineError::Checksum);
        }
        bridge.flush()?;
        verified.store(true, Ordering::Release);
        Ok(())
    });
    let (consumed, ()) = tokio::join!(consume(Verified { inner: reader, ok }), fetch);
    let opened = opening.await.map_err(|e| io::Error::other(format!("opening: {e}")));
    let opened = opened.map_err(PipelineError::Io).and_then(|r| r);
    match (opened, consumed) {
        (Ok(()), Ok(value)) => Ok(value),
        // A bad object names the cause; the agent only saw its input fail.
        (Err(e @ (PipelineError::Checksum | PipelineError::Store(_))), _) => Err(e),
        (Err(PipelineError::Io(e)), _) if e.kind() == io::ErrorKind::InvalidData => {
            Err(PipelineError::Io(e))
        }
        // An agent that failed first broke the pipeline's pipe.
        (_, Err(e)) => Err(PipelineError::Producer(e)),
        (Err(e), Ok(_)) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use tokio::io::AsyncReadExt;

    fn store() -> Arc<dyn ObjectStore> {
        Arc::new(InMemory::new())
    }

    async fn put(
        objects: &Arc<dyn ObjectStore>,
        key: &DataKey,
        data: Vec<u8>,
    ) -> Result<Stored, PipelineError> {
        let path = ObjectPath::from("t/d/b-1");
        let progress = Progress::with_total(data.len() as u64);
        let produce = |mut w: DuplexStream| async move {
            w.write_all(&data).await.map_err(|e| e.to_string())?;
            Ok(())
        };
        let ((), stored) =
            upload(objects.clone(), path, key.clone(), "b-1".into(), progress, produce).await?;
        Ok(stored)
    }

    async fn get(
        objects: &Arc<dyn ObjectStore>,
        key: &DataKey,
        expected: Expected,
    ) -> Result<Vec<u8>, PipelineError> {
        let consume = |mut r: Verified| async move {
            let mut out = Vec::new();
            r.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
            Ok(out)
        };
        let path = ObjectPath::from("t/d/b-1");
        let progress = Progress::with_total(0);
        download(objects.clone(), path, key.clone(), "b-1".into(), expected, progress, consume)
            .await
    }

    #[tokio::test]
    async fn bytes_come_back_as_they_went_and_are_stored_compressed() -> anyhow::Result<()> {
        let objects = store();
        let key = DataKey::generate();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 7) as u8).collect();
        let stored = put(&objects, &key, data.clone()).await?;
        assert_eq!(stored.plain_bytes, data.len() as u64);
        assert!(stored.stored_bytes < data.len() as u64 / 10, "{stored:?}");
        let expected = Expected { stored_bytes: stored.stored_bytes, sha256: stored.sha256 };
        assert_eq!(get(&objects, &key, expected).await?, data);
        Ok(())
    }

    #[tokio::test]
    async fn a_failed_producer_leaves_no_object() -> anyhow::Result<()> {
        let objects = store();
        let produce = |mut w: DuplexStream| async move {
            w.write_all(b"partial").await.map_err(|e| e.to_string())?;
            Err::<(), _>("mariadb-backup was killed".to_owned())
        };
        let path = ObjectPath::from("t/d/b-1");
        let result = upload(
            objects.clone(),
            path.clone(),
            DataKey::generate(),
            "b-1".into(),
            Progress::with_total(0),
            produce,
        )
        .await;
        assert!(matches!(result, Err(PipelineError::Producer(m)) if m.contains("killed")));
        assert!(objects.head(&path).await.is_err(), "nothing stored");
        Ok(())
    }

    #[tokio::test]
    async fn a_changed_object_never_reads_to_a_clean_end() -> anyhow::Result<()> {
        let objects = store();
        let key = DataKey::generate();
        let stored = put(&objects, &key, vec![1u8; 100_000]).await?;
        let expected = Expected { stored_bytes: stored.stored_bytes, sha256: stored.sha256 };
        let path = ObjectPath::from("t/d/b-1");
        let mut bytes = objects.get(&path).await?.bytes().await?.to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x55;
        objects.put(&path, bytes.into()).await?;
        let result = get(&objects, &key, expected.clone()).await;
        assert!(
            matches!(result, Err(PipelineError::Io(ref e)) if e.kind() == io::ErrorKind::InvalidData),
            "{result:?}"
        );
        // Intact chunks but a checksum that is not the recorded one.
        let stored = put(&objects, &key, vec![2u8; 10]).await?;
        let wrong = Expected { stored_bytes: stored.stored_bytes, sha256: "00".repeat(32) };
        assert!(matches!(get(&objects, &key, wrong).await, Err(PipelineError::Checksum)));
        Ok(())
    }
}
