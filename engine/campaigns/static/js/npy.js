// NumPy .npy files (the campaign's embeddings: float16, C order) as float32 arrays.

let halfTable = null;

/** float16 bit pattern -> float32 value, for all 65536 patterns (built once). */
function halfToFloatTable() {
  if (halfTable !== null) return halfTable;
  halfTable = new Float32Array(65536);
  for (let bits = 0; bits < 65536; bits += 1) {
    const sign = bits & 0x8000 ? -1 : 1;
    const exponent = (bits >> 10) & 0x1f;
    const fraction = bits & 0x3ff;
    let value;
    if (exponent === 0) value = fraction * 2 ** -24;
    else if (exponent === 31) value = fraction ? NaN : Infinity;
    else value = (1 + fraction / 1024) * 2 ** (exponent - 15);
    halfTable[bits] = sign * value;
  }
  return halfTable;
}

/** Parse .npy bytes (an ArrayBuffer) -> {shape, data: Float32Array}; float16 or float32,
 * little-endian, C order. Throws on anything else. */
export function parseNpy(buffer) {
  const bytes = new Uint8Array(buffer);
  const magic = String.fromCharCode(...bytes.subarray(1, 6));
  if (bytes[0] !== 0x93 || magic !== "NUMPY") throw new Error("not a .npy file");
  const view = new DataView(buffer);
  const major = bytes[6];
  const headerLength = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const start = major === 1 ? 10 : 12;
  const header = new TextDecoder().decode(bytes.subarray(start, start + headerLength));
  const descr = /'descr':\s*'([^']+)'/.exec(header)?.[1];
  const fortran = /'fortran_order':\s*True/.test(header);
  const shapeText = /'shape':\s*\(([^)]*)\)/.exec(header)?.[1] ?? "";
  const shape = shapeText
    .split(",")
    .filter((s) => s.trim())
    .map((s) => Number(s));
  if (fortran) throw new Error(".npy in Fortran order is not supported");
  const offset = start + headerLength;
  const count = shape.reduce((a, b) => a * b, 1);
  return { shape, data: toFloat32(buffer, offset, count, descr) };
}

function toFloat32(buffer, offset, count, descr) {
  const aligned = (size) => (offset % size === 0 ? buffer : buffer.slice(offset));
  const at = (size) => (offset % size === 0 ? offset : 0);
  if (descr === "<f4") return new Float32Array(aligned(4), at(4), count).slice();
  if (descr !== "<f2") throw new Error(`unsupported .npy dtype ${descr}`);
  const halves = new Uint16Array(aligned(2), at(2), count);
  const table = halfToFloatTable();
  const out = new Float32Array(count);
  for (let i = 0; i < count; i += 1) out[i] = table[halves[i]];
  return out;
}
