#!/bin/bash
# bench/accept.sh: SMTP accept and end-to-end throughput of kale against a
# private Postfix instance, both driven by Postfix's own smtp-source.
# Not a test (never part of `make test`). Run as root. See docs/performance.md.
#
# Usage: bench/accept.sh [quick] [postfix|kale|both]
#   quick        N=2000 unless N is set (smoke run)
#   postfix|kale run one half only (default: both)
# Environment:
#   N=20000 SIZE=4096 SESSIONS=50   messages, payload bytes, parallel sessions
#   TIMEOUT=600                     seconds to wait for every message in the Maildir
#   KALE_BUILD=build                build dir holding kaled and kalectl
#   BENCH_TMP=/var/tmp              where the temp dirs go (same disk as the system)
#   KEEP=1                          keep the temp dirs (logs, queues, Maildirs)
#   FILTERS=1                       kale as an MX for untrusted clients: the default
#                                   policy's inbound checks, SPF, DKIM verify and DMARC
#                                   on, against a loopback DNS server (tests/integration/
#                                   dnsserver.py); Postfix is unchanged

# The whole script is one brace group, parsed before it runs, so editing the
# file while a run is in progress cannot derail that run.
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
    -h | --help)
        sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "usage: $0 [quick] [postfix|kale|both]" >&2
        exit 2
        ;;
    esac
done

if [ "$QUICK" = 1 ]; then
    N=${N:-2000}
else
    N=${N:-20000}
fi
SIZE=${SIZE:-4096}
SESSIONS=${SESSIONS:-50}
TIMEOUT=${TIMEOUT:-600}
BUILD="$ROOT/${KALE_BUILD:-build}"
BENCH_TMP=${BENCH_TMP:-/var/tmp}
KEEP=${KEEP:-0}
FILTERS=${FILTERS:-0}
DNS_PID=""
SMTP_SOURCE=/usr/sbin/smtp-source
BENCH_UID=$(id -u nobody)
BENCH_GID=$(id -g nobody)

for v in N SIZE SESSIONS TIMEOUT; do
    val=${!v}
    case "$val" in
    '' | *[!0-9]*)
        echo "accept.sh: $v must be a positive integer" >&2
        exit 2
        ;;
    esac
    val=$((10#$val)) # no octal surprises from a leading 0
    if [ "$val" -eq 0 ]; then
        echo "accept.sh: $v must be a positive integer" >&2
        exit 2
    fi
    printf -v "$v" '%d' "$val"
done
# enough server slots for every session (Postfix smtpd processes, kale
# connections per IP, which also counts connections still closing)
PF_PROCS=$((SESSIONS * 2 > 100 ? SESSIONS * 2 : 100))
KALE_PER_IP=$((SESSIONS * 4 > 200 ? SESSIONS * 4 : 200))

if [ "$(id -u)" != 0 ]; then
    echo "accept.sh: must run as root (private Postfix instance, kaled run_as)" >&2
    exit 2
fi

log() { printf '%s accept.sh: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
FAILED=0
die() {
    log "ERROR: $*"
    FAILED=1
    exit 1
}
now() { date +%s.%N; }

# ---------------------------------------------------------------- cleanup
PF_DIR=""
PF_STARTED=0
KALE_DIR=""
KALE_PID=""
SRC_PID=""

pf_master_pid() {
    local f="$PF_DIR/spool/pid/master.pid"
    [ -r "$f" ] && tr -dc '0-9' <"$f"
}

stop_postfix() {
    [ "$PF_STARTED" = 1 ] || return 0
    local pid
    pid=$(pf_master_pid || true)
    postfix -c "$PF_DIR/etc" stop >/dev/null 2>&1 || true
    if [ -n "$pid" ]; then
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "postfix master $pid did not stop; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    PF_STARTED=0
}

stop_kale() {
    [ -n "$KALE_PID" ] || return 0
    local kids
    kids=$(ps -o pid= --ppid "$KALE_PID" 2>/dev/null | tr '\n' ' ')
    kill -TERM "$KALE_PID" 2>/dev/null || true
    for _ in $(seq 1 150); do
        kill -0 "$KALE_PID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$KALE_PID" 2>/dev/null; then
        log "kaled $KALE_PID did not stop within 15 s; killing it"
        # shellcheck disable=SC2086 # a list of pids
        kill -KILL "$KALE_PID" $kids 2>/dev/null || true
    fi
    wait "$KALE_PID" 2>/dev/null || true
    KALE_PID=""
    if [ -n "$DNS_PID" ]; then
        kill -TERM "$DNS_PID" 2>/dev/null || true
        wait "$DNS_PID" 2>/dev/null || true
        DNS_PID=""
    fi
}

# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
    local rc=$?
    set +e
    if [ -n "$SRC_PID" ]; then
        kill -TERM "$SRC_PID" 2>/dev/null
        wait "$SRC_PID" 2>/dev/null
    fi
    stop_postfix
    stop_kale
    for d in "$PF_DIR" "$KALE_DIR"; do
        if [ -z "$d" ] || [ ! -d "$d" ]; then continue; fi
        if [ "$KEEP" = 1 ] || [ "$FAILED" = 1 ]; then
            log "kept $d (logs, queue, Maildir)"
        else
            rm -rf "$d"
        fi
    done
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- helpers
free_port() {
    /usr/bin/python3 -c 'import socket
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

count_files() { # Maildir: files in new/ and cur/
    local n=0 d c
    for d in "$1/new" "$1/cur"; do
        [ -d "$d" ] || continue
        # shellcheck disable=SC2012 # Maildir names are plain; unsorted ls is cheap
        c=$(ls -AU "$d" 2>/dev/null | wc -l)
        n=$((n + c))
    done
    echo "$n"
}

CLK_TCK=$(getconf CLK_TCK)

# Percent of all CPUs idle over the next 2 s: how quiet the machine is before
# a run (other work on a 2-core machine moves the figures a lot).
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

# CPU seconds (user + sys, own + reaped children) of a server: its master
# process and the master's live children (both servers fork only from there).
tree_cpu() { # master pid
    local pids p
    pids="$1 $(ps -o pid= --ppid "$1" 2>/dev/null | tr '\n' ' ')"
    for p in $pids; do
        # fields after the ")" that ends comm: utime is the 12th, cstime the 15th
        sed 's/.*) //' "/proc/$p/stat" 2>/dev/null || true
    done | awk -v hz="$CLK_TCK" '{ t += $12 + $13 + $14 + $15 } END { printf "%.2f", t / hz }'
}

# CPU seconds of this shell's reaped children (smtp-source, once waited for),
# into variable CHILD_CPU. `times` must run in this shell, not in $(...).
children_cpu() {
    times >"$1"
    CHILD_CPU=$(awk 'NR == 2 {
        n = split($0, f, " "); t = 0
        for (i = 1; i <= n; i++) { split(f[i], ms, "m"); sub("s", "", ms[2]); t += ms[1] * 60 + ms[2] }
        printf "%.2f", t }' "$1")
}

# run_one NAME PORT MAILDIR OUTFILE MASTERPID: drive smtp-source, wait for the
# Maildir, set R_ACCEPT_S, R_E2E_S (empty on timeout), R_DELIVERED, R_SRC_CPU
# (smtp-source CPU s) and R_SRV_CPU (server CPU s from start to the last
# delivery or timeout).
run_one() {
    local name=$1 port=$2 maildir=$3 out=$4 mpid=$5 t0 t1 t2 n deadline rc c0 s0
    R_IDLE=$(idle_pct)
    log "$name: machine ${R_IDLE}% idle; smtp-source -s $SESSIONS -m $N -l $SIZE -> 127.0.0.1:$port"
    s0=$(tree_cpu "$mpid")
    children_cpu "$out.times"
    c0=$CHILD_CPU
    t0=$(now)
    rc=0
    "$SMTP_SOURCE" -4 -s "$SESSIONS" -m "$N" -l "$SIZE" -M client.test \
        -f sender@client.test -t user@bench.test "127.0.0.1:$port" \
        >"$out" 2>&1 &
    SRC_PID=$!
    wait "$SRC_PID" || rc=$? # a trapped signal interrupts this wait at once
    SRC_PID=""
    t1=$(now)
    children_cpu "$out.times"
    R_SRC_CPU=$(awk -v a="$c0" -v b="$CHILD_CPU" 'BEGIN { printf "%.1f", b - a }')
    if [ "$rc" != 0 ]; then
        cat "$out" >&2
        die "$name: smtp-source failed (exit $rc); see above"
    fi
    R_ACCEPT_S=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
    log "$name: smtp-source done in ${R_ACCEPT_S}s; waiting for $N messages in $maildir"
    deadline=$(awk -v a="$t0" -v t="$TIMEOUT" 'BEGIN { printf "%d", a + t }')
    R_E2E_S=""
    while :; do
        n=$(count_files "$maildir")
        if [ "$n" -ge "$N" ]; then
            t2=$(now)
            R_E2E_S=$(awk -v a="$t0" -v b="$t2" 'BEGIN { printf "%.3f", b - a }')
            break
        fi
        if [ "$(date +%s)" -ge "$deadline" ]; then
            log "$name: TIMEOUT after ${TIMEOUT}s: only $n of $N messages delivered"
            FAILED=1 # keep the temp dirs for a look
            break
        fi
        sleep 0.1
    done
    R_DELIVERED=$n
    R_SRV_CPU=$(awk -v a="$s0" -v b="$(tree_cpu "$mpid")" 'BEGIN { printf "%.1f", b - a }')
    if [ -n "$R_E2E_S" ]; then
        log "$name: all $N messages delivered after ${R_E2E_S}s"
    fi
}

rate() { # count seconds
    if [ -z "$2" ]; then
        echo "TIMEOUT"
    else
        awk -v n="$1" -v s="$2" 'BEGIN { printf "%.1f", n / s }'
    fi
}

# ---------------------------------------------------------------- setup
ensure_postfix() {
    if [ -x "$SMTP_SOURCE" ] && command -v postfix >/dev/null; then
        return 0
    fi
    log "installing postfix (for smtp-source and the reference instance)"
    local was_running=0
    if [ -f /etc/postfix/main.cf ] && postfix status >/dev/null 2>&1; then
        was_running=1
    fi
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    DEBIAN_FRONTEND=noninteractive apt-get install -y postfix >/dev/null
    # stop the default instance only if the install itself started it
    if [ "$was_running" = 0 ] && [ -f /etc/postfix/main.cf ] &&
        postfix status >/dev/null 2>&1; then
        log "stopping the default postfix instance started by the install"
        postfix stop >/dev/null 2>&1 || true
    fi
    [ -x "$SMTP_SOURCE" ] || die "$SMTP_SOURCE missing after installing postfix"
}

# ---------------------------------------------------------------- postfix
bench_postfix() {
    local port etc master_dist
    port=$(free_port)
    PF_DIR=$(mktemp -d "$BENCH_TMP/kale-bench-postfix.XXXXXX")
    chmod 755 "$PF_DIR"
    etc="$PF_DIR/etc"
    mkdir -p "$etc" "$PF_DIR/spool" "$PF_DIR/data" "$PF_DIR/mail/bench.test"
    chown postfix "$PF_DIR/data"
    chown "$BENCH_UID:$BENCH_GID" "$PF_DIR/mail" "$PF_DIR/mail/bench.test"

    # Everything not set here is Postfix's default, including its durability
    # (queue files are fsync'd before "250 Ok: queued") and in_flow_delay.
    cat >"$etc/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $PF_DIR/spool
data_directory = $PF_DIR/data
mail_owner = postfix
setgid_group = postdrop
syslog_name = postfix-kalebench
maillog_file_prefixes = /var, /dev/stdout, $PF_DIR
maillog_file = $PF_DIR/maillog
myhostname = mx.bench.test
mydomain = bench.test
myorigin = bench.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_peername_lookup = no
disable_dns_lookups = yes
smtp_host_lookup = native
alias_maps =
alias_database =
local_recipient_maps =
biff = no
default_process_limit = $PF_PROCS
virtual_mailbox_domains = bench.test
virtual_mailbox_base = $PF_DIR/mail
virtual_mailbox_maps = texthash:$etc/vmailbox
virtual_uid_maps = static:$BENCH_UID
virtual_gid_maps = static:$BENCH_GID
EOF
    echo "user@bench.test bench.test/user/" >"$etc/vmailbox"

    # master.cf: Debian's stock services, none chrooted, without the 25/tcp
    # listener, plus smtpd on the loopback high port.
    master_dist=/usr/share/postfix/master.cf.dist
    [ -r "$master_dist" ] || master_dist=/etc/postfix/master.cf.proto
    {
        echo "127.0.0.1:$port inet n - n - - smtpd"
        awk '
            /^#/ || /^[ \t]*$/ { next }
            /^[ \t]/ { if (keep) print; next }
            {
                keep = 0
                if ($1 == "smtp" && $2 == "inet") next
                if ($1 ~ /^(pickup|cleanup|qmgr|rewrite|bounce|defer|trace|verify|flush|proxymap|proxywrite|smtp|relay|showq|error|retry|discard|local|virtual|anvil|scache|postlog)$/) {
                    keep = 1
                    $5 = "n"
                    print
                }
            }' "$master_dist"
    } >"$etc/master.cf"

    postfix -c "$etc" set-permissions >/dev/null 2>&1 || true
    postfix -c "$etc" check || die "postfix check failed for $etc"
    log "postfix: starting private instance in $PF_DIR on 127.0.0.1:$port"
    postfix -c "$etc" start >/dev/null 2>&1 || {
        cat "$PF_DIR/maillog" >&2 2>/dev/null || true
        die "postfix start failed"
    }
    PF_STARTED=1
    wait_port "$port" 20 || die "postfix smtpd did not listen on $port"

    run_one postfix "$port" "$PF_DIR/mail/bench.test/user" "$PF_DIR/smtp-source.out" \
        "$(pf_master_pid)"
    PF_SRC_CPU=$R_SRC_CPU
    PF_IDLE=$R_IDLE
    PF_SRV_CPU=$R_SRV_CPU
    PF_ACCEPT=$R_ACCEPT_S
    PF_E2E=$R_E2E_S
    PF_DELIVERED=$R_DELIVERED
    stop_postfix
    if grep -E -q 'fatal|panic' "$PF_DIR/maillog" 2>/dev/null; then
        log "postfix: the maillog has fatal/panic lines:"
        grep -E 'fatal|panic' "$PF_DIR/maillog" | head -5 >&2
    fi
}

# ---------------------------------------------------------------- kale
bench_kale() {
    local port conf
    if [ ! -x "$BUILD/kaled" ] || [ ! -x "$BUILD/kalectl" ]; then
        die "$BUILD/kaled or kalectl missing: build kale first (make)"
    fi
    port=$(free_port)
    KALE_DIR=$(mktemp -d "$BENCH_TMP/kale-bench-kale.XXXXXX")
    chmod 755 "$KALE_DIR"
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
    if [ "$FILTERS" = 1 ]; then
        # SPF and DMARC records of smtp-source's sender domain, served on
        # loopback; the client is not trusted, so every inbound check runs
        python3 -c '
import sys, time
sys.path.insert(0, sys.argv[1])
from dnsserver import DnsServer
d = DnsServer({"client.test": {"TXT": ["v=spf1 ip4:127.0.0.0/8 -all"], "A": ["127.0.0.1"]},
               "_dmarc.client.test": {"TXT": ["v=DMARC1; p=reject"]}})
d.start()
open(sys.argv[2], "w").write(str(d.port))
while True:
    time.sleep(60)
' "$ROOT/tests/integration" "$KALE_DIR/dns.port" &
        DNS_PID=$!
        for _ in $(seq 1 50); do [ -s "$KALE_DIR/dns.port" ] && break; sleep 0.1; done
        [ -s "$KALE_DIR/dns.port" ] || die "the DNS server did not start"
        printf '\n[dns]\nservers = 127.0.0.1:%s\n' "$(cat "$KALE_DIR/dns.port")" >>"$conf"
    fi
    "$BUILD/kalectl" -c "$conf" domain add bench.test --local >/dev/null ||
        die "kalectl domain add failed"
    "$BUILD/kalectl" -c "$conf" user add user@bench.test >/dev/null </dev/null ||
        die "kalectl user add failed"
    # the same trust as Postfix's mynetworks = 127.0.0.0/8: the client skips
    # the inbound filter checks there, and here (not with FILTERS=1)
    if [ "$FILTERS" != 1 ]; then
        "$BUILD/kalectl" -c "$conf" network add 127.0.0.0/8 >/dev/null ||
            die "kalectl network add failed"
    fi
    log "kale: starting kaled in $KALE_DIR on 127.0.0.1:$port"
    "$BUILD/kaled" -c "$conf" >"$KALE_DIR/kaled.log" 2>&1 &
    KALE_PID=$!
    if ! wait_port "$port" 20; then
        tail -20 "$KALE_DIR/kaled.log" >&2 || true
        die "kaled did not listen on $port"
    fi

    run_one kale "$port" "$KALE_DIR/var/mail/bench.test/user" "$KALE_DIR/smtp-source.out" \
        "$KALE_PID"
    KALE_SRC_CPU=$R_SRC_CPU
    KALE_IDLE=$R_IDLE
    KALE_SRV_CPU=$R_SRV_CPU
    KALE_ACCEPT=$R_ACCEPT_S
    KALE_E2E=$R_E2E_S
    KALE_DELIVERED=$R_DELIVERED
    stop_kale
}

# ---------------------------------------------------------------- main
ensure_postfix
PF_ACCEPT="" PF_E2E="" PF_DELIVERED=""
KALE_ACCEPT="" KALE_E2E="" KALE_DELIVERED=""

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
LOAD_START=$(loadavg)
log "N=$N SIZE=$SIZE SESSIONS=$SESSIONS FILTERS=$FILTERS TIMEOUT=${TIMEOUT}s nproc=$(nproc) tmp=$BENCH_TMP load=$LOAD_START"
if [ "$WHICH" != kale ]; then bench_postfix; fi
if [ "$WHICH" != postfix ]; then bench_kale; fi

echo
printf 'accept.sh: %d messages x %d bytes, 1 recipient, %d sessions, new connection per message%s\n' \
    "$N" "$SIZE" "$SESSIONS" "$([ "$FILTERS" = 1 ] && echo ', kale with filters (SPF, DKIM, DMARC)')"
printf 'machine: nproc %s, load average %s at start, %s at end (other work skews the figures)\n' \
    "$(nproc)" "$LOAD_START" "$(loadavg)"
row() { # name accept_s e2e_s delivered server_cpu_s source_cpu_s idle%
    local per="-"
    if [ -n "$3" ]; then
        per=$(awk -v c="$5" -v n="$N" 'BEGIN { printf "%.2f", 1000 * c / n }')
    fi
    printf '%-8s %9s %10s %9s %10s %12s %10s %8s %10s %6s\n' "$1" "$2" "$(rate "$N" "$2")" \
        "${3:-TIMEOUT}" "$(rate "$N" "$3")" "$4/$N" "$5" "$per" "$6" "$7"
}
printf '%-8s %9s %10s %9s %10s %12s %10s %8s %10s %6s\n' server accept_s accept/s e2e_s e2e/s \
    delivered srv_cpu_s cpu_ms/m src_cpu_s idle%
if [ "$WHICH" != kale ]; then
    row postfix "$PF_ACCEPT" "$PF_E2E" "$PF_DELIVERED" "$PF_SRV_CPU" "$PF_SRC_CPU" "$PF_IDLE"
fi
if [ "$WHICH" != postfix ]; then
    row kale "$KALE_ACCEPT" "$KALE_E2E" "$KALE_DELIVERED" "$KALE_SRV_CPU" "$KALE_SRC_CPU" "$KALE_IDLE"
fi
echo "(accept/s, e2e/s: msgs/s; srv_cpu_s: server CPU s, user+sys, until the last delivery;"
echo " cpu_ms/m: server CPU ms per message; src_cpu_s: smtp-source CPU s;"
echo " idle%: CPUs idle in the 2 s before the run, i.e. how quiet the machine was)"
if [ "$WHICH" = both ]; then
    ratio() { # postfix seconds / kale seconds = kale rate / postfix rate
        if [ -z "$1" ] || [ -z "$2" ]; then
            echo "n/a (timeout)"
        else
            awk -v p="$1" -v k="$2" 'BEGIN { printf "%.2fx", p / k }'
        fi
    }
    printf 'ratio kale/postfix: accept %s, end-to-end %s (target >= 5x on both)\n' \
        "$(ratio "$PF_ACCEPT" "$KALE_ACCEPT")" "$(ratio "$PF_E2E" "$KALE_E2E")"
fi
status=0
if [ "$WHICH" != kale ] && [ -z "$PF_E2E" ]; then status=1; fi
if [ "$WHICH" != postfix ] && [ -z "$KALE_E2E" ]; then status=1; fi
exit "$status"
}
