/**
 * One command per output folder. Two commands writing one `--out` at once
 * would overwrite each other's checkpoints and logs: every write is atomic,
 * so no file is torn, but the folder would hold a mix of two runs.
 * {@linkcode claimOutFolder} puts a lock file holding the owner's pid into
 * the folder; a second command is refused with one line, and a lock whose
 * process is gone (a crash, a kill) is taken over with a warning.
 *
 * @example
 * ```ts
 * import { claimOutFolder } from "./out_lock.ts";
 * const out = await Deno.makeTempDir();
 * const release = await claimOutFolder(out, { lock: "train.lock", what: "training run" });
 * await release();
 * ```
 * @module
 */
import process from "node:process";

/** What {@linkcode claimOutFolder} names in its lock file and its error. */
export interface OutLock {
  /** The lock file's name inside the folder. */
  lock: string;
  /** What holds the folder, for the error ("training run", "trends command"). */
  what: string;
}

/**
 * Claim `out` (created if missing) for this process: write `out/<lock>`
 * holding this pid, or fail with a one-line error naming the folder, the
 * owner's pid and the lock when a live process holds it. A lock left by a
 * process that is gone is taken over with a warning. Returns the release,
 * which removes the lock.
 *
 * @example
 * ```ts
 * import { claimOutFolder } from "./out_lock.ts";
 * const out = await Deno.makeTempDir();
 * const spec = { lock: "demo.lock", what: "demo" };
 * const release = await claimOutFolder(out, spec);
 * await claimOutFolder(out, spec).catch((e) => console.log(e.message)); // names the folder and this pid
 * await release();
 * ```
 */
export async function claimOutFolder(out: string, spec: OutLock): Promise<() => Promise<void>> {
  await Deno.mkdir(out, { recursive: true });
  const path = `${out}/${spec.lock}`;
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      await Deno.writeTextFile(path, `${Deno.pid}\n`, { createNew: true });
      return async () => {
        await Deno.remove(path).catch(() => {});
      };
    } catch (e) {
      if (!(e instanceof Deno.errors.AlreadyExists)) throw e;
    }
    const pid = Number((await Deno.readTextFile(path).catch(() => "")).trim());
    if (Number.isInteger(pid) && pid > 0 && processAlive(pid)) {
      throw new Error(
        `--out: ${out} is in use by another ${spec.what} (pid ${pid}, ${path}); wait for it, ` +
          `or give another --out`,
      );
    }
    console.error(`warning: ${path}: left by pid ${pid || "?"}, which is gone; taking it over`);
    await Deno.remove(path).catch(() => {});
  }
  throw new Error(`--out: could not claim ${path}`);
}

/** Whether a process with this pid exists (signal 0 checks without sending anything). */
function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    // EPERM: it exists but belongs to another user.
    return (e as { code?: string }).code === "EPERM";
  }
}
