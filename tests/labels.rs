//! Label sets: CIFAR-100's, and ImageNet's for a loaded 1000-class file.

mod common;

use candle_core::Tensor;
use common::deterministic;
use densenet::labels::*;
use densenet::weights::naming::Family;
use densenet::weights::{state_dict_spec, TensorKind};
use densenet::{Config, Model, Preprocessing, Stem};
use std::collections::{HashMap, HashSet};

#[test]
fn fine_labels_are_the_official_order() {
    assert_eq!(CIFAR100_FINE.len(), 100);
    assert_eq!(CIFAR100_FINE[0], "apple");
    assert_eq!(CIFAR100_FINE[1], "aquarium_fish");
    assert_eq!(CIFAR100_FINE[49], "mountain");
    assert_eq!(CIFAR100_FINE[99], "worm");
    let mut sorted = CIFAR100_FINE.to_vec();
    sorted.sort();
    assert_eq!(
        sorted, CIFAR100_FINE,
        "the dataset lists them alphabetically"
    );
    assert_eq!(CIFAR100_FINE.iter().collect::<HashSet<_>>().len(), 100);
}

#[test]
fn every_superclass_has_five_fine_labels() {
    for (coarse, name) in CIFAR100_COARSE.iter().enumerate() {
        let n = CIFAR100_FINE_TO_COARSE
            .iter()
            .filter(|&&c| c as usize == coarse)
            .count();
        assert_eq!(n, 5, "{name}");
    }
    assert_eq!(cifar100_coarse_of(30), Some("aquatic_mammals")); // dolphin
    assert_eq!(cifar100_coarse_of(58), Some("vehicles_1")); // pickup_truck
    assert_eq!(cifar100_coarse_of(99), Some("non-insect_invertebrates")); // worm
}

#[test]
fn default_labels() {
    assert!(is_cifar100(&densenet::labels::default_labels(100)));
    assert_eq!(
        densenet::labels::default_labels(3),
        ["class_0", "class_1", "class_2"]
    );
}

/// A torchvision-named ImageNet-stem file of `num_classes` classes, with no metadata.
fn torchvision_file(num_classes: usize, dir: &std::path::Path) -> std::path::PathBuf {
    let config = Config {
        growth_rate: 4,
        block_config: vec![1, 1],
        init_features: 8,
        stem: Stem::ImageNet,
        transition_relu: true,
        ..Config::densenet121(num_classes)
    };
    let family = Family::TorchvisionImageNet;
    let tensors: HashMap<String, Tensor> = state_dict_spec(&config)
        .unwrap()
        .into_iter()
        .filter(|s| s.kind != TensorKind::Counter)
        .map(|s| {
            let name = family.file_name(&s.name, config.block_config.len());
            let t = deterministic(&name, &s.shape);
            (name, t)
        })
        .collect();
    let path = dir.join(format!("tv_{num_classes}.safetensors"));
    candle_core::safetensors::save(&tensors, &path).unwrap();
    path
}

#[test]
fn a_loaded_1000_class_file_gets_the_imagenet_labels() {
    let dir = tempfile::tempdir().unwrap();
    let model = Model::load(torchvision_file(1000, dir.path())).unwrap();
    let labels = model.labels();
    assert_eq!(labels.len(), 1000);
    assert_eq!(labels[0], "tench");
    assert_eq!(labels[207], "golden retriever");
    assert_eq!(labels[999], "toilet tissue");
    assert_eq!(model.preprocessing(), &Preprocessing::imagenet());
    // Another class count gets numbered labels.
    let model = Model::load(torchvision_file(7, dir.path())).unwrap();
    assert_eq!(model.labels()[6], "class_6");
}
