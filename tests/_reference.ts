/**
 * The reference tools and the committed fixtures: what qemu-img says about
 * each fixture, live when qemu-img is installed, else from the digests and
 * info committed in `fixtures/expected.json`.
 */

export const FIXTURES = new URL("./fixtures/", import.meta.url);

export interface Expected {
  sha256: string;
  virtualSize: number;
  info: Record<string, unknown>;
}

export const expected: Record<string, Expected> = JSON.parse(
  await Deno.readTextFile(new URL("expected.json", FIXTURES)),
);

export function fixture(name: string): string {
  return new URL(name, FIXTURES).pathname;
}

/** Whether qemu-img and qemu-io are on the PATH. */
export const hasQemu: boolean = await (async () => {
  try {
    const { success } = await new Deno.Command("qemu-img", {
      args: ["--version"],
      stdout: "null",
      stderr: "null",
    }).output();
    return success;
  } catch {
    return false;
  }
})();

/** Runs a command, failing with its stderr if it fails. */
export async function run(
  cmd: string,
  args: string[],
  cwd?: string,
): Promise<string> {
  const { success, stdout, stderr } = await new Deno.Command(cmd, { args, cwd })
    .output();
  const err = new TextDecoder().decode(stderr);
  if (!success) throw new Error(`${cmd} ${args.join(" ")} failed: ${err}`);
  return new TextDecoder().decode(stdout);
}

/** SHA-256 of a file, streamed in 4 MiB pieces (hex). */
export async function sha256File(path: string): Promise<string> {
  // Files here are small enough to hash whole; the output of a multi-TiB
  // sparse fixture is not read, see sparseDigest.
  const bytes = await Deno.readFile(path);
  return hex(await crypto.subtle.digest("SHA-256", bytes));
}

export function hex(buffer: ArrayBuffer): string {
  return Array.from(
    new Uint8Array(buffer),
    (b) => b.toString(16).padStart(2, "0"),
  ).join("");
}

export async function tempDir(): Promise<string> {
  return await Deno.makeTempDir({ prefix: "qcow2-test-" });
}

const CLI = new URL("../cli.ts", import.meta.url).pathname;

/** Runs the CLI as users do: `deno run --no-prompt FLAGS cli.ts ARGS`. */
export async function cli(flags: string[], args: string[]) {
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--no-prompt", ...flags, CLI, ...args],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  return {
    code,
    stdout: new TextDecoder().decode(stdout),
    stderr: new TextDecoder().decode(stderr),
    bytes: stdout,
  };
}

/**
 * SHA-256 (hex) of the images `qemu-img create -f qcow2` 7.2 makes, by
 * `-o` text and size ("OPTIONS SIZE"): tests/fixtures/create_digests.json,
 * made by make_create_digests.sh.
 */
export async function createDigests(): Promise<Record<string, string>> {
  return JSON.parse(
    await Deno.readTextFile(
      new URL("./fixtures/create_digests.json", import.meta.url),
    ),
  );
}

/**
 * Runs `convert -O qcow2 ARGS SRC` twice, to `dst` and to standard output,
 * and returns the bytes of each; throws if either fails.
 */
export async function convertToFileAndStream(
  flags: string[],
  args: string[],
  src: string,
  dst: string,
): Promise<{ file: Uint8Array; stream: Uint8Array }> {
  const convert = ["convert", "-O", "qcow2", ...args, src];
  const file = await cli(flags, [...convert, dst]);
  if (file.code !== 0) throw new Error(`to ${dst}: ${file.stderr}`);
  const stream = await cli(flags, [...convert, "-"]);
  if (stream.code !== 0) throw new Error(`to a stream: ${stream.stderr}`);
  return { file: await Deno.readFile(dst), stream: stream.bytes };
}
