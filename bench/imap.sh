#!/bin/bash
# bench/imap.sh: IMAP read throughput of kale's imapd against a private
# Dovecot instance serving a copy of the same Maildir, driven by
# bench/imap_client.py (Python standard library only).
# Not a test (never part of `make test`). Run as root. See docs/performance.md.
#
# Usage: bench/imap.sh [quick] [dovecot|kale|both]
#   quick        M=200 N=5 unless set (smoke run)
#   dovecot|kale run one half only (default: both)
# Environment:
#   M=2000 N=20 CHUNK=100 RUNS=2  messages, clients, bodies per FETCH, runs per server
#   TIMEOUT=600                   seconds a run may take before it is abandoned
#   KALE_BUILD=build              build dir holding kaled and kalectl
#   BENCH_TMP=/var/tmp            where the temp dir goes
#   KEEP=1                        keep the temp dir (logs, Maildirs, configs)

# One brace group, parsed before it runs: editing the file mid-run is harmless.
{
set -eu
set -o pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
QUICK=0
WHICH=both
for arg in "$@"; do
    case "$arg" in
    quick) QUICK=1 ;;
    dovecot | kale | both) WHICH=$arg ;;
    -h | --help)
        sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "usage: $0 [quick] [dovecot|kale|both]" >&2
        exit 2
        ;;
    esac
done

if [ "$QUICK" = 1 ]; then
    M=${M:-200}
    N=${N:-5}
else
    M=${M:-2000}
    N=${N:-20}
fi
CHUNK=${CHUNK:-100}
RUNS=${RUNS:-2}
TIMEOUT=${TIMEOUT:-600}
BUILD="$ROOT/${KALE_BUILD:-build}"
BENCH_TMP=${BENCH_TMP:-/var/tmp}
KEEP=${KEEP:-0}
PY=/usr/bin/python3
CLIENT="$ROOT/bench/imap_client.py"
BUSER=user@bench.test

for v in M N CHUNK RUNS TIMEOUT; do
    val=${!v}
    case "$val" in
    '' | *[!0-9]*)
        echo "imap.sh: $v must be a positive integer" >&2
        exit 2
        ;;
    esac
    val=$((10#$val))
    if [ "$val" -eq 0 ]; then
        echo "imap.sh: $v must be a positive integer" >&2
        exit 2
    fi
    printf -v "$v" '%d' "$val"
done
KALE_PER_IP=$((N * 2 > 500 ? N * 2 : 500))

if [ "$(id -u)" != 0 ]; then
    echo "imap.sh: must run as root (private Dovecot instance, kaled run_as)" >&2
    exit 2
fi

log() { printf '%s imap.sh: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
FAILED=0
die() {
    log "ERROR: $*"
    FAILED=1
    exit 1
}

# ---------------------------------------------------------------- cleanup
TMP=""
KALE_PID=""
DC_PID=""
JOB_PID=""

# shellcheck disable=SC2317 # invoked by the EXIT trap
stop_pid() { # pid name: TERM, wait up to 15 s, then KILL it and its children
    local pid=$1 name=$2 kids
    kids=$(ps -o pid= --ppid "$pid" 2>/dev/null | tr '\n' ' ')
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 150); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name $pid did not stop within 15 s; killing it"
        # shellcheck disable=SC2086 # a list of pids
        kill -KILL "$pid" $kids 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
    local rc=$?
    set +e
    if [ -n "$JOB_PID" ]; then
        kill -TERM "$JOB_PID" 2>/dev/null
        wait "$JOB_PID" 2>/dev/null
    fi
    [ -z "$KALE_PID" ] || stop_pid "$KALE_PID" kaled
    [ -z "$DC_PID" ] || stop_pid "$DC_PID" dovecot
    if [ -n "$TMP" ] && [ -d "$TMP" ]; then
        if [ "$KEEP" = 1 ] || [ "$FAILED" = 1 ]; then
            log "kept $TMP (logs, Maildirs, configs)"
        else
            rm -rf "$TMP"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Runs a command in the background and waits for it, so that a trapped signal
# interrupts the wait at once; bounded by `timeout`. Output to stdout.
bounded() { # seconds cmd...
    local secs=$1 rc=0
    shift
    timeout -k 10 "$secs" "$@" &
    JOB_PID=$!
    wait "$JOB_PID" || rc=$?
    JOB_PID=""
    return "$rc"
}

# ---------------------------------------------------------------- helpers
free_port() {
    "$PY" -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_port() { # port, seconds
    local end=$(($(date +%s) + $2))
    while [ "$(date +%s)" -lt "$end" ]; do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

# Percent of all CPUs idle over the next 2 s (as in bench/accept.sh).
idle_pct() {
    local a b
    a=$(head -1 /proc/stat)
    sleep 2
    b=$(head -1 /proc/stat)
    printf '%s\n%s\n' "$a" "$b" | awk '
        { busy = 0; for (i = 2; i <= NF; i++) if (i != 5 && i != 6) busy += $i
          idle[NR] = $5 + $6; tot[NR] = busy + idle[NR] }
        END { printf "%.0f", 100 * (idle[2] - idle[1]) / (tot[2] - tot[1]) }'
}

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# ---------------------------------------------------------------- setup
ensure_dovecot() {
    if [ -x /usr/sbin/dovecot ] && [ -x /usr/lib/dovecot/imap ]; then
        return 0
    fi
    log "installing dovecot-imapd (the reference server)"
    local was_running=0
    if [ -s /run/dovecot/master.pid ] && kill -0 "$(cat /run/dovecot/master.pid)" 2>/dev/null; then
        was_running=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y dovecot-imapd >/dev/null
    # stop the system instance only if the install itself started it
    if [ "$was_running" = 0 ] && [ -s /run/dovecot/master.pid ] &&
        kill -0 "$(cat /run/dovecot/master.pid)" 2>/dev/null; then
        log "stopping the system dovecot started by the install"
        doveadm stop >/dev/null 2>&1 || kill -TERM "$(cat /run/dovecot/master.pid)" 2>/dev/null || true
    fi
    [ -x /usr/sbin/dovecot ] || die "/usr/sbin/dovecot missing after installing dovecot-imapd"
}

ensure_dovecot
if [ "$WHICH" != dovecot ] && { [ ! -x "$BUILD/kaled" ] || [ ! -x "$BUILD/kalectl" ]; }; then
    die "$BUILD/kaled or kalectl missing: build kale first (make)"
fi
if ! id dovecot >/dev/null 2>&1 || ! id dovenull >/dev/null 2>&1; then
    die "users dovecot and dovenull missing (they come with dovecot-core)"
fi
BENCH_UID=$(id -u nobody)
BENCH_GID=$(id -g nobody)

TMP=$(mktemp -d "$BENCH_TMP/kale-bench-imap.XXXXXX")
chmod 755 "$TMP"
PASSFILE="$TMP/password"
printf 'bench-%s\n' "$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')" >"$PASSFILE"
chmod 600 "$PASSFILE"

log "generating $M messages into $TMP/Maildir"
read -r GEN_COUNT GEN_BYTES < <("$PY" "$CLIENT" gen "$TMP/Maildir" "$M")
[ "$GEN_COUNT" = "$M" ] || die "generator wrote $GEN_COUNT of $M messages"
GEN_DU=$(du -sk "$TMP/Maildir" | cut -f1)
log "Maildir: $M messages, $GEN_BYTES bytes as CRLF, ${GEN_DU} KiB on disk"

# ---------------------------------------------------------------- kale
KALE_PORT=""
HASH=""
setup_kale() {
    local conf box
    KALE_PORT=$(free_port)
    mkdir -p "$TMP/kale"
    conf="$TMP/kale/kale.conf"
    cat >"$conf" <<EOF
[server]
hostname = mx.bench.test
data_dir = var
run_as = nobody

[listen]
smtp = 127.0.0.1:$(free_port)
submission =
submissions =
pop3 =
pop3s =
imap = 127.0.0.1:$KALE_PORT
imaps =
admin =

[limits]
max_connections_per_ip = $KALE_PER_IP
command_timeout = 120

[mailbox]
plaintext_auth = yes
EOF
    "$BUILD/kalectl" -c "$conf" domain add bench.test --local >/dev/null ||
        die "kalectl domain add failed"
    "$BUILD/kalectl" -c "$conf" user add "$BUSER" --password-stdin >/dev/null <"$PASSFILE" ||
        die "kalectl user add failed"
    box="$TMP/kale/var/mail/bench.test/user"
    mkdir -p "$(dirname "$box")"
    rm -rf "$box"
    cp -a "$TMP/Maildir" "$box"
    chown -R "$BENCH_UID:$BENCH_GID" "$TMP/kale/var/mail"
    HASH=$("$PY" -c 'import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
print(db.execute("SELECT password_hash FROM users WHERE address = ?", (sys.argv[2],)).fetchone()[0])' \
        "$TMP/kale/var/kale.db" "$BUSER")
    log "kale: starting $BUILD/kaled, IMAP on 127.0.0.1:$KALE_PORT"
    (cd "$TMP/kale" && exec "$BUILD/kaled" -c "$conf") >"$TMP/kale/kaled.log" 2>&1 &
    KALE_PID=$!
    if ! wait_port "$KALE_PORT" 20; then
        tail -20 "$TMP/kale/kaled.log" >&2 || true
        die "kaled did not listen on $KALE_PORT"
    fi
}

# ---------------------------------------------------------------- dovecot
DC_PORT=""
setup_dovecot() {
    local d="$TMP/dovecot"
    DC_PORT=$(free_port)
    mkdir -p "$d/home" "$d/state"
    cp -a "$TMP/Maildir" "$d/Maildir"
    chown -R "$BENCH_UID:$BENCH_GID" "$d/home" "$d/Maildir"
    if [ -z "$HASH" ]; then # dovecot only: hash the password the way kale does
        # shellcheck disable=SC2016 # a Python program, $y$ is yescrypt
        HASH=$("$PY" -c 'import crypt, sys
print(crypt.crypt(open(sys.argv[1]).readline().rstrip("\n"), "$y$j9T$" + crypt.mksalt(crypt.METHOD_SHA512)[3:19]))' \
            "$PASSFILE" 2>/dev/null) || die "cannot make a yescrypt hash"
    fi
    # same user, same password hash (kale's yescrypt, checked by libcrypt)
    printf '%s:{CRYPT}%s:%s:%s::%s::\n' "$BUSER" "$HASH" "$BENCH_UID" "$BENCH_GID" "$d/home" \
        >"$d/passwd"
    chmod 644 "$d/passwd"
    cat >"$d/dovecot.conf" <<EOF
# private Dovecot for bench/imap.sh; everything else is Dovecot's default
instance_name = kalebench-imap-$$
protocols = imap
listen = 127.0.0.1
base_dir = $d/run
state_dir = $d/state
log_path = $d/dovecot.log
info_log_path = $d/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
default_internal_user = dovecot
default_internal_group = dovecot
default_login_user = dovenull
mail_location = maildir:$d/Maildir
mail_max_userip_connections = $((N * 2 > 1000 ? N * 2 : 1000))
passdb {
  driver = passwd-file
  args = $d/passwd
}
userdb {
  driver = passwd-file
  args = $d/passwd
}
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = $DC_PORT
  }
  inet_listener imaps {
    port = 0
  }
}
EOF
    log "dovecot: starting private instance in $d, IMAP on 127.0.0.1:$DC_PORT"
    /usr/sbin/dovecot -c "$d/dovecot.conf" -F >"$d/dovecot.out" 2>&1 &
    DC_PID=$!
    if ! wait_port "$DC_PORT" 20; then
        cat "$d/dovecot.out" "$d/dovecot.log" >&2 2>/dev/null || true
        die "dovecot did not listen on $DC_PORT"
    fi
}

# ---------------------------------------------------------------- runs
[ "$WHICH" = dovecot ] || setup_kale
[ "$WHICH" = kale ] || setup_dovecot
DC_VERSION=$(/usr/sbin/dovecot --version 2>/dev/null | cut -d' ' -f1)

# First SELECT (untimed in the runs): the server meets the Maildir: new/ to
# cur/, UIDs, its own index files.
warm() { # name port
    local out secs exists
    out=$(bounded "$TIMEOUT" "$PY" "$CLIENT" warm --port "$2" --user "$BUSER" \
        --pass-file "$PASSFILE") || die "$1: first login/SELECT failed"
    read -r secs exists <<<"$out"
    [ "$exists" = "$M" ] || die "$1: SELECT says $exists messages, want $M"
    log "$1: first LOGIN+SELECT (cold: new/ -> cur/, index) took ${secs}s"
    printf -v "WARM_$1" '%s' "$secs"
}
[ "$WHICH" = dovecot ] || warm kale "$KALE_PORT"
[ "$WHICH" = kale ] || warm dovecot "$DC_PORT"

LOAD_START=$(loadavg)
RESULTS="$TMP/results"
: >"$RESULTS"
run_one() { # name port pid run
    local idle out rc=0
    idle=$(idle_pct)
    log "$1 run $4: machine ${idle}% idle, load $(loadavg); $N clients x $M messages"
    out=$(bounded $((TIMEOUT + 60)) "$PY" "$CLIENT" run --port "$2" --user "$BUSER" \
        --pass-file "$PASSFILE" --clients "$N" --chunk "$CHUNK" --expect-msgs "$M" \
        --expect-bytes "$GEN_BYTES" --server-pid "$3" --timeout "$TIMEOUT") || rc=$?
    log "$1 run $4: $out"
    if [ "$rc" != 0 ]; then
        FAILED=1
        log "$1 run $4 FAILED (exit $rc)"
        echo "$1 $4 FAILED idle=$idle" >>"$RESULTS"
        return 0
    fi
    echo "$1 $4 $out idle=$idle" >>"$RESULTS"
}
for r in $(seq 1 "$RUNS"); do
    [ "$WHICH" = dovecot ] || run_one kale "$KALE_PORT" "$KALE_PID" "$r"
    [ "$WHICH" = kale ] || run_one dovecot "$DC_PORT" "$DC_PID" "$r"
done
LOAD_END=$(loadavg)

KALE_ERR='level=(error|crit).*proc=imapd|proc=imapd.*level=(error|crit)|AddressSanitizer|runtime error'
if [ -n "$KALE_PID" ] && grep -E -q "$KALE_ERR" "$TMP/kale/kaled.log" 2>/dev/null; then
    log "kale: kaled.log has imapd errors:"
    grep -E "$KALE_ERR" "$TMP/kale/kaled.log" | head -5 >&2
fi
if [ -n "$DC_PID" ] && grep -E -q 'Error|Panic|Fatal' "$TMP/dovecot/dovecot.log" 2>/dev/null; then
    log "dovecot: dovecot.log has errors:"
    grep -E 'Error|Panic|Fatal' "$TMP/dovecot/dovecot.log" | head -5 >&2
fi

# ---------------------------------------------------------------- report
echo
echo "imap.sh: $M messages ($GEN_BYTES bytes as CRLF, 2-50 KB, ~1/3 multipart), $N clients;"
echo "  each client: LOGIN, SELECT INBOX, FETCH 1:* (BODY.PEEK[HEADER]), FETCH (BODY.PEEK[]) $CHUNK at a time, LOGOUT"
echo "servers: kale ($BUILD/kaled), Dovecot $DC_VERSION; plaintext LOGIN on loopback, no TLS"
echo "machine: nproc $(nproc), load average $LOAD_START at start, $LOAD_END at end"
printf '%-8s %3s %7s %8s %7s %7s %8s %6s %9s %9s %9s %10s %7s %5s %6s %6s\n' server run wall_s \
    msgs/s login_s fetch_s fetch/s MB/s srv_cpu_s login_cpu fetch_cpu fetch_us/m cli_cpu idle% \
    hdrs bodies
awk '
    $3 == "FAILED" { printf "%-8s %3s %7s\n", $1, $2, "FAILED"; next }
    { for (i = 3; i <= NF; i++) { split($i, a, "="); kv[a[1]] = a[2] }
      printf "%-8s %3s %7.2f %8.0f %7.2f %7.2f %8.0f %6.1f %9.2f %9.2f %9.2f %10.1f %7.2f %5s %6.2f %6.2f\n",
        $1, $2, kv["wall"], kv["msgs_per_s"], kv["login_wall"], kv["fetch_wall"],
        kv["fetch_msgs_per_s"], kv["mb_per_s"], kv["srv_cpu"], kv["login_cpu"], kv["fetch_cpu"],
        (kv["msgs"] > 0 ? 1e6 * kv["fetch_cpu"] / kv["msgs"] : 0), kv["cli_cpu"], kv["idle"],
        kv["headers"], kv["bodies"] }' "$RESULTS"
echo "(wall_s: release of the clients to the last LOGOUT; msgs/s = N x M / wall_s;"
echo " login_s: release until every client has logged in and selected INBOX (a barrier);"
echo " fetch_s: barrier to the last LOGOUT; fetch/s = N x M / fetch_s; MB/s: headers + bodies / wall_s;"
echo " srv_cpu_s: server CPU s (user+sys, all its processes) over the run; login_cpu, fetch_cpu:"
echo " the same over login_s and fetch_s; fetch_us/m: fetch_cpu per message fetched, in us; cli_cpu: the Python clients' CPU s;"
echo " idle%: CPUs idle in the 2 s before the run; hdrs, bodies: median s per client for each FETCH phase)"
if [ -n "${WARM_kale:-}" ] || [ -n "${WARM_dovecot:-}" ]; then
    echo "first LOGIN+SELECT of the fresh Maildir (new/ -> cur/, indexes):${WARM_kale:+ kale ${WARM_kale}s}${WARM_dovecot:+ dovecot ${WARM_dovecot}s}"
fi
best() { # name key -> smallest value of key over the runs that did not fail
    awk -v n="$1" -v k="$2" '$1 == n && $3 != "FAILED" {
        for (i = 3; i <= NF; i++) { split($i, a, "="); kv[a[1]] = a[2] }
        if (b == "" || kv[k] + 0 < b + 0) b = kv[k] }
        END { print b }' "$RESULTS"
}
if [ "$WHICH" = both ]; then
    KW=$(best kale wall) KF=$(best kale fetch_wall) KC=$(best kale fetch_cpu)
    DW=$(best dovecot wall) DF=$(best dovecot fetch_wall) DC=$(best dovecot fetch_cpu)
    if [ -n "$KW" ] && [ -n "$DW" ]; then
        awk -v kw="$KW" -v dw="$DW" -v kf="$KF" -v df="$DF" -v kc="$KC" -v dc="$DC" -v nm=$((N * M)) 'BEGIN {
            printf "best of each: kale %.0f msgs/s (fetch phase %.0f), dovecot %.0f msgs/s (fetch phase %.0f)\n",
                nm / kw, nm / kf, nm / dw, nm / df
            printf "ratio kale/dovecot: throughput %.2fx, fetch phase %.2fx; fetch CPU per message %.2fx (below 1: kale uses less)\n",
                dw / kw, df / kf, (kc > 0 && dc > 0) ? kc / dc : 0 }'
    else
        echo "ratio kale/dovecot: n/a (a server failed every run)"
    fi
fi
[ "$FAILED" = 0 ] || exit 1
exit 0
}
