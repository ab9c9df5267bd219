#!/usr/bin/env bash
# A local multi-node Ray cluster on ONE machine, for testing placement and `--address auto` code paths.
#
#   bash cluster/local_cluster.sh up [--workers N] [--cpus-per-node C] [--head-cpus C]
#                                    [--object-store-mb M] [--auth token|disabled] [--dir DIR]
#   source "$(bash cluster/local_cluster.sh env-file)"     # or: eval "$(bash cluster/local_cluster.sh env)"
#   bash cluster/local_cluster.sh status [--dir DIR]
#   bash cluster/local_cluster.sh down   [--dir DIR]
#
# `up` starts a head node plus N worker nodes. Each node is its own raylet (`ray start`) with its own
# --num-cpus and a custom resource `node_k: 1` (head = node_0, workers = node_1..node_N), so a test can
# pin work to a node (`resources={"node_2": 0.01}`) and see where it ran. GPUs are not advertised
# (--num-gpus 0), so a GPU box does not count its GPUs once per raylet.
#
# Network: the script asks for 127.0.0.1 everywhere Ray lets it: --node-ip-address 127.0.0.1, the
# dashboard (HTTP + Jobs API) on 127.0.0.1 (Ray Train V2 needs the dashboard: its placement-group
# cleaner queries the State API that the dashboard serves), RAY_ADDRESS=127.0.0.1:PORT for clients.
# Ray 2.60 itself does not go further: `ray start` replaces a loopback --node-ip-address with the
# machine's routable IP (ray/_private/services.py: resolve_ip_for_localhost), and the GCS and raylet
# gRPC servers listen on all interfaces (checked with `ss -ltnp` on this machine). That is why token
# authentication is on by default here: every gRPC and HTTP entry point then requires the token.
# On a machine reachable from other hosts, keep --auth token and firewall the ports as well.
#
# Ports: the GCS, dashboard, Ray client server and each node's dashboard-agent port are picked free at
# `up` (the agent port defaults to 52365 on every node, which would collide on one machine). Other
# ports are chosen by Ray.
#
# Auth (Ray 2.60, see ../shared/reference/env_probe.md section 4.5): every process of the cluster and
# every client must agree on RAY_AUTH_MODE. `ray start --head` silently switches to token mode when
# ~/.ray/auth_token exists, while `ray status` and worker nodes do not, which gives
# "InvalidAuthToken ... RAY_AUTH_MODE is currently 'disabled'". So this script always sets
# RAY_AUTH_MODE explicitly:
#   --auth token (default): a fresh random token is written to DIR/auth_token (mode 600) and handed to
#     the nodes with RAY_AUTH_TOKEN_PATH; ~/.ray/auth_token is neither read nor written.
#   --auth disabled: no authentication; anyone who can reach this machine's GCS/raylet ports can run
#     code in the cluster (see Network above). Only for throw-away machines.
# Clients (ray status, ray job submit, ray.init(address="auto")) need the same settings:
# DIR/env.sh exports RAY_ADDRESS, RAY_API_SERVER_ADDRESS, RAY_AUTH_MODE and RAY_AUTH_TOKEN_PATH.
#
# Stopping: `down` never calls `ray stop`, which kills every Ray process on the machine (other users'
# clusters, other tests' ray.init() sessions). Every process this script starts gets the environment
# variable MIXKD_LOCAL_CLUSTER=<DIR>; Ray's own children (GCS, raylets, dashboard, agents, workers,
# job drivers) inherit it, and setproctitle ("ray::IDLE") does not change /proc/PID/environ. `down`
# signals exactly the processes carrying that marker
# (SIGTERM, then SIGKILL after a grace period) and reports any that survive. The Ray temp dir is
# DIR/ray (logs stay there after `down` and are wiped by the next `up`).
set -euo pipefail

die() { echo "local_cluster: $*" >&2; exit 1; }
log() { echo "local_cluster: $*" >&2; }

usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; }

CMD="${1:-}"
[[ -n "$CMD" ]] || { usage; exit 2; }
shift
case "$CMD" in -h|--help|help) usage; exit 0 ;; esac

WORKERS=2
CPUS=1
HEAD_CPUS=""
OBJ_MB=256
AUTH=token
DIR="${MIXKD_LOCAL_CLUSTER_DIR:-/tmp/mixkd-ray-$(id -u)}"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --workers) WORKERS="$2"; shift 2 ;;
        --cpus-per-node) CPUS="$2"; shift 2 ;;
        --head-cpus) HEAD_CPUS="$2"; shift 2 ;;
        --object-store-mb) OBJ_MB="$2"; shift 2 ;;
        --auth) AUTH="$2"; shift 2 ;;
        --dir) DIR="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument: $1 (try --help)" ;;
    esac
done
[[ "$WORKERS" =~ ^[0-9]+$ ]] || die "--workers must be a non-negative integer"
[[ "$CPUS" =~ ^[0-9]+$ ]] || die "--cpus-per-node must be a non-negative integer"
HEAD_CPUS="${HEAD_CPUS:-$CPUS}"
[[ "$HEAD_CPUS" =~ ^[0-9]+$ ]] || die "--head-cpus must be a non-negative integer"
[[ "$OBJ_MB" =~ ^[0-9]+$ && "$OBJ_MB" -ge 80 ]] || die "--object-store-mb must be an integer >= 80"
[[ "$AUTH" == token || "$AUTH" == disabled ]] || die "--auth must be 'token' or 'disabled'"

mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd -P)"
TMP="$DIR/ray"
STATE="$DIR/state"
ENVFILE="$DIR/env.sh"
MARKER="MIXKD_LOCAL_CLUSTER=$DIR"
# Ray's unix sockets live under TMP/session_<date>_<pid>/sockets/ and must fit in 107 bytes.
(( ${#TMP} <= 40 )) || log "warning: '$TMP' is long; Ray's socket paths may exceed the 107-byte limit (use --dir with a short path)"

RAY="${RAY_BIN:-$(command -v ray || true)}"
PY="${PYTHON:-$(command -v python || command -v python3 || true)}"

# PIDs of every live process that carries our marker in its environment (never this shell).
cluster_pids() {
    local p
    for p in /proc/[0-9]*; do
        p="${p#/proc/}"
        [[ "$p" == "$$" || "$p" == "${BASHPID:-$$}" ]] && continue
        grep -qzxF -- "$MARKER" "/proc/$p/environ" 2>/dev/null && echo "$p"
    done
    return 0
}

signal_pids() {  # signal_pids SIG pid...
    local sig="$1"; shift
    [[ $# -gt 0 ]] && kill "-$sig" "$@" 2>/dev/null || true
}

wait_gone() {  # wait_gone SECONDS pid... ; returns 0 when none is alive
    local deadline=$((SECONDS + $1)); shift
    local p alive
    while :; do
        alive=()
        for p in "$@"; do kill -0 "$p" 2>/dev/null && alive+=("$p"); done
        [[ ${#alive[@]} -eq 0 ]] && return 0
        (( SECONDS >= deadline )) && return 1
        sleep 0.5
    done
}

do_down() {
    local pids gcs=() rest=() p
    mapfile -t pids < <(cluster_pids)
    if [[ ${#pids[@]} -eq 0 ]]; then
        log "no processes of the cluster in $DIR are running"
        rm -f "$STATE" "$ENVFILE" "$DIR/auth_token"
        return 0
    fi
    for p in "${pids[@]}"; do
        if [[ "$(cat "/proc/$p/comm" 2>/dev/null)" == gcs_server ]]; then gcs+=("$p"); else rest+=("$p"); fi
    done
    log "stopping ${#pids[@]} processes (raylets, workers, dashboard, agents first; GCS last)"
    signal_pids TERM "${rest[@]}"
    wait_gone 10 "${rest[@]}" || true
    signal_pids TERM "${gcs[@]}"
    wait_gone 5 "${gcs[@]}" || true
    mapfile -t pids < <(cluster_pids)
    if [[ ${#pids[@]} -gt 0 ]]; then
        log "SIGKILL to ${#pids[@]} processes that ignored SIGTERM: ${pids[*]}"
        signal_pids KILL "${pids[@]}"
        wait_gone 5 "${pids[@]}" || true
    fi
    mapfile -t pids < <(cluster_pids)
    rm -f "$STATE" "$ENVFILE" "$DIR/auth_token"
    if [[ ${#pids[@]} -gt 0 ]]; then
        die "processes still alive after SIGKILL: ${pids[*]}"
    fi
    log "down; logs kept in $TMP (wiped by the next 'up')"
}

write_env() {  # write_env GCS_PORT DASH_PORT
    {
        echo "# Generated by cluster/local_cluster.sh up; source it before ray status / ray.init(address=\"auto\")."
        echo "export RAY_ADDRESS=127.0.0.1:$1"
        echo "export RAY_API_SERVER_ADDRESS=http://127.0.0.1:$2"
        echo "export RAY_AUTH_MODE=$AUTH"
        if [[ "$AUTH" == token ]]; then
            echo "export RAY_AUTH_TOKEN_PATH=$DIR/auth_token"
            echo "unset RAY_AUTH_TOKEN   # it would take precedence over RAY_AUTH_TOKEN_PATH"
        fi
    } > "$ENVFILE"
}

do_up() {
    [[ -n "$RAY" && -x "$RAY" ]] || die "'ray' not found on PATH (activate the venv: . .venv/bin/activate)"
    [[ -n "$PY" ]] || die "python not found on PATH"
    if [[ -n "$(cluster_pids)" ]]; then
        die "a cluster from $DIR is already running (bash $0 status / down --dir $DIR)"
    fi
    rm -rf "$TMP" "$STATE" "$ENVFILE"
    mkdir -p "$TMP" "$DIR/logs"
    rm -f "$DIR"/logs/*.log

    # Free ports: GCS, dashboard, Ray client server, then one dashboard-agent port per node.
    local nports=$((3 + WORKERS + 1)) ports
    mapfile -t ports < <("$PY" - "$nports" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
for s in socks:
    print(s.getsockname()[1]); s.close()
EOF
)
    local gcs_port="${ports[0]}" dash_port="${ports[1]}" client_port="${ports[2]}"
    local osm=$((OBJ_MB * 1024 * 1024))

    # Environment shared by every node: explicit auth mode, the marker, no usage stats.
    export RAY_AUTH_MODE="$AUTH"
    unset RAY_AUTH_TOKEN RAY_ADDRESS
    if [[ "$AUTH" == token ]]; then
        (umask 077; "$PY" -c 'import secrets; print(secrets.token_hex(32))' > "$DIR/auth_token")
        export RAY_AUTH_TOKEN_PATH="$DIR/auth_token"
    else
        unset RAY_AUTH_TOKEN_PATH
        rm -f "$DIR/auth_token"
    fi
    export RAY_USAGE_STATS_ENABLED=0

    trap 'log "up failed; cleaning up"; do_down || true' ERR

    local t0=$SECONDS
    log "starting head (node_0, $HEAD_CPUS CPU) on 127.0.0.1:$gcs_port, dashboard 127.0.0.1:$dash_port, auth=$AUTH"
    if ! env "$MARKER" timeout 180 "$RAY" start --head \
            --node-ip-address=127.0.0.1 --port="$gcs_port" \
            --num-cpus="$HEAD_CPUS" --num-gpus=0 --resources='{"node_0": 1}' \
            --object-store-memory="$osm" --temp-dir="$TMP" \
            --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$dash_port" \
            --dashboard-agent-listen-port="${ports[3]}" --ray-client-server-port="$client_port" \
            --disable-usage-stats > "$DIR/logs/start-node_0.log" 2>&1; then
        cat "$DIR/logs/start-node_0.log" >&2
        false
    fi
    log "head up after $((SECONDS - t0)) s"

    local k
    for ((k = 1; k <= WORKERS; k++)); do
        log "starting worker node_$k ($CPUS CPU)"
        # Started one after another: raylets on one machine share the session's socket folder and
        # Ray picks socket names (raylet, raylet.1, ...) by looking at what already exists.
        # --include-log-monitor=false: the head's log monitor already tails the shared session logs.
        if ! env "$MARKER" timeout 180 "$RAY" start --address="127.0.0.1:$gcs_port" \
                --node-ip-address=127.0.0.1 \
                --num-cpus="$CPUS" --num-gpus=0 --resources="{\"node_$k\": 1}" \
                --object-store-memory="$osm" --temp-dir="$TMP" \
                --dashboard-agent-listen-port="${ports[$((3 + k))]}" \
                --include-log-monitor=false --disable-usage-stats > "$DIR/logs/start-node_$k.log" 2>&1; then
            cat "$DIR/logs/start-node_$k.log" >&2
            false
        fi
    done
    log "all $((WORKERS + 1)) raylets started after $((SECONDS - t0)) s; waiting for them to register"

    # Connect as a driver and wait until every node is alive (ray start returns once its raylet is up,
    # registration with the GCS can lag a moment).
    RAY_ADDRESS="127.0.0.1:$gcs_port" "$PY" - "$((WORKERS + 1))" <<'EOF'
import sys, time, ray
want = int(sys.argv[1])
ray.init(address="auto", logging_level="ERROR", log_to_driver=False)
deadline = time.time() + 60
while True:
    alive = [n for n in ray.nodes() if n["Alive"]]
    if len(alive) >= want or time.time() > deadline:
        break
    time.sleep(0.5)
ray.shutdown()
if len(alive) < want:
    sys.exit(f"only {len(alive)} of {want} nodes alive after 60 s")
EOF
    trap - ERR

    write_env "$gcs_port" "$dash_port"
    {
        echo "address=127.0.0.1:$gcs_port"
        echo "dashboard=http://127.0.0.1:$dash_port"
        echo "nodes=$((WORKERS + 1))"
        echo "auth=$AUTH"
        echo "started=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    } > "$STATE"
    log "up: $((WORKERS + 1)) nodes alive after $((SECONDS - t0)) s"
    cat <<EOF
Ray cluster up: head + $WORKERS workers (custom resources node_0..node_$WORKERS), auth=$AUTH
  address:    127.0.0.1:$gcs_port        (ray.init(address="auto") once env.sh is sourced)
  dashboard:  http://127.0.0.1:$dash_port
  client env: source $ENVFILE
  e.g.        source $ENVFILE && python experiments/glue_sweep.py --address auto --preset smoke
  status:     bash $0 status --dir $DIR
  stop:       bash $0 down --dir $DIR
EOF
}

do_status() {
    [[ -f "$ENVFILE" ]] || die "no cluster state in $DIR (not started with 'up'?)"
    local n
    n="$(cluster_pids | wc -l)"
    [[ "$n" -gt 0 ]] || die "env file present but no process of the cluster in $DIR is running (run 'down' to clear it)"
    # shellcheck disable=SC1090
    source "$ENVFILE"
    cat "$STATE" 2>/dev/null || true
    echo "processes: $n"
    "$PY" - <<'EOF'
import ray
ray.init(address="auto", logging_level="ERROR", log_to_driver=False)
print(f"{'node':8} {'alive':5} {'CPU':>5} {'node_id':14} ip")
rows = []
for n in ray.nodes():
    r = n.get("Resources", {})
    name = next((k for k in r if k.startswith("node_") and k[5:].isdigit()), "?")
    rows.append((name, n["Alive"], r.get("CPU", 0), n["NodeID"][:12], n["NodeManagerAddress"]))
for name, alive, cpu, nid, ip in sorted(rows, key=lambda t: (not t[1], t[0])):
    print(f"{name:8} {str(alive):5} {cpu:5g} {nid:14} {ip}")
ray.shutdown()
EOF
    "$RAY" status
}

case "$CMD" in
    up) do_up ;;
    down) do_down ;;
    status) do_status ;;
    env) [[ -f "$ENVFILE" ]] || die "no cluster state in $DIR"; cat "$ENVFILE" ;;
    env-file) [[ -f "$ENVFILE" ]] || die "no cluster state in $DIR"; echo "$ENVFILE" ;;
    *) die "unknown command '$CMD' (up | down | status | env | env-file)" ;;
esac
