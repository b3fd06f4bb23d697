#!/usr/bin/env bash
# A mixed cluster: node1 and node4 run the x86-64 build, node2 an s390x (64-bit big-endian) dipcd and node3 an i386
# (32-bit) dipcd, both under qemu-user, in the namespaces of dipc-sim. Programs of every architecture run on nodes
# of every architecture (an s390x program beside the x86-64 daemon of node1 reads that daemon's control page).
# Checks what a user of a mixed cluster relies on: the producer/consumer example across byte orders both ways,
# semaphore values and IPC_STAT fields across byte orders, SEM_UNDO applied across byte orders, a segment homed on
# the s390x node read and written byte-exact by x86-64 processes on two nodes, a clear word where qemu-user has no
# userfaultfd, and daemons under qemu that stop on SIGTERM.
#
# Usage: hetero_test.sh BUILD S390X_BUILD I386_BUILD   (cross builds: scripts/cross/build.sh; exit 77 without them)
set -uo pipefail
build=$(cd "$1" && pwd)
s390x=$2
i386=$3
for f in "$s390x/bin/dipcd" "$i386/bin/dipcd" "$s390x/lib/libdipc.so" "$i386/lib/libdipc.so"; do
  if [ ! -x "$f" ] && [ ! -f "$f" ]; then echo "hetero: $f is missing (scripts/cross/build.sh): skipped"; exit 77; fi
done
command -v qemu-s390x-static >/dev/null && command -v qemu-i386-static >/dev/null ||
  { echo "hetero: qemu-user-static is not installed: skipped"; exit 77; }

sim="$build/bin/dipc-sim"
dir=$(mktemp -d /tmp/dipc-hetero.XXXXXX)
rmdir "$dir"
fails=0
passes=0
cleanup() {
  "$sim" down --dir "$dir" >"$dir.down" 2>&1
  if grep -q "ignored SIGTERM" "$dir.down"; then
    echo "FAIL: a daemon ignored SIGTERM:"; cat "$dir.down"; fails=$((fails + 1))
  fi
  rm -f "$dir.down"
}
check() {  # check NAME GOT WANT
  if [ "$2" == "$3" ]; then
    passes=$((passes + 1)); echo "ok: $1"
  else
    fails=$((fails + 1)); echo "FAIL: $1: got '$2', want '$3'"
  fi
}
contains() {  # contains NAME TEXT NEEDLE
  if grep -qF -- "$3" <<<"$2"; then passes=$((passes + 1)); echo "ok: $1"
  else fails=$((fails + 1)); echo "FAIL: $1: '$3' not in:"; sed 's/^/    /' <<<"$2"; fi
}
field() { sed -n "s/^$2=\([^ ]*\).*/\1/p" <<<"$1" | head -n1; }  # field TEXT NAME: the first NAME=value
line() { grep -m1 "^$2=" <<<"$1"; }

qemu_s390x=(qemu-s390x-static -L "$s390x/sysroot")
qemu_i386=(qemu-i386-static -L "$i386/sysroot")
# prog ARCH NAME: the path of a program of that architecture
prog() {
  local b
  case "$1" in x86) b=$build ;; s390x) b=$s390x ;; i386) b=$i386 ;; esac
  if [ -x "$b/bin/$2" ]; then echo "$b/bin/$2"; else echo "$b/tests/progs/$2"; fi
}
# run ARCH NODE PROG ARGS...: PROG of ARCH on NODE under the preload of its own architecture, bounded.
run() {
  local arch=$1 node=$2 p
  p=$(prog "$arch" "$3")
  shift 3
  case "$arch" in
    x86) timeout 180 "$sim" exec --dir "$dir" --preload "$node" -- "$p" "$@" ;;
    s390x) timeout 180 "$sim" exec --dir "$dir" "$node" -- env LD_PRELOAD="$s390x/lib/libdipc.so" "${qemu_s390x[@]}" "$p" "$@" ;;
    i386) timeout 180 "$sim" exec --dir "$dir" "$node" -- env LD_PRELOAD="$i386/lib/libdipc.so" "${qemu_i386[@]}" "$p" "$@" ;;
  esac
}

start=$SECONDS
"$sim" up -n 4 --dir "$dir" --dsm-quantum-us 0 \
  --node-daemon "2=${qemu_s390x[*]} $s390x/bin/dipcd" --node-daemon "3=${qemu_i386[*]} $i386/bin/dipcd" ||
  { echo "FAIL: the mixed cluster did not come up"; exit 1; }
trap cleanup EXIT
echo "hetero: cluster up in $((SECONDS - start)) s (node1, node4 x86-64; node2 s390x; node3 i386 under qemu-user)"
key() { printf '0x%x' $((0x4e700000 + $1 * 16 + RANDOM % 16)); }

# ---- producer/consumer across byte orders, both ways ------------------------------------------------------------
# prodcons uses fixed keys: one run at a time, each removes its objects at the end.
prodcons_case() {  # prodcons_case NAME CONSUMER_ARCH CONSUMER_NODE [PRODUCER_ARCH PRODUCER_NODE]...
  local name=$1 carch=$2 cnode=$3 n=0 out pids=() i=0
  shift 3
  n=$(($# / 2))
  run "$carch" "$cnode" prodcons consumer "$n" 60 >"$dir.cons" 2>&1 &
  local cpid=$!
  while [ $# -gt 0 ]; do
    run "$1" "$2" prodcons producer "$i" 60 >"$dir.prod$i" 2>&1 &
    pids+=($!)
    i=$((i + 1))
    shift 2
  done
  for p in "${pids[@]}"; do wait "$p"; done
  wait "$cpid"
  out=$(cat "$dir.cons" "$dir".prod*)
  rm -f "$dir.cons" "$dir".prod*
  contains "$name" "$out" "received $((n * 60)) items, none lost, none duplicated"
}
prodcons_case "prodcons: consumer on s390x, producers on x86-64 and i386" s390x 2 x86 1 i386 3
prodcons_case "prodcons: consumer on x86-64, producers on s390x, i386 and an s390x program on the x86-64 node" \
  x86 1 s390x 2 i386 3 s390x 1
prodcons_case "prodcons: consumer on i386, producers on s390x and x86-64" i386 3 s390x 2 x86 4

# ---- semaphore values and IPC_STAT fields across byte orders ----------------------------------------------------
k=$(key 1)
out=$(run s390x 2 ipcop "semget:$k:3:creat+excl+dipc+0640" setval:@:0:7 setval:@:1:4660 setval:@:2:32001)
id=$(field "$out" semget)
check "semaphores set on s390x (home s390x)" "$(field "$out" setval)" "0"
for a in "x86 1" "i386 3" "s390x 1"; do
  set -- $a
  out=$(run "$1" "$2" ipcop getall:$id semstat:$id "getval:$id:1")
  check "semaphore values set on s390x read by $1 on node$2" "$(line "$out" getall)" "getall=0 7 4660 32001"
  check "IPC_STAT of an s390x-homed set read by $1 on node$2" "$(line "$out" semstat)" \
    "semstat=0 key=$k mode=640 uid=$(id -u) nsems=3"
done
k=$(key 2)
out=$(run i386 3 ipcop "semget:$k:2:creat+excl+dipc+0604" setall:@:513,258)
id2=$(field "$out" semget)
out=$(run s390x 2 ipcop getall:$id2 semstat:$id2)
check "semaphore values set on i386 read on s390x" "$(line "$out" getall)" "getall=0 513 258"
check "IPC_STAT of an i386-homed set read on s390x" "$(line "$out" semstat)" "semstat=0 key=$k mode=604 uid=$(id -u) nsems=2"
k=$(key 3)
out=$(run x86 1 ipcop "msgget:$k:creat+excl+dipc+0660" msgsnd:@:3:abcdefghij:0 msgsnd:@:5:xyz:0)
qid=$(field "$out" msgget)
out=$(run s390x 2 ipcop msgstat:$qid msgrcv:$qid:5:100:0)
check "IPC_STAT of an x86-64-homed queue read on s390x" "$(line "$out" msgstat)" "msgstat=0 qnum=2 cbytes=13 qbytes=$(cat /proc/sys/kernel/msgmnb) mode=660"
check "message text and type from x86-64 received on s390x" "$(line "$out" msgrcv)" "msgrcv=3 type=5 text=xyz"
out=$(run i386 3 ipcop msgrcv:$qid:0:100:0 msgrm:$qid)
check "message from x86-64 received on i386" "$(line "$out" msgrcv)" "msgrcv=10 type=3 text=abcdefghij"

# ---- SEM_UNDO across byte orders --------------------------------------------------------------------------------
undo_case() {  # undo_case NAME HOLDER_ARCH HOLDER_NODE SET_ID READER_ARCH READER_NODE
  local name=$1 harch=$2 hnode=$3 sid=$4 rarch=$5 rnode=$6 out
  run "$rarch" "$rnode" ipcop "setall:$sid:1,0,0" >/dev/null
  run "$harch" "$hnode" semundo "$sid" pause >"$dir.undo" 2>&1 &
  local hpid=$!
  local deadline=$((SECONDS + 60))
  until grep -q held "$dir.undo" || [ $SECONDS -ge $deadline ]; do sleep 0.1; done
  out=$(run "$rarch" "$rnode" ipcop getall:$sid)
  check "$name: taken" "$(line "$out" getall)" "getall=0 0 2 0"
  # The program itself (timeout -> dipc-sim -> nsenter -F -> env -> qemu all exec or wait): kill the semundo process.
  local p
  for p in $(pgrep -f "semundo $sid pause"); do kill -KILL "$p" 2>/dev/null; done
  wait "$hpid" 2>/dev/null
  deadline=$((SECONDS + 30))
  until out=$(run "$rarch" "$rnode" ipcop getall:$sid) && [ "$(line "$out" getall)" == "getall=0 1 0 0" ] ||
    [ $SECONDS -ge $deadline ]; do sleep 0.2; done
  check "$name: undone after kill -9" "$(line "$out" getall)" "getall=0 1 0 0"
  rm -f "$dir.undo"
}
k=$(key 4)
out=$(run x86 1 ipcop "semget:$k:3:creat+excl+dipc+0666")
sx=$(field "$out" semget)
undo_case "SEM_UNDO of an s390x process on a set homed on x86-64" s390x 2 "$sx" i386 3
k=$(key 5)
out=$(run s390x 2 ipcop "semget:$k:3:creat+excl+dipc+0666")
ss=$(field "$out" semget)
undo_case "SEM_UNDO of an x86-64 process on a set homed on s390x" x86 1 "$ss" s390x 2
run x86 4 ipcop semrm:$id semrm:$id2 semrm:$sx semrm:$ss >/dev/null

# ---- a segment homed on the s390x node, read and written byte-exact by x86-64 processes ---------------------------
k=$(key 6)
size=$((3 * 65536 + 100))
out=$(run s390x 2 shm_tool "get:$k:$size:creat+excl+dipc+0666" stat)
sid=$(field "$out" get)
check "segment created on s390x (home s390x)" "$(field "$out" stat)" "0"
out=$(run x86 1 shm_tool "get:$k:0:dipc+0666" at sparsew:4096 "wstr:100:bytes-from-node1" dt)
check "x86-64 node1 writes the s390x-homed segment" "$(field "$out" dt)" "0"
out=$(run x86 4 shm_tool "at:$sid" sparsec:4096 rstr:100:16 "wstr:70000:bytes-from-node4" dt)
check "x86-64 node4 reads node1's words byte-exact" "$(field "$out" sparsec)" "0"
check "x86-64 node4 reads node1's bytes" "$(field "$out" rstr)" "bytes-from-node1"
out=$(run x86 1 shm_tool "at:$sid" rstr:70000:16 "stat:$sid" dt)
check "x86-64 node1 reads node4's bytes" "$(field "$out" rstr)" "bytes-from-node4"
out=$(run s390x 2 shm_tool "stat:$sid")
contains "IPC_STAT of the segment on s390x" "$(line "$out" stat)" "segsz=$size nattch=0"
# qemu-user 7.2 has no userfaultfd: a program under it cannot attach, and is told why once.
out=$(run i386 3 shm_tool "at:$sid" 2>&1)
if [ "$(field "$out" at)" == "0" ]; then
  passes=$((passes + 1)); echo "ok: an i386 program under qemu-user attaches (this qemu has userfaultfd)"
else
  contains "shmat under qemu-user without userfaultfd says why" "$out" "dipc: shmat of a distributed shared memory segment fails: userfaultfd"
fi
run x86 4 shm_tool "rm:$sid" >/dev/null

echo "hetero: $((SECONDS - start)) s"
cleanup
trap - EXIT
echo "$passes passed, $fails failed"
[ "$fails" -eq 0 ]
