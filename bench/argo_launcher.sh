#!/bin/sh
# MPICH's mpiexec calls this as its ssh (`-launcher ssh -launcher-exec bench/argo_launcher.sh`) with
# [OPTIONS] HOST COMMAND...: it runs COMMAND (hydra's proxy) inside the namespaces of the dipc-sim node whose address
# is HOST, so Argo's ranks talk over the nodes' eth0 and bridge, the path dipc's daemons use. bench/run_shm.sh sets
# DIPC_SIM (the dipc-sim binary) and DIPC_SIM_DIR (the cluster's directory).
while [ "${1#-}" != "$1" ]; do shift; done
host=$1
shift
node=""
for f in "$DIPC_SIM_DIR"/node*.addr; do
  [ "$(cat "$f")" = "$host" ] && node=$(basename "$f" .addr)
done
[ -n "$node" ] || { echo "argo_launcher.sh: no node of $DIPC_SIM_DIR has address $host" >&2; exit 1; }
exec "$DIPC_SIM" exec --dir "$DIPC_SIM_DIR" "$node" -- sh -c "$*"
