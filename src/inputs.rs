//! From command-line arguments to image files: files, directories (walked recursively) and glob
//! patterns.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::error::Error;

/// File extensions (lower case) that [`expand`] takes for images when it walks a directory or
/// expands a pattern.
pub const IMAGE_EXTENSIONS: [&str; 9] = [
    "png", "jpg", "jpeg", "bmp", "gif", "webp", "tif", "tiff", "jfif",
];

/// True when `path` has one of the [`IMAGE_EXTENSIONS`] (in any case).
pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// The image files found in a list of inputs.
#[derive(Debug, Default)]
pub struct Inputs {
    /// Image files, in the order of the inputs; a directory's files sorted by path.
    pub images: Vec<PathBuf>,
    /// Files found in directories or through patterns that are not images (by their extension).
    pub skipped: Vec<PathBuf>,
    /// Inputs that gave nothing: a missing path, a bad pattern, a pattern matching nothing, an
    /// unreadable directory.
    pub problems: Vec<Error>,
}

fn has_glob_syntax(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Expands each input in order:
///
/// - an existing file is taken as it is (even without an image extension: it is then reported
///   when it fails to decode);
/// - an existing directory is walked recursively (following no symbolic links to directories),
///   its image files taken in path order and its other files skipped;
/// - otherwise, an argument with `*`, `?` or `[` is a glob pattern (so a quoted pattern works
///   where the shell did not expand it): matched files are taken or skipped as in a directory,
///   matched directories walked, each file taken once; hidden files match only a pattern that
///   names the leading dot;
/// - anything else is a problem (the path does not exist).
///
/// Hidden files (names starting with `.`) inside directories are skipped.
///
/// ```
/// let dir = std::env::temp_dir().join(format!("densenet-inputs-doc-{}", std::process::id()));
/// std::fs::create_dir_all(dir.join("sub")).unwrap();
/// std::fs::write(dir.join("sub/a.png"), b"").unwrap();
/// std::fs::write(dir.join("notes.txt"), b"").unwrap();
/// let found = densenet::inputs::expand([dir.as_os_str()]);
/// assert_eq!(found.images, [dir.join("sub/a.png")]);
/// assert_eq!(found.skipped, [dir.join("notes.txt")]);
/// std::fs::remove_dir_all(&dir).unwrap();
/// ```
pub fn expand<I, S>(inputs: I) -> Inputs
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut found = Inputs::default();
    for input in inputs {
        let path = Path::new(input.as_ref());
        if path.is_dir() {
            let before = (
                found.images.len(),
                found.skipped.len(),
                found.problems.len(),
            );
            walk(path, &mut found);
            if before
                == (
                    found.images.len(),
                    found.skipped.len(),
                    found.problems.len(),
                )
            {
                // Said aloud: a folder named like an image, or an empty one, is likely a mistake.
                found.problems.push(Error::io(
                    path,
                    std::io::Error::other("is a directory with no images in it"),
                ));
            }
        } else if path.exists() {
            found.images.push(path.to_path_buf());
        } else {
            match path.to_str() {
                Some(pattern) if has_glob_syntax(pattern) => expand_pattern(pattern, &mut found),
                _ => found.problems.push(Error::io(
                    path,
                    std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
                )),
            }
        }
    }
    found
}

/// One of `count` deterministic, disjoint shards of a set of files, written `K/N` with
/// 0 ≤ K < N (the numbering of a Kubernetes Indexed Job's `JOB_COMPLETION_INDEX`).
///
/// The files are sorted by path and each taken once, then cut into N contiguous runs whose
/// sizes differ by at most one; shard K is the K-th run. The N shards of the same files are
/// disjoint and together hold every file, whatever order the files were given in.
///
/// ```
/// use densenet::inputs::Shard;
/// use std::path::PathBuf;
/// let files: Vec<PathBuf> = ["c.png", "a.png", "b.png", "d.png", "e.png"].map(PathBuf::from).into();
/// let shard: Shard = "1/2".parse()?;
/// assert_eq!(shard.select(&files), ["c.png", "d.png", "e.png"].map(PathBuf::from));
/// assert_eq!("0/2".parse::<Shard>()?.select(&files), ["a.png", "b.png"].map(PathBuf::from));
/// # Ok::<(), densenet::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// K, from 0.
    pub index: usize,
    /// N, at least 1.
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = |reason: &str| Error::Shard {
            value: s.to_string(),
            reason: reason.to_string(),
        };
        let (k, n) = s
            .split_once('/')
            .ok_or_else(|| bad("expected K/N, such as 0/4"))?;
        let number = |v: &str| {
            v.trim()
                .parse::<usize>()
                .map_err(|_| bad("K and N must be whole numbers (K/N, such as 0/4)"))
        };
        let (index, count) = (number(k)?, number(n)?);
        if count == 0 {
            return Err(bad("N must be at least 1"));
        }
        if index >= count {
            return Err(bad("K counts from 0 and must be below N"));
        }
        Ok(Self { index, count })
    }
}

impl Shard {
    /// This shard's files: see [`Shard`].
    pub fn select(&self, files: &[PathBuf]) -> Vec<PathBuf> {
        let mut sorted = files.to_vec();
        sorted.sort();
        sorted.dedup();
        let bound = |k: usize| k * sorted.len() / self.count;
        sorted[bound(self.index)..bound(self.index + 1)].to_vec()
    }
}

fn expand_pattern(pattern: &str, found: &mut Inputs) {
    let pattern_error = |reason: String| Error::Pattern {
        pattern: pattern.to_string(),
        reason,
    };
    let options = glob::MatchOptions {
        require_literal_leading_dot: true,
        ..Default::default()
    };
    let paths = match glob::glob_with(pattern, options) {
        Ok(paths) => paths,
        Err(e) => {
            found.problems.push(pattern_error(e.to_string()));
            return;
        }
    };
    // `dir/**/*` matches folders and the files in them: each file is taken once.
    let mut matches = Inputs::default();
    for entry in paths {
        match entry {
            Ok(path) if path.is_dir() => walk(&path, &mut matches),
            Ok(path) => take_or_skip(path, &mut matches),
            Err(e) => {
                let path = e.path().to_path_buf();
                matches.problems.push(Error::io(path, e.into()));
            }
        }
    }
    if matches.images.is_empty() && matches.skipped.is_empty() && matches.problems.is_empty() {
        found
            .problems
            .push(pattern_error("matches no file".to_string()));
    }
    let mut seen = HashSet::new();
    found.images.extend(
        matches
            .images
            .into_iter()
            .filter(|p| seen.insert(p.clone())),
    );
    found.skipped.extend(
        matches
            .skipped
            .into_iter()
            .filter(|p| seen.insert(p.clone())),
    );
    found.problems.extend(matches.problems);
}

fn take_or_skip(path: PathBuf, found: &mut Inputs) {
    if has_image_extension(&path) {
        found.images.push(path);
    } else {
        found.skipped.push(path);
    }
}

fn walk(dir: &Path, found: &mut Inputs) {
    let hidden = |e: &walkdir::DirEntry| {
        e.depth() > 0 && e.file_name().to_str().is_some_and(|n| n.starts_with('.'))
    };
    let walker = walkdir::WalkDir::new(dir)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| !hidden(e));
    for entry in walker {
        match entry {
            Ok(entry) if entry.file_type().is_dir() => {}
            Ok(entry) => take_or_skip(entry.into_path(), found),
            Err(e) => {
                let path = e.path().unwrap_or(dir).to_path_buf();
                let source = e
                    .into_io_error()
                    .unwrap_or_else(|| std::io::Error::other("filesystem loop"));
                found.problems.push(Error::io(path, source));
            }
        }
    }
}
