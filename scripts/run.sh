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
if [ ! -f var/kale.db ]; then
  build/kalectl -c "$conf" domain add example.test --local
  pw=$(openssl rand -base64 12)
  printf '%s\n' "$pw" | build/kalectl -c "$conf" user add demo@example.test --password-stdin
  build/kalectl -c "$conf" alias add postmaster@example.test demo@example.test
  echo "=================================================================="
  echo " demo user: demo@example.test   password: $pw"
  echo " (printed once; change it with: build/kalectl -c kale.conf user passwd"
  echo "  demo@example.test --password-stdin)"
  echo "=================================================================="
fi
exec build/kaled -c "$conf"
