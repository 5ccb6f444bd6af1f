// The page: model files, images and camera frames go to worker.js, which runs the engine; this
// thread only reads files and draws the answers, so the page stays responsive.

const $ = (id) => document.getElementById(id);
const TOP_K = 5;

// --- The worker, one request and one answer per message ---------------------------------------

const worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
const pending = new Map();
let nextId = 1;
let workerFailure = null;

worker.onmessage = ({ data }) => {
  const request = pending.get(data.id);
  if (!request) return;
  pending.delete(data.id);
  if (data.error) request.reject(new Error(data.error));
  else request.resolve(data);
};
worker.onerror = (event) => {
  event.preventDefault();
  workerFailure = new Error(`The model worker stopped${event.message ? `: ${event.message}` : ''}. Reload the page.`);
  for (const request of pending.values()) request.reject(workerFailure);
  pending.clear();
  setModelStatus(workerFailure.message, 'error');
};

function ask(message, transfer = []) {
  if (workerFailure) return Promise.reject(workerFailure);
  return new Promise((resolve, reject) => {
    const id = nextId++;
    pending.set(id, { resolve, reject });
    worker.postMessage({ ...message, id }, transfer);
  });
}

// --- The model ----------------------------------------------------------------------------------

let model = null; // { name, info } of the model in use

function setModelStatus(text, kind) {
  const status = $('model-status');
  status.textContent = text;
  status.className = kind;
}

async function loadModel(bytes, name) {
  setModelStatus(`Loading ${name} (${formatBytes(bytes.byteLength)})…`, 'busy');
  try {
    const { info, ms } = await ask({ type: 'load', bytes, name }, [bytes]);
    model = { name, info };
    const simd = info.simd && info.simd !== info.isa ? `, ${info.simd}` : '';
    setModelStatus(`${name}: ${info.architecture}, ${info.classes} classes, ${info.inputWidth}×${info.inputHeight} ` +
      `input (${info.isa}${simd}, ${info.precision}); loaded in ${ms.toFixed(0)} ms.`, 'ok');
    return { ok: true, info, ms };
  } catch (e) {
    const still = model ? ` (still using ${model.name})` : '';
    const what = e.message.startsWith(name) ? e.message : `${name}: ${e.message}`;
    setModelStatus(`Could not load ${what}${still}`, 'error');
    return { ok: false, error: e.message };
  }
}

async function loadModelFile(file) {
  return loadModel(await file.arrayBuffer(), file.name);
}

async function loadModelUrl(url) {
  const name = decodeURIComponent(new URL(url, location.href).pathname.split('/').pop() || url);
  setModelStatus(`Fetching ${url}…`, 'busy');
  let bytes;
  try {
    const response = await fetch(url);
    if (!response.ok) throw new Error(`HTTP ${response.status} ${response.statusText}`.trim());
    bytes = await response.arrayBuffer();
  } catch (e) {
    // A browser says only "Failed to fetch" for a refused cross-origin request: say what to check.
    const hint = e instanceof TypeError ? ' (is the address right, and does its server allow cross-origin requests?)' : '';
    const error = `Could not fetch ${url}: ${e.message}${hint}`;
    setModelStatus(error, 'error');
    return { ok: false, error };
  }
  return loadModel(bytes, name);
}

// --- Images -------------------------------------------------------------------------------------

// Classifies each image (encoded bytes of a File or Blob, or a camera frame's ImageData), one card
// each, newest first; resolves to the answers in the same order.
function classifyImages(items, { topK = TOP_K, cam = true } = {}) {
  return Promise.all(items.map((item) => classifyOne(item, topK, cam)));
}

async function classifyOne({ name, blob, frame, preview }, topK, cam) {
  const card = addCard(name, preview || (blob && URL.createObjectURL(blob)));
  try {
    const image = frame || await blob.arrayBuffer();
    const transfer = frame ? [frame.data.buffer] : [image];
    const answer = await ask({ type: 'classify', image, name, topK, cam }, transfer);
    showAnswer(card, answer);
    return { ok: true, top: answer.top, cam: answer.cam, ms: answer.ms };
  } catch (e) {
    showError(card, e.message);
    return { ok: false, error: e.message };
  }
}

function addCard(name, preview) {
  const card = $('result-template').content.firstElementChild.cloneNode(true);
  card.querySelector('.name').textContent = name;
  const picture = card.querySelector('.preview');
  if (typeof preview === 'string') {
    const img = document.createElement('img');
    img.src = preview;
    img.alt = name;
    img.onerror = () => img.remove(); // not a picture the browser can show: the error says why
    picture.append(img);
    card.dataset.objectUrl = preview;
  } else if (preview) {
    picture.append(preview);
  }
  $('results').prepend(card);
  $('clear').hidden = false;
  return card;
}

function showAnswer(card, answer) {
  card.classList.remove('busy');
  card.querySelector('.time').textContent = `${answer.ms.toFixed(1)} ms`;
  const list = card.querySelector('.top');
  for (const { label, index, probability } of answer.top) {
    const item = document.createElement('li');
    const name = document.createElement('span');
    name.className = 'label';
    name.textContent = label.replaceAll('_', ' ');
    name.title = `class ${index}`;
    const bar = document.createElement('span');
    bar.className = 'bar';
    bar.style.setProperty('--p', probability);
    const value = document.createElement('span');
    value.className = 'p';
    value.textContent = `${(probability * 100).toFixed(2)}%`;
    item.append(name, bar, value);
    list.append(item);
  }
  if (answer.cam) {
    const { width, height, rgba } = answer.cam;
    const canvas = document.createElement('canvas');
    canvas.width = width;
    canvas.height = height;
    canvas.className = 'cam';
    canvas.title = 'left: the image as the network saw it; right: where the evidence for the top class lies';
    canvas.getContext('2d').putImageData(new ImageData(rgba, width, height), 0, 0);
    card.querySelector('.pictures').append(canvas);
  }
}

function showError(card, message) {
  card.classList.remove('busy');
  card.classList.add('error');
  card.querySelector('.message').textContent = message;
}

const imageItems = (files) => [...files].map((file) => ({ name: file.name, blob: file }));

// --- The camera ---------------------------------------------------------------------------------

let stream = null;

async function startCamera() {
  const error = $('camera-error');
  error.textContent = '';
  try {
    if (!navigator.mediaDevices?.getUserMedia) {
      throw new Error('this browser offers no camera here (it needs a secure page: https or localhost)');
    }
    stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: 'environment' }, audio: false });
    const video = $('video');
    video.srcObject = stream;
    await video.play();
    video.hidden = false;
    setCameraButtons(true);
  } catch (e) {
    error.textContent = `The camera is not available: ${e.message}`;
    stopCamera();
  }
}

function stopCamera() {
  if (stream) for (const track of stream.getTracks()) track.stop();
  stream = null;
  $('video').hidden = true;
  $('video').srcObject = null;
  setCameraButtons(false);
}

function setCameraButtons(on) {
  $('camera-start').disabled = on;
  $('camera-capture').disabled = !on;
  $('camera-stop').disabled = !on;
}

function captureFrame() {
  const video = $('video');
  if (!video.videoWidth) return;
  const canvas = document.createElement('canvas');
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  const context = canvas.getContext('2d');
  context.drawImage(video, 0, 0);
  const frame = context.getImageData(0, 0, canvas.width, canvas.height);
  const name = `camera ${new Date().toLocaleTimeString()}`;
  classifyImages([{ name, frame, preview: canvas }]);
}

// --- Wiring -------------------------------------------------------------------------------------

function dropZone(zone, onFiles) {
  zone.addEventListener('dragover', (e) => { e.preventDefault(); zone.classList.add('over'); });
  zone.addEventListener('dragleave', () => zone.classList.remove('over'));
  zone.addEventListener('drop', (e) => {
    e.preventDefault();
    zone.classList.remove('over');
    if (e.dataTransfer.files.length) onFiles(e.dataTransfer.files);
  });
}

// A file dropped beside a zone must not make the browser leave the page to show it.
window.addEventListener('dragover', (e) => e.preventDefault());
window.addEventListener('drop', (e) => e.preventDefault());

dropZone($('model-drop'), (files) => loadModelFile(files[0]));
dropZone($('image-drop'), (files) => classifyImages(imageItems(files)));
$('model-file').addEventListener('change', (e) => { if (e.target.files[0]) loadModelFile(e.target.files[0]); e.target.value = ''; });
$('image-files').addEventListener('change', (e) => { classifyImages(imageItems(e.target.files)); e.target.value = ''; });
$('model-url-form').addEventListener('submit', (e) => { e.preventDefault(); loadModelUrl($('model-url').value.trim()); });
$('camera-start').addEventListener('click', startCamera);
$('camera-stop').addEventListener('click', stopCamera);
$('camera-capture').addEventListener('click', captureFrame);
$('clear').addEventListener('click', () => {
  for (const card of $('results').children) if (card.dataset.objectUrl) URL.revokeObjectURL(card.dataset.objectUrl);
  $('results').replaceChildren();
  $('clear').hidden = true;
});

function formatBytes(n) {
  return n >= 1e6 ? `${(n / 1e6).toFixed(1)} MB` : n >= 1e3 ? `${(n / 1e3).toFixed(0)} kB` : `${n} bytes`;
}

// For tools/web_harness.py (and the console): a model and images by URL, through the same steps
// as a user's files.
window.densenetPage = {
  loadModelUrl,
  async classifyUrls(urls, options) {
    const items = await Promise.all(urls.map(async (url) => {
      const response = await fetch(url);
      if (!response.ok) throw new Error(`Could not fetch ${url}: HTTP ${response.status}`);
      return { name: decodeURIComponent(url.split('/').pop()), blob: await response.blob() };
    }));
    return classifyImages(items, options);
  },
};
