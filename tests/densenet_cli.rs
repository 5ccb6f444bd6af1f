//! The `densenet convert` and `densenet inspect` commands, run as a user runs them.

mod common;

use common::*;
use densenet::weights::Checkpoint;
use densenet::Model;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn densenet(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_densenet"))
        .args(args)
        .output()
        .unwrap()
}

fn interop(name: &str) -> PathBuf {
    fixture(&format!("interop/{name}"))
}

fn convert(input: &Path, output: &Path, force: bool) -> Output {
    let mut args = vec!["convert".as_ref(), input.as_os_str(), output.as_os_str()];
    if force {
        args.push("--force".as_ref());
    }
    densenet(&args)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn convert_makes_a_self_describing_file_with_the_familys_names() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["tv_imagenet", "bc_norm0", "bc", "timm_cifar"] {
        let out = dir.path().join(format!("{name}.safetensors"));
        let o = convert(&interop(&format!("{name}_small.pth")), &out, false);
        assert!(o.status.success(), "{name}: {}", text(&o.stderr));
        let converted = Checkpoint::open(&out).unwrap();
        let original = Checkpoint::open(&interop(&format!("{name}_small.pth"))).unwrap();
        assert!(converted.self_describing, "{name}");
        assert_eq!(converted.family, original.family, "{name}");
        assert_eq!(converted.info, original.info, "{name}");
        assert_eq!(
            converted.raw.metadata["densenet.family"],
            original.family.id()
        );
        // The family's own names (and num_batches_tracked), so PyTorch's class loads it.
        let names: Vec<_> = converted.raw.entries.keys().collect();
        assert_eq!(
            names,
            original.raw.entries.keys().collect::<Vec<_>>(),
            "{name}"
        );
        let io = load_fixture(&format!("interop/{name}_small_io.safetensors"));
        let logits = Model::load(&out).unwrap().logits(&io["input"]).unwrap();
        assert!(max_abs_diff(&logits, &io["logits"]) <= 1e-4, "{name}");
    }
}

#[test]
fn convert_never_overwrites_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    std::fs::write(&out, b"precious").unwrap();
    let o = convert(&interop("bc_small.pth"), &out, false);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("--force"), "{}", text(&o.stderr));
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");

    let o = convert(&interop("bc_small.pth"), &out, true);
    assert!(o.status.success(), "{}", text(&o.stderr));
    Model::load(&out).unwrap();
}

#[test]
fn convert_of_a_bad_checkpoint_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    for bad in ["tv_imagenet_small_legacy.pth", "malicious.pth"] {
        let o = convert(&interop(bad), &out, false);
        assert_eq!(o.status.code(), Some(2), "{bad}");
        let err = text(&o.stderr);
        assert!(err.contains(bad) && !err.contains("panicked"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "{bad}");
    }
}

#[test]
fn inspect_describes_a_checkpoint() {
    let o = densenet(&[
        "inspect".as_ref(),
        interop("tv_imagenet_small.pth").as_os_str(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    for expected in [
        "PyTorch checkpoint",
        "torchvision-imagenet",
        "growth rate 6, blocks [2, 3, 2]",
        "parameters:     15,496",
        "classes:        10",
        "shorter side to 256",
        "F32 (91 tensors), I64 (18 tensors)",
        "recognised from tensor names",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in\n{out}");
    }

    let dir = tempfile::tempdir().unwrap();
    let converted = dir.path().join("timm.safetensors");
    assert!(convert(&interop("timm_cifar_small.pth"), &converted, false)
        .status
        .success());
    let o = densenet(&["inspect".as_ref(), converted.as_os_str()]);
    let out = text(&o.stdout);
    for expected in [
        "safetensors",
        "torchvision-cifar",
        "from the file's metadata",
        "densenet.family: torchvision-cifar",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in\n{out}");
    }
}

#[test]
fn inspect_of_a_bad_file_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pth");
    std::fs::write(&junk, b"PK\x03\x04 not really a zip").unwrap();
    for file in [
        junk,
        interop("malicious.pth"),
        dir.path().join("absent.pth"),
    ] {
        let o = densenet(&["inspect".as_ref(), file.as_os_str()]);
        assert_eq!(o.status.code(), Some(2), "{}", file.display());
        let err = text(&o.stderr);
        assert!(
            err.contains(&*file.file_name().unwrap().to_string_lossy())
                && !err.contains("panicked"),
            "{err}"
        );
    }
    // The cause once, not again as the error's source.
    let absent = dir.path().join("absent.pth");
    let err = text(&densenet(&["inspect".as_ref(), absent.as_os_str()]).stderr);
    assert_eq!(
        err.trim_end(),
        format!(
            "error: {}: No such file or directory (os error 2)",
            absent.display()
        ),
    );
}
