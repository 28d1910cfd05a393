/**
 * One side of bench/write_compare.ts: opens IMAGE read-write and writes
 * COUNT buffers of SIZE bytes filled with 0xa5, at STEP bytes apart, keeping
 * DEPTH writes in flight, as `qemu-img bench -w -c COUNT -s SIZE -S STEP -d
 * DEPTH --pattern=0xa5` does; then flushes and closes.
 *
 * Usage: deno run -A bench/write_child.ts IMAGE COUNT SIZE STEP DEPTH
 */
import { openImage } from "../mod.ts";

const [path, count, size, step, depth] = Deno.args.map((a, i) =>
  i === 0 ? a : Number(a)
) as [string, number, number, number, number];
const image = await openImage(path, { writable: true });
const buffer = new Uint8Array(size).fill(0xa5);
let next = 0;
let offset = 0;
const worker = async () => {
  while (next < count) {
    next++;
    const at = offset;
    offset += step;
    if (offset + size > image.size) offset = 0;
    await image.write(at, buffer);
  }
};
await Promise.all(Array.from({ length: depth }, worker));
await image.flush();
await image.close();
