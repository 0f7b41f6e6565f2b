#!/bin/bash
# bench/verify.sh: RCPT rate and latency of kale's recipient verification
# against a 100,000-user private MariaDB and a private OpenLDAP slapd, in
# realtime and cache mode, driven by bench/verify_client.py (stdlib only).
# Not a test (never part of `make test`). Run as root. See docs/performance.md.
#
# Usage: bench/verify.sh [quick] [mysql|ldap|both]
#   quick        R=2000 unless R is set (smoke run)
#   mysql|ldap   one backend only (default: both)
# Environment:
#   USERS=100000 R=20000 SESSIONS=20   directory size, RCPTs per run, sessions
#   PER_TXN=500 MISSING=0.10           RCPTs per transaction, share of unknown users
#   TIMEOUT=600                        seconds one run may take
#   KALE_BUILD=build                   build dir holding kaled and kalectl
#   BENCH_TMP=/var/tmp                 where the temp dir goes
#   KEEP=1                             keep the temp dir (logs, configs, databases)

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
    mysql | ldap | both) WHICH=$arg ;;
    -h | --help)
        sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "usage: $0 [quick] [mysql|ldap|both]" >&2
        exit 2
        ;;
    esac
done

if [ "$QUICK" = 1 ]; then
    R=${R:-2000}
else
    R=${R:-20000}
fi
USERS=${USERS:-100000}
SESSIONS=${SESSIONS:-20}
PER_TXN=${PER_TXN:-500}
MISSING=${MISSING:-0.10}
TIMEOUT=${TIMEOUT:-600}
BUILD="$ROOT/${KALE_BUILD:-build}"
BENCH_TMP=${BENCH_TMP:-/var/tmp}
KEEP=${KEEP:-0}
PY=/usr/bin/python3
CLIENT="$ROOT/bench/verify_client.py"
DB_USER=kale
DB_PASS=kale-bench-pw
SUFFIX="dc=corp,dc=test"

for v in USERS R SESSIONS PER_TXN TIMEOUT; do
    val=${!v}
    case "$val" in
    '' | *[!0-9]*)
        echo "verify.sh: $v must be a positive integer" >&2
        exit 2
        ;;
    esac
    val=$((10#$val))
    if [ "$val" -eq 0 ]; then
        echo "verify.sh: $v must be a positive integer" >&2
        exit 2
    fi
    printf -v "$v" '%d' "$val"
done
case "$MISSING" in
0 | 0.[0-9] | 0.[0-9][0-9] | 0.[0-9][0-9][0-9] | 1) ;;
*)
    echo "verify.sh: MISSING must be a share between 0 and 1 (e.g. 0.10)" >&2
    exit 2
    ;;
esac
if [ "$(awk -v r="$R" -v m="$MISSING" -v u="$USERS" 'BEGIN { print (r * (1 - m) > u) }')" = 1 ]; then
    echo "verify.sh: R * (1 - MISSING) must not exceed USERS (addresses are distinct)" >&2
    exit 2
fi
PER_IP=$((SESSIONS * 4 > 500 ? SESSIONS * 4 : 500))

if [ "$(id -u)" != 0 ]; then
    echo "verify.sh: must run as root (private mariadbd and slapd, kaled run_as)" >&2
    exit 2
fi
for p in mariadb-install-db /usr/sbin/mariadbd mariadb /usr/sbin/slapd /usr/sbin/slapadd; do
    if ! command -v "$p" >/dev/null; then
        echo "verify.sh: $p missing (apt-get install mariadb-server mariadb-client slapd)" >&2
        exit 2
    fi
done
if [ ! -x "$BUILD/kaled" ] || [ ! -x "$BUILD/kalectl" ]; then
    echo "verify.sh: $BUILD/kaled or kalectl missing: build kale first (make)" >&2
    exit 2
fi

log() { printf '%s verify.sh: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
FAILED=0
die() {
    log "ERROR: $*"
    FAILED=1
    exit 1
}

# ---------------------------------------------------------------- cleanup
DIR=""
DB_PID=""
LDAP_PID=""
KALE_PID=""
CLIENT_PID=""

stop_pid() { # pid name seconds
    [ -n "$1" ] || return 0
    kill -TERM "$1" 2>/dev/null || true
    for _ in $(seq 1 $(($3 * 10))); do
        kill -0 "$1" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$1" 2>/dev/null; then
        log "$2 ($1) did not stop within $3 s; killing it"
        kill -KILL "$1" 2>/dev/null || true
    fi
    wait "$1" 2>/dev/null || true
}

stop_kale() {
    [ -n "$KALE_PID" ] || return 0
    local kids
    kids=$(ps -o pid= --ppid "$KALE_PID" 2>/dev/null | tr '\n' ' ')
    stop_pid "$KALE_PID" kaled 15
    # shellcheck disable=SC2086 # a list of pids
    [ -z "$kids" ] || kill -KILL $kids 2>/dev/null || true
    KALE_PID=""
}

# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
    local rc=$?
    set +e
    if [ -n "$CLIENT_PID" ]; then
        kill -TERM "$CLIENT_PID" 2>/dev/null
        wait "$CLIENT_PID" 2>/dev/null
    fi
    stop_kale
    stop_pid "$LDAP_PID" slapd 30
    stop_pid "$DB_PID" mariadbd 60
    if [ -n "$DIR" ] && [ -d "$DIR" ]; then
        if [ "$KEEP" = 1 ] || [ "$FAILED" = 1 ]; then
            log "kept $DIR (logs, configs, databases)"
        else
            rm -rf "$DIR"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

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

CLK_TCK=$(getconf CLK_TCK)
tree_cpu() { # pids...: CPU seconds (user+sys, own + reaped children) of them and their children
    local pids="" p
    for p in "$@"; do
        [ -n "$p" ] || continue
        pids="$pids $p $(ps -o pid= --ppid "$p" 2>/dev/null | tr '\n' ' ')"
    done
    for p in $pids; do
        sed 's/.*) //' "/proc/$p/stat" 2>/dev/null || true
    done | awk -v hz="$CLK_TCK" '{ t += $12 + $13 + $14 + $15 } END { printf "%.2f", t / hz }'
}
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
ctl() { "$BUILD/kalectl" -c "$DIR/kale/kale.conf" "$@"; }

# ---------------------------------------------------------------- servers
start_mariadb() {
    local d="$DIR/mariadb"
    DB_PORT=$(free_port)
    mkdir -p "$d"
    log "mariadb: install-db in $d"
    timeout 180 mariadb-install-db --no-defaults --datadir="$d/data" --user=root \
        --auth-root-authentication-method=normal --skip-test-db >"$d/install.log" 2>&1 ||
        die "mariadb-install-db failed (see $d/install.log)"
    /usr/sbin/mariadbd --no-defaults --datadir="$d/data" --socket="$d/mysqld.sock" \
        --port="$DB_PORT" --bind-address=127.0.0.1 --user=root --pid-file="$d/mysqld.pid" \
        --skip-log-bin --innodb-buffer-pool-size=64M --skip-name-resolve --local-infile=1 \
        --max-connections=500 --log-error="$d/err.log" </dev/null >"$d/server.log" 2>&1 &
    DB_PID=$!
    wait_port "$DB_PORT" 60 || die "mariadbd did not listen on $DB_PORT (see $d/err.log)"
    log "mariadb: loading $USERS users (LOAD DATA LOCAL INFILE)"
    timeout 300 mariadb --no-defaults -S "$d/mysqld.sock" -uroot --local-infile=1 -e "
        CREATE DATABASE kale;
        CREATE TABLE kale.mailusers (email VARCHAR(255) PRIMARY KEY);
        CREATE USER '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
        GRANT SELECT ON kale.* TO '$DB_USER'@'127.0.0.1';
        LOAD DATA LOCAL INFILE '$DIR/users.tsv' INTO TABLE kale.mailusers
            LINES TERMINATED BY '\n' (email);
        ANALYZE TABLE kale.mailusers;" >/dev/null || die "loading MariaDB failed"
    local n
    n=$(mariadb --no-defaults -S "$d/mysqld.sock" -uroot -N -e \
        "SELECT COUNT(*) FROM kale.mailusers")
    [ "$n" = "$USERS" ] || die "mailusers holds $n rows, not $USERS"
}

start_slapd() {
    local d="$DIR/slapd"
    LDAP_PORT=$(free_port)
    mkdir -p "$d/db"
    cat >"$d/slapd.conf" <<EOF
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
pidfile $d/slapd.pid
modulepath /usr/lib/ldap
moduleload back_mdb
database mdb
maxsize 1073741824
suffix "$SUFFIX"
rootdn "cn=admin,$SUFFIX"
rootpw admin-bench-pw
directory $d/db
index objectClass eq
index mail eq
access to attrs=userPassword by anonymous auth by * none
access to * by * read
EOF
    log "slapd: slapadd $USERS entries (offline, index mail eq)"
    timeout 600 /usr/sbin/slapadd -q -f "$d/slapd.conf" -l "$DIR/users.ldif" \
        >"$d/slapadd.log" 2>&1 || die "slapadd failed (see $d/slapadd.log)"
    /usr/sbin/slapd -f "$d/slapd.conf" -h "ldap://127.0.0.1:$LDAP_PORT/" -d 0 -u root \
        </dev/null >"$d/server.log" 2>&1 &
    LDAP_PID=$!
    wait_port "$LDAP_PORT" 60 || die "slapd did not listen on $LDAP_PORT (see $d/server.log)"
}

start_kale() {
    local d="$DIR/kale"
    KALE_PORT=$(free_port)
    mkdir -p "$d"
    chmod 755 "$d"
    cat >"$d/kale.conf" <<EOF
[server]
hostname = mx.bench.test
data_dir = var
run_as = nobody

[listen]
smtp = 127.0.0.1:$KALE_PORT
submission =
submissions =
pop3 =
pop3s =
imap =
imaps =
admin =

[limits]
max_connections_per_ip = $PER_IP
max_recipients = $((PER_TXN > 1000 ? PER_TXN : 1000))
command_timeout = 120
EOF
    local url="mysql://$DB_USER:$DB_PASS@127.0.0.1:${DB_PORT:-1}/kale"
    local q="select email from mailusers where email='%m'"
    local lurl="ldap://127.0.0.1:${LDAP_PORT:-1}"
    ctl verify add sql-rt --type mysql --url "$url" --query "$q" --mode realtime >/dev/null
    ctl verify add sql-cache --type mysql --url "$url" --query "$q" --mode cache \
        --ttl-found 3600 --ttl-missing 600 >/dev/null
    ctl verify add ldap-rt --type ldap --url "$lurl" --base "$SUFFIX" --filter "(mail=%m)" \
        --mode realtime >/dev/null
    ctl verify add ldap-cache --type ldap --url "$lurl" --base "$SUFFIX" --filter "(mail=%m)" \
        --mode cache --ttl-found 3600 --ttl-missing 600 >/dev/null
    ctl domain add corp.test --relay 127.0.0.1:2 --verify none >/dev/null
    log "kale: starting kaled in $d on 127.0.0.1:$KALE_PORT"
    "$BUILD/kaled" -c "$d/kale.conf" >"$d/kaled.log" 2>&1 &
    KALE_PID=$!
    if ! wait_port "$KALE_PORT" 20; then
        tail -20 "$d/kaled.log" >&2 || true
        die "kaled did not listen on $KALE_PORT"
    fi
}

# ---------------------------------------------------------------- runs
PROBE_N=0
# use_profile NAME: point corp.test at NAME and wait until smtpd answers with
# it: a probe RCPT for an unknown address, whose smtp.reject line in kaled.log
# names the profile (written at once, unlike the mail log in the store)
use_profile() {
    local name=$1 addr code end
    ctl domain set corp.test --verify "$name" >/dev/null
    ctl verify test "$name" user000001@corp.test >/dev/null ||
        die "kalectl verify test $name user000001@corp.test: not found"
    end=$(($(date +%s) + 30))
    while :; do
        PROBE_N=$((PROBE_N + 1))
        addr="probe$PROBE_N@corp.test"
        code=$("$PY" "$CLIENT" probe --port "$KALE_PORT" --addr "$addr")
        if [ "$code" = 550 ]; then
            sleep 0.2
            if grep -F "to=$addr " "$DIR/kale/kaled.log" | grep -q -F "profile=$name"; then
                break
            fi
        fi
        [ "$(date +%s)" -lt "$end" ] || die "smtpd does not use profile $name after 30 s (probe: $code)"
        sleep 0.5
    done
    ctl verify flush "$name" >/dev/null
}

# mail_log_lag: seconds until the mail log row of a rejected RCPT shows in
# `kalectl log search` (into MAIL_LOG_LAG; ">60" if not within 60 s)
mail_log_lag() {
    local addr t0 got end
    PROBE_N=$((PROBE_N + 1))
    addr="probe$PROBE_N@corp.test"
    t0=$(date +%s.%N)
    end=$(($(date +%s) + 60))
    "$PY" "$CLIENT" probe --port "$KALE_PORT" --addr "$addr" >/dev/null
    MAIL_LOG_LAG=">60"
    while [ "$(date +%s)" -lt "$end" ]; do
        got=$(ctl log search --json --to "$addr" --limit 5)
        case "$got" in
        *"$addr"*)
            MAIL_LOG_LAG=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
            return 0
            ;;
        esac
        sleep 0.2
    done
}

SEED=0
# one_run LABEL [same]: R RCPTs; "same" reuses the previous seed (warm cache)
one_run() {
    local label=$1 k0 d0 k1 d1 load rc=0
    [ "${2:-}" = same ] || SEED=$((SEED + 1))
    load=$(cut -d' ' -f1 /proc/loadavg)
    k0=$(tree_cpu "$KALE_PID")
    d0=$(tree_cpu "$BACKEND_PID")
    log "$label: $R RCPTs, $SESSIONS sessions, seed $SEED, load $(loadavg)"
    timeout -k 10 $((TIMEOUT + 60)) "$PY" "$CLIENT" run --port "$KALE_PORT" --count "$R" \
        --sessions "$SESSIONS" --per-txn "$PER_TXN" --users "$USERS" --missing "$MISSING" \
        --seed "$SEED" --timeout "$TIMEOUT" --label "$label" --json "$DIR/runs.json" \
        >>"$DIR/runs.out" &
    CLIENT_PID=$!
    wait "$CLIENT_PID" || rc=$?
    CLIENT_PID=""
    k1=$(tree_cpu "$KALE_PID")
    d1=$(tree_cpu "$BACKEND_PID")
    mail_log_lag
    printf '%s\t%s\t%s\t%s\t%s\n' "$label" "$(awk -v a="$k0" -v b="$k1" 'BEGIN { printf "%.1f", b - a }')" \
        "$(awk -v a="$d0" -v b="$d1" 'BEGIN { printf "%.1f", b - a }')" "$load" "$MAIL_LOG_LAG" \
        >>"$DIR/runs.tsv"
    tail -1 "$DIR/runs.out" >&2 || true
    if [ "$rc" != 0 ]; then
        log "$label: the run had errors, 4xx replies or wrong answers (exit $rc); see above"
        RUN_FAILED=1
    fi
}

# ---------------------------------------------------------------- main
DIR=$(mktemp -d "$BENCH_TMP/kale-bench-verify.XXXXXX")
chmod 755 "$DIR"
LOAD_START=$(loadavg)
log "USERS=$USERS R=$R SESSIONS=$SESSIONS PER_TXN=$PER_TXN MISSING=$MISSING nproc=$(nproc) load=$LOAD_START"
T0=$(date +%s)
"$PY" "$CLIENT" gen --users "$USERS" --dir "$DIR"
DB_PORT="" LDAP_PORT=""
if [ "$WHICH" != ldap ]; then start_mariadb; fi
if [ "$WHICH" != mysql ]; then start_slapd; fi
log "directories loaded in $(($(date +%s) - T0)) s"
start_kale
RUN_FAILED=0

if [ "$WHICH" != ldap ]; then
    BACKEND_PID=$DB_PID
    use_profile sql-rt
    one_run mysql-realtime
    use_profile sql-cache
    one_run mysql-cache-cold
    one_run mysql-cache-warm same
fi
if [ "$WHICH" != mysql ]; then
    BACKEND_PID=$LDAP_PID
    use_profile ldap-rt
    one_run ldap-realtime
    use_profile ldap-cache
    one_run ldap-cache-cold
    one_run ldap-cache-warm same
fi
stop_kale
if grep -E -q '"level":"(error|fatal)"|level=(error|fatal)|ERROR|FATAL' "$DIR/kale/kaled.log" 2>/dev/null; then
    log "kaled.log has error lines:"
    grep -E '"level":"(error|fatal)"|level=(error|fatal)|ERROR|FATAL' "$DIR/kale/kaled.log" | head -5 >&2
fi

echo
printf 'verify.sh: %d users, %d RCPTs per run (%s%% unknown), %d sessions, %d RCPTs per transaction\n' \
    "$USERS" "$R" "$(awk -v m="$MISSING" 'BEGIN { printf "%g", 100 * m }')" "$SESSIONS" "$PER_TXN"
printf 'machine: nproc %s, load average %s at start, %s at end (other work skews the figures)\n' \
    "$(nproc)" "$LOAD_START" "$(loadavg)"
"$PY" "$CLIENT" report --json "$DIR/runs.json" --tsv "$DIR/runs.tsv"
echo "(lookup/s: RCPTs answered per second, all sessions; p50/p99/max: one RCPT, send to reply;"
echo " kale_cpu/db_cpu/cli_cpu: CPU s of kaled's processes / of mariadbd or slapd /"
echo " of the client's session processes during the run;"
echo " load1: 1-minute load average at the start of the run; mlog_s: seconds until the"
echo " mail log row of a probe RCPT sent right after the run shows in kalectl log search;"
echo " cold/warm: first/second pass over the same addresses after verify flush)"
if [ "$RUN_FAILED" = 1 ]; then
    FAILED=1
    exit 1
fi
exit 0
}
