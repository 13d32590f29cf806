#!/usr/bin/env bash
# Installs frp-uring's release binaries, systemd units and example configs. Safe to run
# again: binaries and units are replaced, existing configs are never touched, the user is
# created only when missing.
#
#   scripts/install.sh [options]
#
#   --prefix DIR      binaries go to DIR/bin (default /usr, as frp's units expect)
#   --sysconfdir DIR  configs go to DIR/frp (default /etc)
#   --unitdir DIR     systemd units (default /etc/systemd/system)
#   --destdir DIR     stage everything under DIR (for packaging); paths inside the units
#                     stay those of the final system; no user is created, systemd untouched
#   --from DIR        where the built binaries are (default target/release)
#   --build           run `cargo build --release -p frps -p frpc` first
#   --user NAME       the service user (default frp), created as a system user when missing
#                     and run as root; --no-user keeps User= out of the units
#   --no-create-user  name the user in the units but do not create it
#   --no-systemd      do not install units nor run `systemctl daemon-reload`
#
# The units run `frps -c <sysconfdir>/frp/frps.toml` and `frpc -c <sysconfdir>/frp/frpc.toml`;
# `frps@NAME` / `frpc@NAME` run `<sysconfdir>/frp/NAME.toml`.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
prefix=/usr
sysconfdir=/etc
unitdir=
destdir=
from="$repo/target/release"
build=0
user=frp
create_user=1
systemd=1

while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix="$2"; shift 2 ;;
    --sysconfdir) sysconfdir="$2"; shift 2 ;;
    --unitdir) unitdir="$2"; shift 2 ;;
    --destdir) destdir="$2"; shift 2 ;;
    --from) from="$2"; shift 2 ;;
    --build) build=1; shift ;;
    --user) user="$2"; shift 2 ;;
    --no-user) user=; shift ;;
    --no-create-user) create_user=0; shift ;;
    --no-systemd) systemd=0; shift ;;
    -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
unitdir="${unitdir:-$sysconfdir/systemd/system}"
confdir="$sysconfdir/frp"

if [ "$build" = 1 ]; then
  (cd "$repo" && cargo build --release -p frps -p frpc)
fi
for b in frps frpc; do
  if [ ! -x "$from/$b" ]; then
    echo "install.sh: $from/$b not found; build it first (cargo build --release) or pass --build" >&2
    exit 1
  fi
done

say() { echo "install.sh: $*"; }

# The service user, only on the real system as root.
if [ -n "$user" ] && [ "$create_user" = 1 ] && [ -z "$destdir" ] && [ "$(id -u)" = 0 ] \
  && ! id -u "$user" >/dev/null 2>&1; then
  nologin="$(command -v nologin || echo /usr/sbin/nologin)"
  useradd --system --user-group --no-create-home --home-dir /nonexistent \
    --shell "$nologin" --comment "frp-uring" "$user"
  say "created system user $user"
fi

# Binaries.
for b in frps frpc; do
  install -D -m 0755 "$from/$b" "$destdir$prefix/bin/$b"
  say "installed $destdir$prefix/bin/$b"
done

# Example configs, only where none exists yet, readable (frpc: writable, for the admin API's
# PUT /api/config) by the service user's group.
install -d -m 0755 "$destdir$confdir"
owner=()
if [ -n "$user" ] && [ -z "$destdir" ] && [ "$(id -u)" = 0 ] && id -u "$user" >/dev/null 2>&1; then
  owner=(-g "$user")
fi
for c in frps frpc; do
  target="$destdir$confdir/$c.toml"
  if [ -e "$target" ] || [ -e "$destdir$confdir/$c.ini" ]; then
    say "kept the existing $c config in $destdir$confdir (the service user must be able to read it)"
  else
    install -m 0660 "${owner[@]}" "$repo/examples/$c.toml" "$target"
    say "installed example config $target"
  fi
done

# systemd units, with this install's paths.
if [ "$systemd" = 1 ]; then
  install -d -m 0755 "$destdir$unitdir"
  for u in frps.service frpc.service frps@.service frpc@.service; do
    tmp="$(mktemp)"
    sed -e "s|/usr/bin/|$prefix/bin/|g" -e "s|/etc/frp/|$confdir/|g" \
      "$repo/packaging/systemd/$u" >"$tmp"
    if [ -n "$user" ]; then
      sed -i -e "s|^User=frp$|User=$user|" -e "s|^Group=frp$|Group=$user|" "$tmp"
    else
      sed -i -e '/^User=/d' -e '/^Group=/d' "$tmp"
    fi
    install -m 0644 "$tmp" "$destdir$unitdir/$u"
    rm -f "$tmp"
    say "installed $destdir$unitdir/$u"
  done
  case "$unitdir" in
    /etc/systemd/system|/usr/lib/systemd/system|/lib/systemd/system) system_units=1 ;;
    *) system_units=0 ;;
  esac
  if [ "$system_units" = 1 ] && [ -z "$destdir" ] && [ "$(id -u)" = 0 ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    say "systemd reloaded: systemctl enable --now frps (or frpc, frps@NAME, frpc@NAME)"
  fi
fi
