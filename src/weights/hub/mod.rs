//! Weights from the Hugging Face Hub (`hf:OWNER/REPO[@REVISION][:FILE]`), through the standard
//! Hub cache (`models--OWNER--REPO/snapshots/COMMIT/…`, `refs/REVISION`), shared with Python's
//! `huggingface_hub`. The repository's timm `config.json` gives the preprocessing; a PyTorch file
//! is converted to safetensors once, next to the snapshot, with that preprocessing recorded.
//!
//! References and the repository's `config.json` are read in every build; `Hub`, which fetches
//! and caches, needs the `hub` feature (without it, a reference is [`Error::HubNotBuilt`]).

#[cfg(feature = "hub")]
mod cache;
#[cfg(feature = "hub")]
mod download;

use serde::Deserialize;
use std::str::FromStr;

use crate::config::Preprocessing;
use crate::error::{Error, Result};
#[cfg(feature = "hub")]
pub use cache::Hub;

/// The files tried, in order, when a Hub reference names none.
pub const DEFAULT_FILES: [&str; 2] = ["model.safetensors", "pytorch_model.bin"];

/// The model `classify` uses when given no weights and `weights/` holds none.
pub const DEFAULT_REPO: &str = "edadaltocg/densenet121_cifar100";

/// The prefix that marks a Hub reference in `--weights`.
pub const PREFIX: &str = "hf:";

/// The Hub endpoint used unless `HF_ENDPOINT` or `Hub::endpoint` names another.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// The file of a timm repository that holds its preprocessing (`pretrained_cfg`).
pub const CONFIG_FILE: &str = "config.json";

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
        // Both become paths in the cache: no empty, `.` or `..` components.
        let plain_path = |p: &str| p.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
        if !plain_path(&revision) {
            return Err(bad(&format!("`{revision}` is not a revision")));
        }
        if let Some(f) = file.as_deref().filter(|f| !plain_path(f)) {
            return Err(bad(&format!("`{f}` is not a file path in the repository")));
        }
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

/// timm's `config.json`: only `pretrained_cfg` matters here.
#[derive(Deserialize)]
struct TimmConfig {
    pretrained_cfg: Option<PretrainedCfg>,
}

#[derive(Deserialize)]
struct PretrainedCfg {
    input_size: Option<Vec<usize>>,
    mean: Option<[f32; 3]>,
    std: Option<[f32; 3]>,
    interpolation: Option<String>,
}

/// The preprocessing a timm `config.json` gives: `pretrained_cfg`'s `input_size` (`[3, H, W]`),
/// `mean`, `std` and `interpolation`, each absent one kept from `base`. Its `crop_pct` is not
/// used: the resize rule stays `base`'s, so that a CIFAR model's 32×32 images are classified as
/// they are, never enlarged and cropped.
///
/// ```
/// use densenet::weights::hub::preprocessing_from_timm_config;
/// let json = r#"{"pretrained_cfg": {"input_size": [3, 32, 32], "crop_pct": 0.875,
///     "mean": [0.5071, 0.4867, 0.4408], "std": [0.2675, 0.2565, 0.2761],
///     "interpolation": "bicubic"}}"#;
/// let base = densenet::Preprocessing::cifar100();
/// let p = preprocessing_from_timm_config(json, &base).unwrap();
/// assert_eq!(p.mean, [0.5071, 0.4867, 0.4408]);
/// assert_eq!(p.interpolation, densenet::Interpolation::Bicubic);
/// assert_eq!(p.resize, base.resize);
/// ```
pub fn preprocessing_from_timm_config(
    json: &str,
    base: &Preprocessing,
) -> std::result::Result<Preprocessing, String> {
    let config: TimmConfig = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let mut p = base.clone();
    let Some(cfg) = config.pretrained_cfg else {
        return Ok(p);
    };
    if let Some(size) = cfg.input_size {
        match size[..] {
            [3, h, w] if h > 0 && w > 0 => p.input_size = [h, w],
            _ => {
                return Err(format!(
                    "`pretrained_cfg.input_size` is {size:?}, expected [3, HEIGHT, WIDTH]"
                ))
            }
        }
    }
    if let Some(mean) = cfg.mean {
        if !mean.iter().all(|m| m.is_finite()) {
            return Err(format!("`pretrained_cfg.mean` {mean:?} is not finite"));
        }
        p.mean = mean;
    }
    if let Some(std) = cfg.std {
        if !std.iter().all(|s| s.is_finite() && *s > 0.0) {
            return Err(format!("`pretrained_cfg.std` {std:?} is not positive"));
        }
        p.std = std;
    }
    if let Some(name) = cfg.interpolation {
        p.interpolation = name
            .parse()
            .map_err(|e| format!("`pretrained_cfg.interpolation`: {e}"))?;
    }
    Ok(p)
}
