// The page's model work, off the page's thread so that it never freezes. Messages in:
//   { id, type: 'load', bytes: ArrayBuffer, name }
//   { id, type: 'classify', image: ArrayBuffer | ImageData, name, topK, cam }
// and one answer out per message, with the same id: the result, or { id, error: 'message' }.

// Imported here rather than statically, so that a module that failed to build or load becomes an
// error message in the page instead of a worker that silently never starts.
const api = import('./densenet.js').catch((e) => {
  throw new Error(`The engine's WebAssembly module could not be loaded (${e.message}). ` +
    'Was it built (make web)?');
});
api.catch(() => {}); // reported when a message needs it, not as an unhandled rejection
// The module compiles while the user picks a model (a failure is reported by `load`).
api.then((m) => m.preload()).catch(() => {});
let classifier = null;

// One message at a time, in order: an image dropped while a model loads waits for that model.
let queue = Promise.resolve();
self.onmessage = (event) => {
  queue = queue.then(() => handle(event.data));
};

async function handle(msg) {
  try {
    if (msg.type === 'load') {
      const { Classifier } = await api;
      const t0 = performance.now();
      const next = await Classifier.load(msg.bytes, { name: msg.name });
      const ms = performance.now() - t0;
      // The old model is kept until the new one has loaded: a bad file leaves the page usable.
      if (classifier) classifier.free();
      classifier = next;
      self.postMessage({ id: msg.id, info: plainInfo(next.info), ms });
    } else if (msg.type === 'classify') {
      if (!classifier) throw new Error('No model is loaded: open a model file first.');
      const t0 = performance.now();
      const result = classifier.classify(msg.image, { topK: msg.topK, cam: msg.cam, name: msg.name });
      const ms = performance.now() - t0;
      const top = result.top.map((t) => ({ index: t.index, label: t.label, probability: t.probability }));
      // A copy of the picture, whose buffer then moves to the page without another copy (the
      // engine's may be a view of its own memory, which must not be handed over).
      const cam = result.cam && {
        width: result.cam.width, height: result.cam.height, rgba: new Uint8ClampedArray(result.cam.rgba),
      };
      self.postMessage({ id: msg.id, top, cam, ms }, cam ? [cam.rgba.buffer] : []);
    } else {
      throw new Error(`unknown message ${msg.type}`);
    }
  } catch (e) {
    self.postMessage({ id: msg.id, error: (e && e.message) || String(e) });
  }
}

// ModelInfo as plain data (the engine's may be a class with getters, which do not survive
// postMessage).
function plainInfo(info) {
  const keys = ['architecture', 'classes', 'inputWidth', 'inputHeight', 'isa', 'precision', 'simd'];
  return Object.fromEntries(keys.map((k) => [k, info[k]]));
}
