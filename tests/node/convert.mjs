// Converts a qcow2 image to raw under Node.js with the bundled library, as a
// Node user would, and prints one line of JSON: the SHA-256 of the raw file
// written through FileHandles, the SHA-256 of the same bytes streamed to a
// WritableStream, and the summary; or the error's name, code and message.
//
// Usage: node convert.mjs BUNDLE (handle|path|url|portable) SRC DST
//   handle:   open SRC with node:fs/promises and pass fileHandleSource(handle)
//   path:     pass SRC by path (backing files opened by the library)
//   url:      SRC is an http(s) URL, read with httpSource
//   portable: as handle, with the portable codecs (webCodecs: pako, and
//             zstd in WebAssembly) instead of node:zlib
import { createHash } from "node:crypto";
import { open, readFile } from "node:fs/promises";
import { pathToFileURL } from "node:url";

// An unhandled rejection fails the test, even if the error is caught later.
process.on("unhandledRejection", (reason) => {
  console.log(JSON.stringify({ unhandled: String(reason?.stack ?? reason) }));
  process.exit(70);
});

const [bundle, mode, src, dst] = process.argv.slice(2);
const qcow2 = await import(pathToFileURL(bundle).href);

async function fromHandle(run) {
  const input = await open(src, "r");
  try {
    return await run(await qcow2.fileHandleSource(input));
  } finally {
    await input.close();
  }
}
async function fromUrl(run) {
  const source = await qcow2.httpSource(src);
  try {
    return await run(source);
  } finally {
    source.close();
  }
}
const withInput = mode === "path"
  ? (run) => run(src)
  : mode === "url"
  ? fromUrl
  : fromHandle;
const options = mode === "portable" ? { codecs: qcow2.webCodecs } : {};

try {
  const output = await open(dst, "w");
  let summary;
  try {
    summary = await withInput((input) =>
      qcow2.convert(input, qcow2.fileHandleWriter(output), options)
    );
  } finally {
    await output.close();
  }
  const file = createHash("sha256").update(await readFile(dst)).digest("hex");
  const hash = createHash("sha256");
  await withInput((input) =>
    qcow2.convert(
      input,
      new WritableStream({ write: (chunk) => void hash.update(chunk) }),
      options,
    )
  );
  console.log(JSON.stringify({
    file,
    stream: hash.digest("hex"),
    virtualSize: summary.virtualSize,
    bytesWritten: summary.bytesWritten,
  }));
} catch (e) {
  console.log(JSON.stringify({
    error: {
      qcow2Error: e instanceof qcow2.Qcow2Error,
      name: e?.name,
      code: e?.code,
      message: e?.message,
    },
  }));
  process.exitCode = 1;
}
