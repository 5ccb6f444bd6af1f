//! A stand-in for the Hugging Face Hub's file endpoint, on 127.0.0.1 at an ephemeral port, for
//! the download tests. It answers `GET /{owner}/{repo}/resolve/{revision}/{file}` as the Hub
//! does (the facts are `huggingface_hub`'s: header names, error codes):
//!
//! - a branch or tag name: a relative redirect (302) to the same file at its commit;
//! - at a commit: the file, with `x-repo-commit`, `etag` (and, for files other than JSON, the
//!   large-file headers `x-linked-etag` and `x-linked-size`), honouring `Range: bytes=A-[B]`
//!   (206 with `Content-Range`);
//! - a missing file: 404 with `x-error-code: EntryNotFound`; an unknown revision: 404
//!   `RevisionNotFound`; another repository: 401 `RepoNotFound`.
//!
//! One connection at a time, each closed after its answer. Every request is logged. The server
//! stops when dropped, and by itself after a minute.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One commit of the repository: its hash, the branch or tag names that point to it, its files.
pub struct Commit {
    pub hash: &'static str,
    pub names: &'static [&'static str],
    pub files: Vec<(&'static str, Vec<u8>)>,
}

/// A request as the server saw it: the path and the `Range` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub path: String,
    pub range: Option<String>,
}

struct State {
    repo: String,
    commits: Vec<Commit>,
    /// Close the connection after this many bytes of `file`'s whole body.
    cut: Option<(&'static str, usize)>,
    log: Mutex<Vec<Request>>,
    stop: AtomicBool,
}

pub struct HubServer {
    /// `http://127.0.0.1:PORT`, for `HF_ENDPOINT`.
    pub url: String,
    state: Arc<State>,
    thread: Option<JoinHandle<()>>,
}

impl HubServer {
    /// Serves `repo` (`OWNER/NAME`) with `commits`.
    pub fn start(repo: &str, commits: Vec<Commit>) -> Self {
        Self::start_cutting(repo, commits, None)
    }

    /// As [`HubServer::start`], but a whole-file download of `cut.0` is cut off after `cut.1`
    /// bytes of the body (the connection dropped mid-file).
    pub fn start_cutting(
        repo: &str,
        commits: Vec<Commit>,
        cut: Option<(&'static str, usize)>,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(State {
            repo: repo.to_string(),
            commits,
            cut,
            log: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let shared = state.clone();
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !shared.stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => {
                        // A client that misbehaves only loses its own connection.
                        let _ = shared.serve(stream);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self {
            url,
            state,
            thread: Some(thread),
        }
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.state.log.lock().unwrap().clone()
    }
}

impl Drop for HubServer {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Status, headers and body of an answer.
type Answer = (u16, Vec<(String, String)>, Vec<u8>);

impl State {
    fn serve(&self, mut stream: TcpStream) -> std::io::Result<()> {
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
            if stream.read(&mut byte)? == 0 {
                return Ok(());
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        let mut lines = head.split("\r\n");
        let path = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .unwrap_or("")
            .to_string();
        let range = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.eq_ignore_ascii_case("range"))
            .map(|(_, v)| v.trim().to_string());
        self.log.lock().unwrap().push(Request {
            path: path.clone(),
            range: range.clone(),
        });
        let (status, headers, body) = self.answer(&path, range.as_deref());
        let mut out = format!("HTTP/1.1 {status} X\r\nConnection: close\r\n");
        for (k, v) in &headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        stream.write_all(out.as_bytes())?;
        let whole = status == 200;
        match self.cut {
            Some((file, n)) if whole && path.ends_with(&format!("/{file}")) => {
                stream.write_all(&body[..n.min(body.len())])?;
            }
            _ => stream.write_all(&body)?,
        }
        stream.flush()?;
        stream.shutdown(std::net::Shutdown::Both)
    }

    fn answer(&self, path: &str, range: Option<&str>) -> Answer {
        let error = |status: u16, code: &str| {
            let headers = vec![("x-error-code".to_string(), code.to_string())];
            (status, headers, code.as_bytes().to_vec())
        };
        let prefix = format!("/{}/resolve/", self.repo);
        let Some((revision, file)) = path.strip_prefix(&prefix).and_then(|r| r.split_once('/'))
        else {
            return error(401, "RepoNotFound");
        };
        let revision = revision.replace("%2F", "/");
        let Some(commit) = self
            .commits
            .iter()
            .find(|c| c.hash == revision || c.names.contains(&revision.as_str()))
        else {
            return error(404, "RevisionNotFound");
        };
        let mut headers = vec![("x-repo-commit".to_string(), commit.hash.to_string())];
        let Some((_, content)) = commit.files.iter().find(|(name, _)| *name == file) else {
            let (status, mut more, body) = error(404, "EntryNotFound");
            headers.append(&mut more);
            return (status, headers, body);
        };
        if revision != commit.hash {
            headers.push((
                "Location".to_string(),
                format!("/{}/resolve/{}/{file}", self.repo, commit.hash),
            ));
            return (302, headers, Vec::new());
        }
        let id = content_id(content);
        headers.push(("etag".to_string(), format!("\"git-{id}\"")));
        if !file.ends_with(".json") {
            headers.push(("x-linked-etag".to_string(), format!("\"{id}\"")));
            headers.push(("x-linked-size".to_string(), content.len().to_string()));
        }
        let Some((start, end)) = range.and_then(|r| parse_range(r, content.len())) else {
            return (200, headers, content.clone());
        };
        headers.push((
            "Content-Range".to_string(),
            format!("bytes {start}-{end}/{}", content.len()),
        ));
        (206, headers, content[start..=end].to_vec())
    }
}

/// `bytes=A-B` or `bytes=A-`, within a body of `len` bytes.
fn parse_range(range: &str, len: usize) -> Option<(usize, usize)> {
    let (a, b) = range.strip_prefix("bytes=")?.split_once('-')?;
    let start: usize = a.parse().ok()?;
    let end = if b.is_empty() {
        len.checked_sub(1)?
    } else {
        b.parse::<usize>().ok()?.min(len.checked_sub(1)?)
    };
    (start <= end).then_some((start, end))
}

/// A stand-in for the Hub's content hash (FNV-1a 64, hex, with the length).
fn content_id(content: &[u8]) -> String {
    let hash = content.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}{:08x}", content.len())
}

/// Every file below `dir` (symbolic links listed, not followed).
pub fn files_below(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(files_below(&path));
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}
