#!/bin/sh
# `make run`: start kaled in the foreground with the embedded default
# (SQLite policy store, data under ./var, loopback high ports). The first
# start creates the demo domain example.test and the user demo@example.test
# and prints its password once.
set -e
cd "$(dirname "$0")/.."
conf="$(pwd)/kale.conf"
if [ "$(id -u)" = 0 ] && ! id kale >/dev/null 2>&1; then
  useradd --system --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin kale
fi
data=var
# kaled's children run as kale and need every folder on the way to data_dir
# open to them. A clone under /root (0700) is not: the demo data then goes
# to /var/lib/kale-demo, with a copy of kale.conf pointing there.
if [ "$(id -u)" = 0 ] && ! runuser -u kale -- test -x "$(pwd)" 2>/dev/null; then
  demo=/var/lib/kale-demo
  mkdir -p "$demo"
  sed -e "s|^data_dir = var |data_dir = $demo/var |" -e "s|= var/tls/|= $demo/var/tls/|" \
    kale.conf > "$demo/kale.conf"
  conf="$demo/kale.conf"
  data="$demo/var"
  echo "run: user kale cannot reach $(pwd) (a folder on its path is closed);"
  echo "run: the demo's data lives in $data, its config in $conf"
fi
if [ ! -f "$data/kale.db" ]; then
  build/kalectl -c "$conf" domain add example.test --local
  pw=$(openssl rand -base64 12)
  printf '%s\n' "$pw" | build/kalectl -c "$conf" user add demo@example.test --password-stdin
  build/kalectl -c "$conf" alias add postmaster@example.test demo@example.test
  echo "=================================================================="
  echo " demo user: demo@example.test   password: $pw"
  echo " (printed once; change it with: build/kalectl -c $conf user passwd"
  echo "  demo@example.test --password-stdin)"
  echo "=================================================================="
fi
exec build/kaled -c "$conf"
