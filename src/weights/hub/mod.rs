//! Weights from the Hugging Face Hub (`hf:OWNER/REPO[@REVISION][:FILE]`), through the standard
//! Hub cache (`models--OWNER--REPO/snapshots/COMMIT/…`, `refs/REVISION`), shared with Python's
//! `huggingface_hub`. A PyTorch file is converted to safetensors once, next to the snapshot.

use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::Checkpoint;
use crate::error::{Error, Result};

/// The files tried, in order, when a Hub reference names none.
pub const DEFAULT_FILES: [&str; 2] = ["model.safetensors", "pytorch_model.bin"];

/// The model `classify` uses when given no weights and `weights/` holds none.
pub const DEFAULT_REPO: &str = "edadaltocg/densenet121_cifar100";

/// The prefix that marks a Hub reference in `--weights`.
pub const PREFIX: &str = "hf:";

/// A file on the Hub: `OWNER/REPO[@REVISION][:FILE]`.
///
/// ```
/// let r: densenet::weights::hub::HubRef = "timm/densenet121.tv_in1k@v2:pytorch_model.bin".parse()?;
/// assert_eq!(r.repo, "timm/densenet121.tv_in1k");
/// assert_eq!(r.revision, "v2");
/// assert_eq!(r.file.as_deref(), Some("pytorch_model.bin"));
/// let r: densenet::weights::hub::HubRef = "edadaltocg/densenet121_cifar100".parse()?;
/// assert_eq!((r.revision.as_str(), r.file), ("main", None));
/// # Ok::<(), densenet::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubRef {
    /// `OWNER/REPO`.
    pub repo: String,
    /// A branch, tag or commit hash (`main` by default).
    pub revision: String,
    /// The file; `None` tries [`DEFAULT_FILES`] in order.
    pub file: Option<String>,
}

impl FromStr for HubRef {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |reason: &str| Error::Hub {
            repo: s.to_string(),
            reason: format!("{reason}; expected OWNER/REPO[@REVISION][:FILE]"),
        };
        let (rest, file) = match s.split_once(':') {
            Some((rest, file)) if !file.is_empty() => (rest, Some(file.to_string())),
            Some(_) => return Err(bad("empty file name")),
            None => (s, None),
        };
        let (repo, revision) = match rest.split_once('@') {
            Some((repo, rev)) if !rev.is_empty() => (repo, rev.to_string()),
            Some(_) => return Err(bad("empty revision")),
            None => (rest, "main".to_string()),
        };
        let valid_part = |p: &str| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        match repo.split_once('/') {
            Some((owner, name)) if valid_part(owner) && valid_part(name) => Ok(Self {
                repo: repo.to_string(),
                revision,
                file,
            }),
            _ => Err(bad(&format!("`{repo}` is not a repository id"))),
        }
    }
}

/// Access to the Hub and its local cache.
#[derive(Clone, Debug)]
pub struct Hub {
    cache_dir: PathBuf,
    offline: bool,
    progress: bool,
    endpoint: Option<String>,
}

impl Hub {
    /// The Hub as the environment configures it, like Python's `huggingface_hub`: the cache in
    /// `HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`; offline when
    /// `HF_HUB_OFFLINE` is `1`/`true`/`yes`/`on`; `HF_ENDPOINT` for a mirror. Progress bars on.
    pub fn from_env() -> Result<Self> {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        let cache_dir =
            if let Some(dir) = var("HF_HUB_CACHE").or_else(|| var("HUGGINGFACE_HUB_CACHE")) {
                PathBuf::from(dir)
            } else if let Some(home) = var("HF_HOME") {
                PathBuf::from(home).join("hub")
            } else if let Some(xdg) = var("XDG_CACHE_HOME") {
                PathBuf::from(xdg).join("huggingface/hub")
            } else if let Some(home) = var("HOME").or_else(|| var("USERPROFILE")) {
                PathBuf::from(home).join(".cache/huggingface/hub")
            } else {
                return Err(Error::Hub {
                    repo: String::new(),
                    reason: "no Hub cache directory: set HF_HUB_CACHE or HF_HOME".into(),
                });
            };
        let offline = std::env::var("HF_HUB_OFFLINE")
            .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"));
        Ok(Self {
            cache_dir,
            offline,
            progress: true,
            endpoint: std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty()),
        })
    }

    /// A Hub whose cache lives in `cache_dir` (online, progress bars on).
    pub fn with_cache_dir(cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            cache_dir: cache_dir.into(),
            offline: false,
            progress: true,
            endpoint: None,
        }
    }

    /// Never touch the network: use the cache only.
    pub fn offline(mut self, offline: bool) -> Self {
        self.offline = offline;
        self
    }

    /// Use another Hub endpoint (a mirror) than `https://huggingface.co`.
    pub fn endpoint(mut self, url: impl Into<String>) -> Self {
        self.endpoint = Some(url.into());
        self
    }

    /// Show a progress bar while downloading.
    pub fn progress(mut self, progress: bool) -> Self {
        self.progress = progress;
        self
    }

    /// The cache directory.
    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    /// The model file for `r`: from the cache if it is there, else downloaded into it (unless
    /// offline). A PyTorch file is converted to safetensors once; the converted file is returned.
    pub fn fetch(&self, r: &HubRef) -> Result<PathBuf> {
        let candidates: Vec<&str> = match &r.file {
            Some(f) => vec![f.as_str()],
            None => DEFAULT_FILES.to_vec(),
        };
        let cache = Cache::new(self.cache_dir.clone());
        let repo = Repo::with_revision(r.repo.clone(), RepoType::Model, r.revision.clone());
        let cached = candidates
            .iter()
            .find_map(|f| self.cached(&cache, &repo, r, f).map(|p| (f.to_string(), p)));
        let (file, path) = match cached {
            Some(found) => found,
            None if self.offline => {
                return Err(self.miss(r, &candidates, "offline (HF_HUB_OFFLINE)"))
            }
            None => self.download(repo, r, &candidates)?,
        };
        self.converted(r, &file, &path)
    }

    /// A file in the cache: under the commit `refs/REVISION` points to, or under the revision
    /// itself when it is a commit hash.
    fn cached(&self, cache: &Cache, repo: &Repo, r: &HubRef, file: &str) -> Option<PathBuf> {
        cache.repo(repo.clone()).get(file).or_else(|| {
            let is_commit =
                r.revision.len() == 40 && r.revision.chars().all(|c| c.is_ascii_hexdigit());
            let path = self
                .repo_dir(r)
                .join("snapshots")
                .join(&r.revision)
                .join(file);
            (is_commit && path.is_file()).then_some(path)
        })
    }

    fn repo_dir(&self, r: &HubRef) -> PathBuf {
        self.cache_dir
            .join(format!("models--{}", r.repo.replace('/', "--")))
    }

    fn download(&self, repo: Repo, r: &HubRef, candidates: &[&str]) -> Result<(String, PathBuf)> {
        let mut builder =
            ApiBuilder::from_cache(Cache::new(self.cache_dir.clone())).with_progress(self.progress);
        if let Some(endpoint) = &self.endpoint {
            builder = builder.with_endpoint(endpoint.clone());
        }
        let api = builder.build().map_err(|e| Error::Hub {
            repo: r.repo.clone(),
            reason: e.to_string(),
        })?;
        let api_repo = api.repo(repo);
        let mut last = String::new();
        for file in candidates {
            match api_repo.download(file) {
                Ok(path) => return Ok((file.to_string(), path)),
                Err(e) if is_not_found(&e) => last = format!("`{file}` not found"),
                Err(e) => return Err(self.miss(r, candidates, &e.to_string())),
            }
        }
        Err(Error::Hub {
            repo: r.repo.clone(),
            reason: format!(
                "{last} at revision `{}` (tried {}); name the file with hf:{}:FILE",
                r.revision,
                candidates.join(", "),
                r.repo
            ),
        })
    }

    /// The error for a file neither cached nor downloadable, with how to get it by hand.
    fn miss(&self, r: &HubRef, candidates: &[&str], why: &str) -> Error {
        let file = candidates[candidates.len() - 1];
        Error::Hub {
            repo: r.repo.clone(),
            reason: format!(
                "{} not in the Hub cache at {} and cannot be downloaded ({why}). Get it by hand \
                 with `huggingface-cli download {} {file} --revision {}` (then rerun), or download \
                 https://huggingface.co/{}/resolve/{}/{file} and pass the file with --weights",
                candidates.join(" or "),
                self.cache_dir.display(),
                r.repo,
                r.revision,
                r.repo,
                r.revision,
            ),
        }
    }

    /// `path` itself if it is safetensors; else its conversion, made once and kept in
    /// `models--OWNER--REPO/densenet/COMMIT/FILE.safetensors`. If the cache cannot be written,
    /// the original file is used (it loads just the same, only more slowly).
    fn converted(&self, r: &HubRef, file: &str, path: &Path) -> Result<PathBuf> {
        if super::pth::sniff(path)? != super::pth::FileKind::Zip {
            return Ok(path.to_path_buf());
        }
        let commit = path
            .parent()
            .and_then(Path::file_name)
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_else(|| r.revision.clone());
        let target = self
            .repo_dir(r)
            .join("densenet")
            .join(commit)
            .join(format!("{file}.safetensors"));
        if target.is_file() {
            return Ok(target);
        }
        let checkpoint = Checkpoint::open(path)?;
        let written = target
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .map_err(|e| Error::io(&target, e))
            .and_then(|()| checkpoint.save_safetensors(&target, true));
        Ok(if written.is_ok() {
            target
        } else {
            path.to_path_buf()
        })
    }
}

fn is_not_found(e: &ApiError) -> bool {
    matches!(e, ApiError::RequestError(e) if matches!(**e, ureq::Error::Status(404, _)))
}
