/** Which running TUN flows move onto the kernel path (src/kfast/move.ts). */
import { assertEquals } from "../helpers/assert.ts";
import { pinKey, selectMoves, type TunFlow } from "../../src/kfast/move.ts";
import { parseIPv4 } from "../../src/addr/mod.ts";

const SVC = parseIPv4("10.30.0.1");
const A = parseIPv4("10.18.0.66");
const B = parseIPv4("10.18.0.67");
const services = new Map([[SVC, [A, B]]]);
const flow = (over: Partial<TunFlow> = {}): TunFlow => ({
  version: 4,
  proto: 6,
  src: "10.18.0.2",
  sport: 40000,
  dialled: "10.30.0.1",
  dport: 80,
  chosen: "10.18.0.66",
  packets: 10,
  ...over,
});

Deno.test("kfast move: an active flow of a kernel-carried service moves on the second look", () => {
  const first = selectMoves([flow()], services, new Map(), new Set());
  assertEquals(first.moves, []);
  const second = selectMoves([flow({ packets: 11 })], services, first.seen, new Set());
  assertEquals(second.moves, [{
    proto: 6,
    src: parseIPv4("10.18.0.2"),
    sport: 40000,
    dst: SVC,
    dport: 80,
    chosen: A,
  }]);
  assertEquals(pinKey(second.moves[0]), "6 . 10.18.0.2 . 40000 . 10.30.0.1 . 80");
});

Deno.test("kfast move: idle, pinned, foreign and unsupported flows stay", () => {
  const seen = selectMoves(
    [
      flow(),
      flow({ sport: 1 }),
      flow({ sport: 2, dialled: "10.30.0.9" }),
      flow({ sport: 3, chosen: "10.18.0.99" }),
    ],
    services,
    new Map(),
    new Set(),
  ).seen;
  assertEquals(seen.size, 2, "only flows to kernel candidates are followed");
  const pinned = new Set([pinKey({ proto: 6, src: parseIPv4("10.18.0.2"), sport: 1, dst: SVC, dport: 80 })]);
  const r = selectMoves(
    [
      flow(), // idle: same count
      flow({ sport: 1, packets: 50 }), // already pinned
      flow({ sport: 2, dialled: "10.30.0.9", packets: 50 }), // service not kernel-carried
      flow({ sport: 3, chosen: "10.18.0.99", packets: 50 }), // instance not a kernel candidate
      flow({ sport: 4, proto: 1, packets: 50 }), // ICMP
      flow({ sport: 5, version: 6, packets: 50 }), // IPv6
    ],
    services,
    seen,
    pinned,
  );
  assertEquals(r.moves, []);
  // UDP moves too.
  const u = selectMoves(
    [flow({ proto: 17, packets: 3 })],
    services,
    new Map([["17 . 10.18.0.2 . 40000 . 10.30.0.1 . 80", 1]]),
    new Set(),
  );
  assertEquals(u.moves.length, 1);
});
