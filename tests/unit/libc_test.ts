/**
 * The libc bindings' per-call path: after the first use every symbol is a plain function property
 * (no Proxy trap or getter per call), and errno reads the thread's cell.
 */
import { assert, assertEquals } from "../helpers/assert.ts";
import { errno, libc } from "../../ffi/libc.ts";

Deno.test("libc: symbols become plain function properties after the first use", () => {
  assertEquals(typeof libc.getpid(), "number");
  for (const name of ["read", "write", "poll", "sendmmsg", "recvmmsg"]) {
    const d = Object.getOwnPropertyDescriptor(libc, name);
    assert(
      d !== undefined && d.get === undefined && typeof d.value === "function",
      `${name} is a data property`,
    );
  }
  assertEquals(Object.keys(libc).includes("sendmmsg"), true, "enumerable as before");
});

Deno.test("libc: errno reports each failed call's error", () => {
  const buf = new Uint8Array(8);
  assert(libc.read(-1, buf, 8n) < 0);
  assertEquals(errno(), 9, "EBADF");
  const fds = new Int32Array(2);
  const pipe = Deno.dlopen("libc.so.6", { pipe2: { parameters: ["buffer", "i32"], result: "i32" } });
  try {
    assertEquals(pipe.symbols.pipe2(new Uint8Array(fds.buffer), 0o4000), 0); // O_NONBLOCK
    assert(libc.read(fds[0], buf, 8n) < 0);
    assertEquals(errno(), 11, "EAGAIN: the same cell, read again");
  } finally {
    libc.close(fds[0]);
    libc.close(fds[1]);
    pipe.close();
  }
});
