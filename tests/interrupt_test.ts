/**
 * Ctrl-C (issue 17, item 4): a real SIGINT to a converting child process
 * makes it exit 130 by itself (not killed by the signal), silently, with
 * what it wrote removed: the temporary file beside DST, DST written in
 * place, and standard output.
 *
 * The source is a 2 GiB sparse image converted with `-S 0`, so the child
 * writes zeros for long enough to be interrupted; it is interrupted once
 * 1 MiB is out.
 */
import { assert, assertEquals } from "@std/assert";
import { convert } from "@qcow2/qcow2";
import { hasQemu, run, tempDir } from "./_reference.ts";

const CLI = new URL("../cli.ts", import.meta.url).pathname;

/** Spawns `qcow2 ARGS` with `flags`. */
function spawn(flags: string[], args: string[]) {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "--no-prompt", ...flags, CLI, ...args],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
}

/** Resolves once `path()` names a file of at least `bytes`. */
async function grown(path: () => Promise<string | undefined>, bytes: number) {
  for (let i = 0; i < 3000; i++) {
    const p = await path();
    const size = p ? (await Deno.stat(p).catch(() => undefined))?.size : 0;
    if (size !== undefined && size >= bytes) return;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  throw new Error("the conversion never got going");
}

/**
 * Sends SIGINT and waits for the child; checks it exited 130 by itself,
 * silently (standard output is checked empty unless the caller reads it),
 * and, when `output` names what it writes, that it stopped soon: the output
 * grows by less than 512 MiB after the signal (2 GiB if it ran to the end).
 */
async function interrupted(
  child: Deno.ChildProcess,
  readsStdout = false,
  output?: () => Promise<string | undefined>,
) {
  child.kill("SIGINT");
  let exited = false;
  let largest = 0;
  const watch = (async () => {
    while (!exited && output) {
      const path = await output();
      const size = path
        ? (await Deno.stat(path).catch(() => undefined))?.size ?? 0
        : 0;
      largest = Math.max(largest, size);
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  })();
  const [status, out, err] = await Promise.all([
    child.status.finally(() => exited = true),
    readsStdout ? undefined : new Response(child.stdout).bytes(),
    new Response(child.stderr).text(),
  ]);
  await watch;
  assertEquals(status.signal, null, "it should exit by itself");
  assertEquals(status.code, 130, err);
  assertEquals(err, "");
  if (out) assertEquals(out.length, 0);
  assert(largest < 512 << 20, `${largest} bytes written: it did not stop`);
}

async function withImage(fn: (dir: string, src: string) => Promise<void>) {
  const dir = await tempDir();
  try {
    const src = `${dir}/big.qcow2`;
    await run("qemu-img", ["create", "-q", "-f", "qcow2", src, "2G"]);
    await fn(dir, src);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const needs = { ignore: !hasQemu };

Deno.test({
  name:
    "SIGINT: convert to a temporary file beside DST exits 130, DST as it was",
  ...needs,
  fn: () =>
    withImage(async (dir, src) => {
      const out = `${dir}/out`;
      await Deno.mkdir(out);
      const dst = `${out}/disk.raw`;
      await Deno.writeTextFile(dst, "precious");
      const child = spawn(
        [`--allow-read=${src},${out}`, `--allow-write=${out}`],
        ["convert", "-S", "0", src, dst],
      );
      const partial = async () => {
        for await (const e of Deno.readDir(out)) {
          if (e.name.endsWith(".partial")) return `${out}/${e.name}`;
        }
      };
      await grown(partial, 1 << 20);
      await interrupted(child, false, partial);
      assertEquals(await partial(), undefined, "the temporary file is removed");
      assertEquals(await Deno.readTextFile(dst), "precious");
    }),
});

Deno.test({
  name:
    "SIGINT: convert in place (write access to DST only) exits 130, DST removed",
  ...needs,
  fn: () =>
    withImage(async (dir, src) => {
      const dst = `${dir}/disk.raw`;
      const child = spawn(
        [`--allow-read=${src}`, `--allow-write=${dst}`],
        ["convert", "-S", "0", src, dst],
      );
      await grown(() => Promise.resolve(dst), 1 << 20);
      await interrupted(child, false, () => Promise.resolve(dst));
      assertEquals(await Deno.stat(dst).catch(() => undefined), undefined);
    }),
});

Deno.test({
  name: "SIGINT: convert to standard output exits 130",
  ...needs,
  fn: () =>
    withImage(async (_dir, src) => {
      const child = spawn([`--allow-read=${src}`], ["convert", src, "-"]);
      const reader = child.stdout.getReader();
      let got = 0;
      while (got < 1 << 20) {
        const { value, done } = await reader.read();
        assert(!done, "the conversion ended too soon");
        got += value!.length;
      }
      // Keep reading (a blocked write could not see the signal) to the end.
      const drained = (async () => {
        while (!(await reader.read()).done) { /* discard */ }
      })();
      await interrupted(child, true);
      await drained;
    }),
});

Deno.test({
  name: "abort: a stream stops getting the zeros of a long hole",
  ...needs,
  fn: () =>
    withImage(async (_dir, src) => {
      const controller = new AbortController();
      const reason = new Error("stop");
      let written = 0;
      const stream = new WritableStream<Uint8Array>({
        write(chunk) {
          written += chunk.length;
          if (written >= 4 << 20) controller.abort(reason);
        },
      });
      const error = await convert(src, stream, { signal: controller.signal })
        .catch((e) => e);
      assertEquals(error, reason);
      assert(written < 8 << 20, `${written} bytes written after the abort`);
    }),
});

// The writer: create with preallocation, and convert -O qcow2.

Deno.test({
  name: "SIGINT: create -o preallocation=full exits 130, the new image removed",
  ...needs,
  fn: async () => {
    const dir = await tempDir();
    try {
      const dst = `${dir}/new.qcow2`;
      const child = spawn(
        [`--allow-read=${dir}`, `--allow-write=${dir}`],
        ["create", "-q", "-f", "qcow2", "-o", "preallocation=full", dst, "2G"],
      );
      const partial = async () => {
        for await (const e of Deno.readDir(dir)) {
          if (e.name.endsWith(".partial")) return `${dir}/${e.name}`;
        }
      };
      await grown(partial, 1 << 20);
      await interrupted(child, false, partial);
      const left: string[] = [];
      for await (const e of Deno.readDir(dir)) left.push(e.name);
      assertEquals(left, []);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "SIGINT: convert -O qcow2 to a temporary file exits 130, DST as it was",
  ...needs,
  fn: () =>
    withImage(async (dir, src) => {
      const out = `${dir}/out`;
      await Deno.mkdir(out);
      const dst = `${out}/disk.qcow2`;
      await Deno.writeTextFile(dst, "precious");
      const child = spawn(
        [`--allow-read=${src},${out}`, `--allow-write=${out}`],
        ["convert", "-O", "qcow2", "-S", "0", src, dst],
      );
      const partial = async () => {
        for await (const e of Deno.readDir(out)) {
          if (e.name.endsWith(".partial")) return `${out}/${e.name}`;
        }
      };
      await grown(partial, 1 << 20);
      await interrupted(child, false, partial);
      assertEquals(await partial(), undefined, "the temporary file is removed");
      assertEquals(await Deno.readTextFile(dst), "precious");
    }),
});

Deno.test({
  name: "SIGINT: convert -O qcow2 to standard output exits 130",
  ...needs,
  fn: () =>
    withImage(async (_dir, src) => {
      const child = spawn([`--allow-read=${src}`], [
        "convert",
        "-O",
        "qcow2",
        "-S",
        "0",
        src,
        "-",
      ]);
      const reader = child.stdout.getReader();
      let got = 0;
      while (got < 1 << 20) {
        const { value, done } = await reader.read();
        assert(!done, "the conversion ended too soon");
        got += value!.length;
      }
      const drained = (async () => {
        while (!(await reader.read()).done) { /* discard */ }
      })();
      await interrupted(child, true);
      await drained;
    }),
});

Deno.test({
  name:
    "SIGTERM and SIGHUP: convert -O qcow2 exits 128 + the signal by itself, no temporary file left, DST as it was",
  ...needs,
  fn: () =>
    withImage(async (dir, src) => {
      const out = `${dir}/out`;
      await Deno.mkdir(out);
      const dst = `${out}/disk.qcow2`;
      await Deno.writeTextFile(dst, "precious");
      const partial = async () => {
        for await (const e of Deno.readDir(out)) {
          if (e.name.endsWith(".partial")) return `${out}/${e.name}`;
        }
      };
      for (
        const [signal, status] of [["SIGTERM", 143], ["SIGHUP", 129]] as const
      ) {
        const child = spawn(
          [`--allow-read=${src},${out}`, `--allow-write=${out}`],
          ["convert", "-O", "qcow2", "-S", "0", src, dst],
        );
        await grown(partial, 1 << 20);
        child.kill(signal);
        const [code, err] = await Promise.all([
          child.status,
          new Response(child.stderr).text(),
          new Response(child.stdout).bytes(),
        ]);
        assertEquals(code.signal, null, `${signal}: it should exit by itself`);
        assertEquals(code.code, status, err);
        assertEquals(err, "");
        assertEquals(
          await partial(),
          undefined,
          "the temporary file is removed",
        );
        assertEquals(await Deno.readTextFile(dst), "precious");
      }
    }),
});
