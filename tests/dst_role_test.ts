/**
 * DST is a file the input reads (issue 17, item 3): the refusal names the
 * input and says what DST is to it, and DST is left as it was.
 */
import { assertEquals } from "@std/assert";
import { fixture, sha256File, tempDir } from "./_reference.ts";

Deno.test("cli convert: DST is the input, its backing file, a deeper layer or its data file", async () => {
  const dir = await tempDir();
  try {
    for (
      const name of [
        "chain_top.qcow2",
        "chain_mid.qcow2",
        "chain_base.qcow2",
        "ext_data.qcow2",
        "ext_data.data",
      ]
    ) await Deno.copyFile(fixture(`layouts/${name}`), `${dir}/${name}`);
    const cases: [string, string, string][] = [
      [
        "chain_top.qcow2",
        "chain_mid.qcow2",
        "it is the backing file of the input 'chain_top.qcow2'",
      ],
      [
        "chain_top.qcow2",
        "chain_base.qcow2",
        "it is a file of the backing chain of the input 'chain_top.qcow2' (the backing file of 'chain_mid.qcow2')",
      ],
      [
        "chain_top.qcow2",
        "./chain_top.qcow2",
        "it is the same file as the input 'chain_top.qcow2'",
      ],
      [
        "ext_data.qcow2",
        "ext_data.data",
        "it is the external data file of the input 'ext_data.qcow2'",
      ],
    ];
    for (const [src, dst, says] of cases) {
      const before = await sha256File(`${dir}/${dst}`);
      const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "--no-prompt",
          `--allow-read=${dir}`,
          `--allow-write=${dir}`,
          new URL("../cli.ts", import.meta.url).pathname,
          "convert",
          src,
          dst,
        ],
        cwd: dir,
        stdout: "piped",
        stderr: "piped",
      }).output();
      assertEquals(code, 1);
      assertEquals(stdout.length, 0);
      assertEquals(
        new TextDecoder().decode(stderr),
        `qcow2: refusing to write '${dst}': ${says}\n`,
      );
      assertEquals(await sha256File(`${dir}/${dst}`), before);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
