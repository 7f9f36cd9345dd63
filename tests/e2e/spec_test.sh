#!/usr/bin/env bash
# The VM spec end to end (spec/vm_spec.h, runtime/launch.h): a VM booted from `clone run` flags
# records its spec (info.json, and the snapshot's config); --vm-id takes a VM process's PID (exec,
# snapshot, fork of a running VM); a fork refuses its template's writable shared directory unless
# it names its own directory for the tag or serves it read-only (and then cannot write it);
# `clone fork --block IMG` (a new disk) is refused with the reason; refused forks leave nothing; all
# VMs stopped leave no runtime directory behind. A non-owner is refused on a VM's control socket
# (SO_PEERCRED) even when the socket's mode lets it connect.
source "$(dirname "$0")/lib.sh"

e2e_prepare() {
  e2e_modules "$LAB_CLOUD_MODULES" "$E2E_WORK/modules" virtio_mmio vmw_vsock_virtio_transport virtiofs
  e2e_initrd "$E2E_WORK/fs.cpio.gz" "$E2E_ROOT/tests/guest/init-virtiofs.sh" \
    "$E2E_WORK/modules:/modules" "$(dirname "$CLONE_BIN")/clone-agent:/usr/bin/clone-agent"
}
e2e_enter_lab "$0" "$@"

export CLONE_RUNTIME_DIR=/tmp/clone-e2e-spec-rt  # sockets cannot live on the 9p share
export CLONE_TEMPLATES_DIR=/tmp/clone-e2e-spec-templates
top=/tmp/clone-e2e-spec
rm -rf "$CLONE_RUNTIME_DIR" "$CLONE_TEMPLATES_DIR" "$top"
mkdir -p "$top/share" "$top/ro" "$top/own"
echo "template data" >"$top/share/data.txt"
echo "fixed" >"$top/ro/fixed.txt"
cmdline="console=ttyS0 quiet panic=-1 clone.fs=myfs:/mnt/fs,rofs:/mnt/ro"
gx() { "$CLONE_BIN" exec --vm-id "$1" --timeout 60 -- sh -c "$2" 2>>"$E2E_WORK/exec.err"; }
# refused NAME TEXT ARGS...: `clone fork ARGS` fails with status 2 saying TEXT and leaves no VM.
refused() {
  local text=$2 status=0 before
  before=$(vm_count)
  shift 2
  "$CLONE_BIN" fork "$@" </dev/null >/dev/null 2>"$E2E_WORK/refused.err" || status=$?
  cat "$E2E_WORK/refused.err"
  [[ $status == 2 ]] && grep -q -- "$text" "$E2E_WORK/refused.err" && [[ $(vm_count) == "$before" ]]
}

# --- a VM from flags; its spec is recorded ---
id=$("$CLONE_BIN" run -d --name spec1 --kernel "$LAB_CLOUD_KERNEL" --initrd "$E2E_WORK/fs.cpio.gz" --mem-mb 192 \
  --shared-dir "$top/share:myfs" --shared-dir "$top/ro:rofs:ro" --cmdline "$cmdline" 2>"$E2E_WORK/run.err") || true
cat "$E2E_WORK/run.err"
check "VM started from flags" test "$id" = spec1
check "agent reachable" wait_agent spec1
info=$CLONE_RUNTIME_DIR/vms/spec1/info.json
check "info.json records the spec (version 1, mem_mib 192, both shares)" python3 -c "
import json, sys
s = json.load(open('$info'))['spec']
assert s['version'] == 1 and s['mem_mib'] == 192 and s['name'] == 'spec1', s
assert [(d['tag'], d['read_only']) for d in s['shares']] == [('myfs', False), ('rofs', True)], s['shares']
"
pid=$(pid_of spec1)
# SO_PEERCRED: with the socket's mode opened up, a non-owner still gets a 403 and the owner (root) is served.
sock=$CLONE_RUNTIME_DIR/vms/spec1/control.sock
chmod 0755 "$CLONE_RUNTIME_DIR" "$CLONE_RUNTIME_DIR/vms" "$CLONE_RUNTIME_DIR/vms/spec1" && chmod 0666 "$sock"
# (curl as nobody writes nothing: its output comes back on stdout, the status on the last line.)
reply=$(setpriv --reuid=65534 --regid=65534 --clear-groups curl -s -w '\n%{http_code}' \
  --unix-socket "$sock" http://localhost/vm 2>&1) || true
code=${reply##*$'\n'}
echo "non-owner: HTTP $code ${reply%$'\n'*}"
[[ $code == 403 ]] || ls -ld /tmp "$CLONE_RUNTIME_DIR" "$CLONE_RUNTIME_DIR/vms" "$CLONE_RUNTIME_DIR/vms/spec1" "$sock"
check "a non-owner is refused on the VM's control socket (403, SO_PEERCRED)" \
  bash -c "[[ '$code' == 403 ]] && grep -q 'is not the owner of this VM' <<<'${reply//\'/}'"
check "the owner is still served" bash -c "curl -sf --unix-socket '$sock' http://localhost/vm | grep -q '\"state\"'"
chmod 0700 "$CLONE_RUNTIME_DIR" "$CLONE_RUNTIME_DIR/vms" "$CLONE_RUNTIME_DIR/vms/spec1" && chmod 0600 "$sock"
check "exec --vm-id PID reaches the VM" test "$("$CLONE_BIN" exec --vm-id "$pid" -- cat /mnt/fs/data.txt 2>/dev/null)" = "template data"
"$CLONE_BIN" snapshot --vm-id "$pid" --name tpl >"$E2E_WORK/snap.out" 2>&1 || true
cat "$E2E_WORK/snap.out"
check "snapshot --vm-id PID" test -f "$CLONE_TEMPLATES_DIR/tpl/config"
check "the snapshot's config records the spec" python3 -c "
import json
c = json.load(open('$CLONE_TEMPLATES_DIR/tpl/config'))
assert c['info']['spec']['version'] == 1 and c['info']['spec']['kernel'] == '$LAB_CLOUD_KERNEL', c['info']
"

# --- fork rules on shared directories and disks ---
check "fork: the template's writable share is refused" \
  refused tpl "never shares a writable directory" --template tpl -d
check "fork: a new disk is refused with the reason" \
  refused tpl "cannot get a new disk" --template tpl -d --shared-dir "$top/own:myfs" --block "$top/extra.img"
check "fork: an unknown tag is refused" refused tpl "no shared directory tagged 'nope'" --template tpl -d --shared-dir "$top/own:nope"

id=$("$CLONE_BIN" fork -d --template tpl --name fro --shared-dir "$top/share:myfs:ro" 2>"$E2E_WORK/fro.err") || true
cat "$E2E_WORK/fro.err"
check "fork with the template's share read-only started" test "$id" = fro
check "read-only fork: agent reachable" wait_agent fro
check "read-only fork reads the template's directory" test "$(gx fro 'cat /mnt/fs/data.txt')" = "template data"
check "read-only fork cannot write it" bash -c "! '$CLONE_BIN' exec --vm-id fro -- sh -c 'echo x > /mnt/fs/fork.txt' 2>/dev/null"
check "the template's directory is untouched" test ! -e "$top/share/fork.txt"
check "the fork records its own spec" python3 -c "
import json
s = json.load(open('$CLONE_RUNTIME_DIR/vms/fro/info.json'))['spec']
assert s['name'] == 'fro' and s['shares'][0] == {'host_path': '$top/share', 'tag': 'myfs', 'read_only': True}, s
"
check "read-only fork stopped" stop_vm fro

# Fork of the running VM by its PID, into a directory of its own.
id=$("$CLONE_BIN" fork -d --vm-id "$pid" --name fown --shared-dir "$top/own:myfs" 2>"$E2E_WORK/fown.err") || true
cat "$E2E_WORK/fown.err"
check "fork --vm-id PID with its own directory started" test "$id" = fown
check "own-directory fork: agent reachable" wait_agent fown
gx fown 'echo mine > /mnt/fs/fork.txt && sync' || true
check "the fork writes into its own directory" test "$(cat "$top/own/fork.txt" 2>/dev/null)" = mine
check "... not into the template's" test ! -e "$top/share/fork.txt"
check "the source keeps running" test "$(gx spec1 'cat /mnt/fs/data.txt')" = "template data"
check "own-directory fork stopped" stop_vm fown
check "source stopped" stop_vm spec1
check "no VM directory left" test "$(vm_count)" = 0
check "no temporary template left" test "$(ls "$CLONE_TEMPLATES_DIR")" = tpl

if [[ $E2E_FAILURES -gt 0 ]]; then
  for f in "$CLONE_RUNTIME_DIR"/vms/*/console.log; do echo "== $f"; tail -20 "$f"; done 2>/dev/null
  tail -20 "$E2E_WORK/exec.err"
fi
e2e_finish
