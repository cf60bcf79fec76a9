#!/usr/bin/env bash
# Writes a default CNI network for crictld (bridge + host-local + portmap) into the CNI config
# dir, unless that dir already holds a network config. Used by `make run`. No loopback plugin:
# crictld brings each pod's lo up itself, as containerd's CRI does.
set -euo pipefail
dir=${1:-/etc/cni/net.d}
mkdir -p "$dir"
if ls "$dir"/*.conflist "$dir"/*.conf "$dir"/*.json >/dev/null 2>&1; then
  echo "CNI config already present in $dir: leaving it" >&2
  exit 0
fi
cat > "$dir/10-crictld.conflist" <<'JSON'
{
  "cniVersion": "1.0.0",
  "name": "crictld",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "crictld0",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "10.88.0.0/16"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
echo "wrote $dir/10-crictld.conflist" >&2
