//! The `classify` command line, run as a user runs it.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/images");
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    v.sort();
    v
}

/// A directory with `weights/model.safetensors`: a small CIFAR-100 model.
fn workdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("weights")).unwrap();
    deterministic_model(small_config(100))
        .save(dir.path().join("weights/model.safetensors"), false)
        .unwrap();
    dir
}

fn classify(dir: &Path, args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_classify"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_no_panic(o: &Output) {
    let e = stderr(o);
    assert!(
        !e.contains("panicked") && !e.contains("RUST_BACKTRACE"),
        "{e}"
    );
}

#[test]
fn json_output_for_real_images() {
    let dir = workdir();
    let images = examples();
    assert_eq!(images.len(), 20);
    let mut args: Vec<&std::ffi::OsStr> = vec!["--json".as_ref(), "-k".as_ref(), "3".as_ref()];
    args.extend(images.iter().map(|p| p.as_os_str()));
    let out = classify(dir.path(), &args);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let records: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), images.len());

    let model = densenet::Model::load(dir.path().join("weights/model.safetensors")).unwrap();
    for (record, image) in records.iter().zip(&images) {
        assert_eq!(record["file"], image.display().to_string());
        let top = record["top_k"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        let probs: Vec<f64> = top
            .iter()
            .map(|t| t["probability"].as_f64().unwrap())
            .collect();
        assert!(probs.windows(2).all(|w| w[0] >= w[1]), "{probs:?}");
        for t in top {
            let index = t["index"].as_u64().unwrap() as usize;
            assert_eq!(t["label"], densenet::labels::CIFAR100_FINE[index]);
        }
        // The CLI agrees with the library on the same image.
        let x = model.preprocessing().load(image, model.device()).unwrap();
        let expected = &model.predict(&x).unwrap()[0].top_k[0];
        assert_eq!(top[0]["index"].as_u64().unwrap() as usize, expected.index);
        assert!((probs[0] - f64::from(expected.probability)).abs() < 1e-6);
    }
}

#[test]
fn table_output_with_explicit_weights() {
    let dir = workdir();
    let weights = dir.path().join("weights/model.safetensors");
    let image = &examples()[0];
    let out = classify(
        Path::new("."),
        &["--weights".as_ref(), weights.as_os_str(), image.as_os_str()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<_> = stdout.lines().collect();
    assert_eq!(lines.len(), 6, "{stdout}");
    assert_eq!(lines[0], image.display().to_string());
    assert!(
        lines[1].trim_start().starts_with("1. ") && lines[1].ends_with('%'),
        "{stdout}"
    );
}

#[test]
fn a_bad_image_among_good_ones() {
    let dir = workdir();
    let bad = dir.path().join("broken.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\n truncated").unwrap();
    let images = examples();
    let out = classify(
        dir.path(),
        &[
            "--json".as_ref(),
            images[0].as_os_str(),
            bad.as_os_str(),
            images[1].as_os_str(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_no_panic(&out);
    assert!(stderr(&out).contains("broken.png"), "{}", stderr(&out));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let files: Vec<String> = stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["file"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        files,
        [
            images[0].display().to_string(),
            images[1].display().to_string()
        ]
    );
}

#[test]
fn no_weights_anywhere() {
    // Nothing in weights/ and, offline, nothing in the (empty) Hub cache.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_classify"))
        .current_dir(dir.path())
        .env("HF_HUB_CACHE", dir.path())
        .env("HF_HUB_OFFLINE", "1")
        .arg(examples()[0].as_os_str())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_no_panic(&out);
    assert!(stderr(&out).contains("--weights"), "{}", stderr(&out));
}

#[test]
fn bad_weights_file() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("bad.safetensors");
    std::fs::write(&weights, [0xffu8; 64]).unwrap();
    let out = classify(
        dir.path(),
        &[
            "-w".as_ref(),
            weights.as_os_str(),
            examples()[0].as_os_str(),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert_no_panic(&out);
    assert!(stderr(&out).contains("bad.safetensors"), "{}", stderr(&out));
}

#[test]
fn a_device_not_compiled_in_names_the_feature() {
    if !densenet::device::compiled_backends().contains(&"cuda") {
        let dir = workdir();
        let out = classify(
            dir.path(),
            &[
                "--device".as_ref(),
                "cuda:0".as_ref(),
                examples()[0].as_os_str(),
            ],
        );
        assert_eq!(out.status.code(), Some(2));
        assert_no_panic(&out);
        assert!(stderr(&out).contains("--features cuda"), "{}", stderr(&out));
    }
    let out = classify(
        Path::new("."),
        &["--device".as_ref(), "tpu".as_ref(), "x.png".as_ref()],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("tpu"), "{}", stderr(&out));
}

#[test]
fn help_and_version() {
    let out = classify(Path::new("."), &["--help".as_ref()]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--weights"));
    let out = classify(Path::new("."), &["--version".as_ref()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = classify(Path::new("."), &[]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn shards_are_disjoint_and_cover_every_image() {
    let dir = workdir();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    for image in examples().iter().take(7) {
        std::fs::copy(image, images.join(image.file_name().unwrap())).unwrap();
    }
    let mut all = examples()
        .iter()
        .take(7)
        .map(|p| images.join(p.file_name().unwrap()).display().to_string())
        .collect::<Vec<_>>();
    all.sort();
    let mut union = Vec::new();
    for k in 0..3 {
        let shard = format!("{k}/3");
        // The images given in reverse order: shards are cut from the sorted paths.
        let mut args: Vec<std::ffi::OsString> =
            vec!["--json".into(), "--shard".into(), shard.into()];
        args.extend(all.iter().rev().map(Into::into));
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let out = classify(dir.path(), &args);
        assert!(out.status.success(), "{}", stderr(&out));
        let files: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["file"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert!(files.len() == 2 || files.len() == 3, "{files:?}");
        assert!(files.windows(2).all(|w| w[0] < w[1]), "{files:?}");
        union.extend(files);
    }
    // Disjoint (no file twice) and complete (every file once), in order.
    assert_eq!(union, all);

    // More shards than images: an empty shard succeeds; a shard that cannot exist is refused.
    let one = all[0].as_ref();
    let out = classify(dir.path(), &["--shard".as_ref(), "0/2".as_ref(), one]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    for bad in ["3/3", "1", "a/2", "0/0"] {
        let out = classify(dir.path(), &["--shard".as_ref(), bad.as_ref(), one]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(
            stderr(&out).contains(&format!("shard `{bad}`")),
            "{}",
            stderr(&out)
        );
    }
}
