//! The instruction-set cap (`DENSENET_CPU_ISA`), `densenet system`, and the proof that the
//! binaries run on CPUs without AVX-512 or without AVX at all: qemu-user emulates a Haswell
//! (AVX2 and FMA, no AVX-512) and a Nehalem (no AVX), where any instruction beyond the CPU's is
//! an illegal-instruction crash. There, and with the cap below avx512, bf16 falls back to f32 and
//! says so; int8 runs on AVX2 (the Haswell gives the native AVX2 answers, or the same top class
//! where this CPU's AVX2 kernels take AVX-VNNI) and falls back below it.
//!
//! Without `qemu-x86_64` the emulated runs are skipped with a note, unless
//! `DENSENET_REQUIRE_QEMU=1` (as `.ci/run` sets after installing qemu-user), which makes a
//! missing emulator a failure.

mod common;

use common::*;
use densenet::fast::{Isa, Precision};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const IMAGES: [&str; 3] = [
    "cifar100_00_49.png",
    "cifar100_01_33.png",
    "cifar100_02_72.png",
];

/// A directory with a small CIFAR-100 model, `model.safetensors`.
fn workdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    deterministic_model(small_config(100))
        .save(dir.path().join("model.safetensors"), false)
        .unwrap();
    dir
}

fn images() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/images");
    IMAGES.iter().map(|name| root.join(name)).collect()
}

/// Runs `binary` with `args`, natively or under `qemu-x86_64 -cpu CPU`, with `DENSENET_CPU_ISA`
/// set to `cap` or removed.
fn run(binary: &str, cpu: Option<&str>, cap: Option<&str>, args: &[&str]) -> Output {
    let mut command = match cpu {
        Some(cpu) => {
            let mut c = Command::new("qemu-x86_64");
            c.args(["-cpu", cpu, binary]);
            c
        }
        None => Command::new(binary),
    };
    command.args(args).env_remove("DENSENET_CPU_ISA");
    if let Some(cap) = cap {
        command.env("DENSENET_CPU_ISA", cap);
    }
    command.output().expect("the command starts")
}

/// `classify --json` on [`IMAGES`] with the model in `dir`: per image, the top-5 classes and
/// their probabilities.
fn classify(dir: &Path, cpu: Option<&str>, cap: Option<&str>) -> Vec<Vec<(u64, f64)>> {
    classify_with(dir, cpu, cap, &[]).0
}

/// As [`classify`], with more arguments, and what it wrote on stderr.
fn classify_with(
    dir: &Path,
    cpu: Option<&str>,
    cap: Option<&str>,
    more: &[&str],
) -> (Vec<Vec<(u64, f64)>>, String) {
    let model = dir.join("model.safetensors");
    let images = images();
    let mut args = vec![
        "--json",
        "-q",
        "-k",
        "5",
        "--weights",
        model.to_str().unwrap(),
    ];
    args.extend(more);
    args.extend(images.iter().map(|p| p.to_str().unwrap()));
    let out = run(env!("CARGO_BIN_EXE_classify"), cpu, cap, &args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "classify on {cpu:?} with cap {cap:?}: {stderr}"
    );
    let answers = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            record["top_k"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| {
                    let index = t["index"].as_u64().unwrap();
                    (index, t["probability"].as_f64().unwrap())
                })
                .collect()
        })
        .collect();
    (answers, stderr)
}

/// The same top-5 classes, in the same order, and probabilities within 1e-5.
fn assert_same_answers(want: &[Vec<(u64, f64)>], got: &[Vec<(u64, f64)>], what: &str) {
    assert_eq!(want.len(), IMAGES.len(), "{what}");
    assert_eq!(got.len(), want.len(), "{what}");
    for (w, g) in want.iter().zip(got) {
        let classes = |v: &[(u64, f64)]| v.iter().map(|t| t.0).collect::<Vec<_>>();
        assert_eq!(classes(g), classes(w), "{what}: top-5 classes");
        for (a, b) in w.iter().zip(g) {
            assert!((a.1 - b.1).abs() <= 1e-5, "{what}: {} vs {}", a.1, b.1);
        }
    }
}

/// `densenet system --json`.
fn system(cpu: Option<&str>, cap: Option<&str>) -> serde_json::Value {
    let out = run(
        env!("CARGO_BIN_EXE_densenet"),
        cpu,
        cap,
        &["system", "--json"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "densenet system on {cpu:?}: {stderr}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn an_unknown_cap_is_a_clear_error_from_every_binary() {
    let dir = workdir();
    let model = dir.path().join("model.safetensors");
    let image = &images()[0];
    for (binary, args) in [
        (
            env!("CARGO_BIN_EXE_classify"),
            vec![
                "--weights",
                model.to_str().unwrap(),
                image.to_str().unwrap(),
            ],
        ),
        (env!("CARGO_BIN_EXE_densenet"), vec!["system"]),
    ] {
        let out = run(binary, None, Some("sse9"), &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{binary}: {stderr}");
        assert!(out.stdout.is_empty(), "{binary} printed an answer");
        for part in [
            "DENSENET_CPU_ISA",
            "sse9",
            "avx512, avx2, neon, simd128 or portable",
        ] {
            assert!(stderr.contains(part), "{binary}: {stderr}");
        }
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn the_cap_chooses_the_kernels_and_system_reports_it() {
    let dir = workdir();
    let native = classify(dir.path(), None, None);
    let report = system(None, None);
    assert_eq!(report["isa"], Isa::best().name());
    assert_eq!(report["isa_requested"], serde_json::Value::Null);
    for isa in Isa::ALL.into_iter().filter(|i| i.is_supported()) {
        let report = system(None, Some(isa.name()));
        assert_eq!(report["isa"], isa.name());
        assert_eq!(report["isa_requested"], isa.name());
        let capped = classify(dir.path(), None, Some(isa.name()));
        assert_same_answers(&native, &capped, isa.name());
    }
}

/// Where the emulator is, or why the emulated runs are skipped.
fn qemu() -> bool {
    let found = Command::new("qemu-x86_64")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        let required = std::env::var("DENSENET_REQUIRE_QEMU").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "DENSENET_REQUIRE_QEMU=1 but qemu-x86_64 does not run (apt-get install qemu-user)"
        );
        eprintln!("note: qemu-x86_64 not found: the emulated Haswell and Nehalem runs are skipped");
    }
    found
}

#[test]
fn emulated_cpus_without_avx512_or_avx_give_the_native_answers() {
    if !cfg!(target_arch = "x86_64") || !qemu() {
        return;
    }
    let dir = workdir();
    let native = classify(dir.path(), None, None);
    for (cpu, isa, features_absent) in [
        ("Haswell", Isa::Avx2, &["avx512f"][..]),
        ("Nehalem", Isa::Portable, &["avx2", "fma", "avx512f"][..]),
    ] {
        let report = system(Some(cpu), None);
        assert_eq!(report["isa"], isa.name(), "{cpu}: {report}");
        for feature in features_absent {
            assert_eq!(report["cpu_features"][feature], false, "{cpu}: {report}");
        }
        let emulated = classify(dir.path(), Some(cpu), None);
        assert_same_answers(&native, &emulated, cpu);
    }
    // More than the CPU has: what it has runs, and the binary says so.
    let report = system(Some("Haswell"), Some("avx512"));
    assert_eq!(report["isa"], "avx2");
    assert_eq!(report["isa_requested"], "avx512");
    let out = run(
        env!("CARGO_BIN_EXE_classify"),
        Some("Haswell"),
        Some("avx512"),
        &[
            "-q",
            "--weights",
            dir.path().join("model.safetensors").to_str().unwrap(),
            images()[0].to_str().unwrap(),
        ],
    );
    let classify_stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{classify_stderr}");
    assert!(
        classify_stderr
            .contains("DENSENET_CPU_ISA=avx512, but this CPU does not run avx512: using avx2"),
        "{classify_stderr}"
    );
}

/// Asking for `precision` (bf16 or int8) where neither it nor bf16 is native: f32 runs (the
/// same answers as without asking), and the binary says so once.
fn assert_falls_back_to_f32(
    precision: Precision,
    dir: &Path,
    cpu: Option<&str>,
    cap: Option<&str>,
    f32: &[Vec<(u64, f64)>],
) {
    let name = precision.name();
    let what = format!("{name} on {cpu:?} capped at {cap:?}");
    let report = system(cpu, cap);
    assert_eq!(report[format!("{name}_native")], false, "{what}");
    assert_eq!(report["bf16_native"], false, "{what}");
    for spelling in ["--precision", "--dtype"] {
        let (answers, stderr) = classify_with(dir, cpu, cap, &[spelling, name]);
        assert_same_answers(f32, &answers, &what);
        let notes: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains(&format!("{name} asked for")))
            .collect();
        assert_eq!(notes.len(), 1, "{what}: {stderr}");
        assert!(notes[0].contains("computing in f32"), "{what}: {stderr}");
    }
}

/// `precision` capped at `cap` and on the emulated `cpu` (neither of which has it) runs f32 and
/// says so once; natively, `densenet system` says whether it is native, and the note comes
/// where it is not, naming the precision that runs, and only there.
fn assert_precision_falls_back_where_not_native(precision: Precision, (cap, cpu): (&str, &str)) {
    let name = precision.name();
    let dir = workdir();
    let f32 = classify(dir.path(), None, Some(cap));
    assert_falls_back_to_f32(precision, dir.path(), None, Some(cap), &f32);
    if cfg!(target_arch = "x86_64") && qemu() {
        let f32 = classify(dir.path(), Some(cpu), None);
        assert_falls_back_to_f32(precision, dir.path(), Some(cpu), None, &f32);
    }
    let best = Isa::best();
    let native = precision.is_native(best);
    assert_eq!(system(None, None)[format!("{name}_native")], native);
    let (_, stderr) = classify_with(dir.path(), None, None, &["--precision", name]);
    let notes: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains(&format!("{name} asked for")))
        .collect();
    if native {
        assert!(notes.is_empty(), "{stderr}");
    } else {
        let runs = format!("computing in {}", precision.fallback(best).name());
        assert_eq!(notes.len(), 1, "{stderr}");
        assert!(notes[0].contains(&runs), "{stderr}");
    }
}

#[test]
fn bf16_where_the_cpu_or_the_cap_lacks_it_runs_f32_and_says_so_once() {
    assert_precision_falls_back_where_not_native(Precision::Bf16, ("avx2", "Haswell"));
}

#[test]
fn int8_where_the_cpu_or_the_cap_lacks_it_runs_f32_and_says_so_once() {
    assert_precision_falls_back_where_not_native(Precision::Int8, ("portable", "Nehalem"));
    let runs = |cpu, cap| system(cpu, cap)["int8_runs"].clone();
    assert_eq!(runs(None, Some("portable")), "f32");
    if cfg!(target_arch = "x86_64") && qemu() {
        assert_eq!(runs(Some("Nehalem"), None), "f32");
    }
    assert_eq!(
        runs(None, None),
        Precision::Int8.fallback(Isa::best()).name()
    );
}

/// int8 on AVX2 without AVX-512 or VNNI: an emulated Haswell runs it (no illegal instruction)
/// and answers as this CPU's AVX2 int8 kernels do, which `densenet system` reports as native.
/// Where this CPU has AVX-VNNI its AVX2 kernels take its `vpdpbusd` (weights of ±127 levels)
/// while the Haswell takes AVX2's pair sums (±63): the same top class, its probability within
/// int8's rounding.
#[test]
fn int8_runs_on_avx2_alone_and_a_haswell_gives_the_native_answers() {
    if !Isa::Avx2.is_supported() {
        eprintln!("skipped: this CPU has no AVX2");
        return;
    }
    let dir = workdir();
    let int8 = ["--precision", "int8"];
    let report = system(None, Some("avx2"));
    assert_eq!(report["int8_native"], true, "{report}");
    assert_eq!(report["int8_runs"], "int8", "{report}");
    let (native, stderr) = classify_with(dir.path(), None, Some("avx2"), &int8);
    assert!(!stderr.contains("asked for"), "{stderr}");
    if cfg!(target_arch = "x86_64") && qemu() {
        assert_eq!(system(Some("Haswell"), None)["int8_runs"], "int8");
        let (emulated, stderr) = classify_with(dir.path(), Some("Haswell"), None, &int8);
        assert!(!stderr.contains("asked for"), "{stderr}");
        match system(None, None)["cpu_features"]["avx_vnni"] == true {
            false => assert_same_answers(&native, &emulated, "int8 on a Haswell"),
            true => {
                assert_eq!(native.len(), emulated.len(), "int8 on a Haswell");
                for (w, g) in native.iter().zip(&emulated) {
                    assert_eq!(w[0].0, g[0].0, "int8 on a Haswell: top class");
                    let diff = (w[0].1 - g[0].1).abs();
                    assert!(diff <= 2e-2, "int8 on a Haswell: {} vs {}", w[0].1, g[0].1);
                }
            }
        }
    }
}
