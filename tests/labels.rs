//! CIFAR-100 label sets.

use densenet::labels::*;
use std::collections::HashSet;

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
