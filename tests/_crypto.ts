/**
 * The encrypted fixtures (tests/fixtures/crypto/*.gz, made by
 * make_fixtures.sh), unpacked once per test process into a temp dir, and
 * what qemu-img decrypts them to.
 */

export const PASSWORD = "fixture-password";
const DIR = new URL("./fixtures/crypto/", import.meta.url);

/** Every fixture: its name (without .gz) and password. */
export const CRYPTO_FIXTURES: { name: string; password: string }[] = [];
for await (const entry of Deno.readDir(DIR)) {
  if (!entry.name.endsWith(".gz")) continue;
  const name = entry.name.slice(0, -3);
  CRYPTO_FIXTURES.push({
    name,
    password: name === "luks_aes128_xts_sha1.qcow2" ? "pässwörd ✓" : PASSWORD,
  });
}
CRYPTO_FIXTURES.sort((a, b) => a.name < b.name ? -1 : 1);

let unpacked: Promise<string> | undefined;

/** The directory the fixtures are unpacked in (removed at exit). */
export function cryptoDir(): Promise<string> {
  return unpacked ??= (async () => {
    const dir = await Deno.makeTempDir({ prefix: "qcow2-crypto-" });
    globalThis.addEventListener("unload", () => {
      try {
        Deno.removeSync(dir, { recursive: true });
      } catch { /* gone */ }
    });
    for (const { name } of CRYPTO_FIXTURES) {
      const file = await Deno.open(new URL(`${name}.gz`, DIR));
      const bytes = new Uint8Array(
        await new Response(
          file.readable.pipeThrough(new DecompressionStream("gzip")),
        ).arrayBuffer(),
      );
      await Deno.writeFile(`${dir}/${name}`, bytes);
    }
    return dir;
  })();
}

/** The unpacked path of a fixture. */
export async function cryptoFixture(name: string): Promise<string> {
  return `${await cryptoDir()}/${name}`;
}

/** What `qemu-img convert` decrypts an image to, with `password`. */
export async function qemuDecrypt(
  path: string,
  password: string,
): Promise<Uint8Array> {
  const out = `${path}.qemu.raw`;
  const driver = path.endsWith(".qcow") ? "qcow" : "qcow2";
  const { success, stderr } = await new Deno.Command("qemu-img", {
    args: [
      "convert",
      "--object",
      `secret,id=s,data=${password}`,
      "--image-opts",
      `driver=${driver},file.filename=${path},encrypt.key-secret=s`,
      "-O",
      "raw",
      out,
    ],
  }).output();
  if (!success) {
    throw new Error(
      `qemu-img convert failed: ${new TextDecoder().decode(stderr)}`,
    );
  }
  const bytes = await Deno.readFile(out);
  await Deno.remove(out);
  return bytes;
}
