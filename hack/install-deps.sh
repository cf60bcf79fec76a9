#!/usr/bin/env bash
# Installs what crictld and its tests need on a fresh Debian bookworm machine, skipping what is
# already there: Debian packages (containerd, runc, CNI plugins, the registry, busybox-static, a
# C toolchain), the Python virtualenv with crictld in it, and cri-tools (crictl, critest).
# Safe to run again and again; `make run` and `make test` call it.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

packages=(containerd runc containernetworking-plugins docker-registry busybox-static iproute2 apparmor criu
          iptables sqlite3 gcc libc6-dev musl-tools make procps util-linux apache2-utils iputils-ping
          openssl)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}" >&2
  sudo_=""; [ "$(id -u)" = 0 ] || sudo_=sudo
  $sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
# critest's masked-paths test needs a busybox whose shell execs /bin/ls instead of running its
# own applet: Debian's dynamic busybox (it conflicts with busybox-static, so it is unpacked into
# .cache/ for the fixture images, never installed).
if [ ! -x .cache/busybox/bin/busybox ]; then
  d=$(mktemp -d)
  (cd "$d" && { apt-get download busybox >/dev/null 2>&1 ||
                { apt-get update -qq && apt-get download busybox >/dev/null; }; } &&
     dpkg-deb -x busybox_*.deb unpacked)
  mkdir -p .cache/busybox/bin
  cp "$d/unpacked/bin/busybox" .cache/busybox/bin/busybox
  rm -rf "$d"
fi
# The Debian packages start services of their own where an init system runs; crictld brings up
# its own containerd and tests their own registry, so those must not hold the standard ports.
for svc in docker-registry; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active -q "$svc" 2>/dev/null; then
    systemctl stop "$svc" || true
  fi
done

command -v go >/dev/null 2>&1 || [ -x /usr/local/go/bin/go ] || {
  echo "go is needed to build cri-tools (crictl, critest); install Go >= 1.23" >&2; exit 1; }
export PATH=$PATH:/usr/local/go/bin

python=${PYTHON:-python3}
stamp=.venv/.crictld-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setting up .venv" >&2
  [ -x .venv/bin/python ] || "$python" -m venv .venv
  .venv/bin/pip install -q --upgrade pip >&2
  .venv/bin/pip install -q -e '.[dev]' >&2
  echo "$want" > "$stamp"
fi
# crictld's own modules compiled now, as a wheel install compiles them: the tree is installed
# editable, and where the environment says PYTHONDONTWRITEBYTECODE (container images often do;
# this project's VMs do) Python never writes them, so each daemon start compiled every module
# again, ~0.3 s of a restart (docs/performance.md, "Restart"). Up-to-date files are skipped;
# a source edited later is compiled again in memory until the next run of this script.
.venv/bin/python -m compileall -q -j 0 crictl >/dev/null

# crictld-logger, the per-container log writer the shim starts: a small C program next to the
# venv's python (where crictld looks for it). One runs per container, so what each keeps
# private counts 300 times at 300 containers (benchmarks.scale's "shim helpers"): linked
# statically against musl an idle one keeps ~12 KiB, against glibc ~52 (glibc's own data, bss
# and heap arena), and dynamically ~130 (the loader's and libc's relocated pages). The compiler
# and flags are part of the stamp.
logger_cc=musl-gcc
logger_flags="-O2 -Wall -Wextra -Werror -static"
logger_stamp=.venv/.crictld-logger.flags
if [ ! -x .venv/bin/crictld-logger ] || [ logger/crictld-logger.c -nt .venv/bin/crictld-logger ] \
    || [ "$(cat "$logger_stamp" 2>/dev/null)" != "$logger_cc $logger_flags" ]; then
  $logger_cc $logger_flags -o .venv/bin/crictld-logger.tmp logger/crictld-logger.c
  mv .venv/bin/crictld-logger.tmp .venv/bin/crictld-logger
  echo "$logger_cc $logger_flags" > "$logger_stamp"
fi

bash hack/install-cri-tools.sh >/dev/null
bash hack/install-kubelet.sh >/dev/null
