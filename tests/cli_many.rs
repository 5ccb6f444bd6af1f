//! `classify` over folders, patterns and many images, and `densenet eval`, run as a user runs
//! them, with a model whose answers are known.

mod common;

use common::known::{image_of_class, red_level_model};
use densenet::labels::{cifar100_coarse_of, CIFAR100_FINE};
use std::path::Path;
use std::process::{Command, Output};

/// A directory with `weights/model.safetensors` (the known-answer model, CIFAR-100 labels) and
/// `photos/`: `a/img_NN.png` for NN in 0..6 (class 2·NN+1), `b/c/deep.PNG` (class 4),
/// `b/notes.txt`, `b/.hidden.png`.
fn workdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("weights")).unwrap();
    red_level_model(100)
        .save(dir.path().join("weights/model.safetensors"), false)
        .unwrap();
    let photos = dir.path().join("photos");
    std::fs::create_dir_all(photos.join("a")).unwrap();
    std::fs::create_dir_all(photos.join("b/c")).unwrap();
    for n in 0..6 {
        image_of_class(2 * n + 1, 10 * n as u8)
            .save(photos.join(format!("a/img_{n:02}.png")))
            .unwrap();
    }
    image_of_class(4, 0)
        .save_with_format(photos.join("b/c/deep.PNG"), image::ImageFormat::Png)
        .unwrap();
    std::fs::write(photos.join("b/notes.txt"), "hello").unwrap();
    std::fs::write(photos.join("b/.hidden.png"), "not even a PNG").unwrap();
    dir
}

fn run(bin: &str, dir: &Path, args: &[&str]) -> Output {
    Command::new(bin)
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

fn classify(dir: &Path, args: &[&str]) -> Output {
    run(env!("CARGO_BIN_EXE_classify"), dir, args)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json_lines(o: &Output) -> Vec<serde_json::Value> {
    String::from_utf8(o.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn top1(record: &serde_json::Value) -> (String, usize) {
    let t = &record["top_k"][0];
    (
        record["file"].as_str().unwrap().to_string(),
        t["index"].as_u64().unwrap() as usize,
    )
}

#[test]
fn a_directory_recursively_in_path_order() {
    let dir = workdir();
    let out = classify(dir.path(), &["--json", "--batch-size", "4", "photos"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let results: Vec<_> = json_lines(&out).iter().map(top1).collect();
    let mut expected: Vec<(String, usize)> = (0..6)
        .map(|n| (format!("photos/a/img_{n:02}.png"), 2 * n + 1))
        .collect();
    expected.push(("photos/b/c/deep.PNG".into(), 4));
    assert_eq!(results, expected);
    assert!(stderr(&out).contains("skipped 1 file"), "{}", stderr(&out));
}

#[test]
fn records_carry_the_coarse_label() {
    let dir = workdir();
    let out = classify(dir.path(), &["--json", "-k", "2", "photos/a/img_00.png"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let record = &json_lines(&out)[0];
    assert_eq!(record["top_k"][0]["label"], CIFAR100_FINE[1]);
    assert_eq!(record["coarse"], cifar100_coarse_of(1).unwrap());
    assert_eq!(record["top_k"].as_array().unwrap().len(), 2);

    let out = classify(dir.path(), &["photos/a/img_00.png"]);
    let table = String::from_utf8(out.stdout).unwrap();
    let first = table.lines().nth(1).unwrap();
    assert!(first.contains("aquarium_fish (fish)"), "{table}");
}

#[test]
fn quoted_patterns_and_input_order() {
    let dir = workdir();
    // Files named out of order, a pattern, a directory: results follow the arguments.
    let out = classify(
        dir.path(),
        &[
            "--json",
            "--batch-size",
            "2",
            "photos/a/img_05.png",
            "photos/*/img_0[0-2].png",
            "photos/b",
            "photos/a/img_03.png",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let files: Vec<_> = json_lines(&out).iter().map(|r| top1(r).0).collect();
    assert_eq!(
        files,
        [
            "photos/a/img_05.png",
            "photos/a/img_00.png",
            "photos/a/img_01.png",
            "photos/a/img_02.png",
            "photos/b/c/deep.PNG",
            "photos/a/img_03.png"
        ]
    );
    // A recursive pattern skips what is not an image.
    let out = classify(dir.path(), &["--json", "photos/**/*"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json_lines(&out).len(), 7);
    assert!(stderr(&out).contains("skipped 1 file"), "{}", stderr(&out));
}

#[test]
fn csv_output() {
    let dir = workdir();
    let out = classify(dir.path(), &["--csv", "-k", "3", "photos/a"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut reader = csv::Reader::from_reader(out.stdout.as_slice());
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(
        header,
        [
            "file",
            "coarse",
            "label_1",
            "index_1",
            "probability_1",
            "label_2",
            "index_2",
            "probability_2",
            "label_3",
            "index_3",
            "probability_3"
        ]
    );
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 6);
    for (n, row) in rows.iter().enumerate() {
        let class = 2 * n + 1;
        assert_eq!(&row[0], format!("photos/a/img_{n:02}.png"));
        assert_eq!(&row[1], cifar100_coarse_of(class).unwrap());
        assert_eq!(&row[2], CIFAR100_FINE[class]);
        assert_eq!(row[3].parse::<usize>().unwrap(), class);
        let p: Vec<f32> = [4, 7, 10].map(|i| row[i].parse().unwrap()).to_vec();
        assert!(p[0] >= p[1] && p[1] >= p[2] && p[0] <= 1.0, "{p:?}");
    }
    let out = classify(dir.path(), &["--csv", "--json", "photos/a"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn failures_are_counted_and_the_run_goes_on() {
    let dir = workdir();
    std::fs::write(
        dir.path().join("photos/a/img_02.png"),
        b"\x89PNG\r\n\x1a\ncut",
    )
    .unwrap();
    let out = classify(
        dir.path(),
        &["--json", "photos/a", "missing.png", "nothing/*.jpg"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("img_02.png"), "{err}");
    assert!(err.contains("missing.png"), "{err}");
    assert!(
        err.contains("nothing/*.jpg") && err.contains("matches no file"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let files: Vec<_> = json_lines(&out).iter().map(|r| top1(r).0).collect();
    assert_eq!(files.len(), 5);
    assert!(!files.iter().any(|f| f.ends_with("img_02.png")));

    // A bad pattern is reported too; a folder without images gives nothing to do.
    std::fs::create_dir(dir.path().join("empty")).unwrap();
    let out = classify(dir.path(), &["photos/[", "empty"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no images"), "{}", stderr(&out));
}

#[test]
fn quiet_keeps_stderr_for_errors_only() {
    let dir = workdir();
    let out = classify(dir.path(), &["--quiet", "--json", "photos"]);
    assert!(out.status.success());
    assert_eq!(stderr(&out), "");
    assert_eq!(json_lines(&out).len(), 7);
}

#[test]
fn explain_writes_a_picture_per_image() {
    let dir = workdir();
    let out = classify(
        dir.path(),
        &[
            "--explain",
            "why",
            "--json",
            "photos/a/img_00.png",
            "photos/b",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json_lines(&out).len(), 2);
    for name in ["img_00.cam.png", "deep.cam.png"] {
        let picture = image::open(dir.path().join("why").join(name)).unwrap();
        assert_eq!((picture.width(), picture.height()), (256, 128));
    }
    // Never overwritten unless asked.
    let out = classify(dir.path(), &["--explain", "why", "photos/a/img_00.png"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    let out = classify(
        dir.path(),
        &["--explain", "why", "--force", "photos/a/img_00.png"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let leftovers = std::fs::read_dir(dir.path().join("why"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".tmp")
        })
        .count();
    assert_eq!(leftovers, 0);
}

fn densenet(dir: &Path, args: &[&str]) -> Output {
    run(env!("CARGO_BIN_EXE_densenet"), dir, args)
}

#[test]
fn eval_on_a_folder_and_a_binary_file() {
    let dir = workdir();
    // A folder whose class names are the labels of what each image shows, but one.
    let data = dir.path().join("data");
    for n in 0..6 {
        let truth = if n == 5 { 2 * n } else { 2 * n + 1 };
        let class = data.join(CIFAR100_FINE[truth]);
        std::fs::create_dir_all(&class).unwrap();
        image_of_class(2 * n + 1, 0)
            .save(class.join(format!("{n}.png")))
            .unwrap();
    }
    let out = densenet(
        dir.path(),
        &[
            "eval",
            "data",
            "--json",
            "--confusion",
            "c.csv",
            "--confusion-png",
            "c.png",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["images"], 6);
    assert_eq!(report["top1"].as_f64().unwrap(), 5.0 / 6.0);
    assert_eq!(report["top5"].as_f64().unwrap(), 1.0);
    assert_eq!(report["per_class"][10]["accuracy"].as_f64().unwrap(), 0.0);
    assert!(dir.path().join("c.csv").is_file() && dir.path().join("c.png").is_file());
    // Existing outputs are kept unless --force.
    let out = densenet(dir.path(), &["eval", "data", "--confusion", "c.csv"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));

    // The text report, on a CIFAR binary file.
    let mut bytes = Vec::new();
    for fine in [3u8, 3, 7] {
        bytes.extend([
            densenet::labels::CIFAR100_FINE_TO_COARSE[usize::from(fine)],
            fine,
        ]);
        let image = image_of_class(3, 0);
        for c in 0..3 {
            bytes.extend(image.pixels().map(|p| p[c]));
        }
    }
    std::fs::write(dir.path().join("test.bin"), &bytes).unwrap();
    let out = densenet(dir.path(), &["eval", "test.bin"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("top-1       66.67%"), "{text}");
    assert!(text.contains("superclass"), "{text}");

    std::fs::write(dir.path().join("test.bin"), &bytes[..5000]).unwrap();
    let out = densenet(dir.path(), &["eval", "test.bin"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("test.bin") && err.contains("truncated"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}
