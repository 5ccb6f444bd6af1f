// The browser benchmark's page side, driven by tools/web_harness.py through `window.bench`:
// both runtimes on this page's thread, one thread each, timed with performance.now().

// name → { size, engines: Map(variant → Classifier), session, inputs: Map(batch → Float32Array) }
const cases = new Map();
let api = null; // { Classifier, ort }

function log(line) {
  document.getElementById('log').textContent += `${line}\n`;
}

async function modules() {
  if (api) return api;
  const load = async (what, url) => {
    try {
      return await import(url);
    } catch (e) {
      throw new Error(`${what} could not be loaded from ${url} (${e.message})`);
    }
  };
  const { Classifier } = await load("The engine's module", './densenet.js');
  const ort = await load('onnxruntime-web', './ort/ort.wasm.min.mjs');
  // The package's own files, served beside this page; one thread, and the wasm backend in this
  // thread (no proxy worker) as the engine runs.
  ort.env.wasm.wasmPaths = new URL('./ort/', location.href).href;
  ort.env.wasm.numThreads = 1;
  ort.env.wasm.proxy = false;
  api = { Classifier, ort };
  return api;
}

async function fetchBytes(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`could not fetch ${url}: HTTP ${response.status}`);
  return new Uint8Array(await response.arrayBuffer());
}

// N(0, 1) values from a fixed seed (xorshift32, Box–Muller): the same input for both runtimes.
function gaussian(n, seed) {
  let s = seed >>> 0 || 1;
  const uniform = () => {
    s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
    return (s + 0.5) / 4294967296;
  };
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const r = Math.sqrt(-2 * Math.log(uniform()));
    const t = 2 * Math.PI * uniform();
    out[i] = r * Math.cos(t);
    if (i + 1 < n) out[i + 1] = r * Math.sin(t);
  }
  return out;
}

function input(c, batch) {
  if (!c.inputs.has(batch)) c.inputs.set(batch, gaussian(batch * 3 * c.size * c.size, 1000 + batch));
  return c.inputs.get(batch);
}

// `runtime`: 'ort' or 'engine'.
async function run(c, runtime, batch) {
  const x = input(c, batch);
  if (runtime !== 'ort') return c.engines.get(runtime).logits(x, batch);
  const feeds = { input: new api.ort.Tensor('float32', x, [batch, 3, c.size, c.size]) };
  return (await c.session.run(feeds)).logits.data;
}

window.bench = {
  // Loads one case's models: { name, engineUrl, onnxUrl, size, simd } → what runs it. `simd`
  // chooses the engine's module ('relaxed-simd' or 'simd128'; by default the one the page picks).
  async prepare({ name, engineUrl, onnxUrl, size, simd }) {
    const { Classifier, ort } = await modules();
    log(`${name}: loading ${engineUrl} and ${onnxUrl}`);
    const weights = await fetchBytes(engineUrl);
    const file = engineUrl.split('/').pop();
    const engines = new Map([['engine', await Classifier.load(weights, { name: file, simd: simd ?? undefined })]]);
    const session = await ort.InferenceSession.create(await fetchBytes(onnxUrl), {
      executionProviders: ['wasm'], graphOptimizationLevel: 'all',
    });
    const previous = cases.get(name);
    if (previous) for (const engine of previous.engines.values()) engine.free();
    cases.set(name, { size, engines, session, inputs: new Map() });
    const { architecture, classes, inputWidth, isa, precision } = engines.get('engine').info;
    if (inputWidth !== size) throw new Error(`${engineUrl} takes ${inputWidth}×${inputWidth} inputs, not ${size}×${size}`);
    // The wasm file onnxruntime-web chose (all of 1.31's are the SIMD builds).
    const wasm = performance.getEntriesByType('resource').map((e) => e.name)
      .filter((n) => n.includes('/ort/') && n.endsWith('.wasm')).map((n) => n.split('/').pop());
    return {
      architecture, classes, isa, precision,
      engines: Object.fromEntries([...engines].map(([k, e]) => [k, e.info.simd])),
      ortVersion: ort.env.versions?.web ?? '?',
      ortBackend: `wasm: ${[...new Set(wasm)].join(', ') || '?'}, ${ort.env.wasm.numThreads} thread`,
    };
  },

  // Each engine's logits for one seeded batch beside onnxruntime-web's: the largest difference
  // (over the engines) and the largest logit.
  async check(name, batch) {
    const c = cases.get(name);
    const b = await run(c, 'ort', batch);
    let maxDiff = 0;
    let maxLogit = 0;
    for (const runtime of c.engines.keys()) {
      const a = await run(c, runtime, batch);
      if (a.length !== b.length) throw new Error(`${name}: ${a.length} logits from ${runtime}, ${b.length} from onnxruntime-web`);
      for (let i = 0; i < a.length; i++) {
        if (!Number.isFinite(a[i])) throw new Error(`${name}: ${runtime} gave ${a[i]} at ${i}`);
        maxDiff = Math.max(maxDiff, Math.abs(a[i] - b[i]));
        maxLogit = Math.max(maxLogit, Math.abs(b[i]));
      }
    }
    log(`${name}: logits of batch ${batch}: max |Δ| ${maxDiff.toExponential(2)}, largest logit ${maxLogit.toFixed(3)}`);
    return { maxDiff, maxLogit };
  },

  // Milliseconds of each of `iters` batches of `batch` (after one untimed run when `warm`).
  async time(name, runtime, batch, iters, warm) {
    const c = cases.get(name);
    if (warm) await run(c, runtime, batch);
    const times = [];
    for (let i = 0; i < iters; i++) {
      const t0 = performance.now();
      await run(c, runtime, batch);
      times.push(performance.now() - t0);
    }
    log(`${name} batch ${batch} ${runtime}: ${times.map((t) => t.toFixed(1)).join(', ')} ms`);
    return times;
  },
};
