#!/usr/bin/env bash
# Benchmark (not a test): netmanager's overlay against the kernel paths, in ONE run of the shared
# harness (shared/bench/harness.sh): direct underlay veth, kernel VXLAN, and netmanager through a
# round-robin ServiceIP in raw mode (Oakestra wire format), fast mode, the kernel fast path
# (nm-kfast: KernelFastPath, issue 16; nm-ktc: its tc eBPF mode, KernelFastPath=tc) and secure mode (TunnelSecurity
# require, certificates from a throw-away CA made here), and wireguard-go (the harness's slot, Debian
# package, for an encrypted userspace tunnel to compare with). Only when named in NM_BENCH_PATHS: c-relay,
# c-relay-gcm, c-relay-spin (scripts/ceiling/: a minimal C relay of the same I/O design, docs/bench/ceiling.md),
# nm-fast-1w (FAST mode with DataPlaneWorkers=1: one packet loop per node instead of one per CPU),
# nm-secure-again (nm-secure once more, unchanged: an A/A check of how much a slot's place in the run moves it),
# nm-fast-aead-cpu (FAST mode whose workers spin NM_BENCH_BURN_US, default "5,4" µs, per message where a secure
# node seals and opens: the secure path with the AEAD's CPU and no other overhead, docs/bench/secure-budget.md).
# Prints one JSON object
# with per path and metric the median and range over the repetitions, the ratios to kernel VXLAN
# and to the bare underlay (null when that path was not run),
# the harness's machine header and the busiest CPU it saw before a path; secureHandshakeMs: the
# secure slot's first handshakes right after both daemons started (HS_INIT sent → keys installed, as
# each node measured its own; cold start: the peer may still be starting), secureHandshakeAttemptMs:
# the same sessions from each node's first HS_INIT (retries included); secureRunningHandshakeMs: the
# handshake between the two RUNNING nodes (issue 11's target ≤ 5 ms on a LAN): NM_HS_REKEYS (12) fresh
# handshakes node 1 asked for with the rekey API (`netmanager peers rekey`) before the traffic, each from
# its HS_INIT sent to the session's keys installed there, secureRunningResponderMs: the same handshakes on
# node 2 (HS_INIT received → keys installed), secureRunningLoadavg1: the load average then;
# secureRekeyHandshakeMs: scheduled rekeys during the traffic (null when none came);
# kernelFastPathPackets: packets the nm-kfast slot's client node sent and received through the kernel
# path vs through its userspace tunnel once ready (the slot waits until the kernel carries the path);
# kernelFastPathTcPackets: the same for nm-ktc (there each flow starts on the TUN and moves after ~1-2 s).
#   bash scripts/bench_overlay.sh [--harness PATH] [--quick | --smoke] [--reps N] [--results DIR]
#     (root; ~3 min per path and repetition, --quick ~1 min per path, --smoke ~10 s per path)
# The harness is taken from --harness, else $NETMANAGER_BENCH_HARNESS (or $HARNESS), else the
# first shared/bench/harness.sh found beside the checkout or one of its parent folders.
# OB_UDP_LEN (default 64) sets the payload of the UDP rate tests (small packets).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

harness=${NETMANAGER_BENCH_HARNESS:-${HARNESS:-}}
smoke=0
args=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --harness) harness=${2:?--harness needs a path}; shift 2;;
    --smoke) smoke=1; shift;;
    *) args+=("$1"); shift;;
  esac
done
if [[ -z $harness ]]; then
  d=$root
  while [[ $d != / ]]; do
    d=$(dirname "$d")
    [[ -f $d/shared/bench/harness.sh ]] && { harness=$d/shared/bench/harness.sh; break; }
  done
fi
if [[ -z $harness || ! -f $harness ]]; then
  echo "bench: the shared data-plane harness (shared/bench/harness.sh) was not found${harness:+ at $harness};" \
    "pass --harness PATH or set NETMANAGER_BENCH_HARNESS" >&2
  exit 3
fi

# The harness's namespace names are fixed (ob-h1 …) and it deletes them when it starts: never run
# it over another run's topology.
for ns in ob-h1 ob-h2 ob-w1 ob-w2; do
  if ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "$ns"; then
    echo "bench: namespace $ns exists: another harness run is in progress (or left it: bash $harness --cleanup)" >&2
    exit 4
  fi
done

command -v jq >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq jq >/dev/null
export OB_UDP_LEN=${OB_UDP_LEN:-64}
paths=${NM_BENCH_PATHS:-underlay,vxlan,nm-raw,nm-fast,nm-kfast,nm-ktc,nm-secure,wireguard-go}
if [[ $smoke == 1 ]]; then
  # the smallest run that still exercises every metric once: for the test suite, not for figures
  export OB_REPS=1 OB_TCP_SECS=1 OB_UDP_MAX_SECS=1 OB_UDP_STEP_SECS=1 OB_UDP_STEPS=1 OB_PING_COUNT=10 \
    OB_LAT_SECS=1 OB_QUIET_WAIT=0 OB_SLOT_WAIT=20
  # (the secure slot's running-peer handshakes: 3, 1 s after its session, instead of 12 after 7 s)
  export NM_HS_REKEYS=${NM_HS_REKEYS:-3} NM_HS_SETTLE=${NM_HS_SETTLE:-1}
  paths=${NM_BENCH_PATHS:-vxlan,nm-fast,nm-secure}
fi
results=""
for ((i = 0; i < ${#args[@]}; i++)); do [[ ${args[i]} == --results ]] && results=${args[i + 1]:-}; done
if [[ -z $results ]]; then
  results=$(mktemp -d /tmp/nm-bench-XXXXXX)
  args+=(--results "$results")
fi
mkdir -p "$results"
# A throw-away CA for the secure slot (each node signs its own key with it at start).
deno=${DENO:-$root/.tools/node_modules/.bin/deno}
ca=$results/secure-ca
[[ -f $ca/ca.json ]] || "$deno" run -A "$root/main.ts" cert ca --out "$ca" --name bench >/dev/null
# The machine's CPU (/proc/stat `cpu` line) every 0.25 s with a timestamp and the CPU ticks so far of the
# processes in the harness's namespaces (iperf3 both ends, the slot daemons) and of the ksoftirqd threads
# (tick accounting without IRQ_TIME_ACCOUNTING charges softirq to the task it interrupted as well, so these
# hold the packet work): bench_machine_cpu.ts takes each TCP 1 test's window from it (busy time incl.
# softirq, which the slot CPU column does not count). Shell builtins only (no process per sample): `-ef`
# matches a process's network namespace.
(
  set +eu # a sample that fails (a process gone mid-read) must not end the sampler
  export LC_ALL=C
  nsf=(/run/netns/ob-h1 /run/netns/ob-h2 /run/netns/ob-w1 /run/netns/ob-w2)
  ksoft=()
  for p in /proc/[0-9]*; do read -r c <"$p/comm" 2>/dev/null && [[ $c == ksoftirqd/* ]] && ksoft+=("$p"); done
  while :; do
    own=0
    for p in "${ksoft[@]}"; do
      read -r st <"$p/stat" 2>/dev/null && read -ra a <<<"${st##*) }" && ((own += a[11] + a[12]))
    done
    for p in /proc/[0-9]*; do
      for f in "${nsf[@]}"; do
        [[ $p/ns/net -ef $f ]] || continue
        # /proc/PID/stat after "comm) ": utime stime cutime cstime are the 12th to 15th fields
        read -r st <"$p/stat" 2>/dev/null && read -ra a <<<"${st##*) }" && ((own += a[11] + a[12] + a[13] + a[14]))
        break
      done
    done
    read -r line </proc/stat
    printf '%s %s %s\n' "$EPOCHREALTIME" "$own" "$line"
    sleep 0.25
  done
) >"$results/procstat.log" 2>/dev/null &
sampler=$!
trap 'kill "$sampler" 2>/dev/null || true' EXIT
status=0
bash "$harness" "${args[@]}" \
  --slot nm-fast="TunnelSecurity=off bash $root/scripts/bench_slot.sh" \
  --slot nm-raw="TunnelSecurity=off FastMode=false bash $root/scripts/bench_slot.sh" \
  --slot nm-uring="TunnelSecurity=off IoBackend=uring bash $root/scripts/bench_slot.sh" \
  --slot nm-uring-spin="TunnelSecurity=off IoBackend=uring BusyPollMicros=${NM_SPIN_US:-200} bash $root/scripts/bench_slot.sh" \
  --slot nm-fast-nomaglev="TunnelSecurity=off DENO_V8_FLAGS=--no-maglev bash $root/scripts/bench_slot.sh" \
  --slot nm-fast-spin="TunnelSecurity=off BusyPollMicros=${NM_SPIN_US:-200} bash $root/scripts/bench_slot.sh" \
  --slot nm-fast-1w="TunnelSecurity=off DataPlaneWorkers=1 bash $root/scripts/bench_slot.sh" \
  --slot nm-fast-aead-cpu="TunnelSecurity=off NETMANAGER_BENCH_BURN_US=${NM_BENCH_BURN_US:-5,4} bash $root/scripts/bench_slot.sh" \
  --slot nm-kfast="TunnelSecurity=off KernelFastPath=true NM_KFAST_FILE=$results/kfast.jsonl bash $root/scripts/bench_slot.sh" \
  --slot nm-ktc="TunnelSecurity=off KernelFastPath=tc NM_KFAST_FILE=$results/ktc.jsonl bash $root/scripts/bench_slot.sh" \
  --slot nm-secure="NM_SECURE_CA=$ca NM_HS_FILE=$results/handshake.jsonl bash $root/scripts/bench_slot.sh" \
  --slot nm-secure-nomaglev="NM_SECURE_CA=$ca NM_HS_FILE=$results/handshake-nomaglev.jsonl DENO_V8_FLAGS=--no-maglev bash $root/scripts/bench_slot.sh" \
  --slot nm-secure-evp="NM_SECURE_CA=$ca NM_HS_FILE=$results/handshake-evp.jsonl NETMANAGER_AEAD=libcrypto bash $root/scripts/bench_slot.sh" \
  --slot nm-secure-again="NM_SECURE_CA=$ca NM_HS_FILE=$results/handshake-again.jsonl bash $root/scripts/bench_slot.sh" \
  --slot wireguard-go="bash $(dirname "$harness")/slots/wireguard-go.sh" \
  --slot c-relay="bash $root/scripts/ceiling/slot.sh" \
  --slot c-relay-gcm="CEILING_AEAD=1 bash $root/scripts/ceiling/slot.sh" \
  --slot c-relay-spin="CEILING_SPIN=1 bash $root/scripts/ceiling/slot.sh" \
  --paths "$paths" >"$results/harness.out" 2>"$results/harness.err" || status=$?
if [[ $status != 0 || ! -s $results/summary.jsonl ]]; then
  echo "bench: harness failed (exit $status), see $results/harness.err" >&2
  tail -20 "$results/harness.err" >&2
  exit 1
fi
kill "$sampler" 2>/dev/null || true
touch "$results/handshake.jsonl" "$results/kfast.jsonl" "$results/ktc.jsonl"
"$deno" run -A "$root/scripts/bench_machine_cpu.ts" "$results" >"$results/machine_cpu.jsonl" ||
  : >"$results/machine_cpu.jsonl"
jq -n --arg len "$OB_UDP_LEN" --arg dir "$results" --slurpfile run "$results/run.json" \
  --slurpfile hs "$results/handshake.jsonl" --slurpfile kf "$results/kfast.jsonl" --slurpfile kt "$results/ktc.jsonl" \
  --slurpfile mc "$results/machine_cpu.jsonl" --slurpfile s "$results/samples.jsonl" --slurpfile m "$results/summary.jsonl" '
  def hstat: if length == 0 then null
      else {median: (sort | .[length / 2 | floor]), min: min, max: max, n: length} end;
  def stat(k): if . == null then null else
      {median: .value, min: ([.samples[] | select(. != null)] | min),
       max: ([.samples[] | select(. != null)] | max), n: .n} end;
  ($m | map(select(.type == "median")) | group_by(.path)
    | map({key: .[0].path, value: (map({key: .metric, value: .}) | from_entries)}) | from_entries) as $p
  # machine CPU at TCP 1 (bench_machine_cpu.ts) per path: median and range over the repetitions
  | def mstat(k): map(.[k] | numbers) | sort | if length == 0 then null else
      {median: (if length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end),
       min: min, max: max, n: length} end;
  ($mc | group_by(.path) | map({key: .[0].path, value: {pct: mstat("pctCore"), perGbit: mstat("pctCorePerGbit"),
      own: mstat("ownPctCore"), ownPerGbit: mstat("ownPctCorePerGbit")}})
    | from_entries) as $mcpu
  | def mratio(p; base; k): if ($mcpu[p][k].median != null and ($mcpu[base][k].median // 0) != 0)
      then (($mcpu[p][k].median / $mcpu[base][k].median) * 100 | round / 100) else null end;
  def ratio(p; base; k): if ($p[p][k].value != null and $p[base][k].value != null and $p[base][k].value != 0)
                 then (($p[p][k].value / $p[base][k].value) * 100 | round / 100) else null end;
  def ratios(base): $p | keys | map(select(startswith("nm-") or . == "wireguard-go")) | map({key: ., value: {
      tcp1: ratio(.; base; "tcp1"), tcp4: ratio(.; base; "tcp4"),
      rr_udp_latency: ratio(.; base; "rr_udp_avg_us"),
      udp_lossfree_rate: ratio(.; base; "udp_lossfree_kpps"), machine_cpu_per_gbit: mratio(.; base; "perGbit"),
      attributed_cpu_per_gbit: mratio(.; base; "ownPerGbit") }})
      | from_entries;
  def kpackets: map(select(.node == 1 and .kernelTxPackets != null))
      | def inc(k): . as $a | [range(1; length) as $i | select($a[$i][k] != null and $a[$i - 1][k] != null)
        | ($a[$i][k] - $a[$i - 1][k]) | select(. > 0)] | add // 0;
      if length < 2 then null else {kernelTx: inc("kernelTxPackets"), kernelRx: inc("kernelRxPackets"),
        tunUdpTx: inc("tunUdpTxPackets"), tunUdpRx: inc("tunUdpRxPackets"), movedFlows: inc("moved")} end;
  ($s | map(select(.type == "sample"))) as $samples
  | {
    bench: "overlay data plane vs kernel paths (shared harness, one run)",
    udpPayloadBytes: ($len | tonumber),
    results: $dir,
    harnessRun: $run[0],
    busiestCpuBeforeAPathPct: ($samples | map(.busy_before | numbers) | max),
    mostForeignCpuDuringATestPct: ($samples | map(.foreign_cpu_pct | numbers) | max),
    probesFailed: ($samples | map(select(.metric == "probe")) | map(.path)),
    paths: ($p | with_entries(.value |= {
      tcp1_gbit: (.tcp1 | stat(0)), tcp4_gbit: (.tcp4 | stat(0)),
      rr_udp_avg_us: (.rr_udp_avg_us | stat(0)), rr_udp_p99_us: (.rr_udp_p99_us | stat(0)),
      rtt_udp_p50_us: (.rtt_udp_p50_us | stat(0)), udp_lossfree_kpps: (.udp_lossfree_kpps | stat(0)),
      cpu_tcp1_pct_core: (.slot_cpu_tcp1 | stat(0)) })
      | with_entries(.key as $k | .value += {machine_cpu_tcp1_pct_core: $mcpu[$k].pct,
          machine_cpu_tcp1_pct_core_per_gbit: $mcpu[$k].perGbit, attributed_cpu_tcp1_pct_core: $mcpu[$k].own,
          attributed_cpu_tcp1_pct_core_per_gbit: $mcpu[$k].ownPerGbit})),
    kernelFastPathPackets: ($kf | kpackets),
    kernelFastPathTcPackets: ($kt | kpackets),
    secureHandshakeMs: ($hs | map((.handshakeMs // [])[]) | hstat),
    secureHandshakeAttemptMs: ($hs | map((.attemptMs // [])[]) | hstat),
    secureRekeyHandshakeMs: ($hs | map((.rekeyHandshakeMs // [])[]) | hstat),
    secureRunningHandshakeMs: ($hs | map((.runningHandshakeMs // [])[]) | hstat),
    secureRunningResponderMs: ($hs | map((.runningResponderMs // [])[]) | hstat),
    secureRunningLoadavg1: ($hs | map(.loadavg1 | numbers) | hstat),
    ratiosToVxlan: ratios("vxlan"),
    ratiosToUnderlay: ratios("underlay")
  }'
