// A writable image under Node.js or Bun: applies the operations in OPS (a
// JSON file) to IMAGE, opened by path or through a FileHandle, all started
// at once. Exits 70 on an unhandled rejection.
//
// Usage: node tests/node/write.mjs MOD path|handle IMAGE OPS
import { readFile } from "node:fs/promises";
import { open } from "node:fs/promises";

process.on("unhandledRejection", (e) => {
  console.error("unhandled rejection:", e);
  process.exit(70);
});

const [mod, mode, path, opsFile] = process.argv.slice(2);
const { openImage } = await import(mod);
const ops = JSON.parse(await readFile(opsFile, "utf8"));
const handle = mode === "handle" ? await open(path, "r+") : undefined;
const image = await openImage(handle ?? path, { writable: true });
await Promise.all(ops.map((o) => {
  switch (o.op) {
    case "write":
      return image.write(o.offset, new Uint8Array(o.length).fill(o.pattern));
    case "zero":
      return image.writeZeroes(o.offset, o.length);
    case "discard":
      return image.discard(o.offset, o.length);
    default:
      return image.flush();
  }
}));
const back = new Uint8Array(16);
await image.read(0, back);
await image.close();
await handle?.close();
process.stdout.write(JSON.stringify({ ok: true, first: Array.from(back) }));
