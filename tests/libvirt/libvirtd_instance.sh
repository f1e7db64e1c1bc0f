#!/usr/bin/env bash
# Starts one private libvirtd (system-mode QEMU driver, as root) whose state lives under DIR, so
# that two of them on one machine can migrate a domain between each other — "two hosts" for
# libvirt. Each runs in its own mount namespace with tmpfs/bind mounts over libvirt's fixed paths
# (/etc/libvirt, /run/libvirt, /var/lib/libvirt, /var/log/libvirt, /var/cache/libvirt); its
# client socket is DIR/sock/libvirt-sock, reachable from outside the namespace as
#   qemu+unix:///system?socket=DIR/sock/libvirt-sock
# No systemd, no virtlogd (stdio_handler = "file"), no cgroups, no security driver: the test
# machine has none of these set up, and none matters to a migration's memory path. QEMU runs as
# QEMU_USER (qemu.conf's user and group; default root) — Debian's libvirt runs it as
# libvirt-qemu:kvm; the files that user must reach are the caller's business.
#
#   libvirtd_instance.sh start DIR HOST_UUID [QEMU_USER]   # returns when the socket answers
#   libvirtd_instance.sh stop DIR              # stops the daemon and every QEMU it started
set -euo pipefail

cmd=${1:?start|stop} dir=${2:?DIR}
case "$cmd" in
  start)
    uuid=${3:?HOST_UUID}
    qemu_user=${4:-root}
    qemu_group=$(id -gn "$qemu_user") || { echo "no user '$qemu_user'" >&2; exit 1; }
    mkdir -p "$dir"/{etc,run,lib,log,cache,sock}
    cat >"$dir/etc/libvirtd.conf" <<CONF
unix_sock_dir = "$dir/sock"
unix_sock_rw_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
host_uuid = "$uuid"
log_outputs = "1:file:$dir/libvirtd.log"
log_filters = "1:qemu.qemu_migration 1:qemu.qemu_monitor_json 3:*"
CONF
    cat >"$dir/etc/qemu.conf" <<CONF
user = "$qemu_user"
group = "$qemu_group"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
namespaces = [ ]
cgroup_controllers = [ ]
stdio_handler = "file"
CONF
    # The namespace: everything libvirt hard-codes for a root daemon points into DIR.
    unshare --mount --propagation private -- bash -c '
      set -e
      d=$1
      mount --bind "$d/etc" /etc/libvirt
      mount --bind "$d/run" /run/libvirt 2>/dev/null || { mkdir -p /run/libvirt; mount --bind "$d/run" /run/libvirt; }
      mount --bind "$d/lib" /var/lib/libvirt
      mount --bind "$d/log" /var/log/libvirt
      mount --bind "$d/cache" /var/cache/libvirt
      mkdir -p /var/lib/libvirt/qemu /var/log/libvirt/qemu /run/libvirt/qemu
      # File-backed guest RAM (<source type='file'/>, memory_backing_dir) on tmpfs, as the
      # pager needs shmem; QEMU 10.2 leaves only named files out of the stream, not memfds.
      mkdir -p /var/lib/libvirt/qemu/ram
      mount -t tmpfs -o size=2g,mode=0777 faultline-ram /var/lib/libvirt/qemu/ram
      exec libvirtd --daemon --pid-file="$d/libvirtd.pid" --config="$d/etc/libvirtd.conf"
    ' _ "$dir"
    for _ in $(seq 200); do
      if virsh -c "qemu+unix:///system?socket=$dir/sock/libvirt-sock" version >/dev/null 2>&1; then
        exit 0
      fi
      sleep 0.1
    done
    echo "libvirtd in $dir did not answer within 20 s; its log:" >&2
    tail -20 "$dir/libvirtd.log" >&2 || true
    exit 1
    ;;
  stop)
    uri="qemu+unix:///system?socket=$dir/sock/libvirt-sock"
    for d in $(virsh -c "$uri" list --name 2>/dev/null); do
      virsh -c "$uri" destroy "$d" >/dev/null 2>&1 || true
    done
    if [[ -f $dir/libvirtd.pid ]]; then
      pid=$(cat "$dir/libvirtd.pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    ;;
  *) echo "usage: $0 start DIR HOST_UUID | stop DIR" >&2; exit 2 ;;
esac
