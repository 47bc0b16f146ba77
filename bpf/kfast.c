// Kernel fast path, design (a) of issue 16: tc (tcx) eBPF programs that carry established flows
// between netmanager nodes as Oakestra's raw IP-in-UDP (outer IPv4 + UDP to the peer's tunnel port,
// the inner packet unchanged otherwise: the same bytes as raw mode, so any raw-mode peer decodes it).
//
// nm_kf_out (tcx ingress of the instances' bridge or an instance's host veth): a packet of a flow in
//   `egress` is translated (src → own InstanceIP, dst → the chosen instance's namespace IP),
//   encapsulated with bpf_skb_adjust_room (ENCAP flags: GSO super-packets are segmented later by the
//   kernel) and sent to the underlay with bpf_redirect_neigh (route + neighbour of the outer dst).
// nm_kf_in (tcx ingress of the underlay device): raw IP-in-UDP to our port from a peer in `peers`
//   whose inner flow is in `ingress` is decapsulated, restored (e.g. src → the ServiceIP dialled) and
//   redirected to the local instance's host veth (`locals`), or else through the bridge
//   (bpf_redirect_neigh: its neighbour entry and forwarding database find the instance).
// Both decrement the inner TTL, as the routing hop of the TUN path each replaces does (a packet whose
//   TTL would expire takes that path: the kernel's forwarding answers ICMP time exceeded).
// Anything else continues unchanged (TCX_NEXT): misses, ICMP, fragments, IP options, IPv6 reach the
// TUN path / the userspace tunnel socket as before. Userspace (src/kfast/tc_*.ts) fills the maps.
//
// Build: scripts/build_bpf.sh (clang -O2 -target bpf) → src/kfast/tc_prog.gen.ts (committed).
// The map definitions below are read by that build step (legacy "maps" section layout).
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <linux/tcp.h>
#include <linux/in.h>
#include <stddef.h>

#define SEC(x) __attribute__((section(x), used))
#define INLINE static inline __attribute__((always_inline))

static long (*skb_store_bytes)(void *, __u32, const void *, __u32, __u64) = (void *)BPF_FUNC_skb_store_bytes;
static long (*l3_csum_replace)(void *, __u32, __u64, __u64, __u64) = (void *)BPF_FUNC_l3_csum_replace;
static long (*l4_csum_replace)(void *, __u32, __u64, __u64, __u64) = (void *)BPF_FUNC_l4_csum_replace;
static long (*redirect)(__u32, __u64) = (void *)BPF_FUNC_redirect;
static long (*redirect_neigh)(__u32, void *, int, __u64) = (void *)BPF_FUNC_redirect_neigh;
static long (*adjust_room)(void *, __s32, __u32, __u64) = (void *)BPF_FUNC_skb_adjust_room;
static long (*pull_data)(void *, __u32) = (void *)BPF_FUNC_skb_pull_data;
static void *(*map_lookup)(void *, const void *) = (void *)BPF_FUNC_map_lookup_elem;
static long (*map_update)(void *, const void *, const void *, __u64) = (void *)BPF_FUNC_map_update_elem;

#define BE16(x) __builtin_bswap16(x)
#define IP_OFF ETH_HLEN
#define OUTER 28 /* IPv4 + UDP */
#define TCX_NEXT (-1)
#define ADJ_ROOM_DECAP_L3_IPV4 (1ULL << 7) /* newer than this machine's uapi headers (kernel ≥ 6.3) */

/* Legacy map definition: read by the build step, never by the kernel. */
struct map_def {
  __u32 type, key_size, value_size, max_entries, flags;
};

/* A flow as it crosses the hook: addresses and ports in network order. */
struct flow_key {
  __u32 saddr, daddr;
  __u16 sport, dport;
  __u8 proto, pad[3];
};

/* Sending: rewrite, then encapsulate from local_ip:local_port to peer_ip:peer_port via ifindex. */
struct egress_val {
  __u32 new_saddr, new_daddr;
  __u32 local_ip, peer_ip;
  __u16 local_port, peer_port;
  __u32 ifindex;
  __u32 flags; /* EGRESS_PEER_READY */
  __u32 reply_saddr; /* the chosen instance's InstanceIP: the answers' source (0 = unknown) */
  __u64 packets, bytes;
};
/* The peer carries this flow in its kernel too (our ingress entry saw its program's packets). Until then GSO
 * super-packets stay on the TUN: unsegmented (a veth underlay), only the peer's program could take
 * them apart — its userspace socket would read one 64 KB datagram. */
#define EGRESS_PEER_READY 1

/* Receiving: rewrite (0 = keep) and deliver to the local instance new_daddr (or daddr). `kpackets`:
 * those the peer's program sent (outer UDP checksum 0: nm_kf_out leaves it so, a socket — the peer's
 * userspace in raw mode, an Oakestra peer — always fills it), which alone make EGRESS_PEER_READY. */
struct ingress_val {
  __u32 new_saddr, new_daddr;
  __u64 packets, bytes;
  __u64 kpackets;
};

/* A local instance's namespace IP → its host-side veth and the MACs of a frame towards it. */
struct local_val {
  __u32 ifindex;
  __u8 mac[6], gw_mac[6];
};

/* Per-CPU counters (index): see STAT_* (read by `table show --flows` and /metrics). The STAT_IN_*
 * reasons (8..) say why a tunnel datagram to our port went on to userspace, and how many of the
 * unwrapped ones were GSO super-packets (issue 16: where the receiving node's data goes). */
enum {
  STAT_OUT_PKTS, STAT_OUT_BYTES, STAT_IN_PKTS, STAT_IN_BYTES, STAT_ERRORS,
  STAT_DECIDED = 7,  /* new flows the programs decided themselves (nm_kf_out: chosen from nm_kf_svc) */
  STAT_IN_GSO = 8,   /* unwrapped: GSO super-packets (of STAT_IN_PKTS) */
  STAT_IN_NOPEER,    /* to our port, not from a peer in `peers` (or its port differs) */
  STAT_IN_NOFLOW,    /* inner packet not plain IPv4 TCP/UDP (fragment, options, ICMP, FAST header) */
  STAT_IN_MISS,      /* inner flow not in `ingress` */
  STAT_IN_MISS_GSO,  /* of STAT_IN_MISS: GSO super-packets */
  STAT_IN_NODEV,     /* no `locals` entry and no bridge */
  STAT_IN_TRAIN,     /* several datagrams in one skb (a UDP-GSO send or UDP GRO): userspace splits them */
  STAT_IN_VETH,      /* unwrapped and handed straight to an instance's veth (`locals`; else through the bridge) */
  STAT_N = 16
};

struct map_def SEC("maps") nm_kf_egress = {BPF_MAP_TYPE_LRU_HASH, sizeof(struct flow_key), sizeof(struct egress_val), 65536, 0};
struct map_def SEC("maps") nm_kf_ingress = {BPF_MAP_TYPE_LRU_HASH, sizeof(struct flow_key), sizeof(struct ingress_val), 65536, 0};
struct map_def SEC("maps") nm_kf_locals = {BPF_MAP_TYPE_HASH, 4, sizeof(struct local_val), 4096, 0};
/* Peer underlay IPv4 → the tunnel port we accept from it (host order in the low 16 bits). */
struct map_def SEC("maps") nm_kf_peers = {BPF_MAP_TYPE_HASH, 4, 4, 4096, 0};
/* [0]: this node's tunnel port and the instances' bridge (delivery when `locals` has no entry). */
struct config {
  __u32 port;    /* host order */
  __u32 bridge;  /* ifindex; 0 = none */
};
struct map_def SEC("maps") nm_kf_config = {BPF_MAP_TYPE_ARRAY, 4, sizeof(struct config), 1, 0};
/* First packets decided in the kernel: a ServiceIP (RoundRobin, or an InstanceIP with its one
 * instance) whose candidates all live on capable peers → the candidates and an RR counter. */
#define SVC_MAX 16
struct svc_inst {
  __u32 nsip;      /* namespace IP (the new destination) */
  __u32 iip;       /* its InstanceIP (the answers' source) */
  __u32 node_ip;   /* its node's underlay IPv4 */
  __u16 node_port; /* host order */
  __u16 pad;
  __u32 ifindex;   /* underlay device towards the node */
};
struct svc_val {
  __u32 n;         /* candidates in inst[] (1..SVC_MAX) */
  __u32 rr;        /* next choice (incremented per new flow) */
  __u32 local_ip;  /* this node's tunnel endpoint: the outer source */
  __u16 local_port;
  __u16 pad;
  struct svc_inst inst[SVC_MAX];
};
struct map_def SEC("maps") nm_kf_svc = {BPF_MAP_TYPE_HASH, 4, sizeof(struct svc_val), 4096, 0};
/* A local instance's namespace IP → its InstanceIP (the source of what the kernel sends for it). */
struct map_def SEC("maps") nm_kf_snat = {BPF_MAP_TYPE_HASH, 4, 4, 4096, 0};
struct map_def SEC("maps") nm_kf_stats = {BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, STAT_N, 0};

INLINE void count(__u32 idx, __u64 n) {
  __u64 *c = map_lookup(&nm_kf_stats, &idx);
  if (c) *c += n;
}

/* Rewrites one IPv4 address at l3 + field (with the L3 and, via the pseudo header, L4 checksums). */
INLINE int rewrite(struct __sk_buff *skb, __u32 field, __u32 oldv, __u32 newv, __u8 proto) {
  __u32 l4 = IP_OFF + sizeof(struct iphdr);
  if (oldv == newv) return 0;
  if (proto == IPPROTO_TCP)
    l4_csum_replace(skb, l4 + offsetof(struct tcphdr, check), oldv, newv, BPF_F_PSEUDO_HDR | 4);
  else
    l4_csum_replace(skb, l4 + offsetof(struct udphdr, check), oldv, newv,
                    BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0 | 4);
  l3_csum_replace(skb, IP_OFF + offsetof(struct iphdr, check), oldv, newv, 4);
  return skb_store_bytes(skb, IP_OFF + field, &newv, 4, 0);
}

/* Reads the flow of the IPv4 packet at `ip` (no options, not a fragment, TCP or UDP). */
INLINE int flow_of(struct iphdr *ip, void *end, struct flow_key *k) {
  if ((void *)(ip + 1) > end || ip->version != 4 || ip->ihl != 5) return -1;
  if (ip->frag_off & BE16(0x3fff)) return -1;
  if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP) return -1;
  __u16 *ports = (void *)(ip + 1);
  if ((void *)(ports + 2) > end) return -1;
  k->saddr = ip->saddr;
  k->daddr = ip->daddr;
  k->sport = ports[0];
  k->dport = ports[1];
  k->proto = ip->protocol;
  return 0;
}

/* The reverse of flow `k` with source `saddr` (the answers' key in nm_kf_ingress). */
INLINE void reverse(struct flow_key *r, const struct flow_key *k, __u32 saddr) {
  r->saddr = saddr;
  r->daddr = k->saddr;
  r->sport = k->dport;
  r->dport = k->sport;
  r->proto = k->proto;
}

/*
 * A packet of a flow without an egress entry: when it comes from a local instance (nm_kf_snat), dials
 * a ServiceIP in nm_kf_svc and opens a flow (UDP, a TCP SYN without ACK, or any TCP packet answering
 * a flow nm_kf_in accepted from a peer), the next candidate in the service's rotation is chosen and
 * both entries of the flow are created here (the answers' entry first). NULL: the TUN decides (a TCP packet
 * mid-flow may belong to a flow the workers chose).
 */
INLINE struct egress_val *decide(struct flow_key *k, struct iphdr *ip, void *end) {
  __u32 *own = map_lookup(&nm_kf_snat, &k->saddr);
  if (!own) return 0;
  struct svc_val *s = map_lookup(&nm_kf_svc, &k->daddr);
  if (!s) return 0;
  __u32 n = s->n;
  if (n == 0 || n > SVC_MAX) return 0;
  if (k->proto == IPPROTO_TCP) {
    /* Only a SYN opens a flow the TUN cannot have chosen already. Else: the answers of a flow a peer
     * opened and nm_kf_in accepted (its entry exists; one candidate: an InstanceIP); the TUN's own
     * flows move by the controller (their answers' restore and readiness are set up there). */
    __u8 *flags = (__u8 *)(ip + 1) + 13;
    if ((void *)(flags + 1) > end) return 0;
    if ((*flags & 0x17) != 0x02) { /* not a SYN without ACK/FIN/RST */
      if (n != 1) return 0;
      struct flow_key a = {};
      reverse(&a, k, s->inst[0].iip);
      if (!map_lookup(&nm_kf_ingress, &a)) return 0;
    }
  }
  /* Not atomic (an atomic fetch needs -mcpu=v3): two CPUs opening flows at once may choose alike. */
  __u32 rr = s->rr;
  s->rr = rr + 1;
  __u32 i = rr % n;
  asm volatile("" : "+r"(i)); /* keep the bound check below for the verifier (clang proves and drops it) */
  if (i >= SVC_MAX) return 0;
  struct svc_inst *c = &s->inst[i];
  struct ingress_val in = {};
  if (c->iip != k->daddr) in.new_saddr = k->daddr; /* answers show the ServiceIP dialled */
  struct flow_key r = {};
  reverse(&r, k, c->iip);
  struct ingress_val *had = map_lookup(&nm_kf_ingress, &r); /* learnt by nm_kf_in: keep its counters */
  if (!had || had->new_saddr != in.new_saddr || had->new_daddr)
    if (map_update(&nm_kf_ingress, &r, &in, BPF_ANY)) return 0;
  struct egress_val e = {};
  e.new_saddr = *own;
  e.new_daddr = c->nsip;
  e.local_ip = s->local_ip;
  e.peer_ip = c->node_ip;
  e.local_port = s->local_port;
  e.peer_port = c->node_port;
  e.ifindex = c->ifindex;
  e.reply_saddr = c->iip;
  map_update(&nm_kf_egress, k, &e, BPF_NOEXIST); /* another CPU may have won: its choice stays */
  count(STAT_DECIDED, 1);
  return map_lookup(&nm_kf_egress, k);
}

/* GSO super-packets of a flow go once the peer answered it (our answers' entry counts packets). */
INLINE int peer_ready(struct egress_val *v, const struct flow_key *k) {
  if (v->flags & EGRESS_PEER_READY) return 1;
  if (!v->reply_saddr) return 0;
  struct flow_key r = {};
  reverse(&r, k, v->reply_saddr);
  struct ingress_val *iv = map_lookup(&nm_kf_ingress, &r);
  if (!iv || !iv->kpackets) return 0; /* packets the peer's program sent (not its userspace) */
  v->flags |= EGRESS_PEER_READY;
  return 1;
}

/*
 * A datagram from a peer to a local instance without an ingress entry: when it opens a TCP flow (SYN
 * without ACK) the peer chose, it is delivered unchanged (the sender's InstanceIP stays the source, as
 * the TUN path does) and the flow remembered, so its GSO super-packets are taken apart here too. Not
 * anything else: an answer to a flow our TUN opened needs the workers' restore (src → the ServiceIP
 * dialled), and a UDP datagram cannot tell (its first one crosses the TUN; our answer, decided by
 * nm_kf_out, creates the entry).
 */
INLINE struct ingress_val *learn_in(struct flow_key *k, struct iphdr *ip, void *end) {
  if (k->proto != IPPROTO_TCP) return 0;
  __u8 *flags = (__u8 *)(ip + 1) + 13;
  if ((void *)(flags + 1) > end || (*flags & 0x17) != 0x02) return 0;
  if (!map_lookup(&nm_kf_snat, &k->daddr)) return 0;
  struct ingress_val z = {};
  map_update(&nm_kf_ingress, k, &z, BPF_NOEXIST);
  return map_lookup(&nm_kf_ingress, k);
}

/* Forwarding semantics of the paths it replaces (each node routes the packet once, TTL − 1): a
 * packet whose TTL would expire stays on the kernel's own forwarding (its ICMP time exceeded). */
INLINE int ttl_expires(struct iphdr *ip) {
  return ip->ttl <= 1;
}

/* TTL − 1 of the IPv4 header at IP_OFF (the checksum over the ttl/protocol word). */
INLINE void ttl_dec(struct __sk_buff *skb, __u8 ttl, __u8 proto) {
  __u16 oldw = BE16(((__u16)ttl << 8) | proto), neww = BE16(((__u16)(ttl - 1) << 8) | proto);
  __u8 t = ttl - 1;
  l3_csum_replace(skb, IP_OFF + offsetof(struct iphdr, check), oldw, neww, 2);
  skb_store_bytes(skb, IP_OFF + offsetof(struct iphdr, ttl), &t, 1, 0);
}

SEC("tc/out") int nm_kf_out(struct __sk_buff *skb) {
  if (skb->protocol != BE16(ETH_P_IP)) return TCX_NEXT;
  void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
  if (data + IP_OFF + 24 > end) { /* headers not in the linear part: make them so */
    pull_data(skb, IP_OFF + 24);
    data = (void *)(long)skb->data;
    end = (void *)(long)skb->data_end;
  }
  struct flow_key k = {};
  if (flow_of(data + IP_OFF, end, &k)) return TCX_NEXT;
  struct egress_val *v = map_lookup(&nm_kf_egress, &k);
  if (!v) v = decide(&k, data + IP_OFF, end);
  if (!v) return TCX_NEXT;
  if (skb->gso_size && !peer_ready(v, &k)) return TCX_NEXT;
  struct iphdr *iph = data + IP_OFF;
  if (ttl_expires(iph)) return TCX_NEXT;
  __u8 ttl = iph->ttl;
  __u32 len = skb->len;
  ttl_dec(skb, ttl, k.proto);
  rewrite(skb, offsetof(struct iphdr, daddr), k.daddr, v->new_daddr, k.proto);
  rewrite(skb, offsetof(struct iphdr, saddr), k.saddr, v->new_saddr, k.proto);
  __u16 inner = (__u16)(len - ETH_HLEN);
  if (adjust_room(skb, OUTER, BPF_ADJ_ROOM_MAC,
                  BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP | BPF_F_ADJ_ROOM_FIXED_GSO)) {
    count(STAT_ERRORS, 1);
    return TC_ACT_SHOT;
  }
  struct {
    struct iphdr ip;
    struct udphdr udp;
  } h = {};
  h.ip.version = 4;
  h.ip.ihl = 5;
  h.ip.ttl = 64;
  h.ip.protocol = IPPROTO_UDP;
  h.ip.tot_len = BE16(inner + OUTER);
  h.ip.frag_off = BE16(0x4000);
  h.ip.saddr = v->local_ip;
  h.ip.daddr = v->peer_ip;
  __u32 sum = 0;
  __u16 *w = (__u16 *)&h.ip;
#pragma unroll
  for (int i = 0; i < 10; i++) sum += w[i];
  sum = (sum & 0xffff) + (sum >> 16);
  sum = (sum & 0xffff) + (sum >> 16);
  h.ip.check = (__u16)~sum;
  h.udp.source = BE16(v->local_port);
  h.udp.dest = BE16(v->peer_port);
  h.udp.len = BE16(inner + 8);
  skb_store_bytes(skb, IP_OFF, &h, sizeof(h), 0);
  __sync_fetch_and_add(&v->packets, 1);
  __sync_fetch_and_add(&v->bytes, len - ETH_HLEN);
  count(STAT_OUT_PKTS, 1);
  count(STAT_OUT_BYTES, len - ETH_HLEN);
  return redirect_neigh(v->ifindex, 0, 0, 0);
}

SEC("tc/in") int nm_kf_in(struct __sk_buff *skb) {
  if (skb->protocol != BE16(ETH_P_IP)) return TCX_NEXT;
  void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
  if (data + IP_OFF + OUTER + 24 > end) {
    pull_data(skb, IP_OFF + OUTER + 24);
    data = (void *)(long)skb->data;
    end = (void *)(long)skb->data_end;
  }
  struct iphdr *ip = data + IP_OFF;
  struct udphdr *udp = (void *)(ip + 1);
  if ((void *)(udp + 1) > end || ip->version != 4 || ip->ihl != 5 || ip->protocol != IPPROTO_UDP) return TCX_NEXT;
  if (ip->frag_off & BE16(0x3fff)) return TCX_NEXT;
  __u32 zero = 0, peer = ip->saddr;
  struct config *cfg = map_lookup(&nm_kf_config, &zero);
  if (!cfg || udp->dest != BE16((__u16)cfg->port)) return TCX_NEXT;
  __u32 *from = map_lookup(&nm_kf_peers, &peer);
  if (!from || udp->source != BE16((__u16)*from)) {
    count(STAT_IN_NOPEER, 1);
    return TCX_NEXT;
  }
  struct flow_key k = {};
  if (flow_of((void *)(udp + 1), end, &k)) {
    count(STAT_IN_NOFLOW, 1);
    return TCX_NEXT;
  }
  /* One inner packet fills the datagram (a tunnel GSO skb from a peer's nm_kf_out too: its inner
   * length is the whole super-packet's); a train of datagrams (the peer's userspace sending with
   * UDP_SEGMENT over a veth, or UDP GRO on a NIC) would lose all but the first when unwrapped. */
  struct iphdr *inner = (void *)(udp + 1);
  if (BE16(inner->tot_len) != skb->len - ETH_HLEN - OUTER) {
    count(STAT_IN_TRAIN, 1);
    return TCX_NEXT;
  }
  struct ingress_val *v = map_lookup(&nm_kf_ingress, &k);
  if (!v) v = learn_in(&k, (void *)(udp + 1), end);
  if (!v) {
    count(STAT_IN_MISS, 1);
    if (skb->gso_size) count(STAT_IN_MISS_GSO, 1);
    return TCX_NEXT;
  }
  __u32 dst = v->new_daddr ? v->new_daddr : k.daddr;
  struct local_val *l = map_lookup(&nm_kf_locals, &dst);
  __u32 bridge = cfg->bridge;
  if (!l && !bridge) {
    count(STAT_IN_NODEV, 1);
    return TCX_NEXT;
  }
  if (ttl_expires(inner)) return TCX_NEXT; /* userspace → TUN → the kernel's forwarding answers */
  __u8 ttl = inner->ttl;
  if (skb->gso_size) count(STAT_IN_GSO, 1);
  __u32 len = skb->len - ETH_HLEN - OUTER;
  __u16 ocsum = udp->check;
  if (adjust_room(skb, -OUTER, BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_FIXED_GSO | ADJ_ROOM_DECAP_L3_IPV4)) {
    count(STAT_ERRORS, 1);
    return TCX_NEXT; /* unchanged: the userspace tunnel decodes it */
  }
  ttl_dec(skb, ttl, k.proto);
  if (v->new_saddr) rewrite(skb, offsetof(struct iphdr, saddr), k.saddr, v->new_saddr, k.proto);
  rewrite(skb, offsetof(struct iphdr, daddr), k.daddr, dst, k.proto);
  __sync_fetch_and_add(&v->packets, 1);
  __sync_fetch_and_add(&v->bytes, len);
  if (!ocsum) __sync_fetch_and_add(&v->kpackets, 1);
  count(STAT_IN_PKTS, 1);
  count(STAT_IN_BYTES, len);
  if (!l) return redirect_neigh(bridge, 0, 0, 0); /* the bridge's neighbour entry and FDB find it */
  count(STAT_IN_VETH, 1);
  skb_store_bytes(skb, 0, l->mac, 6, 0);
  skb_store_bytes(skb, 6, l->gw_mac, 6, 0);
  return redirect(l->ifindex, 0);
}

char _license[] SEC("license") = "GPL";
