//! The Hub's local cache, laid out as Python's `huggingface_hub` lays it out, filled from the
//! Hub on a miss: the model file, the repository's `config.json`, and the conversion to a
//! self-describing safetensors file.

use std::path::{Path, PathBuf};

use super::download::{Client, Failure, Outcome};
use super::{preprocessing_from_timm_config, HubRef, CONFIG_FILE, DEFAULT_ENDPOINT, DEFAULT_FILES};
use crate::error::{Error, Result};
use crate::weights::{pth, Checkpoint};

/// Access to the Hub and its local cache.
#[derive(Clone)]
pub struct Hub {
    cache_dir: PathBuf,
    offline: bool,
    progress: bool,
    endpoint: Option<String>,
    token: Option<String>,
}

/// Everything but the token's value.
impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("cache_dir", &self.cache_dir)
            .field("offline", &self.offline)
            .field("progress", &self.progress)
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "(set)"))
            .finish()
    }
}

/// What the cache knows of a repository's `config.json` at a commit.
enum RepoConfig {
    /// The file, in the snapshot.
    At(PathBuf),
    /// The repository has none (`.no_exist/COMMIT/config.json`, as `huggingface_hub` marks it).
    Absent,
    /// Never asked (a cache filled by other means, read offline).
    Unknown,
}

impl Hub {
    /// The Hub as the environment configures it, like Python's `huggingface_hub`: the cache in
    /// `HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`; offline when
    /// `HF_HUB_OFFLINE` is `1`/`true`/`yes`/`on`; `HF_ENDPOINT` for a mirror; the access token
    /// in `HF_TOKEN`, else the file `HF_HOME/token` (`~/.cache/huggingface/token`). Progress
    /// bars on.
    pub fn from_env() -> Result<Self> {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        let home = var("HF_HOME").map(PathBuf::from).or_else(|| {
            var("XDG_CACHE_HOME")
                .map(|x| PathBuf::from(x).join("huggingface"))
                .or_else(|| {
                    var("HOME")
                        .or_else(|| var("USERPROFILE"))
                        .map(|h| PathBuf::from(h).join(".cache/huggingface"))
                })
        });
        let cache_dir = var("HF_HUB_CACHE")
            .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join("hub")))
            .ok_or_else(|| Error::Hub {
                repo: String::new(),
                reason: "no Hub cache directory: set HF_HUB_CACHE or HF_HOME".into(),
            })?;
        let offline = std::env::var("HF_HUB_OFFLINE")
            .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"));
        let token = std::env::var("HF_TOKEN")
            .ok()
            .or_else(|| std::fs::read_to_string(home?.join("token")).ok())
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        Ok(Self {
            cache_dir,
            offline,
            progress: false,
            endpoint: std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty()),
            token,
        })
    }

    /// A Hub whose cache lives in `cache_dir` (online, no progress bar, no token).
    pub fn with_cache_dir(cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            cache_dir: cache_dir.into(),
            offline: false,
            progress: false,
            endpoint: None,
            token: None,
        }
    }

    /// Never touch the network: use the cache only.
    pub fn offline(mut self, offline: bool) -> Self {
        self.offline = offline;
        self
    }

    /// Use another Hub endpoint (a mirror) than [`DEFAULT_ENDPOINT`].
    pub fn endpoint(mut self, url: impl Into<String>) -> Self {
        self.endpoint = Some(url.into());
        self
    }

    /// Draw a progress bar on stderr while downloading (off by default: the library writes
    /// nothing to stderr unless asked; the binaries ask).
    pub fn progress(mut self, progress: bool) -> Self {
        self.progress = progress;
        self
    }

    /// The cache directory.
    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    /// The model file for `r`: from the cache if it is there, else downloaded into it (unless
    /// offline), with the repository's `config.json` when it has one. A PyTorch file, or any
    /// file that `config.json` gives the preprocessing of, is converted to a self-describing
    /// safetensors file once; the converted file is returned.
    pub fn fetch(&self, r: &HubRef) -> Result<PathBuf> {
        let candidates: Vec<&str> = match &r.file {
            Some(f) => vec![f.as_str()],
            None => DEFAULT_FILES.to_vec(),
        };
        let cached = candidates
            .iter()
            .find_map(|f| self.cached(r, f).map(|p| (f.to_string(), p)));
        let (file, path) = match cached {
            Some(found) => found,
            None if self.offline => {
                return Err(self.miss(r, &candidates, "offline (HF_HUB_OFFLINE)"))
            }
            None => self.download(r, &candidates)?,
        };
        let commit = self.snapshot_commit(r, &path);
        let config = self.repo_config(r, &commit)?;
        self.converted(r, &file, &path, &commit, config)
    }

    /// A file in the cache: under the commit `refs/REVISION` points to, or under the revision
    /// itself when it is a commit hash.
    fn cached(&self, r: &HubRef, file: &str) -> Option<PathBuf> {
        let dir = self.repo_dir(r);
        let commit = std::fs::read_to_string(dir.join("refs").join(&r.revision))
            .map(|c| c.trim().to_string())
            .unwrap_or_else(|_| r.revision.clone());
        let path = dir.join("snapshots").join(commit).join(file);
        path.is_file().then_some(path)
    }

    /// The commit of a file in a snapshot (`snapshots/COMMIT/…`).
    fn snapshot_commit(&self, r: &HubRef, path: &Path) -> String {
        path.strip_prefix(self.repo_dir(r).join("snapshots"))
            .ok()
            .and_then(|p| p.components().next())
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .unwrap_or_else(|| r.revision.clone())
    }

    fn repo_dir(&self, r: &HubRef) -> PathBuf {
        self.cache_dir
            .join(format!("models--{}", r.repo.replace('/', "--")))
    }

    fn client(&self) -> Client {
        Client::new(
            self.endpoint.as_deref().unwrap_or(DEFAULT_ENDPOINT),
            self.token.clone(),
            self.progress,
        )
    }

    fn download(&self, r: &HubRef, candidates: &[&str]) -> Result<(String, PathBuf)> {
        let client = self.client();
        for file in candidates {
            match client.download(&self.repo_dir(r), &r.repo, &r.revision, file) {
                Ok(Outcome::Downloaded(path)) => return Ok((file.to_string(), path)),
                Ok(Outcome::NotFound) => {}
                Err(Failure::Refused(why)) => return Err(self.refused(r, why)),
                Err(Failure::Failed(why)) => return Err(self.miss(r, candidates, &why)),
            }
        }
        Err(Error::Hub {
            repo: r.repo.clone(),
            reason: format!(
                "not found: no {} at revision `{}`; name the file with hf:{}:FILE",
                candidates.join(" or "),
                r.revision,
                r.repo
            ),
        })
    }

    /// The repository's `config.json` at `commit`: from the cache, else asked for once (unless
    /// offline); a repository without one is marked so in the cache.
    fn repo_config(&self, r: &HubRef, commit: &str) -> Result<RepoConfig> {
        let dir = self.repo_dir(r);
        let snapshot = dir.join("snapshots").join(commit).join(CONFIG_FILE);
        let marker = dir.join(".no_exist").join(commit).join(CONFIG_FILE);
        if snapshot.is_file() {
            return Ok(RepoConfig::At(snapshot));
        }
        if marker.is_file() {
            return Ok(RepoConfig::Absent);
        }
        if self.offline {
            return Ok(RepoConfig::Unknown);
        }
        match self.client().download(&dir, &r.repo, commit, CONFIG_FILE) {
            Ok(Outcome::Downloaded(path)) => Ok(RepoConfig::At(path)),
            Ok(Outcome::NotFound) => {
                // Without the mark every later run would ask again; it is only an optimisation.
                let _ = marker
                    .parent()
                    .map(std::fs::create_dir_all)
                    .and_then(|_| std::fs::write(&marker, "").ok());
                Ok(RepoConfig::Absent)
            }
            Err(Failure::Refused(why)) => Err(self.refused(r, why)),
            Err(Failure::Failed(why)) => Err(self.miss(r, &[CONFIG_FILE], &why)),
        }
    }

    fn refused(&self, r: &HubRef, why: String) -> Error {
        Error::Hub {
            repo: r.repo.clone(),
            reason: why,
        }
    }

    /// The error for a file neither cached nor downloadable, with how to get it by hand.
    fn miss(&self, r: &HubRef, candidates: &[&str], why: &str) -> Error {
        let file = candidates[candidates.len() - 1];
        Error::Hub {
            repo: r.repo.clone(),
            reason: format!(
                "{} not in the Hub cache at {} and cannot be downloaded ({why}). Get it by hand \
                 with `huggingface-cli download {} {file} {CONFIG_FILE} --revision {}` (then \
                 rerun; leave out {CONFIG_FILE} if the repository has none), or download {} and \
                 pass the file with --weights",
                candidates.join(" or "),
                self.cache_dir.display(),
                r.repo,
                r.revision,
                Client::new(DEFAULT_ENDPOINT, None, false).url(&r.repo, &r.revision, file),
            ),
        }
    }

    /// `path` itself if it is safetensors and the repository gives no preprocessing for it;
    /// else its conversion, with the preprocessing of the repository's `config.json`, made once
    /// and kept in `models--OWNER--REPO/densenet/COMMIT/FILE.safetensors`.
    fn converted(
        &self,
        r: &HubRef,
        file: &str,
        path: &Path,
        commit: &str,
        config: RepoConfig,
    ) -> Result<PathBuf> {
        let config_file = match config {
            RepoConfig::At(config_file) => Some(config_file),
            RepoConfig::Absent => None,
            // A conversion made now could disagree with the config.json a later run finds.
            RepoConfig::Unknown => return Ok(path.to_path_buf()),
        };
        let zip = pth::sniff(path)? == pth::FileKind::Zip;
        if !zip && config_file.is_none() {
            return Ok(path.to_path_buf());
        }
        let target = self
            .repo_dir(r)
            .join("densenet")
            .join(commit)
            .join(format!("{file}.safetensors"));
        if target.is_file() {
            return Ok(target);
        }
        let mut checkpoint = Checkpoint::open(path)?;
        // A file's own metadata (only safetensors files have any) comes before the repository's.
        if checkpoint.self_describing {
            return Ok(path.to_path_buf());
        }
        if let Some(config_file) = &config_file {
            let text =
                std::fs::read_to_string(config_file).map_err(|e| Error::io(config_file, e))?;
            checkpoint.info.preprocessing =
                preprocessing_from_timm_config(&text, &checkpoint.info.preprocessing).map_err(
                    |reason| Error::Hub {
                        repo: r.repo.clone(),
                        reason: format!("{}: {reason}", config_file.display()),
                    },
                )?;
        }
        let written = target
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .map_err(|e| Error::io(&target, e))
            .and_then(|()| checkpoint.save_safetensors(&target, true));
        match (written, config_file) {
            (Ok(()), _) => Ok(target),
            // The original loads just the same, only more slowly.
            (Err(_), None) => Ok(path.to_path_buf()),
            (Err(e), Some(config_file)) => Err(Error::Hub {
                repo: r.repo.clone(),
                reason: format!(
                    "cannot record the preprocessing of {} in the cache ({e}); make the cache \
                     writable or point HF_HUB_CACHE elsewhere",
                    config_file.display()
                ),
            }),
        }
    }
}
