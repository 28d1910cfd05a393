/**
 * The CLI with http:// sources, against a local server started here on
 * 127.0.0.1: info, convert, map and check give what qemu-img 7.2 gives
 * through its curl driver on the same URL; a backing chain resolves against
 * the image's URL; permissions and server errors are one line.
 */
import { assert, assertEquals, assertStringIncludes } from "@std/assert";
import { startServer, type TestServer } from "./_http_server.ts";
import {
  cli,
  expected,
  fixture,
  hasQemu,
  run,
  sha256File,
  tempDir,
} from "./_reference.ts";

const files: Record<string, Uint8Array> = {
  "zlib.qcow2": await Deno.readFile(fixture("zlib.qcow2")),
  "zstd.qcow2": await Deno.readFile(fixture("zstd.qcow2")),
};
for (const n of ["chain_top.qcow2", "chain_mid.qcow2", "chain_base.qcow2"]) {
  files[`vm/${n}`] = await Deno.readFile(fixture(`layouts/${n}`));
}
const chainSha = JSON.parse(
  await Deno.readTextFile(fixture("layouts/expected.json")),
)["chain_top.qcow2"].sha256;

/** Runs `fn` with a server of the fixtures and `--allow-net` for it. */
async function withServer(
  fn: (server: TestServer, net: string[]) => Promise<void>,
) {
  const server = startServer(files);
  try {
    await fn(server, [`--allow-net=${new URL(server.origin).host}`]);
  } finally {
    await server.close();
  }
}

Deno.test({
  name: "http cli: info, map and check of a URL are qemu-img's",
  ignore: !hasQemu,
  fn: () =>
    withServer(async (server, net) => {
      for (
        const [name, args] of [
          ["zlib.qcow2", ["info"]],
          ["vm/chain_top.qcow2", ["info", "--backing-chain"]],
          ["zstd.qcow2", ["map", "--output=json"]],
          ["vm/chain_top.qcow2", ["map", "--output=json"]],
          ["vm/chain_top.qcow2", ["map"]],
          ["zlib.qcow2", ["check"]],
          ["vm/chain_top.qcow2", ["measure", "-O", "qcow2"]],
          ["zstd.qcow2", ["measure", "-O", "qcow2", "--output=json"]],
        ] as const
      ) {
        const url = server.url(name);
        const ours = await cli(net, [...args, url]);
        const theirs = await new Deno.Command("qemu-img", {
          args: [...args, url],
          stdout: "piped",
          stderr: "piped",
        }).output();
        const what = `${args.join(" ")} ${name}`;
        assertEquals(ours.code, theirs.code, `${what}: ${ours.stderr}`);
        assertEquals(
          ours.stdout,
          new TextDecoder().decode(theirs.stdout),
          what,
        );
      }
      // compare: a URL against a URL and against a local file.
      for (
        const pair of [
          [server.url("zlib.qcow2"), server.url("zlib.qcow2")],
          [server.url("zlib.qcow2"), fixture("zstd.qcow2")],
          [
            server.url("vm/chain_top.qcow2"),
            fixture("layouts/chain_top.qcow2"),
          ],
        ]
      ) {
        const ours = await cli([...net, "--allow-read"], ["compare", ...pair]);
        const theirs = await new Deno.Command("qemu-img", {
          args: ["compare", ...pair],
          stdout: "piped",
          stderr: "piped",
        }).output();
        assertEquals(ours.code, theirs.code, `${pair}: ${ours.stderr}`);
        assertEquals(ours.stdout, new TextDecoder().decode(theirs.stdout));
      }
      // JSON: no actual-size for a remote file, as in qemu-img.
      const r = await cli(net, [
        "info",
        "--output=json",
        server.url("zlib.qcow2"),
      ]);
      const info = JSON.parse(r.stdout);
      assertEquals(info.filename, server.url("zlib.qcow2"));
      assertEquals(info["virtual-size"], expected["zlib.qcow2"].virtualSize);
      assert(!("actual-size" in info), r.stdout);
    }),
});

Deno.test("http cli: convert a URL (and its backing chain) to raw", () =>
  withServer(async (server, net) => {
    const dir = await tempDir();
    try {
      for (
        const [name, sha] of [
          ["zlib.qcow2", expected["zlib.qcow2"].sha256],
          ["zstd.qcow2", expected["zstd.qcow2"].sha256],
          ["vm/chain_top.qcow2", chainSha],
        ]
      ) {
        const out = `${dir}/out.raw`;
        const r = await cli([...net, `--allow-write=${dir}`], [
          "convert",
          "-O",
          "raw",
          server.url(name),
          out,
        ]);
        assertEquals(r.code, 0, r.stderr);
        assertEquals(await sha256File(out), sha, name);
      }
      // The top layer's names were fetched from the same directory.
      assert(server.ranges.some((r) => r.name === "vm/chain_base.qcow2"));
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  }));

Deno.test("http cli: permissions and server errors are one line", () =>
  withServer(async (server, net) => {
    const host = new URL(server.origin).host;
    // No --allow-net: no prompt, the flag named.
    let r = await cli([], ["info", server.url("zlib.qcow2")]);
    assertEquals(r.code, 1);
    assertStringIncludes(r.stderr, `--allow-net=${host}`);
    assertEquals(r.stderr.trim().split("\n").length, 1, r.stderr);
    assertEquals(server.requests, 0);

    r = await cli(net, ["info", server.url("missing.qcow2")]);
    assertEquals(r.code, 1);
    assertEquals(
      r.stderr,
      `qcow2: Cannot read '${
        server.url("missing.qcow2")
      }': the server answered 404 Not Found\n`,
    );

    server.mode.ignoreRange = true;
    r = await cli(net, ["map", server.url("zlib.qcow2")]);
    assertEquals(r.code, 1);
    assertStringIncludes(r.stderr, "ignores Range requests");
    assertEquals(r.stderr.trim().split("\n").length, 1, r.stderr);
  }));

Deno.test("http cli: a remote image's backing file is fetched from its URL, never a local file", () =>
  withServer(async (server, net) => {
    const dir = await tempDir();
    try {
      // An image naming an absolute path, which exists locally.
      const base = `${dir}/base.qcow2`;
      await Deno.copyFile(fixture("layouts/chain_base.qcow2"), base);
      const top = `${dir}/top.qcow2`;
      await run("qemu-img", [
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        base,
        "-F",
        "qcow2",
        top,
      ]);
      files["abs/top.qcow2"] = await Deno.readFile(top);
      const r = await cli([...net, `--allow-read=${dir}`], [
        "info",
        "--backing-chain",
        server.url("abs/top.qcow2"),
      ]);
      // Resolved against the URL: the server has no such file.
      assertEquals(r.code, 1);
      assertStringIncludes(
        r.stderr,
        `'${server.origin}${base}': the server answered 404 Not Found`,
      );
    } finally {
      delete files["abs/top.qcow2"];
      await Deno.remove(dir, { recursive: true });
    }
  }));
