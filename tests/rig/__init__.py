"""The test rig: what the tests run against, private to each test run and offline.

Among its modules:
- `registry`: `Registry` runs Debian's docker-registry on a free 127.0.0.1 port.
- `images`: `build_images` builds every fixture image critest needs from Debian's busybox and the
  C programs under `pause/` and `fixtures/`; `push_images` pushes them over the Registry HTTP
  API v2, keeping critest's repository paths so the registry can mirror the upstream hosts.
"""
