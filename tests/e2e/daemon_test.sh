#!/usr/bin/env bash
# `clone daemon` end to end (docs/daemon.md): two VMs created through the daemon (one with --net),
# a template saved from the networked one, two forks of it through POST /templates/{name}/fork and
# one through `clone fork -d` (which forks through the daemon when it has the template),
# `clone list` through the daemon, exec through the daemon in each (each fork is its own machine:
# hostname = its id); bad requests get a 4xx naming the field; a non-owner caller is refused
# (SO_PEERCRED). Then the daemon is killed (-9), one fork is killed (-9) while it is down, and the
# daemon restarted: it adopts the survivors (exec still works), reports the dead fork exited, and
# left no process, TAP, lease, runtime directory or overlay of it. Stop and start a VM; destroy
# everything: nothing is left (processes, TAPs, leases, sockets, runtime and state files).
source "$(dirname "$0")/lib.sh"

e2e_prepare() {
  e2e_modules "$LAB_CLOUD_MODULES" "$E2E_WORK/modules" virtio_mmio vmw_vsock_virtio_transport virtio_net virtio_blk
  truncate -s 64M "$E2E_WORK/b-disk.img" && mkfs.ext4 -q -F "$E2E_WORK/b-disk.img"
  e2e_initrd "$E2E_WORK/agent.cpio.gz" "$E2E_ROOT/tests/guest/init-agent.sh" \
    "$E2E_WORK/modules:/modules" "$(dirname "$CLONE_BIN")/clone-agent:/usr/bin/clone-agent"
}
e2e_enter_lab "$0" "$@"

export CLONE_RUNTIME_DIR=/tmp/clone-e2e-daemon-rt  # sockets cannot live on the 9p share
state=/tmp/clone-e2e-daemon-state
export CLONE_DAEMON_SOCKET=/tmp/clone-e2e-daemon/daemon.sock
rm -rf "$CLONE_RUNTIME_DIR" "$state" /tmp/clone-e2e-daemon
mkdir -p /tmp/clone-e2e-daemon-disk
cp --sparse=always "$E2E_WORK/b-disk.img" /tmp/clone-e2e-daemon-disk/b.img  # b's own disk, off the 9p share
sock=$CLONE_DAEMON_SOCKET
initrd=$E2E_WORK/agent.cpio.gz
cmdline="console=ttyS0 quiet panic=-1"

daemon_pid=
start_daemon() {
  "$CLONE_BIN" daemon --state-dir "$state" 2>>"$E2E_WORK/daemon.log" &
  daemon_pid=$!
  for _ in $(seq 1 100); do [[ -S $sock ]] && curl -s --unix-socket "$sock" http://localhost/host >/dev/null && return 0; sleep 0.1; done
  return 1
}
# api METHOD PATH [BODY]: prints the body, then the HTTP status on a line of its own.
api() {
  curl -s --max-time 900 --unix-socket "$sock" -X "$1" ${3:+-H 'Content-Type: application/json' -d "$3"} \
    -w '\n%{http_code}' "http://localhost$2" || echo "curl failed"
}
status_of() { tail -n 1 <<<"$1"; }
body_of() { sed '$d' <<<"$1"; }
field() { python3 -c "import json,sys; d=json.loads(sys.argv[1]); print(eval(sys.argv[2]))" "$1" "$2" 2>/dev/null; }
gexec() { # gexec ID SCRIPT: stdout of SCRIPT run in VM ID through the daemon's exec proxy
  local r
  r=$(api POST "/vms/$1/exec" "$(python3 -c 'import json,sys; print(json.dumps({"argv": ["sh", "-c", sys.argv[1]], "timeout_ms": 60000}))' "$2")")
  [[ $(status_of "$r") == 200 ]] || { echo "exec $1: $r" >&2; return 1; }
  field "$(body_of "$r")" 'd["stdout"].strip()'
}
wait_ready() { # wait_ready ID: the daemon reports its agent ready
  for _ in $(seq 1 480); do
    [[ $(field "$(body_of "$(api GET "/vms/$1")")" 'd["agent_ready"]') == True ]] && return 0
    sleep 0.5
  done
  return 1
}

t0=$(now)
check "the daemon starts and serves its socket" start_daemon
check "its socket is 0600" test "$(stat -c %a "$sock")" = 600

# --- two VMs through the daemon ---
a=$("$CLONE_BIN" create --name a --kernel "$LAB_CLOUD_KERNEL" --initrd "$initrd" --mem-mb 192 --net \
  --cmdline "$cmdline" 2>"$E2E_WORK/create-a.err") || true
cat "$E2E_WORK/create-a.err"
check "clone create a (--net) through the daemon" test "$a" = a
r=$(api POST /vms "{\"name\": \"b\", \"kernel\": \"$LAB_CLOUD_KERNEL\", \"initrd\": \"$initrd\", \"mem_mib\": 160, \"cmdline\": \"$cmdline\", \"restart\": \"on-failure\", \"disks\": [{\"path\": \"/tmp/clone-e2e-daemon-disk/b.img\"}]}")
check "POST /vms b: 201 running" test "$(status_of "$r") $(field "$(body_of "$r")" 'd["state"]')" = "201 running"
check "a: agent ready (GET /vms/a)" wait_ready a
check "b: agent ready" wait_ready b
echo "two VMs to their agents in $(since "$t0") s"
tap_a=$(field "$(body_of "$(api GET /vms/a)")" 'd["tap"]')
check "a has a TAP ($tap_a)" test -n "$tap_a"

# --- bad requests and a non-owner ---
r=$(api POST /vms '{"kernel": "/k", "mem_mib": 1}')
check "a bad mem_mib is a 400 naming it" test "$(status_of "$r")" = 400 -a -n "$(grep mem_mib <<<"$r")"
r=$(api POST /vms '{"kernel": "vmlinuz"}')
check "a relative kernel path is a 400" grep -q "must be an absolute path" <<<"$r"
r=$(api POST /templates/nope/fork '{}')
check "fork of a missing template: 404" test "$(status_of "$r")" = 404
r=$(api POST /vms/a/exec '{"argv": "true"}')
check "a bad exec body: 400 from the VM, passed through" test "$(status_of "$r")" = 400
chmod 0711 "$(dirname "$sock")" && chmod 0666 "$sock"
reply=$(setpriv --reuid=65534 --regid=65534 --clear-groups curl -s -w '\n%{http_code}' --unix-socket "$sock" \
  http://localhost/vms/a 2>&1) || true
echo "non-owner GET /vms/a: $reply"
check "a non-owner is refused VM a (403, SO_PEERCRED)" test "$(status_of "$reply")" = 403
reply=$(setpriv --reuid=65534 --regid=65534 --clear-groups curl -s --unix-socket "$sock" http://localhost/vms 2>&1) || true
check "a non-owner lists none of root's VMs" test "$reply" = "[]"
chmod 0600 "$sock"

# --- a template and two forks through the daemon ---
r=$(api PUT /vms/a/snapshot '{"template": "tpl"}')
echo "snapshot: $r"
check "PUT /vms/a/snapshot: 201" test "$(status_of "$r")" = 201
t1=$(now)
r=$(api POST /templates/tpl/fork '{"count": 2, "name": "f", "net": true}')
echo "fork: $(status_of "$r") in $(since "$t1") s"
check "POST /templates/tpl/fork count 2: 201" test "$(status_of "$r")" = 201
check "the forks are f-1 and f-2" test "$(field "$(body_of "$r")" '" ".join(sorted(v["id"] for v in d["vms"]))')" = "f-1 f-2"
check "GET /templates lists tpl with its forks" test "$(field "$(body_of "$(api GET /templates)")" '",".join(d[0]["vms"])')" = "f-1,f-2"
g=$("$CLONE_BIN" fork --template tpl -d --name g --net 2>"$E2E_WORK/fork-g.err") || true
cat "$E2E_WORK/fork-g.err"
check "clone fork -d of the daemon's template forks through the daemon" test "$g" = g
check "GET /vms/g: a fork of tpl" test "$(field "$(body_of "$(api GET /vms/g)")" 'd["template"]')" = tpl
check "f-1: agent ready" wait_ready f-1
check "f-2: agent ready" wait_ready f-2
check "g: agent ready" wait_ready g
"$CLONE_BIN" list | tee "$E2E_WORK/list"
check "clone list (through the daemon) shows 5 running VMs" test "$(grep -c ' running ' "$E2E_WORK/list")" = 5
for id in a b f-1 f-2 g; do
  check "exec through the daemon in $id: hostname is its id" test "$(gexec "$id" hostname)" = "$id"
done
gexec a 'echo kept > /tmp/marker' >/dev/null || true

# --- kill -9 the daemon, kill -9 a fork while it is down, restart ---
f2=$(field "$(body_of "$(api GET /vms/f-2)")" 'd["pid"]')
tap_f2=$(field "$(body_of "$(api GET /vms/f-2)")" 'd["tap"]')
ip_f2=$(field "$(body_of "$(api GET /vms/f-2)")" 'd["ip"]')
echo "f-2: pid $f2 tap $tap_f2 ip $ip_f2"
kill -9 "$daemon_pid"
wait "$daemon_pid" 2>/dev/null || true
kill -9 "$f2"
for _ in $(seq 1 50); do kill -0 "$f2" 2>/dev/null || break; sleep 0.1; done
check "the VMs survive the daemon's death" kill -0 "$(pid_of a)"
check "the daemon restarts" start_daemon
r=$(body_of "$(api GET /vms)")
check "after the restart: a, b, f-1, g running" test "$(field "$r" '" ".join(v["id"] for v in d if v["state"] == "running")')" = "a b f-1 g"
f2json=$(body_of "$(api GET /vms/f-2)")
echo "f-2: $f2json" | cut -c1-300
check "f-2 reported exited (died while the daemon was down)" \
  test "$(field "$f2json" 'd["state"] + "/" + d["last_exit"]["how"]')" = "exited/died while the daemon was down"
check "no process of f-2" test -z "$(pgrep -f 'daemon-vm .*--id f-2$' || true)"
check "no TAP of f-2 ($tap_f2)" test ! -e "/sys/class/net/$tap_f2"
check "no lease of f-2 ($ip_f2)" test ! -e "$CLONE_RUNTIME_DIR/net/clonebr0/$ip_f2"
check "no runtime directory of f-2" test ! -e "$CLONE_RUNTIME_DIR/vms/f-2"
check "exec in the adopted a still works (and its file is there)" test "$(gexec a 'cat /tmp/marker')" = kept
"$CLONE_BIN" events --since 0 >"$E2E_WORK/events" &
ev=$!
sleep 1
kill "$ev" 2>/dev/null || true
check "events after the restart: a adopted, f-2 exited" python3 -c "
import json, sys
events = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
kinds = {(e['type'], e['id']) for e in events}
assert ('adopted', 'a') in kinds and ('exited', 'f-2') in kinds, events
" "$E2E_WORK/events"

# --- stop and start: b's own disk keeps what it wrote ---
gexec b 'mkdir -p /mnt && mount /dev/vda /mnt && echo persisted > /mnt/file && umount /mnt && echo written'
r=$(api POST /vms/b/stop '{"mode": "agent", "timeout_ms": 60000}')
check "POST /vms/b/stop: stopped" test "$(field "$(body_of "$r")" 'd["state"]')" = stopped
check "b's process is gone" test ! -e "$CLONE_RUNTIME_DIR/vms/b"
r=$(api POST /vms/b/start)
check "POST /vms/b/start: running again" test "$(field "$(body_of "$r")" 'd["state"]')" = running
check "b: agent ready after its start" wait_ready b
check "b's disk kept its file across stop and start" \
  test "$(gexec b 'mkdir -p /mnt && mount /dev/vda /mnt && cat /mnt/file; umount /mnt')" = persisted

# --- destroy everything ---
for id in a b f-1 f-2 g; do
  check "DELETE /vms/$id" test "$(status_of "$(api DELETE "/vms/$id")")" = 200
done
r=$(api DELETE /templates/tpl)
check "DELETE /templates/tpl" test "$(status_of "$r")" = 200
check "GET /vms is empty" test "$(body_of "$(api GET /vms)")" = "[]"
kill "$daemon_pid"
wait "$daemon_pid" 2>/dev/null || true
check "no clone process left" test -z "$(pgrep -x clone || true)"
check "no clone TAP left" test -z "$(ls /sys/class/net | grep '^clone[0-9]' || true)"
check "no lease left" test -z "$(ls "$CLONE_RUNTIME_DIR/net/clonebr0" 2>/dev/null || true)"
check "no runtime directory left" test -z "$(ls "$CLONE_RUNTIME_DIR/vms" 2>/dev/null || true)"
check "no VM record or template left" test -z "$(find "$state/vms" "$state/templates" -mindepth 1 2>/dev/null || true)"
check "the daemon's socket is removed" test ! -e "$sock"
echo "daemon e2e in $(since "$t0") s"
[[ $E2E_FAILURES == 0 ]] || { echo "--- daemon.log"; cat "$E2E_WORK/daemon.log"; }
e2e_finish
