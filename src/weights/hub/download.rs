//! The Hub's file protocol, spoken as Python's `huggingface_hub` speaks it, into the same cache.
//!
//! `GET {endpoint}/{repo}/resolve/{revision}/{file}` with `Range: bytes=0-0` answers, after any
//! relative redirects (a renamed repository), with the commit (`x-repo-commit`), the file's id
//! (`x-linked-etag` for large files, else `etag`) and its size (`x-linked-size`, else the total in
//! `Content-Range`); a large file's answer is an absolute redirect to the storage server. The body
//! is then fetched, following every redirect. A missing file is a 404 with
//! `x-error-code: EntryNotFound`. In the cache the file becomes `blobs/ETAG`, linked from
//! `snapshots/COMMIT/FILE`, with `refs/REVISION` holding the commit.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::weights::write_atomically;

/// Relative redirects followed while asking about a file (the Hub uses one for a renamed
/// repository; more would be a loop).
const MAX_REDIRECTS: usize = 5;

/// What a download came to, when the server answered.
pub(super) enum Outcome {
    /// The file, at `snapshots/COMMIT/FILE` in the repository's cache folder.
    Downloaded(PathBuf),
    /// The revision has no such file.
    NotFound,
}

/// Why a download did not happen.
pub(super) enum Failure {
    /// The Hub answered and refused: no such repository or revision, no access.
    Refused(String),
    /// No usable answer: the network, a server error, a transfer cut short, the cache.
    Failed(String),
}

impl From<String> for Failure {
    fn from(why: String) -> Self {
        Self::Failed(why)
    }
}

/// The Hub's answer about one file.
struct Remote {
    commit: String,
    etag: String,
    size: Option<u64>,
}

/// HTTP access to one Hub endpoint.
pub(super) struct Client {
    endpoint: String,
    token: Option<String>,
    progress: bool,
    /// Follows no redirect: the probe must see the Hub's own answer.
    probe: ureq::Agent,
    /// Follows redirects, sending the token to the endpoint's host only.
    fetch: ureq::Agent,
}

impl Client {
    pub(super) fn new(endpoint: &str, token: Option<String>, progress: bool) -> Self {
        let agent = || {
            ureq::AgentBuilder::new()
                .try_proxy_from_env(true)
                .timeout_connect(Duration::from_secs(30))
                .timeout_read(Duration::from_secs(60))
                .user_agent(concat!("densenet/", env!("CARGO_PKG_VERSION")))
        };
        Self {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            token,
            progress,
            probe: agent().redirects(0).build(),
            fetch: agent()
                .redirect_auth_headers(ureq::RedirectAuthHeaders::SameHost)
                .build(),
        }
    }

    /// The URL of `file` at `revision`.
    pub(super) fn url(&self, repo: &str, revision: &str, file: &str) -> String {
        format!(
            "{}/{repo}/resolve/{}/{}",
            self.endpoint,
            encode(revision, false),
            encode(file, true)
        )
    }

    fn get(&self, agent: &ureq::Agent, url: &str) -> ureq::Request {
        let request = agent.get(url);
        match &self.token {
            Some(token) => request.set("Authorization", &format!("Bearer {token}")),
            None => request,
        }
    }

    /// Downloads `file` of `repo` at `revision` into the cache folder `repo_dir`
    /// (`models--OWNER--REPO`). Failures say what failed, for the caller to wrap.
    pub(super) fn download(
        &self,
        repo_dir: &Path,
        repo: &str,
        revision: &str,
        file: &str,
    ) -> Result<Outcome, Failure> {
        let Some(remote) = self.probe(repo, revision, file)? else {
            return Ok(Outcome::NotFound);
        };
        let blob = repo_dir.join("blobs").join(&remote.etag);
        let have = std::fs::metadata(&blob).ok().map(|m| m.len());
        if have.is_none() || remote.size.is_some_and(|s| have != Some(s)) {
            // From the commit, so that the content is the one the probe described.
            let source = self.url(repo, &remote.commit, file);
            self.fetch_blob(&source, remote.size, &blob, file)?;
        }
        let pointer = repo_dir.join("snapshots").join(&remote.commit).join(file);
        link(&blob, &pointer, file).map_err(|e| format!("{}: {e}", pointer.display()))?;
        if revision != remote.commit {
            let reference = repo_dir.join("refs").join(revision);
            std::fs::create_dir_all(reference.parent().unwrap_or(repo_dir))
                .map_err(|e| format!("{}: {e}", reference.display()))
                .and_then(|()| {
                    write_atomically(&reference, true, |tmp| {
                        std::fs::write(tmp, &remote.commit).map_err(|e| crate::Error::io(tmp, e))
                    })
                    .map_err(|e| e.to_string())
                })?;
        }
        Ok(Outcome::Downloaded(pointer))
    }

    /// Asks the Hub about a file without downloading it; `None` if the revision has no such file.
    fn probe(&self, repo: &str, revision: &str, file: &str) -> Result<Option<Remote>, Failure> {
        let url = self.url(repo, revision, file);
        let mut current = url.clone();
        for _ in 0..=MAX_REDIRECTS {
            let response = match self
                .get(&self.probe, &current)
                .set("Range", "bytes=0-0")
                .call()
            {
                Ok(response) => response,
                Err(ureq::Error::Status(status, response)) => {
                    return refused(status, &response, &current, revision);
                }
                Err(e) => return Err(Failure::Failed(e.to_string())),
            };
            let location = response.header("location").filter(|l| {
                (300..400).contains(&response.status())
                    && l.starts_with('/')
                    && !l.starts_with("//")
            });
            if let Some(path) = location {
                current = format!("{}{path}", origin(&current));
                continue;
            }
            return Ok(Some(remote(&response, &url)?));
        }
        Err(Failure::Failed(format!(
            "{url}: more than {MAX_REDIRECTS} redirects"
        )))
    }

    /// Downloads the file's content into `blob`, through a temporary file renamed into place
    /// once it is whole: an interrupted transfer leaves nothing in the cache.
    fn fetch_blob(
        &self,
        url: &str,
        size: Option<u64>,
        blob: &Path,
        file: &str,
    ) -> Result<(), String> {
        let dir = blob.parent().unwrap_or(blob);
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let response = self.get(&self.fetch, url).call().map_err(|e| match e {
            ureq::Error::Status(status, _) => format!("{url}: HTTP {status}"),
            e => e.to_string(),
        })?;
        let size = size.or_else(|| {
            response
                .header("content-length")
                .and_then(|l| l.parse().ok())
        });
        let bar = self.progress_bar(size, file);
        let mut failure = None;
        let written = write_atomically(blob, true, |tmp| {
            let result = copy_body(response.into_reader(), tmp, size, &bar);
            result.map_err(|why| {
                let e = crate::Error::io(tmp, std::io::Error::other(why.clone()));
                failure = Some(format!("{url}: {why}"));
                e
            })
        });
        bar.finish_and_clear();
        written.map_err(|e| failure.unwrap_or_else(|| e.to_string()))
    }

    fn progress_bar(&self, size: Option<u64>, file: &str) -> indicatif::ProgressBar {
        if !self.progress {
            return indicatif::ProgressBar::hidden();
        }
        let bar = indicatif::ProgressBar::new(size.unwrap_or(0));
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(file.to_string());
        bar
    }
}

/// Streams a response body into `path`; a body shorter than `size` is an error.
fn copy_body(
    mut body: impl Read,
    path: &Path,
    size: Option<u64>,
    bar: &indicatif::ProgressBar,
) -> Result<(), String> {
    let mut out = std::fs::File::create(path).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 1 << 16];
    let mut got = 0u64;
    let of = size.map(|s| format!(" of {s}")).unwrap_or_default();
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("connection lost after {got}{of} bytes ({e})")),
        };
        out.write_all(&buf[..n]).map_err(|e| e.to_string())?;
        got += n as u64;
        bar.set_position(got);
    }
    match size {
        Some(s) if got != s => Err(format!("the server sent {got}{of} bytes")),
        _ => Ok(()),
    }
}

/// The file's identity from the Hub's answer; the commit and id become file names in the cache,
/// so anything but plain names is refused.
fn remote(response: &ureq::Response, url: &str) -> Result<Remote, String> {
    let header = |name: &str| response.header(name).map(str::trim);
    let commit = header("x-repo-commit")
        .ok_or_else(|| format!("{url}: no x-repo-commit header: not a Hub endpoint?"))?;
    let etag = header("x-linked-etag")
        .or_else(|| header("etag"))
        .map(|e| e.trim_start_matches("W/").trim_matches('"'))
        .ok_or_else(|| format!("{url}: no etag header"))?;
    for (name, value) in [("x-repo-commit", commit), ("etag", etag)] {
        let plain = !value.is_empty()
            && value.len() <= 128
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !plain {
            return Err(format!("{url}: {name} `{value}` is not a plain identifier"));
        }
    }
    let size = header("x-linked-size")
        .or_else(|| header("content-range").and_then(|r| r.rsplit('/').next()))
        .and_then(|s| s.parse().ok());
    Ok(Remote {
        commit: commit.to_string(),
        etag: etag.to_string(),
        size,
    })
}

/// A refusal from the Hub: `Ok(None)` for a missing file, else what it said.
fn refused(
    status: u16,
    response: &ureq::Response,
    url: &str,
    revision: &str,
) -> Result<Option<Remote>, Failure> {
    let code = response.header("x-error-code").unwrap_or("");
    let detail = response
        .header("x-error-message")
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    let refusal = match (status, code) {
        (404, "EntryNotFound" | "") => return Ok(None),
        (_, "RevisionNotFound") => format!("revision `{revision}` not found"),
        (_, "RepoNotFound") | (401, _) => {
            "repository not found (or private or gated: set HF_TOKEN to a token that may read it)"
                .to_string()
        }
        (_, "GatedRepo") => {
            "gated repository: accept its conditions on its Hub page and set HF_TOKEN".to_string()
        }
        _ => return Err(Failure::Failed(format!("{url}: HTTP {status}{detail}"))),
    };
    Err(Failure::Refused(refusal))
}

/// Links `snapshots/COMMIT/FILE` to its blob (relative, as `huggingface_hub` does; copied where
/// the platform has no symbolic links), replacing a stale link.
fn link(blob: &Path, pointer: &Path, file: &str) -> std::io::Result<()> {
    if pointer.is_file() {
        return Ok(());
    }
    if let Some(dir) = pointer.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(pointer);
    #[cfg(unix)]
    {
        // From snapshots/COMMIT/<FILE's folders>/ back up to the repository folder.
        let up = "../".repeat(file.split('/').count() + 1);
        let name = blob.file_name().unwrap_or_default().to_string_lossy();
        std::os::unix::fs::symlink(format!("{up}blobs/{name}"), pointer)
    }
    #[cfg(not(unix))]
    {
        let _ = file;
        std::fs::copy(blob, pointer).map(drop)
    }
}

/// `scheme://host[:port]` of a URL.
fn origin(url: &str) -> &str {
    let start = url.find("://").map_or(0, |i| i + 3);
    match url[start..].find('/') {
        Some(i) => &url[..start + i],
        None => url,
    }
}

/// Percent-encodes a revision or a file path for a URL (`/` kept in paths).
fn encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_encoded_and_origins_found() {
        let client = Client::new("http://127.0.0.1:8/", None, false);
        assert_eq!(
            client.url("a/b", "refs/pr/1", "sub dir/m.bin"),
            "http://127.0.0.1:8/a/b/resolve/refs%2Fpr%2F1/sub%20dir/m.bin"
        );
        assert_eq!(origin("https://hf.co/a/b/resolve/x"), "https://hf.co");
        assert_eq!(origin("http://h:1"), "http://h:1");
    }
}
