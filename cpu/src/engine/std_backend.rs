//! The std backend: pread/pwrite/fdatasync run on tokio's blocking pool, each request owning
//! its buffer and a clone of the file for as long as the blocking call runs.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::{EngineIoError, IoBuf, IoFile};

type Done = (std::result::Result<usize, EngineIoError>, IoBuf);

async fn blocking<F>(f: F, on_lost: IoBuf) -> Done
where
    F: FnOnce() -> Done + Send + 'static,
{
    let handle = match tokio::runtime::Handle::try_current() {
        Ok(h) => h,
        Err(_) => return (Err(EngineIoError::NoRuntime), on_lost),
    };
    match handle.spawn_blocking(f).await {
        Ok(done) => done,
        // The blocking task panicked or the runtime is shutting down: the buffer went with it.
        Err(join) => (
            Err(EngineIoError::Os(std::io::Error::other(join.to_string()))),
            IoBuf::default(),
        ),
    }
}

pub(super) async fn write(file: &IoFile, buf: IoBuf, offset: u64, sync: bool) -> Done {
    let f = Arc::clone(&file.file);
    let run = move || {
        let res = f.write_at(buf.as_slice(), offset);
        let res = match res {
            Ok(n) if sync && n == buf.len() => f.sync_data().map(|()| n),
            other => other,
        };
        (res.map_err(EngineIoError::Os), buf)
    };
    blocking(run, IoBuf::default()).await
}

pub(super) async fn read(file: &IoFile, mut buf: IoBuf, offset: u64) -> Done {
    let f = Arc::clone(&file.file);
    let run = move || {
        let res = f.read_at(buf.as_mut_slice(), offset);
        (res.map_err(EngineIoError::Os), buf)
    };
    blocking(run, IoBuf::default()).await
}

pub(super) async fn sync(file: &IoFile, all: bool) -> std::result::Result<(), EngineIoError> {
    let f = Arc::clone(&file.file);
    let run = move || {
        let res = if all { f.sync_all() } else { f.sync_data() };
        (res.map(|()| 0).map_err(EngineIoError::Os), IoBuf::default())
    };
    blocking(run, IoBuf::default()).await.0.map(|_| ())
}
