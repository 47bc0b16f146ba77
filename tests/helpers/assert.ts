/**
 * Assertions for tests, in the shape of Deno std's (which is not reachable here), built on node:assert.
 */
import nodeAssert from "node:assert";

/** Throws unless `cond` is truthy. */
export function assert(cond: unknown, msg?: string): asserts cond {
  nodeAssert.ok(cond, msg as string);
}

/** Deep strict equality. */
export function assertEquals<T>(actual: T, expected: T, msg?: string): void {
  nodeAssert.deepStrictEqual(actual, expected, msg as string);
}

/** Deep strict inequality. */
export function assertNotEquals<T>(actual: T, expected: T, msg?: string): void {
  nodeAssert.notDeepStrictEqual(actual, expected, msg as string);
}

/** Asserts `text` matches `re`. */
export function assertMatch(text: string, re: RegExp, msg?: string): void {
  nodeAssert.match(text, re, msg as string);
}

// deno-lint-ignore no-explicit-any
type ErrorClass = new (...args: any[]) => Error;

/** Asserts `fn` throws (optionally an instance of `cls` whose message includes `includes`); returns the error. */
export function assertThrows(fn: () => unknown, cls?: ErrorClass, includes?: string): Error {
  try {
    fn();
  } catch (e) {
    checkError(e, cls, includes);
    return e as Error;
  }
  throw new nodeAssert.AssertionError({ message: "expected function to throw" });
}

/** Async variant of assertThrows. */
export async function assertRejects(
  fn: () => Promise<unknown>,
  cls?: ErrorClass,
  includes?: string,
): Promise<Error> {
  try {
    await fn();
  } catch (e) {
    checkError(e, cls, includes);
    return e as Error;
  }
  throw new nodeAssert.AssertionError({ message: "expected promise to reject" });
}

function checkError(e: unknown, cls?: ErrorClass, includes?: string): void {
  if (cls && !(e instanceof cls)) {
    throw new nodeAssert.AssertionError({ message: `expected ${cls.name}, got ${String(e)}` });
  }
  if (includes !== undefined && !(e instanceof Error && e.message.includes(includes))) {
    throw new nodeAssert.AssertionError({
      message: `expected error message to include "${includes}", got "${e instanceof Error ? e.message : e}"`,
    });
  }
}
