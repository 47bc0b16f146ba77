#!/bin/sh
# avahi-resolve against the node's mDNS responder, from inside an instance:
#   nsenter -t PID -n unshare -m --propagation private sh avahi_resolve.sh DIR NAME 4|6
# Avahi needs D-Bus, so this starts a private system bus (dbus-daemon) and an avahi-daemon (no
# publishing, no root drop, no chroot), both on tmpfs mounts of /run/dbus and /run/avahi-daemon
# that exist only in this mount namespace, runs `avahi-resolve -4|-6 -n NAME`, and stops both by
# PID. DIR (the test's temp dir) receives the configurations and avahi's log.
dir=$1
name=$2
fam=$3
mkdir -p /run/dbus /run/avahi-daemon
mount -t tmpfs tmpfs /run/dbus || exit 2
mount -t tmpfs tmpfs /run/avahi-daemon || exit 2
cat >"$dir/bus.conf" <<XML
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=/run/dbus/system_bus_socket</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="root"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
XML
cat >"$dir/avahi.conf" <<INI
[server]
use-ipv4=yes
use-ipv6=yes
enable-dbus=yes
[wide-area]
enable-wide-area=no
[publish]
disable-publishing=yes
disable-user-service-publishing=yes
[reflector]
enable-reflector=no
INI
dbus-daemon --config-file="$dir/bus.conf" --fork --print-address=1 --print-pid=1 >"$dir/bus.out" || exit 2
buspid=$(sed -n 2p "$dir/bus.out")
avahi-daemon --no-drop-root --no-chroot --no-rlimits --no-proc-title -f "$dir/avahi.conf" >"$dir/avahi.log" 2>&1 &
apid=$!
i=0
while [ $i -lt 100 ] && ! grep -q "Server startup complete" "$dir/avahi.log"; do
  sleep 0.1
  i=$((i + 1))
done
timeout 10 avahi-resolve "-$fam" -n "$name"
rc=$?
kill "$apid" "$buspid" 2>/dev/null
wait "$apid" 2>/dev/null
exit $rc
