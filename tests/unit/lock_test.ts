/**
 * The state-directory lock: a second holder is refused with the first one's pid; release lets the next
 * one in; nothing stale is left to mislead.
 */
import { AlreadyRunningError, LOCK_FILE, StateLock } from "../../src/sys/lock.ts";
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";

Deno.test("lock: the second acquire fails with the holder's pid; release lets the next one in", () => {
  const dir = Deno.makeTempDirSync();
  try {
    const state = `${dir}/state`;
    const first = StateLock.acquire(state);
    assertEquals((Deno.statSync(state).mode ?? 0) & 0o777, 0o700, "the state dir is created 0700");
    assertEquals(Deno.readTextFileSync(`${state}/${LOCK_FILE}`), `${Deno.pid}\n`);
    let refused: unknown;
    try {
      StateLock.acquire(state); // another open file description: flock conflicts even in one process
    } catch (e) {
      refused = e;
    }
    assert(refused instanceof AlreadyRunningError, `refused: ${refused}`);
    assertEquals(refused.pid, Deno.pid);
    assertMatch(refused.message, new RegExp(`already running, pid ${Deno.pid} `));
    first.release();
    first.release(); // idempotent
    assertEquals(Deno.readTextFileSync(`${state}/${LOCK_FILE}`), "", "no stale pid after release");
    const second = StateLock.acquire(state);
    second.release();
    // Released after its file was removed (`netmanager clean`): nothing is recreated.
    const third = StateLock.acquire(state);
    Deno.removeSync(`${state}/${LOCK_FILE}`);
    third.release();
    assertEquals(Deno.statSync(state).isDirectory, true);
    assertEquals([...Deno.readDirSync(state)].length, 0);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});
