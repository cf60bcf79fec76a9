# crictld's RuntimeDefault AppArmor profile, loaded by crictld with apparmor_parser where the host
# has AppArmor. It follows the rules of Docker's and containerd's default profile (moby's
# profiles/apparmor template, Apache License 2.0): everything a container normally does is
# allowed, but no mount, no writes to /proc outside a process's own entries and /proc/sys/kernel/shm*,
# no writes to /sys outside /sys/fs/cgroup, nothing of /sys/firmware, /sys/kernel/security,
# /proc/kcore or /proc/sysrq-trigger. tests/unit/test_apparmor.py parses it with apparmor_parser.
#include <tunables/global>

profile crictld-default flags=(attach_disconnected,mediate_deleted) {
  #include <abstractions/base>

  network,
  capability,
  file,
  umount,
  signal (receive) peer=unconfined,
  signal (send,receive) peer=crictld-default,
  ptrace (trace,read,tracedby,readby) peer=crictld-default,

  deny mount,

  deny @{PROC}/* w,
  deny @{PROC}/{[^1-9],[^1-9][^0-9],[^1-9s][^0-9y][^0-9s],[^1-9][^0-9][^0-9][^0-9/]*}/** w,
  deny @{PROC}/sys/[^k]** w,
  deny @{PROC}/sys/kernel/{?,??,[^s][^h][^m]**} w,
  deny @{PROC}/sysrq-trigger rwklx,
  deny @{PROC}/kcore rwklx,

  deny /sys/[^f]*/** wklx,
  deny /sys/f[^s]*/** wklx,
  deny /sys/fs/[^c]*/** wklx,
  deny /sys/fs/c[^g]*/** wklx,
  deny /sys/fs/cg[^r]*/** wklx,
  deny /sys/firmware/** rwklx,
  deny /sys/kernel/security/** rwklx,
}
