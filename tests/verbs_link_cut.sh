#!/usr/bin/env bash
# A cut link under the verbs transport (ctest verbs.link_cut, labels verbs + verbs_extended; needs the softroce VM
# with --kernel trixie-backports: one rxe device per simulated node). Two nodes, node2's port on the simulated
# switch set down (`ip link set down`: the carrier of node2's veth goes) while both daemons have SENDs posted (the
# heartbeat posts one per heartbeat_ms on an idle link; nothing else acknowledges them).
#   1. dead_peer_ms = 0 (the silence detector off): what the RC queue pair itself does with the posted work within
#      30 s (the retries of a posted SEND are exhausted after ack timeout 1.07 s x 8 tries, about 9 s, on a device
#      that reports it); printed, not asserted: it is the device's behaviour (on rxe 7.3: nothing, see
#      docs/ARCHITECTURE.md "The verbs provider"). The link must come back up once the carrier is back.
#   2. The defaults (heartbeat_ms 1000, dead_peer_ms 5000): node1 declares node2 lost within dead_peer_ms plus one
#      heartbeat plus 2 s of slack for polling `dipc status` under emulation.
#   3. The link restored: both come back up (bounded).
#   usage: tests/verbs_link_cut.sh BUILD_DIR
set -euo pipefail
build=$(cd "${1:?usage: verbs_link_cut.sh BUILD_DIR}" && pwd)
bin=$build/bin
dir=$(mktemp -d /tmp/dipc-link-cut.XXXXXX)
cleanup() { "$bin/dipc-sim" down --dir "$dir" >/dev/null 2>&1 || true; rm -rf "$dir"; }
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; for k in 1 2; do echo "--- node$k.log" >&2; tail -n 30 "$dir/node$k.log" >&2; done; exit 1; }

"$bin/dipc-sim" up -n 2 --dir "$dir" --transport verbs --log-level info >"$dir.up" 2>&1 || { cat "$dir.up" >&2; fail "up"; }
tag=$(cat "$dir/tag")
now_ms() { echo $(($(date +%s%N) / 1000000)); }
state() {  # NODE PEER: up | down | connecting ... (the last word of the peer's line in `dipc status`)
  "$bin/dipc-sim" exec --dir "$dir" "$1" -- "$bin/dipc" status 2>/dev/null |
    awk -v p="  node$2 (id $2," 'index($0, p) == 1 { print $NF }'
}
wait_state() {  # NODE PEER STATE SECONDS: polls `dipc status` (each call bounded by dipc's own timeout)
  local end=$(($(now_ms) + $4 * 1000))
  while [ "$(now_ms)" -lt "$end" ]; do
    [ "$(state "$1" "$2")" = "$3" ] && return 0
  done
  return 1
}
restart_with() {  # TOML lines appended to the cluster file (empty: the file as dipc-sim wrote it), both daemons
  for k in 1 2; do "$bin/dipc-sim" kill-daemon --dir "$dir" "node$k" >/dev/null; done
  [ -f "$dir/cluster.toml.orig" ] || cp "$dir/cluster.toml" "$dir/cluster.toml.orig"
  { cat "$dir/cluster.toml.orig"; printf '%s' "$1"; } >"$dir/cluster.toml"
  # Both at once: start-daemon waits (bounded) until its daemon reached every peer.
  local p1 p2
  "$bin/dipc-sim" start-daemon --dir "$dir" node1 >/dev/null & p1=$!
  "$bin/dipc-sim" start-daemon --dir "$dir" node2 >/dev/null & p2=$!
  wait "$p1" || fail "node1's daemon did not start"
  wait "$p2" || fail "node2's daemon did not start"
  wait_state 1 2 up 60 || fail "node1 does not see node2 up after a restart"
  wait_state 2 1 up 60 || fail "node2 does not see node1 up after a restart"
}
cut() { ip -n "dipc-$tag-sw" link set n2 "$1"; }

echo "1. dead_peer_ms = 0: does the queue pair fail the posted work?"
restart_with $'\n[transport.verbs]\nheartbeat_ms = 1000\ndead_peer_ms = 0\n'
lines=$(wc -l <"$dir/node1.log")
t0=$(now_ms)
cut down
if wait_state 1 2 down 30; then
  echo "   node1 declared node2 lost after $(($(now_ms) - t0)) ms (the queue pair failed its work):"
  tail -n +"$((lines + 1))" "$dir/node1.log" | grep -i "verbs" | sed 's/^/     /' | head -n 5
else
  echo "   in 30 s (3x the RC retry budget of about 9 s) no posted work failed: node2 still $(state 1 2) at node1;"
  echo "   without the heartbeat's silence detector a cut carrier goes unnoticed on this device"
fi
cut up
wait_state 1 2 up 90 || fail "node1 does not see node2 up again after the link came back"

echo "2. the defaults (heartbeat_ms 1000, dead_peer_ms 5000)"
restart_with ""
lines=$(wc -l <"$dir/node1.log")
t0=$(now_ms)
cut down
wait_state 1 2 down 8 || fail "node1 did not declare node2 lost within dead_peer_ms + heartbeat + 2 s"
echo "   node1 declared node2 lost after $(($(now_ms) - t0)) ms; node1's log:"
tail -n +"$((lines + 1))" "$dir/node1.log" | grep -i "verbs" | sed 's/^/     /' | head -n 5
echo "3. the link restored"
cut up
wait_state 1 2 up 90 || fail "node1 does not see node2 up again after the link came back"
wait_state 2 1 up 90 || fail "node2 does not see node1 up again after the link came back"
echo "PASS"
