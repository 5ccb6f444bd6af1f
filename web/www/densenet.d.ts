// Types of densenet.js: the engine in the browser (README, "In the browser").

/** One of an image's most probable classes. */
export interface TopClass {
  /** The class index. */
  index: number;
  /** The class name. */
  label: string;
  /** Its softmax probability. */
  probability: number;
}

/** RGBA pixels, row after row. */
export interface Picture {
  width: number;
  height: number;
  rgba: Uint8ClampedArray;
}

/** The answer for one image. */
export interface Classification {
  /** The `topK` most probable classes, most probable first. */
  top: TopClass[];
  /** Every class's logit. */
  logits: Float32Array;
  /**
   * With `{cam: true}`: the image as the network saw it beside the class activation map of its
   * most probable class blended over it, the picture `classify --explain` writes.
   */
  cam?: Picture;
}

/** The network's architecture, as the model file describes or implies it. */
export interface Architecture {
  growth_rate: number;
  block_config: number[];
  init_features: number;
  bn_size: number;
  reduction: number;
  num_classes: number;
  stem: string;
  transition_relu: boolean;
}

/** What a model is and how it runs. */
export interface ModelInfo {
  /** A one-line description of the architecture. */
  architecture: string;
  config: Architecture;
  classes: number;
  labels: string[];
  /** The size images are resized to (and `logits` takes). */
  inputWidth: number;
  inputHeight: number;
  /** The engine's instruction set: `simd128` (or `portable` in a build without SIMD). */
  isa: string;
  /** The products' precision: `f32`. */
  precision: string;
  /** The module that runs: `relaxed-simd` (fused multiply-adds) or `simd128`. */
  simd: 'relaxed-simd' | 'simd128' | 'none';
}

export interface LoadOptions {
  /** Names the model in error messages. */
  name?: string;
  /** The module to run; by default the best this browser runs. */
  simd?: 'relaxed-simd' | 'simd128';
}

export interface ClassifyOptions {
  /** How many classes to return (5 unless given; at least 1). */
  topK?: number;
  /** Also return the class activation picture (`cam`). */
  cam?: boolean;
  /** Names the image in error messages. */
  name?: string;
}

/** RGBA pixels as a canvas gives them. */
export interface Pixels {
  data: Uint8ClampedArray | Uint8Array;
  width: number;
  height: number;
}

/** Whether this browser runs relaxed SIMD. */
export function hasRelaxedSimd(): boolean;

/**
 * Fetches and compiles the module ahead of the first `Classifier.load` (optional: `load` does it
 * when needed).
 */
export function preload(options?: { simd?: 'relaxed-simd' | 'simd128' }): Promise<void>;

/** A DenseNet classifier in WebAssembly. */
export class Classifier {
  /**
   * Loads a model from the bytes of a safetensors file or a PyTorch checkpoint (`.pth`),
   * recognised by their content. Rejects with an Error naming what is wrong with the file.
   */
  static load(model: Uint8Array | ArrayBuffer | Blob, options?: LoadOptions): Promise<Classifier>;
  readonly info: ModelInfo;
  /**
   * Classifies the bytes of an image file (PNG, JPEG, BMP, GIF, WebP, TIFF: decoded and resized
   * as the command line does) or RGBA pixels (`ImageData`). Throws an Error naming what is
   * wrong with the image.
   */
  classify(image: Uint8Array | ArrayBuffer | ImageData | Pixels, options?: ClassifyOptions): Classification;
  /** Logits `[batch × classes]` of a normalised NCHW batch `[batch, 3, inputHeight, inputWidth]`. */
  logits(input: Float32Array, batch: number): Float32Array;
  /** Frees the model's memory; the classifier cannot be used afterwards. */
  free(): void;
}
