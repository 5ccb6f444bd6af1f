//! Class names.
//!
//! CIFAR-100's fine and coarse label names and the fine → coarse mapping are facts of the dataset,
//! as listed in the `meta` file of its official distribution (Krizhevsky, 2009,
//! "Learning Multiple Layers of Features from Tiny Images").

/// The 100 CIFAR-100 fine labels in the dataset's order (index 0 is `apple`, 99 is `worm`).
pub const CIFAR100_FINE: [&str; 100] = [
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
];

/// The 20 CIFAR-100 coarse labels (superclasses) in the dataset's order.
pub const CIFAR100_COARSE: [&str; 20] = [
    "aquatic_mammals",
    "fish",
    "flowers",
    "food_containers",
    "fruit_and_vegetables",
    "household_electrical_devices",
    "household_furniture",
    "insects",
    "large_carnivores",
    "large_man-made_outdoor_things",
    "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores",
    "medium_mammals",
    "non-insect_invertebrates",
    "people",
    "reptiles",
    "small_mammals",
    "trees",
    "vehicles_1",
    "vehicles_2",
];

/// The coarse label index of each fine label: `CIFAR100_FINE_TO_COARSE[fine]`.
pub const CIFAR100_FINE_TO_COARSE: [u8; 100] = [
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, // apple .. bottle
    3, 14, 9, 18, 7, 11, 3, 9, 7, 11, // bowl .. cattle
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15, // chair .. dinosaur
    0, 11, 1, 10, 12, 14, 16, 9, 11, 5, // dolphin .. keyboard
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10, // lamp .. mountain
    16, 4, 17, 4, 2, 0, 17, 4, 18, 17, // mouse .. pine_tree
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19, // plain .. rocket
    2, 10, 0, 1, 16, 12, 9, 13, 15, 13, // rose .. spider
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19, // squirrel .. tractor
    18, 1, 2, 15, 6, 0, 17, 8, 14, 13, // train .. worm
];

/// The coarse label of a CIFAR-100 fine label index, if it is one.
///
/// ```
/// assert_eq!(densenet::labels::cifar100_coarse_of(0), Some("fruit_and_vegetables"));
/// assert_eq!(densenet::labels::cifar100_coarse_of(100), None);
/// ```
pub fn cifar100_coarse_of(fine: usize) -> Option<&'static str> {
    CIFAR100_FINE_TO_COARSE
        .get(fine)
        .map(|&c| CIFAR100_COARSE[c as usize])
}

/// True when `labels` are exactly the CIFAR-100 fine labels, in order.
pub fn is_cifar100(labels: &[String]) -> bool {
    labels.len() == CIFAR100_FINE.len() && labels.iter().zip(CIFAR100_FINE).all(|(a, b)| a == b)
}

/// Labels for a model whose file names none: CIFAR-100's for 100 classes, else `class_N`.
pub fn default_labels(num_classes: usize) -> Vec<String> {
    if num_classes == CIFAR100_FINE.len() {
        CIFAR100_FINE.iter().map(|s| s.to_string()).collect()
    } else {
        (0..num_classes).map(|i| format!("class_{i}")).collect()
    }
}

/// The 1000 ImageNet-1k class names in the order of the torchvision classifiers (index 0 is
/// `tench`, 999 is `toilet tissue`). From torchvision's `_IMAGENET_CATEGORIES`
/// (torchvision/models/_meta.py, BSD-3-Clause), written to `src/labels/imagenet.txt` by
/// `tools/make_interop_fixtures.py`.
pub fn imagenet() -> Vec<&'static str> {
    include_str!("labels/imagenet.txt").lines().collect()
}

/// Labels for an ImageNet-family model whose file names none: ImageNet's for 1000 classes, else
/// `class_N`.
///
/// ```
/// assert_eq!(densenet::labels::default_imagenet_labels(1000)[0], "tench");
/// assert_eq!(densenet::labels::default_imagenet_labels(3)[2], "class_2");
/// ```
pub fn default_imagenet_labels(num_classes: usize) -> Vec<String> {
    let imagenet = imagenet();
    if num_classes == imagenet.len() {
        imagenet.into_iter().map(str::to_string).collect()
    } else {
        (0..num_classes).map(|i| format!("class_{i}")).collect()
    }
}
