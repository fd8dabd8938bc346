// eciesjs 0.4 wraps its result in Node's `Buffer.from(uint8array)` (a copy).
// Browsers have no Buffer; build.sh injects this stand-in for that one use.
export const Buffer = { from: (bytes) => Uint8Array.from(bytes) };
