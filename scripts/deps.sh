#!/bin/sh
# Installs the Debian 12 packages kale needs to build ("build") or to build and
# test ("test"). Only missing packages are installed; needs root for that.
set -e
BUILD="build-essential cmake pkg-config libssl-dev libevent-dev libsqlite3-dev libcrypt-dev libjansson-dev libcmocka-dev libc-ares-dev openssl libmariadb-dev libpq-dev libldap2-dev libspf2-dev libopendkim-dev libopendmarc-dev publicsuffix"
TEST="python3 python3-pytest python3-spf python3-yaml python3-dkim clang postfix swaks mariadb-server postgresql slapd ldap-utils dovecot-imapd dovecot-pop3d"
want="$BUILD"
[ "${1:-build}" = test ] && want="$BUILD $TEST"
# `make run`: the build, plus what the README's tour uses.
[ "${1:-build}" = run ] && want="$BUILD swaks"
missing=""
for p in $want; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "deps: installing$missing"
if [ "$(id -u)" != 0 ]; then
  echo "deps: not root, cannot install:$missing" >&2; exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# postfix asks debconf questions; answer them so the install never blocks.
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
# Servers installed for the tests (postfix, mariadb, postgresql, slapd, dovecot)
# must not be started as system services: the tests run private instances.
# policy-rc.d answers "not allowed" to every service start during the install.
prc=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
  prc=1
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends $missing >/dev/null || rc=$?
[ -n "$prc" ] && rm -f /usr/sbin/policy-rc.d
[ "${rc:-0}" = 0 ] || exit "$rc"
# Debian starts the packaged postfix service on install; kale's tests run their own
# private instance, so the system one is stopped if it came up.
if echo "$missing" | grep -q postfix; then
  postfix stop >/dev/null 2>&1 || true
fi
# On a machine run by systemd, the packaged test servers would otherwise start at
# the next boot on the standard ports: they are disabled (the tests start private
# instances). Nothing happens where systemd is not running.
if [ "${1:-build}" = test ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
  for u in postfix mariadb postgresql slapd dovecot; do
    systemctl disable --now "$u" >/dev/null 2>&1 || true
  done
fi
