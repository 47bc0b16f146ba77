#!/usr/bin/env bash
# netmanager as a userspace-overlay slot of shared/bench/harness.sh (see its header):
#   bash harness.sh --slot netmanager="bash $PWD/scripts/bench_slot.sh" --paths underlay,vxlan,netmanager
# Runs inside the harness's host namespace. The daemon adopts the harness bridge (BridgeName=ob-br)
# and pod subnet in standalone static-table mode; the client dials the round-robin ServiceIP
# 10.30.0.1 whose only instance is the peer workload (so the path includes the full translation).
# NM_FAST=0/1 and other daemon flags can be passed with NM_ARGS; config keys come from the environment
# (e.g. IoBackend=uring: the nm-uring slot of bench_overlay.sh).
# KernelFastPath=true (or tc): ready only once the kernel carries the path (at most NM_KFAST_WAIT_STEPS × 0.1 s,
# default 150; 0 = ready at once), and with NM_KFAST_FILE the kernel's and the TUN's packet counters
# are appended there every second.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
deno=${DENO:-$root/.tools/node_modules/.bin/deno}
dir=$OB_STATE_DIR
cat > "$dir/table.json" <<JSON
[
 {"app_name":"bench.bench.client.ns","instance_list":[{"instance_number":0,
   "instance_ip":"10.30.0.11","instance_ip_v6":"fdff::11","namespace_ip":"10.19.1.2","namespace_ip_v6":"",
   "host_ip":"192.168.77.1","host_port":50103,
   "service_ip":[{"IpType":"instance_ip","Address":"10.30.0.11","Address_v6":"fdff::11"}]}]},
 {"app_name":"bench.bench.server.ns","instance_list":[{"instance_number":0,
   "instance_ip":"10.30.0.12","instance_ip_v6":"fdff::12","namespace_ip":"10.19.2.2","namespace_ip_v6":"",
   "host_ip":"192.168.77.2","host_port":50103,
   "service_ip":[{"IpType":"RR","Address":"10.30.0.1","Address_v6":"fdff:2000::1"},
                 {"IpType":"instance_ip","Address":"10.30.0.12","Address_v6":"fdff::12"}]}]}
]
JSON
echo 10.30.0.1 > "$OB_TARGET_FILE"
sock="$dir/nm.sock"
(
  for _ in $(seq 200); do [ -S "$sock" ] && break; sleep 0.05; done
  curl -s -m 5 --unix-socket "$sock" -X POST http://localhost/register \
    -d "{\"client_id\":\"bench$OB_NODE\",\"cluster_address\":\"\"}" >/dev/null
  if [[ ${KernelFastPath:-} == true || ${KernelFastPath:-} == tc ]]; then
    # Kernel fast path slot: ready only once the kernel carries the path (the peer announced the
    # capability; on node 1 the ServiceIP is programmed), so that every measured flow starts on the
    # kernel path. Datagrams from the workload to the other side (discarded) make the peers talk.
    dst=10.30.0.1
    [[ $OB_NODE == 1 ]] || dst=10.30.0.11
    for _ in $(seq ${NM_KFAST_WAIT_STEPS:-150}); do
      st=$(curl -s -m 2 --unix-socket "$sock" http://localhost/status 2>/dev/null || true)
      jq -e --arg p "$OB_PEER_UNDERLAY_IP" --arg n "$OB_NODE" '.kernelFastPath != null
        and (.kernelFastPath.peers | index($p)) != null
        and ($n != "1" or (.kernelFastPath.services | index("10.30.0.1")) != null)' <<<"$st" >/dev/null 2>&1 &&
        break
      ip netns exec "$OB_WORKLOAD_NS" bash -c "echo warm >/dev/udp/$dst/9" 2>/dev/null || true
      sleep 0.1
    done
    # The kernel's and the TUN's counters every second (bench_overlay.sh reports what each carried).
    if [[ -n ${NM_KFAST_FILE:-} ]]; then
      (
        fails=0
        while ((fails < 3)); do
          st=$(curl -s -m 2 --unix-socket "$sock" http://localhost/status 2>/dev/null) || { fails=$((fails + 1)); sleep 1; continue; }
          jq -c --arg n "$OB_NODE" '{node: ($n | tonumber), t: now, kernelTxPackets: .kernelFastPath.counters.tx.packets,
            kernelRxPackets: .kernelFastPath.counters.rx.packets, tunUdpTxPackets: .dataPlane.udpTx,
            tunUdpRxPackets: .dataPlane.udpRx, moved: .kernelFastPath.moved,
            kernelRxBytes: .kernelFastPath.counters.rx.bytes, tunUdpRxBytes: .dataPlane.udpRxBytes,
            rxReasons: .kernelFastPath.rxReasons}' <<<"$st" >>"$NM_KFAST_FILE" 2>/dev/null || true
          sleep 1
        done
      ) &
    fi
  fi
  # Secure slot: the handshake time this node measured (its HS_INIT sent → keys installed) and its
  # attempt (first HS_INIT → keys: retries and a peer still starting included), once the session is
  # up right after both daemons started (cold), appended to NM_HS_FILE. Then, before the slot reports
  # ready (no benchmark traffic yet) and NM_HS_SETTLE (7) s later, NM_HS_REKEYS (12) fresh handshakes between the two
  # running nodes: node 1 asks for each with the API's rekey (`POST /secure/rekey`, what
  # `netmanager peers rekey` does; 0.3 s apart, within the peer's INIT budget of 4/s) and records the
  # time each took (runningHandshakeMs); node 2 records what it saw as the responder (its HS_INIT
  # received → keys installed: runningResponderMs, from status `security.recentHandshakes`), each
  # with the 1-minute load average. Later handshakes while the slot runs (rekeys every
  # TunnelRekeySeconds, under the benchmark's traffic) are appended as rekeyHandshakeMs.
  # bench_overlay.sh reports them apart.
  last=""
  if [[ -n ${NM_HS_FILE:-} ]]; then
    hsq='[.security.peers[]? | select(.handshakeMs != null)]'
    resq='[.security.recentHandshakes[]? | select(.role == "responder" and .ms != null)]'
    base=0
    for _ in $(seq 300); do
      st=$(curl -s -m 2 --unix-socket "$sock" http://localhost/status 2>/dev/null || true)
      ms=$(jq -c "$hsq | map(.handshakeMs) | select(length > 0)" <<<"$st" 2>/dev/null || true)
      if [[ -n $ms ]]; then
        at=$(jq -c "$hsq | map(.handshakeAttemptMs // empty)" <<<"$st" 2>/dev/null || echo '[]')
        echo "{\"node\":\"$OB_NODE\",\"handshakeMs\":$ms,\"attemptMs\":${at:-[]}}" >>"$NM_HS_FILE"
        base=$(jq "$resq | length" <<<"$st" 2>/dev/null || echo 0)
        last=$ms
        break
      fi
      sleep 0.1
    done
    n=${NM_HS_REKEYS:-12}
    if [[ -n $last && $n -gt 0 ]]; then
      # Both cold sessions settled (a retry's, a crossing one) and the workers' late warm-up rounds done
      # (src/secure/hs_host.ts: 120 rounds, 2 per 100 ms): nodes that run, as a rekey meets them.
      sleep "${NM_HS_SETTLE:-7}"
      if [[ $OB_NODE == 1 ]]; then
        got=()
        for _ in $(seq "$n"); do
          r=$(curl -s -m 5 --unix-socket "$sock" -X POST http://localhost/secure/rekey -d '{}' 2>/dev/null || true)
          x=$(jq -r '[.rekeys[]? | .handshakeMs // empty] | first // empty' <<<"$r" 2>/dev/null || true)
          [[ -n $x ]] && got+=("$x")
          sleep 0.3
        done
        load=$(cut -d' ' -f1 /proc/loadavg)
        echo "{\"node\":\"$OB_NODE\",\"runningHandshakeMs\":[$(IFS=,; echo "${got[*]}")],\"loadavg1\":$load}" >>"$NM_HS_FILE"
      else
        # The responder's side of node 1's rekeys: wait for them (at most 15 s).
        for _ in $(seq 150); do
          st=$(curl -s -m 2 --unix-socket "$sock" http://localhost/status 2>/dev/null || true)
          c=$(jq "$resq | length" <<<"$st" 2>/dev/null || echo 0)
          ((c >= base + n)) && break
          sleep 0.1
        done
        ms=$(jq -c "$resq | .[$base:] | map(.ms)" <<<"$st" 2>/dev/null || echo '[]')
        load=$(cut -d' ' -f1 /proc/loadavg)
        echo "{\"node\":\"$OB_NODE\",\"runningResponderMs\":${ms:-[]},\"loadavg1\":$load}" >>"$NM_HS_FILE"
      fi
    fi
  fi
  touch "$OB_READY_FILE"
  if [[ -n ${NM_HS_FILE:-} ]]; then
    # (Handshakes still settling right after the start — a retry's, a crossing one — are not rekeys.)
    if [[ -n $last ]]; then
      sleep 10
      st=$(curl -s -m 2 --unix-socket "$sock" http://localhost/status 2>/dev/null || true)
      last=$(jq -c "$hsq | map(.handshakeMs) | select(length > 0)" <<<"$st" 2>/dev/null || echo "$last")
      last=${last:-none}
    fi
    fails=0
    while [[ -n $last ]] && ((fails < 3)); do
      sleep 2
      st=$(curl -s -m 2 --unix-socket "$sock" http://localhost/status 2>/dev/null) || { fails=$((fails + 1)); continue; }
      ms=$(jq -c "$hsq | map(.handshakeMs) | select(length > 0)" <<<"$st" 2>/dev/null || true)
      if [[ -n $ms && $ms != "$last" ]]; then
        echo "{\"node\":\"$OB_NODE\",\"rekeyHandshakeMs\":$ms}" >>"$NM_HS_FILE"
        last=$ms
      fi
    done
  fi
) &
export BridgeName=$OB_BRIDGE NodePublicAddress=$OB_UNDERLAY_IP
if [[ -n ${NM_SECURE_CA:-} ]]; then
  # Secure slot: this node's key signed by the run's CA; raw and unauthenticated datagrams refused.
  key=$("$deno" run -A "$root/main.ts" cert show --state-dir "$dir/state" 2>/dev/null)
  "$deno" run -A "$root/main.ts" cert sign --ca "$NM_SECURE_CA" --node-id "bench$OB_NODE" --public-key "$key" \
    --out "$dir/node.crt" >/dev/null
  export TunnelSecurity=require TunnelCertFile=$dir/node.crt TunnelCaFile=$NM_SECURE_CA/ca.json
fi
# The harness made the workload's veth itself; the daemon caps the TSO segments of the instance veths it
# makes (src/env/manager.ts: gso_max_segs = jumboTsoSegs(bridge MTU, TUN MTU, sealed when TunnelSecurity is
# not off), src/sys/links.ts): the same rule here, from the daemon's own configuration, as a deployed
# instance has it.
segs=$("$deno" eval "
import { loadNodeConfig } from '$root/src/config/mod.ts';
import { jumboTsoSegs } from '$root/src/proxy/jumbo.ts';
const c = await loadNodeConfig({ netcfgPath: '$root/config/netcfg.json', tuncfgPath: '$root/config/tuncfg.json' });
const secure = c.net.TunnelSecurity !== 'off';
console.log(jumboTsoSegs($OB_OVERLAY_MTU, { tunMtu: c.tun.MTUsize, secure }) ?? '');
" 2>/dev/null || true)
if [[ -n $segs ]]; then
  for l in $(ip -n "$OB_WORKLOAD_NS" -o link show type veth | awk -F': ' '{print $2}' | cut -d@ -f1); do
    ip -n "$OB_WORKLOAD_NS" link set dev "$l" gso_max_segs "$segs" || true
  done
fi
exec "$deno" run -A "$root/main.ts" daemon --subnet "$OB_POD_CIDR" --socket "$sock" --state-dir "$dir/state" \
  --cfg "$root/config/netcfg.json" --tuncfg "$root/config/tuncfg.json" --static-table "$dir/table.json" ${NM_ARGS:-}
