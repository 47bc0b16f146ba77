// Issue 16 spike, design (a): tc eBPF translation + raw IP-in-UDP (Oakestra wire format) encap/decap,
// for the shared harness's two-node topology, one ServiceIP, stateless (constants from -D flags).
// Not product code: it measures what the kernel path would cost. Build:
//   clang -O2 -g -target bpf -c tc_ipudp.c -o tc_ipudp.o -D... (see tc_slot.sh)
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <linux/tcp.h>
#include <linux/in.h>
#include <stddef.h>

#define SEC(x) __attribute__((section(x), used))
static long (*skb_store_bytes)(void *, __u32, const void *, __u32, __u64) = (void *)BPF_FUNC_skb_store_bytes;
static long (*skb_load_bytes)(const void *, __u32, void *, __u32) = (void *)BPF_FUNC_skb_load_bytes;
static long (*l3_csum_replace)(void *, __u32, __u64, __u64, __u64) = (void *)BPF_FUNC_l3_csum_replace;
static long (*l4_csum_replace)(void *, __u32, __u64, __u64, __u64) = (void *)BPF_FUNC_l4_csum_replace;
static long (*redirect)(__u32, __u64) = (void *)BPF_FUNC_redirect;
static long (*adjust_room)(void *, __s32, __u32, __u64) = (void *)BPF_FUNC_skb_adjust_room;

#define H32(a, b, c, d) ((__u32)(((a) << 24) | ((b) << 16) | ((c) << 8) | (d)))
#define BE32(x) __builtin_bswap32(x)
#define BE16(x) __builtin_bswap16(x)
#define IP_OFF ETH_HLEN
#define PORT 50103

static const unsigned char UL_SRC_MAC[6] = {UL_SRC_MAC_B};
static const unsigned char UL_DST_MAC[6] = {UL_DST_MAC_B};
static const unsigned char WL_DST_MAC[6] = {WL_DST_MAC_B};
static const unsigned char WL_SRC_MAC[6] = {WL_SRC_MAC_B};

static __always_inline int rewrite(struct __sk_buff *skb, __u32 field_off, __u32 oldv, __u32 newv, __u8 proto) {
  __u32 l4 = IP_OFF + sizeof(struct iphdr);
  if (proto == IPPROTO_TCP)
    l4_csum_replace(skb, l4 + offsetof(struct tcphdr, check), oldv, newv, BPF_F_PSEUDO_HDR | 4);
  else if (proto == IPPROTO_UDP)
    l4_csum_replace(skb, l4 + offsetof(struct udphdr, check), oldv, newv, BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0 | 4);
  l3_csum_replace(skb, IP_OFF + offsetof(struct iphdr, check), oldv, newv, 4);
  return skb_store_bytes(skb, IP_OFF + field_off, &newv, 4, 0);
}

// From the local workload: translate (dst → chosen nsip, src → own InstanceIP), encapsulate, send.
SEC("tc/from_wl") int from_wl(struct __sk_buff *skb) {
  void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
  struct ethhdr *eth = data;
  struct iphdr *ip = data + IP_OFF;
  if ((void *)(ip + 1) > end || eth->h_proto != BE16(ETH_P_IP)) return TC_ACT_OK;
  if (ip->daddr != BE32(MATCH_DST)) return TC_ACT_OK;
  __u8 proto = ip->protocol;
  __u32 olds = ip->saddr, oldd = ip->daddr;
  rewrite(skb, offsetof(struct iphdr, daddr), oldd, BE32(NEW_DST), proto);
  rewrite(skb, offsetof(struct iphdr, saddr), olds, BE32(NEW_SRC), proto);
  __u16 inner_len = BE16((__u16)(skb->len - ETH_HLEN));
  if (adjust_room(skb, 28, BPF_ADJ_ROOM_MAC,
                  BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP | BPF_F_ADJ_ROOM_FIXED_GSO))
    return TC_ACT_SHOT;
  struct { struct iphdr ip; struct udphdr udp; } h = {};
  h.ip.version = 4; h.ip.ihl = 5; h.ip.ttl = 64; h.ip.protocol = IPPROTO_UDP;
  h.ip.tot_len = BE16(BE16(inner_len) + 28);
  h.ip.saddr = BE32(UL_SRC); h.ip.daddr = BE32(UL_DST);
  h.ip.frag_off = BE16(0x4000);
  __u32 sum = 0; __u16 *w = (__u16 *)&h.ip;
#pragma unroll
  for (int i = 0; i < 10; i++) sum += w[i];
  sum = (sum & 0xffff) + (sum >> 16); sum = (sum & 0xffff) + (sum >> 16);
  h.ip.check = ~sum;
  h.udp.source = BE16(PORT); h.udp.dest = BE16(PORT);
  h.udp.len = BE16(BE16(inner_len) + 8); h.udp.check = 0;
  skb_store_bytes(skb, IP_OFF, &h, sizeof(h), 0);
  skb_store_bytes(skb, 0, UL_DST_MAC, 6, 0);
  skb_store_bytes(skb, 6, UL_SRC_MAC, 6, 0);
  return redirect(UL_IFINDEX, 0);
}

// From the underlay: raw IP-in-UDP from the peer to 50103 → decapsulate, restore, deliver.
SEC("tc/from_ul") int from_ul(struct __sk_buff *skb) {
  void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
  struct ethhdr *eth = data;
  struct iphdr *ip = data + IP_OFF;
  struct udphdr *udp = (void *)(ip + 1);
  if ((void *)(udp + 1) > end || eth->h_proto != BE16(ETH_P_IP)) return TC_ACT_OK;
  if (ip->protocol != IPPROTO_UDP || ip->ihl != 5 || udp->dest != BE16(PORT) || ip->saddr != BE32(UL_DST))
    return TC_ACT_OK;
  if (adjust_room(skb, -28, BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_FIXED_GSO)) return TC_ACT_SHOT;
  data = (void *)(long)skb->data; end = (void *)(long)skb->data_end;
  ip = data + IP_OFF;
  if ((void *)(ip + 1) > end) return TC_ACT_SHOT;
#ifdef RS_FROM
  if (ip->saddr == BE32(RS_FROM)) rewrite(skb, offsetof(struct iphdr, saddr), BE32(RS_FROM), BE32(RS_TO), ip->protocol);
#endif
  skb_store_bytes(skb, 0, WL_DST_MAC, 6, 0);
  skb_store_bytes(skb, 6, WL_SRC_MAC, 6, 0);
  return redirect(WL_IFINDEX, 0);
}

char _license[] SEC("license") = "GPL";
