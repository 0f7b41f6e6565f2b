#!/bin/bash
# bench/relay.sh: relay throughput: kale relaying to Postfix's smtp-sink versus
# a private Postfix relaying to the same kind of sink; both fed by smtp-source.
# Not a test (never part of `make test`). Run as root. See docs/performance.md.
#
# Usage: bench/relay.sh [quick] [postfix|kale|both]
#   quick        N=2000 unless N is set (smoke run)
# Environment:
#   N=20000 SIZE=4096 SESSIONS=50   messages, payload bytes, parallel sessions
#   TIMEOUT=600                     seconds to wait until the sink has every message
#   KALE_BUILD=build                build dir holding kaled and kalectl
#   BENCH_TMP=/var/tmp KEEP=1       temp dirs; keep them
{
set -eu
set -o pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
QUICK=0
WHICH=both
for arg in "$@"; do
    case "$arg" in
    quick) QUICK=1 ;;
    postfix | kale | both) WHICH=$arg ;;
    -h | --help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "usage: $0 [quick] [postfix|kale|both]" >&2; exit 2 ;;
    esac
done
if [ "$QUICK" = 1 ]; then N=${N:-2000}; else N=${N:-20000}; fi
SIZE=${SIZE:-4096}
SESSIONS=${SESSIONS:-50}
TIMEOUT=${TIMEOUT:-600}
BUILD="$ROOT/${KALE_BUILD:-build}"
BENCH_TMP=${BENCH_TMP:-/var/tmp}
KEEP=${KEEP:-0}
SMTP_SOURCE=/usr/sbin/smtp-source
SMTP_SINK=/usr/sbin/smtp-sink
for v in N SIZE SESSIONS TIMEOUT; do
    case "${!v}" in '' | *[!0-9]* | 0) echo "relay.sh: $v must be a positive integer" >&2; exit 2 ;; esac
done
if [ "$(id -u)" != 0 ]; then echo "relay.sh: must run as root" >&2; exit 2; fi
[ -x "$SMTP_SOURCE" ] && [ -x "$SMTP_SINK" ] && command -v postfix >/dev/null ||
    { echo "relay.sh: needs postfix (smtp-source, smtp-sink): apt-get install postfix" >&2; exit 2; }
PF_PROCS=$((SESSIONS * 2 > 100 ? SESSIONS * 2 : 100))
KALE_PER_IP=$((SESSIONS * 4 > 200 ? SESSIONS * 4 : 200))

log() { printf '%s relay.sh: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
FAILED=0
die() { log "ERROR: $*"; FAILED=1; exit 1; }
now() { date +%s.%N; }

PF_DIR="" PF_STARTED=0 KALE_DIR="" KALE_PID="" SINK_PID="" SRC_PID=""
stop_postfix() {
    [ "$PF_STARTED" = 1 ] || return 0
    postfix -c "$PF_DIR/etc" stop >/dev/null 2>&1 || true
    PF_STARTED=0
    sleep 1
}
stop_kale() {
    [ -n "$KALE_PID" ] || return 0
    kill -TERM "$KALE_PID" 2>/dev/null || true
    for _ in $(seq 1 150); do kill -0 "$KALE_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$KALE_PID" 2>/dev/null || true
    wait "$KALE_PID" 2>/dev/null || true
    KALE_PID=""
}
stop_sink() {
    [ -n "$SINK_PID" ] || return 0
    kill -TERM "$SINK_PID" 2>/dev/null || true
    wait "$SINK_PID" 2>/dev/null || true
    SINK_PID=""
}
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
    local rc=$?
    set +e
    [ -n "$SRC_PID" ] && kill -TERM "$SRC_PID" 2>/dev/null
    stop_postfix
    stop_kale
    stop_sink
    for d in "$PF_DIR" "$KALE_DIR"; do
        [ -n "$d" ] && [ -d "$d" ] || continue
        if [ "$KEEP" = 1 ] || [ "$FAILED" = 1 ]; then log "kept $d"; else rm -rf "$d"; fi
    done
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    /usr/bin/python3 -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_port() {
    local end=$(($(date +%s) + $2))
    while [ "$(date +%s)" -lt "$end" ]; do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}
CLK_TCK=$(getconf CLK_TCK)
tree_cpu() { # master pid: CPU s of it and its live children
    local pids p
    pids="$1 $(ps -o pid= --ppid "$1" 2>/dev/null | tr '\n' ' ')"
    for p in $pids; do sed 's/.*) //' "/proc/$p/stat" 2>/dev/null || true; done |
        awk -v hz="$CLK_TCK" '{ t += $12 + $13 + $14 + $15 } END { printf "%.2f", t / hz }'
}

# start_sink DIR: smtp-sink on a free port, counting messages (-c) into DIR/sink.out
start_sink() {
    SINK_PORT=$(free_port)
    "$SMTP_SINK" -c -u nobody "127.0.0.1:$SINK_PORT" 1024 >"$1/sink.out" 2>&1 &
    SINK_PID=$!
    wait_port "$SINK_PORT" 10 || die "smtp-sink did not listen"
}
sink_count() { # messages the sink has taken: the last "mesg=N" it printed
    tr '\r' '\n' <"$1/sink.out" | sed -n 's/.*mesg=\([0-9]*\).*/\1/p' | tail -1
}

# run_one NAME PORT DIR MASTERPID -> R_ACCEPT_S R_E2E_S R_DONE R_SRV_CPU
run_one() {
    local name=$1 port=$2 dir=$3 mpid=$4 t0 t1 t2 n deadline s0
    log "$name: smtp-source -s $SESSIONS -m $N -l $SIZE -> 127.0.0.1:$port, relayed to smtp-sink :$SINK_PORT"
    s0=$(tree_cpu "$mpid")
    t0=$(now)
    "$SMTP_SOURCE" -4 -s "$SESSIONS" -m "$N" -l "$SIZE" -M client.test \
        -f sender@client.test -t user@bench.test "127.0.0.1:$port" >"$dir/source.out" 2>&1 &
    SRC_PID=$!
    wait "$SRC_PID" || { cat "$dir/source.out" >&2; die "$name: smtp-source failed"; }
    SRC_PID=""
    t1=$(now)
    R_ACCEPT_S=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
    deadline=$(awk -v a="$t0" -v t="$TIMEOUT" 'BEGIN { printf "%d", a + t }')
    R_E2E_S=""
    while :; do
        n=$(sink_count "$dir"); n=${n:-0}
        if [ "$n" -ge "$N" ]; then
            t2=$(now)
            R_E2E_S=$(awk -v a="$t0" -v b="$t2" 'BEGIN { printf "%.3f", b - a }')
            break
        fi
        if [ "$(date +%s)" -ge "$deadline" ]; then
            log "$name: TIMEOUT: sink has $n of $N"
            FAILED=1
            break
        fi
        sleep 0.1
    done
    R_DONE=$n
    R_SRV_CPU=$(awk -v a="$s0" -v b="$(tree_cpu "$mpid")" 'BEGIN { printf "%.1f", b - a }')
    log "$name: accepted in ${R_ACCEPT_S}s, all relayed after ${R_E2E_S:-TIMEOUT}s"
}
rate() { if [ -z "$2" ]; then echo TIMEOUT; else awk -v n="$1" -v s="$2" 'BEGIN { printf "%.1f", n / s }'; fi; }

bench_postfix() {
    local port etc master_dist
    port=$(free_port)
    PF_DIR=$(mktemp -d "$BENCH_TMP/kale-relaybench-postfix.XXXXXX")
    chmod 755 "$PF_DIR"
    etc="$PF_DIR/etc"
    mkdir -p "$etc" "$PF_DIR/spool" "$PF_DIR/data"
    chown postfix "$PF_DIR/data"
    start_sink "$PF_DIR"
    cat >"$etc/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $PF_DIR/spool
data_directory = $PF_DIR/data
mail_owner = postfix
setgid_group = postdrop
syslog_name = postfix-kalerelaybench
maillog_file_prefixes = /var, /dev/stdout, $PF_DIR
maillog_file = $PF_DIR/maillog
myhostname = mx.bench.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains = bench.test
relayhost = [127.0.0.1]:$SINK_PORT
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_peername_lookup = no
disable_dns_lookups = yes
smtp_host_lookup = native
alias_maps =
alias_database =
local_recipient_maps =
default_process_limit = $PF_PROCS
EOF
    master_dist=/usr/share/postfix/master.cf.dist
    [ -r "$master_dist" ] || master_dist=/etc/postfix/master.cf.proto
    {
        echo "127.0.0.1:$port inet n - n - - smtpd"
        awk '
            /^#/ || /^[ \t]*$/ { next }
            /^[ \t]/ { if (keep) print; next }
            { keep = 0
              if ($1 == "smtp" && $2 == "inet") next
              if ($1 ~ /^(pickup|cleanup|qmgr|rewrite|bounce|defer|trace|verify|flush|proxymap|proxywrite|smtp|relay|showq|error|retry|discard|local|anvil|scache|postlog)$/) {
                  keep = 1; $5 = "n"; print } }' "$master_dist"
    } >"$etc/master.cf"
    postfix -c "$etc" set-permissions >/dev/null 2>&1 || true
    postfix -c "$etc" check || die "postfix check failed"
    postfix -c "$etc" start >/dev/null 2>&1 || die "postfix start failed"
    PF_STARTED=1
    wait_port "$port" 20 || die "postfix smtpd did not listen"
    run_one postfix "$port" "$PF_DIR" "$(tr -dc '0-9' <"$PF_DIR/spool/pid/master.pid")"
    PF_ACCEPT=$R_ACCEPT_S PF_E2E=$R_E2E_S PF_DONE=$R_DONE PF_CPU=$R_SRV_CPU
    stop_postfix
    stop_sink
}

bench_kale() {
    local port conf
    [ -x "$BUILD/kaled" ] && [ -x "$BUILD/kalectl" ] || die "$BUILD/kaled missing: build first"
    port=$(free_port)
    KALE_DIR=$(mktemp -d "$BENCH_TMP/kale-relaybench-kale.XXXXXX")
    chmod 755 "$KALE_DIR"
    start_sink "$KALE_DIR"
    conf="$KALE_DIR/kale.conf"
    cat >"$conf" <<EOF
[server]
hostname = mx.bench.test
data_dir = var
run_as = nobody

[listen]
smtp = 127.0.0.1:$port
submission =
submissions =
pop3 =
pop3s =
imap =
imaps =
admin =

[limits]
max_connections_per_ip = $KALE_PER_IP
command_timeout = 60
EOF
    "$BUILD/kalectl" -c "$conf" domain add bench.test --relay "127.0.0.1:$SINK_PORT" >/dev/null ||
        die "kalectl domain add failed"
    "$BUILD/kaled" -c "$conf" >"$KALE_DIR/kaled.log" 2>&1 &
    KALE_PID=$!
    wait_port "$port" 20 || { tail -20 "$KALE_DIR/kaled.log" >&2; die "kaled did not listen"; }
    run_one kale "$port" "$KALE_DIR" "$KALE_PID"
    KALE_ACCEPT=$R_ACCEPT_S KALE_E2E=$R_E2E_S KALE_DONE=$R_DONE KALE_CPU=$R_SRV_CPU
    stop_kale
    stop_sink
}

PF_ACCEPT="" PF_E2E="" PF_DONE="" PF_CPU="" KALE_ACCEPT="" KALE_E2E="" KALE_DONE="" KALE_CPU=""
log "N=$N SIZE=$SIZE SESSIONS=$SESSIONS nproc=$(nproc) load=$(cut -d' ' -f1-3 /proc/loadavg)"
if [ "$WHICH" != kale ]; then bench_postfix; fi
if [ "$WHICH" != postfix ]; then bench_kale; fi
echo
printf 'relay.sh: %d messages x %d bytes, 1 recipient, %d sessions in, relayed to smtp-sink\n' \
    "$N" "$SIZE" "$SESSIONS"
printf '%-8s %9s %10s %9s %10s %12s %10s\n' server accept_s accept/s e2e_s e2e/s relayed srv_cpu_s
if [ "$WHICH" != kale ]; then
    printf '%-8s %9s %10s %9s %10s %12s %10s\n' postfix "$PF_ACCEPT" "$(rate "$N" "$PF_ACCEPT")" \
        "${PF_E2E:-TIMEOUT}" "$(rate "$N" "$PF_E2E")" "$PF_DONE/$N" "$PF_CPU"
fi
if [ "$WHICH" != postfix ]; then
    printf '%-8s %9s %10s %9s %10s %12s %10s\n' kale "$KALE_ACCEPT" "$(rate "$N" "$KALE_ACCEPT")" \
        "${KALE_E2E:-TIMEOUT}" "$(rate "$N" "$KALE_E2E")" "$KALE_DONE/$N" "$KALE_CPU"
fi
if [ "$WHICH" = both ] && [ -n "$PF_E2E" ] && [ -n "$KALE_E2E" ]; then
    awk -v p="$PF_E2E" -v k="$KALE_E2E" 'BEGIN { printf "ratio kale/postfix, end to end: %.2fx\n", p / k }'
fi
status=0
if [ "$WHICH" != kale ] && [ -z "$PF_E2E" ]; then status=1; fi
if [ "$WHICH" != postfix ] && [ -z "$KALE_E2E" ]; then status=1; fi
exit "$status"
}
