//! How a table's storage is reached: the Azure store from the storage settings, or, for a lake in a local directory,
//! the local file system with a listing of the log that commits cannot tear.
//!
//! The local store lists a directory lazily, a few entries at a time between other work; while another writer
//! links a new commit into `_delta_log`, such a listing can miss an existing commit file, and the Delta kernel then
//! refuses the log ("found gap"). Under a steady stream of commits every slow listing of a large log tears. This
//! store reads the log directory in one pass and checks the commit versions it saw are contiguous, reading again
//! when they are not.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use deltalake::logstore::LogStoreRef;
use deltalake::{DeltaTableBuilder, DeltaTableError};
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult, RenameOptions, Result,
};
use url::Url;

/// A builder of the table at `url`, on the storage its scheme and the settings name.
pub fn builder(url: Url, storage_options: &HashMap<String, String>) -> Result<DeltaTableBuilder, DeltaTableError> {
    let builder = DeltaTableBuilder::from_url(url.clone())?.with_storage_options(storage_options.clone());
    if url.scheme() == "file" {
        let root: Arc<dyn ObjectStore> = Arc::new(SteadyLocal(LocalFileSystem::new()));
        return Ok(builder.with_storage_backend(root, url));
    }
    Ok(match crate::config::storage::azure_backend(&url, storage_options)? {
        Some(store) => builder.with_storage_backend(store, url),
        None => builder,
    })
}

/// The log store of the table at `url`.
pub fn log_store(url: Url, storage_options: &HashMap<String, String>) -> Result<LogStoreRef, DeltaTableError> {
    builder(url, storage_options)?.build_storage()
}

/// The local file system, listing `_delta_log` directories in one pass.
#[derive(Debug)]
struct SteadyLocal(LocalFileSystem);

impl std::fmt::Display for SteadyLocal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SteadyLocal({})", self.0)
    }
}

/// How often a torn listing is read again before it is returned as it is.
const LISTING_ATTEMPTS: u32 = 20;

/// The version of a commit file name (`00000000000000000042.json`).
fn commit_version(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".json")?;
    (stem.len() == 20).then(|| stem.parse().ok()).flatten()
}

/// Every file under the directory `dir` (the object store prefix `prefix`), after `offset`, each directory read in
/// one pass; read again while the commit versions among them have a gap.
fn list_log(dir: std::path::PathBuf, prefix: Path, offset: Option<Path>) -> Result<Vec<ObjectMeta>> {
    let io = |source: std::io::Error, path: &std::path::Path| object_store::Error::Generic {
        store: "SteadyLocal",
        source: format!("{}: {source}", path.display()).into(),
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut metas = Vec::new();
        let mut dirs = vec![(dir.clone(), prefix.clone())];
        while let Some((dir, prefix)) = dirs.pop() {
            let names: Vec<String> = match std::fs::read_dir(&dir) {
                Ok(entries) => entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(e, &dir)),
            };
            for name in names {
                // Staging files of uploads in progress (`<name>#<n>`).
                if name.contains('#') {
                    continue;
                }
                let location = prefix.clone().join(name.as_str());
                let path = dir.join(&name);
                let meta = match std::fs::metadata(&path) {
                    Ok(m) => m,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io(e, &path)),
                };
                if meta.is_dir() {
                    dirs.push((path, location));
                    continue;
                }
                if offset.as_ref().is_some_and(|o| &location <= o) {
                    continue;
                }
                let last_modified = meta.modified().map(chrono::DateTime::<chrono::Utc>::from).unwrap_or_default();
                metas.push(ObjectMeta { location, last_modified, size: meta.len(), e_tag: None, version: None });
            }
        }
        metas.sort_by(|a, b| a.location.cmp(&b.location));
        let versions: Vec<u64> = metas.iter().filter_map(|m| commit_version(m.location.filename()?)).collect();
        let torn = versions.windows(2).any(|w| w[1] != w[0] + 1);
        if !torn || attempt >= LISTING_ATTEMPTS {
            return Ok(metas);
        }
    }
}

impl SteadyLocal {
    /// The directory a `_delta_log` prefix names, if it is one.
    fn log_dir(&self, prefix: Option<&Path>) -> Option<(std::path::PathBuf, Path)> {
        let prefix = prefix?;
        if prefix.filename() != Some("_delta_log") {
            return None;
        }
        Some((self.0.path_to_filesystem(prefix).ok()?, prefix.clone()))
    }

    fn listed(&self, prefix: Option<&Path>, offset: Option<&Path>) -> Option<BoxStream<'static, Result<ObjectMeta>>> {
        let (dir, prefix) = self.log_dir(prefix)?;
        let offset = offset.cloned();
        let listing = tokio::task::spawn_blocking(move || list_log(dir, prefix, offset));
        Some(
            futures::stream::once(async move {
                match listing.await {
                    Ok(Ok(metas)) => futures::stream::iter(metas.into_iter().map(Ok)).boxed(),
                    Ok(Err(e)) => futures::stream::once(async move { Err(e) }).boxed(),
                    Err(e) => {
                        let e = object_store::Error::Generic { store: "SteadyLocal", source: Box::new(e) };
                        futures::stream::once(async move { Err(e) }).boxed()
                    }
                }
            })
            .flatten()
            .boxed(),
        )
    }
}

#[async_trait]
impl ObjectStore for SteadyLocal {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        self.0.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        self.0.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.0.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.0.get_ranges(location, ranges).await
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        self.0.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.listed(prefix, None).unwrap_or_else(|| self.0.list(prefix))
    }

    fn list_with_offset(&self, prefix: Option<&Path>, offset: &Path) -> BoxStream<'static, Result<ObjectMeta>> {
        self.listed(prefix, Some(offset)).unwrap_or_else(|| self.0.list_with_offset(prefix, offset))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.0.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.0.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.0.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    #[tokio::test]
    async fn lists_the_log_in_order_without_staging_files() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("t/_delta_log");
        std::fs::create_dir_all(&log).unwrap();
        for name in [
            "00000000000000000000.json",
            "00000000000000000001.json",
            "00000000000000000002.json#1",
            "_last_checkpoint",
        ] {
            std::fs::write(log.join(name), b"{}").unwrap();
        }
        let store = SteadyLocal(LocalFileSystem::new());
        let prefix = Path::from_filesystem_path(&log).unwrap();
        let all: Vec<ObjectMeta> = store.list(Some(&prefix)).try_collect().await.unwrap();
        let names: Vec<&str> = all.iter().filter_map(|m| m.location.filename()).collect();
        assert_eq!(names, ["00000000000000000000.json", "00000000000000000001.json", "_last_checkpoint"]);
        let offset = prefix.clone().join("00000000000000000000.json");
        let after: Vec<ObjectMeta> = store.list_with_offset(Some(&prefix), &offset).try_collect().await.unwrap();
        assert_eq!(after.len(), 2);
        assert_eq!(commit_version("00000000000000000042.json"), Some(42));
        assert_eq!(commit_version("00000000000000000042.checkpoint.parquet"), None);
    }
}
