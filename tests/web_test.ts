/**
 * The browser entry, web.ts: built on src/ and the codec libraries alone
 * (no node: module), the same names as mod.ts but for the Node-bound ones,
 * and the same results with its portable codecs.
 */
import { assert, assertEquals, assertRejects } from "@std/assert";
import * as web from "../web.ts";
import { expected, fixture, hex } from "./_reference.ts";

const ROOT = new URL("../", import.meta.url);

/** What mod.ts has that a browser cannot: paths and node:zlib. */
// Deno and Node only: node:fs, node:zlib, and workers running node:zlib.
const NODE_ONLY = [
  "CompressSettings",
  "DEFAULT_ZLIB_LEVEL",
  "makeNodeCompressors",
  "nodeCompressors",
  "WorkerCompressors",
  "workerCompressors",
  "WorkerCompressorsOptions",
  "nodeCodecs",
  "nodeCrypto",
  "workerCrypto",
  "WorkerCryptoOptions",
  "openPath",
  "workerCodecs",
  "WorkerCodecs",
  "WorkerCodecsOptions",
];

async function denoJson(args: string[]): Promise<unknown> {
  const { success, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args,
    cwd: ROOT.pathname,
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert(success, new TextDecoder().decode(stderr));
  return JSON.parse(new TextDecoder().decode(stdout));
}

async function exportedNames(entry: string): Promise<string[]> {
  const doc = await denoJson(["doc", "--json", entry]) as {
    nodes: Record<string, { symbols: { name: string }[] }>;
  };
  const node = doc.nodes[new URL(entry, ROOT).href];
  return node.symbols.map((s) => s.name).sort();
}

Deno.test("web.ts exports what mod.ts does, but for the node: parts", async () => {
  const [webNames, modNames] = await Promise.all([
    exportedNames("web.ts"),
    exportedNames("mod.ts"),
  ]);
  assertEquals(
    webNames,
    modNames.filter((name) => !NODE_ONLY.includes(name)),
  );
});

/**
 * The npm packages web.ts may load: the portable codecs' libraries, and
 * @noble/ciphers for the AES block WebCrypto lacks.
 */
const WEB_PACKAGES = [
  "npm:/@hpcc-js/wasm-zstd@1.12.5",
  "npm:/@noble/ciphers@2.4.0/aes.js",
  "npm:/pako@3.0.3",
  "npm:/zstddec@0.3.4",
];

Deno.test("web.ts loads only web.ts, src/ and the codec libraries: no node: or remote module", async () => {
  const info = await denoJson(["info", "--json", "web.ts"]) as {
    modules: { specifier: string }[];
    npmPackages: Record<string, { dependencies: string[] }>;
  };
  const outside = info.modules.map((m) => m.specifier).filter((s) =>
    s !== new URL("web.ts", ROOT).href &&
    !s.startsWith(new URL("src/", ROOT).href)
  );
  assertEquals(outside.sort(), WEB_PACKAGES);
  // Each package stands alone (no dependencies of its own).
  for (const name of WEB_PACKAGES) {
    const pkg = info.npmPackages[
      name.slice("npm:/".length).replace(
        /^(@?[^@/]+(?:\/[^@/]+)?@[^/]+).*$/,
        "$1",
      )
    ];
    assertEquals(pkg.dependencies, [], name);
  }
});

async function rawSha256(
  input: web.ImageInput,
  options: web.OpenOptions = {},
): Promise<string> {
  const chunks: Uint8Array<ArrayBuffer>[] = [];
  await web.convert(
    input,
    new WritableStream<Uint8Array>({
      write: (c) => void chunks.push(c.slice()),
    }),
    options,
  );
  const bytes = await new Blob(chunks).arrayBuffer();
  return hex(await crypto.subtle.digest("SHA-256", bytes));
}

for (const name of ["zlib.qcow2", "sample.qcow2", "v2_64k.qcow2"]) {
  Deno.test(`web convert: ${name} from a Blob matches qemu-img`, async () => {
    const bytes = await Deno.readFile(fixture(name));
    assertEquals(await rawSha256(new Blob([bytes])), expected[name].sha256);
  });
}

Deno.test("web openImage: zstd reads with the portable codecs", async () => {
  const file = new Blob([await Deno.readFile(fixture("zstd.qcow2"))]);
  assertEquals((await web.readHeader(file)).compressionType, "zstd");
  assertEquals(await rawSha256(file), expected["zstd.qcow2"].sha256);
  const error = await assertRejects(
    () => rawSha256(file, { codecs: { zlib: web.webCodecs.zlib } }),
    web.Qcow2Error,
  );
  assertEquals(error.code, "UNSUPPORTED_COMPRESSION");
});

Deno.test("web openImage: backing files come through openFile only", async () => {
  const layouts = new URL("./fixtures/layouts/", import.meta.url);
  const read = async (name: string) =>
    new File([await Deno.readFile(new URL(name, layouts))], name);
  const files = await Promise.all(
    ["chain_top.qcow2", "chain_mid.qcow2", "chain_base.qcow2"].map(read),
  );
  const error = await assertRejects(
    () => web.openImage(files[0]),
    web.Qcow2Error,
  );
  assertEquals(error.code, "BACKING_FILE");
  const { sha256 } = JSON.parse(
    await Deno.readTextFile(new URL("expected.json", layouts)),
  )["chain_top.qcow2"];
  assertEquals(
    await rawSha256(files[0], {
      openFile: (_path, request) => {
        const file = files.find((f) => f.name === request.name);
        if (!file) throw new Error(`no ${request.name}`);
        return Promise.resolve(web.blobSource(file));
      },
    }),
    sha256,
  );
});
