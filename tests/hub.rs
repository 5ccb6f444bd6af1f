//! Weights from the Hugging Face Hub, through a temporary directory laid out like the Hub cache
//! (`models--OWNER--REPO/snapshots/COMMIT/…`, `refs/main`), filled by hand or downloaded from the
//! Hub stand-in of `common::hub_server` on 127.0.0.1. No test touches the outside network.

mod common;

use common::hub_server::{files_below, Commit, HubServer};
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
    // As `huggingface_hub` marks a file the repository does not have.
    let no_exist = repo_dir.join(".no_exist").join(COMMIT);
    std::fs::create_dir_all(&no_exist).unwrap();
    std::fs::write(no_exist.join("config.json"), "").unwrap();
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
    for bad in [
        "nope",
        "a/b@",
        "a/b:",
        "/b",
        "a/b/c",
        "a b/c",
        "a/b@..",
        "a/b:../x",
        "a/b:/etc/x",
    ] {
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
fn offline_without_knowing_the_repository_config_nothing_is_written() {
    // A cache filled by other means, that never asked for config.json: a conversion made now
    // could disagree with the config.json a later run finds, so the file is used as it is.
    let cache = cache_with(&[("pytorch_model.bin", "timm_cifar_small.pth")], REPO);
    let repo_dir = cache
        .path()
        .join("models--edadaltocg--densenet121_cifar100");
    std::fs::remove_dir_all(repo_dir.join(".no_exist")).unwrap();
    let path = offline(cache.path()).fetch(&REPO.parse().unwrap()).unwrap();
    assert_eq!(
        path,
        repo_dir
            .join("snapshots")
            .join(COMMIT)
            .join("pytorch_model.bin")
    );
    assert_timm_small(&path);
    assert!(!repo_dir.join("densenet").exists());
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

// ---- The real download path, against the Hub stand-in on 127.0.0.1 ----

const DEFAULT_COMMIT: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678";

/// The default model's repository as the stand-in serves it: `pytorch_model.bin` laid out like
/// the real one (made by `tools/make_hub_fixtures.py`) and timm's `config.json`.
fn default_repo() -> Vec<Commit> {
    let read = |name: &str| std::fs::read(fixture(&format!("hub/{name}"))).unwrap();
    vec![Commit {
        hash: DEFAULT_COMMIT,
        names: &["main"],
        files: vec![
            ("pytorch_model.bin", read("pytorch_model.bin")),
            ("config.json", read("config.json")),
        ],
    }]
}

/// `classify` as a new user runs it: no weights/ folder, the Hub at `endpoint`, `cache` empty.
fn classify_from_hub(endpoint: &str, cache: &Path, args: &[&str]) -> std::process::Output {
    let cwd = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_classify"));
    command
        .current_dir(cwd.path())
        .env("HF_ENDPOINT", endpoint)
        .env("HF_HUB_CACHE", cache);
    for var in [
        "HF_HUB_OFFLINE",
        "HF_TOKEN",
        "HF_HOME",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
    ] {
        command.env_remove(var);
    }
    command.args(args).output().unwrap()
}

fn example_images() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/images");
    let mut images: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .map(|p| p.display().to_string())
        .collect();
    images.sort();
    images
}

fn assert_nothing_partial(cache: &Path) {
    for file in files_below(cache) {
        let name = file.file_name().unwrap().to_string_lossy();
        assert!(
            !name.starts_with('.') || name == "config.json",
            "left behind: {}",
            file.display()
        );
        assert!(
            !name.ends_with(".part") && !name.ends_with(".tmp"),
            "{}",
            file.display()
        );
    }
}

#[test]
fn first_run_downloads_the_default_model_once_then_stays_off_the_network() {
    let server = HubServer::start(REPO, default_repo());
    let cache = tempfile::tempdir().unwrap();
    let images = example_images();
    assert_eq!(images.len(), 20);
    let mut args = vec!["--json", "-k", "1"];
    args.extend(images.iter().map(String::as_str));

    let first = classify_from_hub(&server.url, cache.path(), &args);
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&first.stdout).into_owned();
    assert_eq!(stdout.lines().count(), 20, "{stdout}");

    // model.safetensors first (absent), then pytorch_model.bin: probed by name, redirected to
    // its commit, fetched whole; then the commit's config.json.
    let requests = server.requests();
    let paths: Vec<&str> = requests.iter().map(|r| r.path.as_str()).collect();
    let base = format!("/{REPO}/resolve");
    assert_eq!(
        paths,
        [
            format!("{base}/main/model.safetensors"),
            format!("{base}/main/pytorch_model.bin"),
            format!("{base}/{DEFAULT_COMMIT}/pytorch_model.bin"),
            format!("{base}/{DEFAULT_COMMIT}/pytorch_model.bin"),
            format!("{base}/{DEFAULT_COMMIT}/config.json"),
            format!("{base}/{DEFAULT_COMMIT}/config.json"),
        ]
    );
    let ranges: Vec<Option<&str>> = requests.iter().map(|r| r.range.as_deref()).collect();
    let probe = Some("bytes=0-0");
    assert_eq!(ranges, [probe, probe, probe, None, probe, None]);

    let repo_dir = cache
        .path()
        .join("models--edadaltocg--densenet121_cifar100");
    assert_eq!(
        std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(),
        DEFAULT_COMMIT
    );
    let snapshot = repo_dir.join("snapshots").join(DEFAULT_COMMIT);
    assert_eq!(
        std::fs::read(snapshot.join("pytorch_model.bin")).unwrap(),
        std::fs::read(fixture("hub/pytorch_model.bin")).unwrap()
    );
    assert!(snapshot.join("config.json").is_file());
    assert_nothing_partial(cache.path());

    // Converted once, with config.json's preprocessing recorded; PyTorch's logits for images
    // normalised with that mean and std (the CIFAR-100 defaults move them by 2.8e-3).
    let converted = repo_dir
        .join("densenet")
        .join(DEFAULT_COMMIT)
        .join("pytorch_model.bin.safetensors");
    let written = std::fs::metadata(&converted).unwrap().modified().unwrap();
    let model = Model::load(&converted).unwrap();
    let prep = model.preprocessing();
    assert_eq!(prep.mean, [0.5071, 0.4867, 0.4408]);
    assert_eq!(prep.std, [0.2675, 0.2565, 0.2761]);
    assert_eq!(prep.input_size, [32, 32]);
    assert_eq!(
        prep.resize,
        densenet::Resize::Stretch,
        "crop_pct is not used"
    );
    let io = load_fixture("hub/io.safetensors");
    let two = [&images[0], &images[5]];
    assert!(two[0].ends_with("cifar100_00_49.png") && two[1].ends_with("cifar100_05_92.png"));
    let batch = prep.load_batch(&two, model.device()).unwrap();
    assert!(max_abs_diff(&batch, &io["input"]) <= 1e-6);
    assert!(max_abs_diff(&model.logits(&batch).unwrap(), &io["logits"]) <= 1e-4);
    let expected_top1 = io["logits"].argmax(1).unwrap().to_vec1::<u32>().unwrap();
    for (line, top1) in [(0, expected_top1[0]), (5, expected_top1[1])] {
        let row = stdout.lines().nth(line).unwrap();
        assert!(row.contains(&format!("\"index\":{top1},")), "{row}");
    }

    // The second run asks the network for nothing and converts nothing again.
    let second = classify_from_hub(&server.url, cache.path(), &args);
    assert!(second.status.success());
    assert_eq!(String::from_utf8_lossy(&second.stdout), stdout);
    assert_eq!(server.requests().len(), requests.len());
    assert_eq!(
        std::fs::metadata(&converted).unwrap().modified().unwrap(),
        written
    );
    // Nor does a run with HF_HUB_OFFLINE=1.
    let offline_run = Command::new(env!("CARGO_BIN_EXE_classify"))
        .env("HF_HUB_CACHE", cache.path())
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .args(["--weights", &format!("hf:{REPO}")])
        .args(&args)
        .output()
        .unwrap();
    assert!(offline_run.status.success());
    assert_eq!(String::from_utf8_lossy(&offline_run.stdout), stdout);
}

#[test]
fn a_connection_dropped_mid_file_leaves_nothing_in_the_cache() {
    let server =
        HubServer::start_cutting(REPO, default_repo(), Some(("pytorch_model.bin", 100_000)));
    let cache = tempfile::tempdir().unwrap();
    let image = &example_images()[0];
    let out = classify_from_hub(&server.url, cache.path(), &[image]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let size = std::fs::metadata(fixture("hub/pytorch_model.bin"))
        .unwrap()
        .len();
    for expected in [
        REPO.to_string(),
        "pytorch_model.bin".to_string(),
        format!("connection lost after 100000 of {size} bytes"),
        "by hand".to_string(),
    ] {
        assert!(err.contains(&expected), "missing {expected:?} in {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    let left: Vec<_> = files_below(cache.path());
    assert!(left.is_empty(), "left in the cache: {left:?}");

    // The next run, on a whole connection, gets the file.
    drop(server);
    let server = HubServer::start(REPO, default_repo());
    let out = classify_from_hub(&server.url, cache.path(), &[image]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn neither_file_on_the_hub_is_not_found_naming_the_repository() {
    let server = HubServer::start(
        "owner/empty",
        vec![Commit {
            hash: DEFAULT_COMMIT,
            names: &["main"],
            files: vec![("README.md", b"# nothing".to_vec())],
        }],
    );
    let cache = tempfile::tempdir().unwrap();
    let image = &example_images()[0];
    let run = |weights: &str| {
        let out = classify_from_hub(&server.url, cache.path(), &["--weights", weights, image]);
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!err.contains("panicked"), "{err}");
        err
    };
    let err = run("hf:owner/empty");
    for expected in [
        "hf:owner/empty: not found",
        "model.safetensors or pytorch_model.bin",
        "revision `main`",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in {err}");
    }
    assert!(run("hf:owner/empty@v9").contains("revision `v9` not found"));
    assert!(run("hf:owner/other").contains("hf:owner/other: repository not found"));
    assert!(files_below(cache.path()).is_empty());
}

#[test]
fn a_revision_is_honoured_and_a_repository_without_config_uses_the_defaults() {
    const TAGGED: &str = "0000000000000000000000000000000000000001";
    let read = |name: &str| std::fs::read(fixture(&format!("interop/{name}"))).unwrap();
    let server = HubServer::start(
        "owner/tiny",
        vec![
            Commit {
                hash: DEFAULT_COMMIT,
                names: &["main"],
                files: vec![("pytorch_model.bin", read("bc_small.pth"))],
            },
            Commit {
                hash: TAGGED,
                names: &["v1"],
                files: vec![("pytorch_model.bin", read("timm_cifar_small.pth"))],
            },
        ],
    );
    let cache = tempfile::tempdir().unwrap();
    let hub = Hub::with_cache_dir(cache.path())
        .endpoint(&server.url)
        .progress(false);
    let path = hub.fetch(&"owner/tiny@v1".parse().unwrap()).unwrap();
    assert!(path.ends_with(format!("densenet/{TAGGED}/pytorch_model.bin.safetensors")));
    assert_timm_small(&path);
    let repo_dir = cache.path().join("models--owner--tiny");
    assert_eq!(
        std::fs::read_to_string(repo_dir.join("refs/v1")).unwrap(),
        TAGGED
    );
    assert!(!repo_dir.join("refs/main").exists());
    // No config.json: marked as huggingface_hub marks it, and the family's preprocessing used.
    assert!(repo_dir
        .join(".no_exist")
        .join(TAGGED)
        .join("config.json")
        .is_file());
    let model = Model::load(&path).unwrap();
    assert_eq!(model.preprocessing(), &densenet::Preprocessing::cifar100());

    let asked = server.requests().len();
    assert_eq!(hub.fetch(&"owner/tiny@v1".parse().unwrap()).unwrap(), path);
    assert_eq!(
        server.requests().len(),
        asked,
        "the cache answers a second time"
    );
    // By its commit hash, the same snapshot, from the cache.
    let by_commit = hub.fetch(&format!("owner/tiny@{TAGGED}").parse().unwrap());
    assert_eq!(by_commit.unwrap(), path);
    assert_eq!(server.requests().len(), asked);
    // main is another commit, another model.
    let main = hub.fetch(&"owner/tiny".parse().unwrap()).unwrap();
    assert!(main.ends_with(format!(
        "densenet/{DEFAULT_COMMIT}/pytorch_model.bin.safetensors"
    )));
    let io = load_fixture("interop/bc_small_io.safetensors");
    let logits = Model::load(&main).unwrap().logits(&io["input"]).unwrap();
    assert!(max_abs_diff(&logits, &io["logits"]) <= 1e-4);
    assert_nothing_partial(cache.path());
}

#[test]
fn a_safetensors_file_gets_the_repository_config_too() {
    let config = br#"{"pretrained_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
        "interpolation": "bicubic", "input_size": [3, 32, 32], "crop_pct": 0.9}}"#;
    let server = HubServer::start(
        "owner/st",
        vec![Commit {
            hash: DEFAULT_COMMIT,
            names: &["main"],
            files: vec![
                (
                    "model.safetensors",
                    std::fs::read(fixture("interop/timm_cifar_small.safetensors")).unwrap(),
                ),
                ("config.json", config.to_vec()),
            ],
        }],
    );
    let cache = tempfile::tempdir().unwrap();
    let hub = Hub::with_cache_dir(cache.path())
        .endpoint(&server.url)
        .progress(false);
    let path = hub.fetch(&"owner/st".parse().unwrap()).unwrap();
    assert!(path.ends_with(format!(
        "densenet/{DEFAULT_COMMIT}/model.safetensors.safetensors"
    )));
    assert_timm_small(&path);
    let prep = Model::load(&path).unwrap().preprocessing().clone();
    assert_eq!((prep.mean, prep.std), ([0.5; 3], [0.25; 3]));
    assert_eq!(prep.interpolation, densenet::Interpolation::Bicubic);
    assert_eq!(prep.resize, densenet::Resize::Stretch);
}

#[test]
fn a_bad_repository_config_is_a_clear_error() {
    let cases: [(&[u8], &str); 4] = [
        (b"{not json", "config.json: key must be a string"),
        (
            br#"{"pretrained_cfg": {"interpolation": "random"}}"#,
            "`random` is not bilinear",
        ),
        (
            br#"{"pretrained_cfg": {"input_size": [1, 28, 28]}}"#,
            "expected [3, HEIGHT, WIDTH]",
        ),
        (
            br#"{"pretrained_cfg": {"std": [0.2, 0, 0.2]}}"#,
            "`pretrained_cfg.std`",
        ),
    ];
    for (config, expected) in cases {
        let server = HubServer::start(
            "owner/bad",
            vec![Commit {
                hash: DEFAULT_COMMIT,
                names: &["main"],
                files: vec![
                    (
                        "pytorch_model.bin",
                        std::fs::read(fixture("interop/timm_cifar_small.pth")).unwrap(),
                    ),
                    ("config.json", config.to_vec()),
                ],
            }],
        );
        let cache = tempfile::tempdir().unwrap();
        let err = Hub::with_cache_dir(cache.path())
            .endpoint(&server.url)
            .progress(false)
            .fetch(&"owner/bad".parse().unwrap())
            .expect_err(expected);
        let msg = err.to_string();
        assert!(
            msg.starts_with("hf:owner/bad: ") && msg.contains(expected),
            "{expected:?} not in {msg}"
        );
        assert!(!cache.path().join("models--owner--bad/densenet").exists());
    }
}
