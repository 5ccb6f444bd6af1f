//! Weights from the Hugging Face Hub, through a temporary directory laid out like the Hub cache
//! (`models--OWNER--REPO/snapshots/COMMIT/…`, `refs/main`). No test touches the network.

mod common;

use common::*;
use densenet::weights::hub::{Hub, HubRef};
use densenet::weights::resolve_with;
use densenet::{Error, Model};
use std::path::Path;
use std::process::Command;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const REPO: &str = "edadaltocg/densenet121_cifar100";

/// A Hub cache holding `files` (name → fixture) for `repo` at `COMMIT`, with `refs/main`.
fn cache_with(files: &[(&str, &str)], repo: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let repo_dir = dir
        .path()
        .join(format!("models--{}", repo.replace('/', "--")));
    let snapshot = repo_dir.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::write(repo_dir.join("refs/main"), COMMIT).unwrap();
    for (name, fixture_name) in files {
        std::fs::copy(
            fixture(&format!("interop/{fixture_name}")),
            snapshot.join(name),
        )
        .unwrap();
    }
    dir
}

fn assert_timm_small(path: &Path) {
    let model = Model::load(path).unwrap();
    let io = load_fixture("interop/timm_cifar_small_io.safetensors");
    let logits = model.logits(&io["input"]).unwrap();
    assert!(max_abs_diff(&logits, &io["logits"]) <= 1e-4);
}

fn offline(dir: &Path) -> Hub {
    Hub::with_cache_dir(dir).offline(true).progress(false)
}

#[test]
fn references_parse_and_bad_ones_are_refused() {
    let r: HubRef = "a/b@abc:sub/model.pth".parse().unwrap();
    assert_eq!((r.repo.as_str(), r.revision.as_str()), ("a/b", "abc"));
    assert_eq!(r.file.as_deref(), Some("sub/model.pth"));
    for bad in ["nope", "a/b@", "a/b:", "/b", "a/b/c", "a b/c"] {
        let err = bad.parse::<HubRef>().expect_err(bad);
        assert!(matches!(err, Error::Hub { .. }), "{bad}: {err}");
        assert!(err.to_string().contains("OWNER/REPO"), "{err}");
    }
}

#[test]
fn pytorch_file_from_the_cache_is_converted_once() {
    let cache = cache_with(&[("pytorch_model.bin", "timm_cifar_small.pth")], REPO);
    let hub = offline(cache.path());
    let first = hub.fetch(&REPO.parse().unwrap()).unwrap();
    assert!(first.starts_with(cache.path()), "{}", first.display());
    assert_eq!(first.extension().unwrap(), "safetensors");
    assert_timm_small(&first);
    let written = std::fs::metadata(&first).unwrap().modified().unwrap();
    let second = hub.fetch(&REPO.parse().unwrap()).unwrap();
    assert_eq!(first, second);
    assert_eq!(
        std::fs::metadata(&second).unwrap().modified().unwrap(),
        written
    );
}

#[test]
fn safetensors_is_preferred_and_files_and_revisions_can_be_named() {
    let cache = cache_with(
        &[
            ("model.safetensors", "timm_cifar_small.safetensors"),
            ("pytorch_model.bin", "bc_small.pth"),
            ("other.pth", "timm_cifar_small.pth"),
        ],
        "someone/models",
    );
    let hub = offline(cache.path());
    let default = hub.fetch(&"someone/models".parse().unwrap()).unwrap();
    assert!(default.ends_with(format!("{COMMIT}/model.safetensors")));
    assert_timm_small(&default);
    let named = hub
        .fetch(
            &format!("someone/models@{COMMIT}:other.pth")
                .parse()
                .unwrap(),
        )
        .unwrap();
    assert_timm_small(&named);
}

#[test]
fn offline_miss_names_the_repo_and_how_to_get_the_file() {
    let cache = tempfile::tempdir().unwrap();
    let err = offline(cache.path())
        .fetch(&"owner/absent".parse().unwrap())
        .expect_err("miss");
    let msg = err.to_string();
    assert!(matches!(err, Error::Hub { .. }), "{msg}");
    for expected in [
        "owner/absent",
        "offline",
        "huggingface-cli download owner/absent",
        "https://huggingface.co/owner/absent/resolve/main/",
    ] {
        assert!(msg.contains(expected), "missing {expected:?} in {msg}");
    }
}

#[test]
fn unreachable_hub_is_a_clear_error() {
    // A closed local port stands for "no network".
    let cache = tempfile::tempdir().unwrap();
    let err = Hub::with_cache_dir(cache.path())
        .progress(false)
        .endpoint("http://127.0.0.1:9")
        .fetch(&"owner/absent".parse().unwrap())
        .expect_err("no network");
    let msg = err.to_string();
    assert!(
        msg.contains("owner/absent") && msg.contains("by hand"),
        "{msg}"
    );
}

#[test]
fn default_is_the_weights_dir_then_the_hub() {
    let cache = cache_with(&[("pytorch_model.bin", "timm_cifar_small.pth")], REPO);
    let empty = tempfile::tempdir().unwrap();
    let hub = || Ok(offline(cache.path()));
    let path = resolve_with(None, empty.path(), hub).unwrap();
    assert!(path.starts_with(cache.path()));
    assert_timm_small(&path);
    let path = resolve_with(Some(&format!("hf:{REPO}")), empty.path(), hub).unwrap();
    assert_timm_small(&path);
    let path = resolve_with(Some("some/file.pth"), empty.path(), hub).unwrap();
    assert_eq!(path, Path::new("some/file.pth"));
}

#[test]
fn classify_reads_the_hub_cache_from_the_environment() {
    let cache = cache_with(
        &[("pytorch_model.bin", "timm_cifar_small.pth")],
        "owner/tiny",
    );
    let image = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/images/cifar100_00_49.png");
    let run = |weights: &str| {
        Command::new(env!("CARGO_BIN_EXE_classify"))
            .env("HF_HUB_CACHE", cache.path())
            .env("HF_HUB_OFFLINE", "1")
            .args(["--weights", weights, "-k", "1"])
            .arg(&image)
            .output()
            .unwrap()
    };
    let out = run("hf:owner/tiny");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("class_"));
    let out = run("hf:owner/missing");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("owner/missing") && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn a_pytorch_file_in_the_weights_dir_comes_before_the_hub() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("densenet.pth");
    std::fs::copy(fixture("interop/timm_cifar_small.pth"), &weights).unwrap();
    let no_hub = || -> densenet::Result<Hub> { panic!("the Hub must not be consulted") };
    assert_eq!(resolve_with(None, dir.path(), no_hub).unwrap(), weights);
}

#[test]
fn densenet_tools_take_hub_references() {
    let cache = cache_with(
        &[("pytorch_model.bin", "timm_cifar_small.pth")],
        "owner/tiny",
    );
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("tiny.safetensors");
    let run = |args: &[&std::ffi::OsStr]| {
        Command::new(env!("CARGO_BIN_EXE_densenet"))
            .env("HF_HUB_CACHE", cache.path())
            .env("HF_HUB_OFFLINE", "1")
            .args(args)
            .output()
            .unwrap()
    };
    let o = run(&["inspect".as_ref(), "hf:owner/tiny".as_ref()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("torchvision-cifar"));
    let o = run(&[
        "convert".as_ref(),
        "hf:owner/tiny".as_ref(),
        out.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_timm_small(&out);
}
