// densenet in the browser: the engine's WebAssembly module behind a small API (README, "In the
// browser"). Types in densenet.d.ts. Works on the main thread and in a Worker; the page runs it
// in a Worker (worker.js) so that classifying never blocks the page.
//
//   import { Classifier } from './densenet.js';
//   const classifier = await Classifier.load(new Uint8Array(await file.arrayBuffer()));
//   const { top, cam } = classifier.classify(imageBytes, { topK: 5, cam: true });

// A module of one function using `f32x4.relaxed_madd`: valid only where the browser has relaxed
// SIMD. Hand-assembled from the WebAssembly binary format (a type () -> v128, one function whose
// body is three `v128.const` and the fused multiply-add).
const RELAXED_PROBE = new Uint8Array([
  0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version 1
  0x01, 0x05, 0x01, 0x60, 0x00, 0x01, 0x7b, // type section: () -> v128
  0x03, 0x02, 0x01, 0x00, // function section: one function of type 0
  0x0a, 0x3d, 0x01, 0x3b, 0x00, // code section: one body of 59 bytes, no locals
  0xfd, 0x0c, ...new Array(16).fill(0), // v128.const 0
  0xfd, 0x0c, ...new Array(16).fill(0),
  0xfd, 0x0c, ...new Array(16).fill(0),
  0xfd, 0x85, 0x02, // f32x4.relaxed_madd (0xfd 0x105)
  0x0b, // end
]);

/** Whether this browser runs relaxed SIMD (fused multiply-adds in WebAssembly). */
export function hasRelaxedSimd() {
  return WebAssembly.validate(RELAXED_PROBE);
}

// The modules `make web` builds: with relaxed SIMD (pkg-relaxed/) and without (pkg/).
const VARIANTS = { 'relaxed-simd': './pkg-relaxed/densenet_web.js', simd128: './pkg/densenet_web.js' };
const loading = new Map();

/** The initialised module of `simd` ('relaxed-simd' or 'simd128'; the best this browser runs
 * when not given, falling back to simd128 where the relaxed build is absent). */
async function engineModule(simd) {
  const wanted = simd ?? (hasRelaxedSimd() ? 'relaxed-simd' : 'simd128');
  if (!(wanted in VARIANTS)) {
    throw new RangeError(`simd: expected 'relaxed-simd' or 'simd128', got ${JSON.stringify(simd)}`);
  }
  if (!loading.has(wanted)) {
    loading.set(wanted, (async () => {
      const module = await import(new URL(VARIANTS[wanted], import.meta.url).href);
      await module.default();
      return module;
    })());
  }
  try {
    return await loading.get(wanted);
  } catch (error) {
    loading.delete(wanted);
    if (simd === undefined && wanted !== 'simd128') {
      return engineModule('simd128');
    }
    throw new Error(`the ${wanted} module could not be loaded: ${error.message}`);
  }
}

/**
 * Fetches and compiles the module ahead of the first `Classifier.load`, which then only reads the
 * model (compiling takes most of a first load's time).
 */
export async function preload(options = {}) {
  await engineModule(options.simd);
}

/** The bytes of a model or an image given as bytes, a buffer or a Blob. */
async function bytesOf(what, part) {
  if (what instanceof Uint8Array) return what;
  if (what instanceof ArrayBuffer) return new Uint8Array(what);
  if (ArrayBuffer.isView(what)) return new Uint8Array(what.buffer, what.byteOffset, what.byteLength);
  if (typeof Blob !== 'undefined' && what instanceof Blob) return new Uint8Array(await what.arrayBuffer());
  throw new TypeError(`${part}: expected a Uint8Array, an ArrayBuffer or a Blob`);
}

/** A trap inside the module (a bug, or memory exhausted) leaves it unusable: say so plainly. */
function rethrow(error, classifier) {
  if (error instanceof WebAssembly.RuntimeError) {
    classifier?.free();
    throw new Error(`the engine stopped (${error.message}); load the model again`);
  }
  throw error;
}

// The stems as the crate's `Stem` names them.
const STEMS = {
  cifar: 'CIFAR stem (3×3 convolution)',
  cifar_norm: 'CIFAR stem (3×3 convolution, BatchNorm, ReLU)',
  image_net: 'ImageNet stem (7×7 convolution, max pool)',
};

/** A DenseNet classifier in WebAssembly. */
export class Classifier {
  #engine;
  #info;

  constructor(engine) {
    this.#engine = engine;
    const info = JSON.parse(engine.info());
    const c = info.config;
    const stem = STEMS[c.stem] ?? `${c.stem} stem`;
    info.architecture = `DenseNet, blocks ${c.block_config.join('-')}, growth ${c.growth_rate}, ${stem}`;
    this.#info = Object.freeze(info);
  }

  /**
   * Loads a model: the bytes of a safetensors file or a PyTorch checkpoint (recognised by
   * content). `options.name` names it in errors; `options.simd` forces a module.
   */
  static async load(model, options = {}) {
    const bytes = await bytesOf(model, 'model');
    const wasm = await engineModule(options.simd);
    try {
      return new Classifier(new wasm.Engine(options.name ?? 'model', bytes));
    } catch (error) {
      rethrow(error);
    }
  }

  /** What the model is and how it runs. */
  get info() {
    return this.#info;
  }

  #live() {
    if (!this.#engine) throw new Error('the classifier was freed');
    return this.#engine;
  }

  /**
   * Classifies one image: the bytes of an image file (PNG, JPEG, ...; decoded and resized as
   * the command line does) or RGBA pixels (`ImageData`, or `{data, width, height}`).
   */
  classify(image, options = {}) {
    const { topK = 5, cam = false, name = 'image' } = options;
    if (!Number.isInteger(topK) || topK < 1) {
      throw new RangeError(`topK: expected a whole number of at least 1, got ${topK}`);
    }
    const engine = this.#live();
    let answer;
    try {
      if (image && typeof image === 'object' && 'data' in image && 'width' in image && 'height' in image) {
        const { data, width, height } = image;
        const rgba = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
        answer = engine.classifyRgba(rgba, width, height, topK, cam);
      } else if (image instanceof Uint8Array || image instanceof ArrayBuffer || ArrayBuffer.isView(image)) {
        const bytes = image instanceof ArrayBuffer ? new Uint8Array(image)
          : new Uint8Array(image.buffer, image.byteOffset, image.byteLength);
        answer = engine.classifyEncoded(name, bytes, topK, cam);
      } else {
        throw new TypeError('image: expected the bytes of an image file or RGBA ImageData');
      }
    } catch (error) {
      rethrow(error, this);
    }
    const result = { top: JSON.parse(answer.top), logits: answer.logits };
    if (cam) {
      const rgba = answer.camRgba;
      result.cam = {
        width: answer.camWidth,
        height: answer.camHeight,
        rgba: new Uint8ClampedArray(rgba.buffer, rgba.byteOffset, rgba.byteLength),
      };
    }
    answer.free();
    return result;
  }

  /**
   * Logits of a normalised batch, NCHW `[batch, 3, inputHeight, inputWidth]` as a Float32Array,
   * returned as `[batch × classes]`.
   */
  logits(input, batch) {
    if (!(input instanceof Float32Array)) throw new TypeError('input: expected a Float32Array');
    if (!Number.isInteger(batch) || batch < 1) {
      throw new RangeError(`batch: expected a whole number of at least 1, got ${batch}`);
    }
    try {
      return this.#live().logits(input, batch);
    } catch (error) {
      rethrow(error, this);
    }
  }

  /** Frees the model's memory in the module; the classifier cannot be used afterwards. */
  free() {
    this.#engine?.free();
    this.#engine = undefined;
  }
}
