/**
 * The ext4 input of issue 4's bench, shared by the bench scripts: a file
 * system image of files copied from /usr, made with `mkfs.ext4 -d`.
 *
 * @module
 */

const MiB = 1024 * 1024;

/**
 * Makes an ext4 image of `size` bytes holding up to `limit` bytes of files
 * copied from /usr (in sorted order, files of at most 16 MiB), with
 * `mkfs.ext4 -d`, staging the files under `dir`. Returns what was copied.
 */
export async function makeExt4(
  dir: string,
  path: string,
  size: number,
  limit: number,
): Promise<{ files: number; bytes: number }> {
  const stage = `${dir}/stage`;
  let bytes = 0;
  let files = 0;
  const walk = async (from: string): Promise<void> => {
    const entries: Deno.DirEntry[] = [];
    try {
      for await (const e of Deno.readDir(from)) entries.push(e);
    } catch {
      return; // unreadable directory
    }
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const e of entries) {
      if (bytes >= limit) return;
      const src = `${from}/${e.name}`;
      if (e.isDirectory) await walk(src);
      else if (e.isFile) {
        const { size } = await Deno.stat(src);
        if (size > 16 * MiB || bytes + size > limit) continue;
        const dst = `${stage}${src}`;
        await Deno.mkdir(dst.slice(0, dst.lastIndexOf("/")), {
          recursive: true,
        });
        try {
          await Deno.copyFile(src, dst);
        } catch {
          continue; // unreadable file
        }
        bytes += size;
        files++;
      }
    }
  };
  for (const root of ["/usr/share", "/usr/lib", "/usr/bin"]) await walk(root);
  const { success, stderr } = await new Deno.Command("mkfs.ext4", {
    args: ["-q", "-F", "-b", "4096", "-d", stage, path, `${size / 1024}k`],
    stdout: "null",
    stderr: "piped",
  }).output();
  await Deno.remove(stage, { recursive: true });
  if (!success) {
    throw new Error(`mkfs.ext4 failed: ${new TextDecoder().decode(stderr)}`);
  }
  return { files, bytes };
}
