//! The models a server holds, by name and version, each version with its own batcher and queue;
//! where they come from (files named one by one, or a model repository folder laid out as
//! Triton's and KServe's: `DIR/NAME/VERSION/model.safetensors`); and their reload without
//! downtime.
//!
//! A load builds the new version beside the running one, warms it up, and only then swaps it in,
//! under a lock held for the swap alone. A request holds the entry it resolved (an `Arc`) until it
//! is answered, and an entry's queue closes when its last holder lets go: requests in flight
//! finish on the old model, and one that resolved the old entry just before the swap still finds
//! its queue open (closing the queue at the swap would refuse it). A load that fails changes
//! nothing: the old versions go on serving.

use candle_core::Device;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

use super::batcher::{Batcher, Batching, Warmup};
use super::metrics::Metrics;
use crate::device::Compute;
use crate::model::Model;

/// The file each version folder of a model repository holds.
pub const MODEL_FILE: &str = "model.safetensors";

/// Where a server's models come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// Models named one by one, each from its weights file (any file [`Model::load`] reads),
    /// served as version 1.
    Files(Vec<(String, PathBuf)>),
    /// A model repository folder: `DIR/NAME/VERSION/model.safetensors`, VERSION a positive whole
    /// number; every version of every model is served.
    Directory(PathBuf),
}

/// Why models could not be found, loaded or swapped in. Each names the model, file or folder.
#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    /// A model repository without any model folder.
    #[error(
        "{}: no models: a model repository holds NAME/VERSION/{MODEL_FILE}, VERSION a positive \
         whole number",
        path.display()
    )]
    Empty {
        /// The repository folder.
        path: PathBuf,
    },
    /// A model folder without any version folder.
    #[error(
        "{}: no versions: a model folder holds VERSION/{MODEL_FILE}, VERSION a positive whole \
         number",
        path.display()
    )]
    NoVersions {
        /// The model folder.
        path: PathBuf,
    },
    /// A folder inside a model folder whose name is not a version.
    #[error(
        "{}: not a version folder: its name must be a positive whole number (1, 2, …) without \
         leading zeros",
        path.display()
    )]
    BadVersion {
        /// The folder.
        path: PathBuf,
    },
    /// A version folder without its weights file.
    #[error("{}: missing: each version folder holds {MODEL_FILE}", path.display())]
    MissingFile {
        /// The file that should be there.
        path: PathBuf,
    },
    /// A file or folder that could not be read.
    // The causes are in the messages, not also sources: a report of the chain would repeat them.
    #[error("{}: {error}", path.display())]
    Unreadable {
        /// The file or folder.
        path: PathBuf,
        /// The operating system's error.
        error: std::io::Error,
    },
    /// A model name that cannot be served (it would not fit in a URL path segment).
    #[error("model name `{name}`: {reason}")]
    BadName {
        /// The name as given.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// Two models given the same name.
    #[error("model \"{name}\" is named twice")]
    Duplicate {
        /// The name.
        name: String,
    },
    /// A weights file that does not load (its message names the file).
    #[error("model \"{name}\" version {version}: {error}")]
    Load {
        /// The model's name.
        name: String,
        /// The version.
        version: u64,
        /// Why it does not load (boxed: the crate's error holds this one).
        error: Box<crate::Error>,
    },
    /// A model whose warm-up pass failed.
    #[error("model \"{name}\" version {version} ({}): {reason}", path.display())]
    WarmUp {
        /// The model's name.
        name: String,
        /// The version.
        version: u64,
        /// Its weights file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A model the server neither holds nor can find.
    #[error("unknown model \"{name}\" ({})", known_models(known))]
    UnknownModel {
        /// The name asked for.
        name: String,
        /// The models the server holds.
        known: Vec<String>,
    },
    /// A model given to the server in memory, which has no file to load again.
    #[error("model \"{name}\" was given to the server in memory, not as a file: there is nothing to load it from")]
    InMemory {
        /// The model's name.
        name: String,
    },
    /// The server is stopping: no more models start.
    #[error("the server is shutting down")]
    Stopped,
    /// The batcher thread of a model could not start.
    #[error("cannot start a batcher thread: {0}")]
    Thread(std::io::Error),
}

fn known_models(names: &[String]) -> String {
    match names {
        [] => "this server holds none".to_string(),
        _ => format!("the models are {}", quoted(names)),
    }
}

/// Model names in quotes, comma-separated, for messages.
pub(crate) fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Refuses a name that could not be a path segment of `/v2/models/{name}`, or a folder of the
/// repository other than a model's.
pub fn check_name(name: &str) -> Result<(), RepositoryError> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.starts_with('.') {
        "it starts with a dot"
    } else if name.contains(['/', '\\']) {
        "it holds a slash"
    } else if name.chars().any(char::is_control) {
        "it holds a control character"
    } else {
        return Ok(());
    };
    Err(RepositoryError::BadName {
        name: name.to_string(),
        reason,
    })
}

/// A file as it was when read: a replaced or rewritten file has another stamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    /// Device, inode and status-change time: a file replaced by a rename, or rewritten to the
    /// same size within the modification time's resolution, still differs.
    #[cfg(unix)]
    node: (u64, u64, i64, i64),
}

impl Stamp {
    fn of(path: &Path) -> Result<Self, RepositoryError> {
        let meta = std::fs::metadata(path).map_err(|error| RepositoryError::Unreadable {
            path: path.to_path_buf(),
            error,
        })?;
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt;
        Ok(Self {
            len: meta.len(),
            modified: meta.modified().ok(),
            #[cfg(unix)]
            node: (meta.dev(), meta.ino(), meta.ctime(), meta.ctime_nsec()),
        })
    }
}

/// What a load or an unload did to one version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// A version that was not served before.
    Loaded,
    /// A version served before, whose file had changed: the new one now serves.
    Reloaded,
    /// A version no longer served (its folder is gone, or the model was unloaded).
    Unloaded,
    /// A version whose file had not changed: it goes on serving.
    Unchanged,
}

impl fmt::Display for ChangeKind {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            Self::Loaded => "loaded",
            Self::Reloaded => "reloaded",
            Self::Unloaded => "unloaded",
            Self::Unchanged => "unchanged",
        })
    }
}

/// One version's change, for the binary to report and the load route to answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The model's name.
    pub model: String,
    /// The version.
    pub version: u64,
    /// What happened to it.
    pub kind: ChangeKind,
    /// Its weights file, if it has one.
    pub file: Option<PathBuf>,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "model \"{}\" version {}: {}",
            self.model, self.version, self.kind
        )?;
        match (&self.file, self.kind) {
            (Some(file), ChangeKind::Loaded | ChangeKind::Reloaded) => {
                write!(f, " from {}", file.display())
            }
            _ => Ok(()),
        }
    }
}

/// What reloading every model did: the changes, and the models that failed (they go on serving
/// what they served).
#[derive(Debug, Default)]
pub struct Reload {
    /// Every version's change, unchanged ones included.
    pub changes: Vec<Change>,
    /// The models that could not be loaded.
    pub errors: Vec<RepositoryError>,
}

/// One model version, loaded.
pub struct Version {
    name: String,
    version: u64,
    model: Arc<Model>,
    file: Option<(PathBuf, Stamp)>,
}

impl Version {
    /// The model's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The model.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// The weights file it was loaded from; `None` for a model given in memory.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_ref().map(|(path, _)| path.as_path())
    }
}

/// Where models are loaded from again, and how.
enum Origin {
    /// A model given in memory: nothing to load again.
    Memory,
    Files(BTreeMap<String, PathBuf>),
    Directory(PathBuf),
}

/// The models a server starts with, loaded; see [`Repository::open`] and
/// [`super::Server::bind_repository`].
pub struct Repository {
    origin: Origin,
    device: Device,
    compute: Compute,
    versions: Vec<Version>,
}

impl Repository {
    /// Finds and loads every model of `source` onto `device`, computing in `compute` (as
    /// [`Model::load_in`]); a load of the server later does the same. Any model that is missing,
    /// misnamed or fails to load is an error naming it.
    pub fn open(
        source: Source,
        device: &Device,
        compute: impl Into<Compute>,
    ) -> Result<Self, RepositoryError> {
        let compute = compute.into();
        let origin = match source {
            Source::Files(files) => {
                let mut named = BTreeMap::new();
                for (name, path) in files {
                    check_name(&name)?;
                    if named.insert(name.clone(), path).is_some() {
                        return Err(RepositoryError::Duplicate { name });
                    }
                }
                Origin::Files(named)
            }
            Source::Directory(dir) => Origin::Directory(dir),
        };
        let wanted = match &origin {
            Origin::Files(named) => named
                .iter()
                .map(|(name, path)| (name.clone(), BTreeMap::from([(1, path.clone())])))
                .collect::<Vec<_>>(),
            Origin::Directory(dir) => {
                let names = scan_repository(dir)?;
                if names.is_empty() {
                    return Err(RepositoryError::Empty { path: dir.clone() });
                }
                names
                    .into_iter()
                    .map(|name| {
                        let versions = scan_model(&dir.join(&name))?;
                        Ok((name, versions))
                    })
                    .collect::<Result<_, RepositoryError>>()?
            }
            Origin::Memory => Vec::new(),
        };
        let mut versions = Vec::new();
        for (name, files) in wanted {
            for (version, path) in files {
                versions.push(load_version(&name, version, &path, device, compute)?);
            }
        }
        Ok(Self {
            origin,
            device: device.clone(),
            compute,
            versions,
        })
    }

    /// One model given in memory, as version 1 of `name`; it cannot be loaded again.
    pub fn in_memory(name: impl Into<String>, model: Arc<Model>) -> Self {
        let device = model.device().clone();
        let compute = model.compute();
        Self {
            origin: Origin::Memory,
            device,
            compute,
            versions: vec![Version {
                name: name.into(),
                version: 1,
                model,
                file: None,
            }],
        }
    }

    /// Every model version, by name then version.
    pub fn versions(&self) -> &[Version] {
        &self.versions
    }
}

/// Loads one version's file, stamped as it was before reading.
fn load_version(
    name: &str,
    version: u64,
    path: &Path,
    device: &Device,
    compute: Compute,
) -> Result<Version, RepositoryError> {
    let stamp = Stamp::of(path)?;
    let model = Model::load_in(path, device, compute).map_err(|error| RepositoryError::Load {
        name: name.to_string(),
        version,
        error: Box::new(error),
    })?;
    Ok(Version {
        name: name.to_string(),
        version,
        model: Arc::new(model),
        file: Some((path.to_path_buf(), stamp)),
    })
}

fn read_dir(dir: &Path) -> Result<Vec<(String, PathBuf)>, RepositoryError> {
    let unreadable = |error| RepositoryError::Unreadable {
        path: dir.to_path_buf(),
        error,
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(unreadable)? {
        let path = entry.map_err(unreadable)?.path();
        // Files beside the folders (a model's config.pbtxt, a README) are not ours to judge;
        // hidden folders (.git, editors' own) are not models or versions.
        if !path.is_dir() {
            continue;
        }
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        match name {
            Some(name) if !name.starts_with('.') => found.push((name, path)),
            _ => {}
        }
    }
    found.sort();
    Ok(found)
}

/// The model folders of a repository, by name.
fn scan_repository(dir: &Path) -> Result<Vec<String>, RepositoryError> {
    let names: Vec<String> = read_dir(dir)?.into_iter().map(|(name, _)| name).collect();
    for name in &names {
        check_name(name)?;
    }
    Ok(names)
}

/// The versions of a model folder, each with its file, which must be there.
fn scan_model(dir: &Path) -> Result<BTreeMap<u64, PathBuf>, RepositoryError> {
    let mut versions = BTreeMap::new();
    for (name, path) in read_dir(dir)? {
        let version = match name.parse::<u64>() {
            Ok(v) if v > 0 && v.to_string() == name => v,
            _ => return Err(RepositoryError::BadVersion { path }),
        };
        let file = path.join(MODEL_FILE);
        if !file.is_file() {
            return Err(RepositoryError::MissingFile { path: file });
        }
        versions.insert(version, file);
    }
    if versions.is_empty() {
        return Err(RepositoryError::NoVersions {
            path: dir.to_path_buf(),
        });
    }
    Ok(versions)
}

/// One served model version: its model, its queue and batcher, its warm-up.
pub(crate) struct Entry {
    pub name: String,
    pub version: u64,
    pub model: Arc<Model>,
    pub batcher: Batcher,
    pub warmup: watch::Receiver<Warmup>,
    file: Option<(PathBuf, Stamp)>,
}

impl Entry {
    /// Whether its warm-up is done.
    pub fn warm(&self) -> bool {
        matches!(*self.warmup.borrow(), Some(Ok(_)))
    }

    fn path(&self) -> Option<PathBuf> {
        self.file.as_ref().map(|(path, _)| path.clone())
    }
}

impl Drop for Entry {
    /// The last request to hold this version has let go (or it never served): its thread ends
    /// once the queue is empty.
    fn drop(&mut self) {
        self.batcher.close();
    }
}

/// A version's state in the repository index.
#[derive(Serialize)]
pub(crate) struct IndexEntry {
    pub name: String,
    pub version: String,
    /// `READY`, `LOADING` while the warm-up runs, `UNAVAILABLE` if it failed.
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The batcher threads ever started, so that shutdown can close and join them all.
struct Workers {
    closed: bool,
    started: Vec<(Batcher, JoinHandle<()>)>,
}

/// The served versions, by name and version, and what loads them again.
pub(crate) struct Registry {
    models: RwLock<BTreeMap<String, BTreeMap<u64, Arc<Entry>>>>,
    origin: Origin,
    device: Device,
    compute: Compute,
    batching: Batching,
    metrics: Arc<Metrics>,
    /// One load or unload at a time.
    changing: tokio::sync::Mutex<()>,
    workers: Mutex<Workers>,
    /// The warm-ups of the versions the server started with (not their entries, which would
    /// then outlive a reload, their queue open and their model in memory).
    initial: Vec<Warming>,
}

/// A version's warm-up, named for its error.
struct Warming {
    name: String,
    version: u64,
    path: Option<PathBuf>,
    warmup: watch::Receiver<Warmup>,
}

impl Registry {
    /// Starts a batcher (and its warm-up) for every version of `repository`.
    pub fn start(
        repository: Repository,
        batching: Batching,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, RepositoryError> {
        let mut registry = Self {
            models: RwLock::new(BTreeMap::new()),
            origin: repository.origin,
            device: repository.device,
            compute: repository.compute,
            batching,
            metrics,
            changing: tokio::sync::Mutex::new(()),
            workers: Mutex::new(Workers {
                closed: false,
                started: Vec::new(),
            }),
            initial: Vec::new(),
        };
        let mut models: BTreeMap<String, BTreeMap<u64, Arc<Entry>>> = BTreeMap::new();
        for version in repository.versions {
            let entry = registry.entry(version)?;
            registry.initial.push(Warming {
                name: entry.name.clone(),
                version: entry.version,
                path: entry.path(),
                warmup: entry.warmup.clone(),
            });
            models
                .entry(entry.name.clone())
                .or_default()
                .insert(entry.version, entry);
        }
        registry.models = RwLock::new(models);
        Ok(Arc::new(registry))
    }

    /// Starts the batcher of a version; its thread warms the model up first.
    fn entry(&self, version: Version) -> Result<Arc<Entry>, RepositoryError> {
        let mut workers = self.workers.lock().expect("workers lock");
        if workers.closed {
            return Err(RepositoryError::Stopped);
        }
        // Threads of versions long gone have ended: no need to keep them.
        workers.started.retain(|(_, thread)| !thread.is_finished());
        let metrics = self.metrics.model(&version.name, version.version);
        let (warmed, warmup) = watch::channel(None);
        let (batcher, thread) =
            Batcher::start(version.model.clone(), self.batching, metrics, warmed)
                .map_err(RepositoryError::Thread)?;
        workers.started.push((batcher.clone(), thread));
        Ok(Arc::new(Entry {
            name: version.name,
            version: version.version,
            model: version.model,
            batcher,
            warmup,
            file: version.file,
        }))
    }

    /// The names of the models served.
    pub fn names(&self) -> Vec<String> {
        self.models
            .read()
            .expect("models lock")
            .keys()
            .cloned()
            .collect()
    }

    /// The served versions of a model, lowest first; empty for an unknown model.
    pub fn versions_of(&self, name: &str) -> Vec<u64> {
        self.models
            .read()
            .expect("models lock")
            .get(name)
            .map(|versions| versions.keys().copied().collect())
            .unwrap_or_default()
    }

    /// The entry of `name`, `version` (its highest version when none is given), or why there is
    /// none.
    pub fn find(&self, name: &str, version: Option<&str>) -> Result<Arc<Entry>, String> {
        let models = self.models.read().expect("models lock");
        let Some(versions) = models.get(name) else {
            return Err(format!(
                "unknown model \"{name}\" ({})",
                known_models(&models.keys().cloned().collect::<Vec<_>>())
            ));
        };
        let found = match version {
            None => versions.values().next_back(),
            Some(v) => v.parse::<u64>().ok().and_then(|v| versions.get(&v)),
        };
        found.cloned().ok_or_else(|| {
            let held: Vec<String> = versions.keys().map(u64::to_string).collect();
            format!(
                "model \"{name}\" has no version \"{}\" (its versions are {})",
                version.unwrap_or_default(),
                held.join(", ")
            )
        })
    }

    /// Whether every served version is warmed up.
    pub fn warm(&self) -> bool {
        self.models
            .read()
            .expect("models lock")
            .values()
            .flat_map(BTreeMap::values)
            .all(|entry| entry.warm())
    }

    /// Completes once the versions the server started with are warmed up, with the longest
    /// warm-up, or with the first that failed.
    pub async fn warmed_up(&self) -> Result<Duration, RepositoryError> {
        let mut longest = Duration::ZERO;
        for warming in &self.initial {
            let took =
                warmed_up(&warming.warmup)
                    .await
                    .map_err(|reason| RepositoryError::WarmUp {
                        name: warming.name.clone(),
                        version: warming.version,
                        path: in_memory_or(&warming.path),
                        reason,
                    })?;
            longest = longest.max(took);
        }
        Ok(longest)
    }

    /// The repository index: every served version with its state.
    pub fn index(&self) -> Vec<IndexEntry> {
        let models = self.models.read().expect("models lock");
        models
            .values()
            .flat_map(BTreeMap::values)
            .map(|entry| {
                let (state, reason) = match &*entry.warmup.borrow() {
                    Some(Ok(_)) => ("READY", None),
                    None => ("LOADING", None),
                    Some(Err(e)) => ("UNAVAILABLE", Some(e.clone())),
                };
                IndexEntry {
                    name: entry.name.clone(),
                    version: entry.version.to_string(),
                    state,
                    reason,
                }
            })
            .collect()
    }

    /// The files a model should be served from now: one for a model named with its file, its
    /// version folders for a repository's.
    fn wanted(&self, name: &str) -> Result<BTreeMap<u64, PathBuf>, RepositoryError> {
        let unknown = || RepositoryError::UnknownModel {
            name: name.to_string(),
            known: self.names(),
        };
        match &self.origin {
            Origin::Memory => {
                if self.versions_of(name).is_empty() {
                    Err(unknown())
                } else {
                    Err(RepositoryError::InMemory {
                        name: name.to_string(),
                    })
                }
            }
            Origin::Files(named) => named
                .get(name)
                .map(|path| BTreeMap::from([(1, path.clone())]))
                .ok_or_else(unknown),
            Origin::Directory(dir) => {
                // Only a folder of the repository itself, never a path a request makes up.
                check_name(name).map_err(|_| unknown())?;
                let folder = dir.join(name);
                if !folder.is_dir() && self.versions_of(name).is_empty() {
                    return Err(unknown());
                }
                scan_model(&folder)
            }
        }
    }

    /// Loads a model again from its source: versions new there load, versions gone unload,
    /// versions whose file changed reload, the others go on unchanged. Every new version is
    /// loaded and warmed up before any is swapped in; if one fails, nothing changes.
    pub async fn load(&self, name: &str) -> Result<Vec<Change>, RepositoryError> {
        let _one_at_a_time = self.changing.lock().await;
        let wanted = self.wanted(name)?;
        let current: BTreeMap<u64, Arc<Entry>> = self
            .models
            .read()
            .expect("models lock")
            .get(name)
            .cloned()
            .unwrap_or_default();
        let mut fresh = Vec::new();
        let mut changes = Vec::new();
        for (&version, path) in &wanted {
            let stamp = Stamp::of(path)?;
            let unchanged = current.get(&version).is_some_and(|entry| {
                entry
                    .file
                    .as_ref()
                    .is_some_and(|(p, s)| p == path && *s == stamp)
            });
            if unchanged {
                changes.push(Change {
                    model: name.to_string(),
                    version,
                    kind: ChangeKind::Unchanged,
                    file: Some(path.clone()),
                });
                continue;
            }
            let (device, compute) = (self.device.clone(), self.compute);
            let (model, file) = (name.to_string(), path.clone());
            let loaded = tokio::task::spawn_blocking(move || {
                load_version(&model, version, &file, &device, compute)
            })
            .await
            .map_err(|e| RepositoryError::Load {
                name: name.to_string(),
                version,
                error: Box::new(crate::Error::Server(format!(
                    "the loading thread failed: {e}"
                ))),
            })??;
            let entry = self.entry(loaded)?;
            warmed_up(&entry.warmup)
                .await
                .map_err(|reason| RepositoryError::WarmUp {
                    name: entry.name.clone(),
                    version: entry.version,
                    path: in_memory_or(&entry.path()),
                    reason,
                })?;
            let kind = if current.contains_key(&version) {
                ChangeKind::Reloaded
            } else {
                ChangeKind::Loaded
            };
            changes.push(Change {
                model: name.to_string(),
                version,
                kind,
                file: Some(path.clone()),
            });
            fresh.push(entry);
        }
        let gone: Vec<u64> = current
            .keys()
            .filter(|v| !wanted.contains_key(v))
            .copied()
            .collect();
        let mut retired = Vec::new();
        {
            let mut models = self.models.write().expect("models lock");
            let versions = models.entry(name.to_string()).or_default();
            for entry in fresh {
                retired.extend(versions.insert(entry.version, entry));
            }
            for version in &gone {
                retired.extend(versions.remove(version));
            }
        }
        for version in gone {
            self.metrics.forget_model(name, version);
            changes.push(Change {
                model: name.to_string(),
                version,
                kind: ChangeKind::Unloaded,
                file: current[&version].path(),
            });
        }
        changes.sort_by_key(|change| change.version);
        // The old entries go here, or with the last request that holds one.
        drop(retired);
        Ok(changes)
    }

    /// Loads every model of the source again, as [`Registry::load`] does each: those served, and
    /// those the source holds (a repository's new folders, or models unloaded since).
    pub async fn load_all(&self) -> Reload {
        let mut names = self.names();
        let mut reload = Reload::default();
        match &self.origin {
            Origin::Memory => return reload,
            Origin::Files(named) => names.extend(named.keys().cloned()),
            Origin::Directory(dir) => match scan_repository(dir) {
                Ok(found) => names.extend(found),
                Err(e) => reload.errors.push(e),
            },
        }
        names.sort();
        names.dedup();
        for name in names {
            match self.load(&name).await {
                Ok(changes) => reload.changes.extend(changes),
                Err(e) => reload.errors.push(e),
            }
        }
        reload
    }

    /// Stops serving every version of a model; requests in flight on it are still answered.
    pub async fn unload(&self, name: &str) -> Result<Vec<Change>, RepositoryError> {
        let _one_at_a_time = self.changing.lock().await;
        let removed = self.models.write().expect("models lock").remove(name);
        let Some(removed) = removed else {
            return Err(RepositoryError::UnknownModel {
                name: name.to_string(),
                known: self.names(),
            });
        };
        Ok(removed
            .into_values()
            .map(|entry| {
                self.metrics.forget_model(name, entry.version);
                Change {
                    model: name.to_string(),
                    version: entry.version,
                    kind: ChangeKind::Unloaded,
                    file: entry.path(),
                }
            })
            .collect())
    }

    /// Closes every queue (each thread ends once its queue is empty) and starts no more; returns
    /// the threads to join.
    pub fn close(&self) -> Vec<JoinHandle<()>> {
        let mut workers = self.workers.lock().expect("workers lock");
        workers.closed = true;
        workers
            .started
            .drain(..)
            .map(|(batcher, thread)| {
                batcher.close();
                thread
            })
            .collect()
    }
}

/// How a warm-up went, once it is over.
async fn warmed_up(warmup: &watch::Receiver<Warmup>) -> Result<Duration, String> {
    let outcome = warmup
        .clone()
        .wait_for(Option::is_some)
        .await
        .map_err(|_| "the batcher thread stopped".to_string())?
        .clone();
    outcome.unwrap_or_else(|| Err("the warm-up gave no outcome".into()))
}

fn in_memory_or(path: &Option<PathBuf>) -> PathBuf {
    path.clone().unwrap_or_else(|| PathBuf::from("in memory"))
}
