/**
 * QEMU's option strings (`-o`, `--object`, `--image-opts`): parts separated
 * by commas, `,,` standing for a comma inside a part.
 *
 * Source: QEMU `qemu_opts_parse` (util/qemu-option.c).
 *
 * @module
 */

/**
 * Splits a QEMU option string at its commas, as QEMU's option parser
 * (`QemuOpts`) does: `,,` is a comma inside a part.
 *
 * @param text The option string.
 * @returns Its parts, in order (empty ones kept).
 */
export function splitOptionList(text: string): string[] {
  const parts: string[] = [];
  let current = "";
  for (let i = 0; i < text.length; i++) {
    if (text[i] === ",") {
      if (text[i + 1] === ",") {
        current += ",";
        i++;
        continue;
      }
      parts.push(current);
      current = "";
    } else current += text[i];
  }
  parts.push(current);
  return parts;
}
