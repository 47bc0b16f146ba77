#!/usr/bin/env bash
# Benchmark (not a test): netmanager's overlay against the kernel paths, in ONE run of the shared
# harness (../shared/bench/harness.sh): direct underlay veth, kernel VXLAN, and netmanager through
# a round-robin ServiceIP in raw mode (Oakestra wire format) and fast mode. Prints one JSON object
# with the medians and the ratios to kernel VXLAN.
#   bash scripts/bench_overlay.sh [--quick] [--reps N]      (root; ~3 min per path and repetition)
# OB_UDP_LEN (default 64) sets the payload of the UDP rate tests (small packets).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
harness=${HARNESS:-$root/../shared/bench/harness.sh}
[ -f "$harness" ] || { echo "bench: harness not found at $harness (set HARNESS)" >&2; exit 1; }
command -v jq >/dev/null || { apt-get install -y -qq jq >/dev/null; }
results=$(mktemp -d /tmp/nm-bench-XXXXXX)
export OB_UDP_LEN=${OB_UDP_LEN:-64}
bash "$harness" "$@" --results "$results" \
  --slot nm-fast="bash $root/scripts/bench_slot.sh" \
  --slot nm-raw="FastMode=false bash $root/scripts/bench_slot.sh" \
  --paths underlay,vxlan,nm-raw,nm-fast >"$results/harness.out" 2>"$results/harness.err" || {
  echo "bench: harness failed, see $results/harness.err" >&2
  tail -20 "$results/harness.err" >&2
  exit 1
}
jq -s --arg len "$OB_UDP_LEN" --arg dir "$results" '
  (map(select(.type == "median")) | group_by(.path)
    | map({key: .[0].path, value: (map({key: .metric, value: .value}) | from_entries)}) | from_entries) as $m
  | def r(p; k): if ($m[p][k] != null and $m.vxlan[k] != null and $m.vxlan[k] != 0)
                 then (($m[p][k] / $m.vxlan[k]) * 100 | round / 100) else null end;
  {
    bench: "overlay data plane vs kernel paths (shared harness, one run)",
    udpPayloadBytes: ($len | tonumber),
    results: $dir,
    paths: ($m | with_entries(.value |= {
      tcp1_gbit: .tcp1, tcp4_gbit: .tcp4,
      rr_udp_avg_us: .rr_udp_avg_us, rr_udp_p99_us: .rr_udp_p99_us,
      rtt_udp_p50_us: .rtt_udp_p50_us, udp_lossfree_kpps: .udp_lossfree_kpps,
      cpu_tcp1_pct_core: .slot_cpu_tcp1 })),
    ratiosToVxlan: (["nm-raw", "nm-fast"] | map({key: ., value: {
      tcp1: r(.; "tcp1"), tcp4: r(.; "tcp4"),
      rr_udp_latency: r(.; "rr_udp_avg_us"), udp_lossfree_rate: r(.; "udp_lossfree_kpps") }}) | from_entries)
  }' "$results/summary.jsonl"
