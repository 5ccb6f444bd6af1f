//! Accuracy measurement on datasets the tests write, with a model whose answers are known.

mod common;

use common::known::{image_of_class, red_level_model};
use densenet::dataset::{self, CIFAR100_RECORD_BYTES};
use densenet::eval::{self, Evaluation};
use densenet::labels::{cifar100_coarse_of, CIFAR100_FINE, CIFAR100_FINE_TO_COARSE};
use densenet::pipeline::Pipeline;
use std::path::Path;

/// (true class, class the model will answer) for each test image.
const CASES: [(usize, usize); 10] = [
    (5, 5),
    (6, 6),
    (7, 7),
    (3, 3),
    (12, 12),
    (8, 9),   // wrong, but in the top 5
    (14, 11), // wrong, 3 away: not in the top 5
    (10, 4),  // wrong, far
    (5, 6),   // wrong, next door
    (9, 9),
];

fn cifar_record(truth: usize, answer: usize, tint: u8) -> Vec<u8> {
    let image = image_of_class(answer, tint);
    let mut record = vec![CIFAR100_FINE_TO_COARSE[truth], truth as u8];
    for c in 0..3 {
        record.extend(image.pixels().map(|p| p[c]));
    }
    assert_eq!(record.len(), CIFAR100_RECORD_BYTES);
    record
}

fn write_cifar(path: &Path) {
    let bytes: Vec<u8> = CASES
        .iter()
        .enumerate()
        .flat_map(|(i, &(t, a))| cifar_record(t, a, 20 * i as u8))
        .collect();
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn the_known_model_answers_as_designed() {
    let model = red_level_model(100);
    for j in [0, 1, 4, 9, 17] {
        let x = model
            .preprocessing()
            .to_tensor(&image_of_class(j, 7), model.device())
            .unwrap();
        let p = &model.predict(&x).unwrap()[0];
        assert_eq!(p.top_k[0].index, j);
    }
}

#[test]
fn cifar_binary_accuracies_are_exact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("test.bin");
    write_cifar(&path);
    let records = dataset::read_cifar100_binary(&path).unwrap();
    assert_eq!(records.len(), CASES.len());
    assert_eq!(usize::from(records[6].fine), 14);
    assert_eq!(records[6].coarse, CIFAR100_FINE_TO_COARSE[14]);

    let model = red_level_model(100);
    let mut seen = 0;
    let evaluation =
        eval::evaluate_cifar(&model, &records, &Pipeline::new(3), |n| seen += n).unwrap();
    assert_eq!(seen, CASES.len());
    let report = evaluation.report();
    assert_eq!(report.images, 10);
    assert_eq!(report.failed, 0);
    assert_eq!(report.top1, 0.6);
    assert_eq!(report.top5, 0.8);
    // Superclasses: the six right answers; the four wrong ones (bicycle as bottle, butterfly as
    // boy, bowl as beaver, bed as bee) each leave their superclass.
    assert_eq!(report.coarse, Some(0.6));
    let five = &report.per_class[5];
    assert_eq!(
        (five.label.as_str(), five.images, five.correct),
        ("bed", 2, 1)
    );
    assert_eq!(five.accuracy, Some(0.5));
    assert_eq!(report.per_class[14].accuracy, Some(0.0));
    assert_eq!(report.per_class[0].accuracy, None);
    assert!(report.images_per_second > 0.0);

    let confusion = evaluation.confusion();
    assert_eq!(confusion[10][4], 1);
    assert_eq!(confusion[5][5], 1);
    assert_eq!(confusion[5][6], 1);
    assert_eq!(confusion.iter().flatten().sum::<u64>(), 10);

    let message = eval::evaluate_cifar(&red_level_model(10), &records, &Pipeline::new(3), |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("beyond this model's 10 classes"),
        "{message}"
    );
}

#[test]
fn wrong_answers_in_the_right_superclass_count_for_the_superclass_score() {
    // (true class, answer), superclasses from the CIFAR-100 documentation: bee and beetle are
    // insects, bottle and bowl food containers, bear is right, bicycle (vehicles 1) as beaver
    // (aquatic mammals) is wrong in both: top-1 1/4, superclass 3/4.
    let cases = [(6, 7), (9, 10), (3, 3), (8, 4)];
    let records: Vec<u8> = cases
        .iter()
        .flat_map(|&(t, a)| cifar_record(t, a, 0))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("test.bin");
    std::fs::write(&path, records).unwrap();
    let records = dataset::read_cifar100_binary(&path).unwrap();
    let report = eval::evaluate_cifar(&red_level_model(100), &records, &Pipeline::new(2), |_| {})
        .unwrap()
        .report();
    assert_eq!(report.top1, 0.25);
    assert_eq!(report.coarse, Some(0.75));
    assert_eq!(cifar100_coarse_of(6), Some("insects"));
    assert_eq!(cifar100_coarse_of(10), Some("food_containers"));
}

#[test]
fn a_truncated_binary_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("test.bin");
    let mut bytes = cifar_record(1, 1, 0);
    bytes.extend(cifar_record(2, 2, 0));
    bytes.truncate(CIFAR100_RECORD_BYTES + 100);
    std::fs::write(&path, bytes).unwrap();
    let message = dataset::read_cifar100_binary(&path)
        .unwrap_err()
        .to_string();
    assert!(message.contains("test.bin"), "{message}");
    assert!(message.contains("truncated"), "{message}");
    assert!(message.contains("record 1"), "{message}");

    std::fs::write(&path, b"").unwrap();
    let message = dataset::read_cifar100_binary(&path)
        .unwrap_err()
        .to_string();
    assert!(message.contains("empty"), "{message}");

    let mut bad_label = cifar_record(1, 1, 0);
    bad_label[1] = 100;
    std::fs::write(&path, bad_label).unwrap();
    let message = dataset::read_cifar100_binary(&path)
        .unwrap_err()
        .to_string();
    assert!(message.contains("record 0"), "{message}");
}

/// root/<label>/… with the CASES as PNGs, a text file and a broken image.
fn write_folder(root: &Path) {
    for (i, &(truth, answer)) in CASES.iter().enumerate() {
        let class = root.join(CIFAR100_FINE[truth]);
        let dir = if i % 2 == 0 {
            class.clone()
        } else {
            class.join("nested")
        };
        std::fs::create_dir_all(&dir).unwrap();
        image_of_class(answer, 20 * i as u8)
            .save(dir.join(format!("img{i}.png")))
            .unwrap();
    }
    std::fs::write(root.join("bowl/README.txt"), "not an image").unwrap();
}

#[test]
fn image_folder_accuracies_are_exact() {
    let dir = tempfile::tempdir().unwrap();
    write_folder(dir.path());
    std::fs::write(
        dir.path().join("bowl/broken.png"),
        b"\x89PNG\r\n\x1a\nbroken",
    )
    .unwrap();
    let model = red_level_model(100);
    let folder = dataset::image_folder(dir.path(), model.labels()).unwrap();
    assert_eq!(folder.samples.len(), 11);
    assert_eq!(folder.skipped.len(), 1);
    let mut failures = Vec::new();
    let evaluation = eval::evaluate_folder(
        &model,
        &folder,
        &Pipeline::new(4),
        |_| {},
        |e| failures.push(e.to_string()),
    )
    .unwrap();
    assert_eq!(failures.len(), 1);
    assert!(failures[0].contains("broken.png"), "{failures:?}");
    let report = evaluation.report();
    assert_eq!((report.images, report.failed), (10, 1));
    assert_eq!((report.top1, report.top5), (0.6, 0.8));
}

#[test]
fn a_class_folder_the_model_does_not_know() {
    let dir = tempfile::tempdir().unwrap();
    write_folder(dir.path());
    std::fs::create_dir(dir.path().join("spaceship")).unwrap();
    let message = dataset::image_folder(dir.path(), red_level_model(100).labels())
        .unwrap_err()
        .to_string();
    assert!(message.contains("`spaceship`"), "{message}");

    let empty = tempfile::tempdir().unwrap();
    std::fs::write(empty.path().join("test.bin"), b"").unwrap();
    let message = dataset::image_folder(empty.path(), red_level_model(100).labels())
        .unwrap_err()
        .to_string();
    assert!(message.contains("no class folders"), "{message}");
}

#[test]
fn confusion_matrix_files() {
    let model = red_level_model(100);
    let mut evaluation = Evaluation::new(model.labels());
    for &(truth, answer) in &CASES {
        let x = model
            .preprocessing()
            .to_tensor(&image_of_class(answer, 0), model.device())
            .unwrap();
        evaluation
            .add(truth, &model.predict(&x).unwrap()[0])
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let csv_path = dir.path().join("confusion.csv");
    evaluation.write_confusion_csv(&csv_path, false).unwrap();
    let text = std::fs::read_to_string(&csv_path).unwrap();
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 101);
    assert_eq!(rows[0].len(), 101);
    assert_eq!(rows[0][1], "apple");
    assert_eq!(rows[11][0], "bowl"); // class 10
    assert_eq!(rows[11][5], "1"); // predicted as class 4
    assert_eq!(rows[11][11], "0");
    let message = evaluation
        .write_confusion_csv(&csv_path, false)
        .unwrap_err()
        .to_string();
    assert!(message.contains("already exists"), "{message}");

    let heatmap = evaluation.confusion_heatmap();
    // 100 cells of 8 pixels, 9 rules, margins and the colour bar.
    assert_eq!(heatmap.height(), 8 + 100 * 8 + 9 + 8);
    assert!(heatmap.width() > heatmap.height());
    let cell = |t: u32, p: u32| *heatmap.get_pixel(8 + p * 8 + p / 10 + 4, 8 + t * 8 + t / 10 + 4);
    assert_eq!(cell(3, 3), cell(7, 7)); // rows of one image each, all on the diagonal
    assert_ne!(cell(5, 5), cell(7, 7)); // half of class 5 on the diagonal
    assert_ne!(cell(5, 5), image::Rgb([255, 255, 255]));
    assert_eq!(cell(5, 7), image::Rgb([255, 255, 255]));
    assert_eq!(cell(10, 4), cell(7, 7));
    let png = dir.path().join("confusion.png");
    evaluation.write_confusion_png(&png, false).unwrap();
    assert_eq!(image::open(&png).unwrap().width(), heatmap.width());
}
