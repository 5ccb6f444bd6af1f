// Runs a WebAssembly (WASI preview 1) program under Node's WASI: the runner of the
// wasm32-wasip1 target (.cargo/config.toml), so that `cargo test --target wasm32-wasip1` runs the
// fast path's kernel and parity tests in V8, the browser's engine (`make test-wasm`). The whole
// file system is visible under its own paths (the tests name their fixtures by absolute path).
import { readFile } from 'node:fs/promises';
import { WASI } from 'node:wasi';

const [program, ...args] = process.argv.slice(2);
const wasi = new WASI({
  version: 'preview1',
  args: [program, ...args],
  env: process.env,
  preopens: { '/': '/' },
  returnOnExit: true,
});
const module = await WebAssembly.compile(await readFile(program));
const instance = await WebAssembly.instantiate(module, wasi.getImportObject());
process.exitCode = wasi.start(instance);
